// The service's web page: send an image or PDF, show each page as it finishes with its
// regions drawn over the page image and its markdown beside it. Plain DOM, no build step,
// nothing loaded from elsewhere. Model output is untrusted: it only ever becomes text nodes
// or elements rebuilt from a short list (sanitize), never innerHTML.
"use strict";

const API = "../v1";
const PAGE_SPLIT = "\n\n<--- Page Split --->\n\n";
const JOB_PAGES = 20; // a PDF of this many pages or more runs as a job where jobs are on
const ALLOWED = new Set([
  "table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption", "colgroup", "col",
  "p", "div", "span", "br", "hr", "b", "strong", "i", "em", "u", "s", "sup", "sub", "small",
  "code", "pre", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
]);
const DROPPED = new Set([
  "script", "style", "template", "iframe", "frame", "object", "embed", "noscript", "svg",
  "math", "title", "head", "link", "meta", "base", "form", "input", "button", "textarea",
  "select", "img", "video", "audio", "source", "picture", "canvas",
]);

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("ask"), keyRow: $("key-row"), key: $("api-key"), file: $("file"), drop: $("drop"),
  urlRow: $("url-row"), url: $("url"), model: $("model"), task: $("task"), mode: $("mode"),
  pages: $("pages"), send: $("send"), cancel: $("cancel"), progressRow: $("progress-row"),
  progress: $("progress"), progressText: $("progress-text"), error: $("error"),
  downloads: $("downloads"), pageList: $("page-list"),
};

let settings = { api_keys: false, url_inputs: false, jobs: false };
let models = [];
let run = null; // the document being read: {abort, pages: Map, summary, job, total, ...}

class ServiceError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  const key = ui.key.value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function call(path, init = {}) {
  const response = await fetch(path, { ...init, headers: headers(init.headers || {}) });
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function errorOf(response) {
  let code = "http_error";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) { /* not the service's JSON */ }
  return new ServiceError(response.status, code, message);
}

function showError(error) {
  ui.error.textContent = error instanceof ServiceError
    ? `${error.message} (${error.code})` : String(error.message || error);
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

// ---- settings and models ----------------------------------------------------------------

async function loadSettings() {
  const response = await fetch("settings");
  if (response.ok) settings = await response.json();
  ui.keyRow.hidden = !settings.api_keys;
  ui.urlRow.hidden = !settings.url_inputs;
}

async function loadModels() {
  if (settings.api_keys && !ui.key.value.trim()) { // no call that can only answer 401
    fill(ui.model, []);
    modelChanged();
    ui.key.focus();
    return;
  }
  try {
    const response = await call(`${API}/models`);
    models = (await response.json()).data || [];
    clearError();
  } catch (error) {
    models = [];
    if (error.status === 401) ui.keyRow.hidden = false;
    showError(error);
  }
  fill(ui.model, models.map((m) => m.id));
  modelChanged();
}

function fill(select, values, keep) {
  const previous = keep ? select.value : null;
  select.replaceChildren(...values.map((value) => new Option(value, value)));
  if (previous && values.includes(previous)) select.value = previous;
}

function modelChanged() {
  const model = models.find((m) => m.id === ui.model.value);
  fill(ui.task, model ? model.tasks : [], true);
  fill(ui.mode, model ? model.modes : [], true);
  ui.mode.disabled = !model || model.modes.length === 0;
  if (model && model.modes.includes("gundam") && !ui.mode.dataset.touched) ui.mode.value = "gundam";
}

// ---- sending ------------------------------------------------------------------------------

function options() {
  const params = new URLSearchParams({
    include_regions: "true", include_figures: "true", include_page_image: "true",
  });
  if (ui.model.value) params.set("model", ui.model.value);
  if (ui.task.value) params.set("task", ui.task.value);
  if (!ui.mode.disabled && ui.mode.value) params.set("mode", ui.mode.value);
  if (ui.pages.value.trim()) params.set("pages", ui.pages.value.trim());
  return params;
}

const PAGE_OBJECT = /\/Type\s*\/Page(?![a-zA-Z])/g;

// About how many pages a PDF has (for progress and the job threshold): its page objects,
// also those packed in compressed object streams (PDF 1.5 and later).
async function pdfPageCount(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const text = new TextDecoder("latin1").decode(bytes); // one character per byte
  let pages = (text.match(PAGE_OBJECT) || []).length;
  const starts = /\bstream\r?\n/g;
  const packed = pages === 0;
  for (let m; packed && (m = starts.exec(text));) {
    if (!text.slice(Math.max(0, m.index - 512), m.index).includes("/ObjStm")) continue;
    let end = text.indexOf("endstream", starts.lastIndex);
    if (end < 0) continue;
    while (end > starts.lastIndex && (bytes[end - 1] === 10 || bytes[end - 1] === 13)) end -= 1;
    try {
      const inflated = await inflate(bytes.subarray(starts.lastIndex, end));
      pages += (inflated.match(PAGE_OBJECT) || []).length;
    } catch (_) { /* not Flate, or damaged: the service will say */ }
  }
  return Math.max(1, pages);
}

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new TextDecoder("latin1").decode(await new Response(stream).arrayBuffer());
}

function expectedPages(count) {
  const asked = ui.pages.value.trim();
  if (!asked) return count;
  let pages = 0;
  for (const part of asked.split(",")) {
    const [a, b] = part.split("-").map((n) => parseInt(n, 10));
    if (Number.isNaN(a)) continue;
    pages += Number.isNaN(b) ? 1 : Math.max(0, Math.min(b, count) - a + 1);
  }
  return Math.max(1, pages);
}

async function send(event) {
  event.preventDefault();
  const file = ui.file.files[0] || null;
  const url = ui.url.value.trim();
  if (!file && !url) {
    showError(new Error("Choose an image or a PDF first."));
    ui.file.focus();
    return;
  }
  if (run) stop();
  clearError();
  ui.pageList.replaceChildren();
  ui.downloads.hidden = true;
  const isPdf = file && (file.type === "application/pdf" || /\.pdf$/i.test(file.name));
  const total = isPdf ? expectedPages(await pdfPageCount(file)) : 1;
  run = {
    abort: new AbortController(), pages: new Map(), summary: null, job: null,
    total, file, url, params: options(), finished: false,
  };
  setBusy(true);
  progress();
  const current = run;
  try {
    if (settings.jobs && file && total >= JOB_PAGES) await readAsJob(current);
    else await readAsStream(current);
    if (current === run) finish(current);
  } catch (error) {
    if (current !== run) return;
    if (error.name === "AbortError") {
      ui.progressText.textContent = `Cancelled: ${current.pages.size} of ${current.total} pages.`;
    } else {
      showError(error);
    }
    setBusy(false);
    if (current.pages.size) ui.downloads.hidden = false;
  }
}

function body(current) {
  if (current.file) {
    return {
      body: current.file,
      headers: { "content-type": current.file.type || "application/octet-stream" },
    };
  }
  return { body: JSON.stringify({ url: current.url }), headers: { "content-type": "application/json" } };
}

async function readAsStream(current) {
  const params = new URLSearchParams(current.params);
  params.set("stream", "true");
  const response = await call(`${API}/ocr?${params}`, {
    method: "POST", ...body(current), signal: current.abort.signal,
  });
  for await (const line of lines(response)) {
    if (line.object === "ocr.page") addPage(current, line);
    else if (line.object === "ocr.result") current.summary = line;
    else if (line.object === "error") {
      throw new ServiceError(200, line.error.code || "error", line.error.message);
    }
  }
}

async function readAsJob(current) {
  const response = await call(`${API}/jobs?${current.params}`, {
    method: "POST", ...body(current), signal: current.abort.signal,
  });
  current.job = await response.json();
  const events = await call(`${API}/jobs/${current.job.id}/events`, { signal: current.abort.signal });
  for await (const line of lines(events)) {
    if (line.object === "ocr.page") addPage(current, line);
    else if (line.object === "job") {
      current.job = line;
      if (line.pages && line.pages.total) current.total = line.pages.total;
      if (line.status === "failed" && line.error) {
        throw new ServiceError(200, line.error.code || "job_failed", line.error.message);
      }
    }
  }
  const result = await call(`${API}/jobs/${current.job.id}/result`);
  current.summary = await result.json();
}

async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const text = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (text) yield JSON.parse(text);
    }
  }
  if (buffered.trim()) yield JSON.parse(buffered);
}

function stop() {
  const current = run;
  if (!current) return;
  current.abort.abort();
  if (current.job && !current.finished) {
    call(`${API}/jobs/${current.job.id}/cancel`, { method: "POST" }).catch(() => {});
  }
}

function finish(current) {
  current.finished = true;
  if (current.summary) current.total = current.summary.pages_processed;
  progress();
  const failed = [...current.pages.values()].filter((p) => p.error).length;
  ui.progressText.textContent = `Done: ${plural(current.pages.size, "page")}` +
    (failed ? `, ${failed} failed.` : ".");
  setBusy(false);
  ui.downloads.hidden = false;
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.cancel.disabled = !busy;
  ui.form.setAttribute("aria-busy", String(busy));
}

function progress() {
  const done = run ? run.pages.size : 0;
  const total = Math.max(run ? run.total : 1, done, 1);
  ui.progressRow.hidden = false;
  ui.progress.max = total;
  ui.progress.value = done;
  ui.progressText.textContent = `${done} of ${total} pages`;
}

// ---- a page ---------------------------------------------------------------------------

function addPage(current, page) {
  current.pages.set(page.page, page);
  if (current.pages.size > current.total) current.total = current.pages.size;
  const card = renderPage(page);
  const after = [...ui.pageList.children].find((c) => Number(c.dataset.page) > page.page);
  ui.pageList.insertBefore(card, after || null);
  progress();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function renderPage(page) {
  const card = el("article", { class: "page", "data-page": page.page, "aria-label": `Page ${page.page}` },
    el("h2", {}, `Page ${page.page}`));
  if (page.error) {
    card.classList.add("failed");
    card.append(el("p", { class: "page-error", role: "status" },
      `This page failed: ${page.error.message} (${page.error.code})`));
    return card;
  }
  const regions = page.regions || [];
  const figures = new Map((page.figures || []).map((f) => [f.name, f]));
  card.append(el("div", { class: "page-body" }, pageView(page, regions), markdownView(page, figures)));
  if (figures.size) {
    card.append(el("div", { class: "figures" }, ...[...figures.values()].map((f) =>
      el("figure", {}, jpeg(f.image_base64, `Figure ${f.name}`), el("figcaption", {}, f.name)))));
  }
  const raw = el("details", { class: "raw" }, el("summary", {}, "Raw model output"),
    el("pre", {}, page.raw_text || ""));
  card.append(raw);
  return card;
}

function jpeg(base64, alt) {
  return el("img", { src: `data:image/jpeg;base64,${base64}`, alt });
}

function pageView(page, regions) {
  const frame = el("div", { class: "frame" });
  if (page.page_image_base64) {
    frame.append(jpeg(page.page_image_base64, `Page ${page.page} as the model saw it`));
  } else {
    const blank = el("div", { class: "blank" });
    blank.style.aspectRatio = `${page.width} / ${page.height}`; // CSSOM: allowed by the CSP
    frame.append(blank);
  }
  const overlay = svg("svg", {
    class: "boxes", viewBox: `0 0 ${page.width} ${page.height}`, preserveAspectRatio: "none",
    "data-width": page.width, "data-height": page.height,
  });
  const caption = el("figcaption", { class: "region-text", "aria-live": "polite" },
    regions.length ? "Hover over or focus a box to read its text." : "No regions on this page.");
  regions.forEach((region, index) => {
    for (const [x0, y0, x1, y1] of region.boxes) {
      const group = svg("g", {
        class: `region label-${region.label.replace(/[^a-z_]/gi, "")}`, tabindex: 0,
        "data-region": index, role: "img",
        "aria-label": `${region.label}: ${region.text.slice(0, 200)}`,
      });
      const title = svg("title");
      title.textContent = `${region.label}: ${region.text}`;
      const rect = svg("rect", {
        x: x0, y: y0, width: Math.max(1, x1 - x0), height: Math.max(1, y1 - y0),
        "data-box": `${x0},${y0},${x1},${y1}`, "vector-effect": "non-scaling-stroke",
      });
      group.append(title, rect);
      const show = () => { caption.textContent = `${region.label}: ${region.text}`; };
      group.addEventListener("mouseenter", show);
      group.addEventListener("focus", show);
      overlay.append(group);
    }
  });
  frame.append(overlay);
  return el("figure", { class: "page-view" }, frame, caption);
}

// ---- markdown, sanitized ----------------------------------------------------------------

function markdownView(page, figures) {
  const view = el("div", { class: "markdown", "aria-label": `Markdown of page ${page.page}` });
  view.append(...renderMarkdown(page.markdown || "", figures));
  return view;
}

function renderMarkdown(markdown, figures) {
  const nodes = [];
  for (const block of markdown.split(/\n{2,}/)) {
    const text = block.trim();
    if (!text) continue;
    const heading = /^(#{1,6})\s+(.*)$/s.exec(text);
    if (heading) {
      nodes.push(el(`h${Math.min(6, heading[1].length + 2)}`, {}, ...inline(heading[2])));
    } else if (/^<table/i.test(text)) {
      nodes.push(el("div", { class: "table" }, ...inline(text)));
    } else if (/^\$\$[\s\S]*\$\$$/.test(text) || /^\\\[[\s\S]*\\\]$/.test(text)) {
      nodes.push(el("pre", { class: "math" }, text));
    } else if (text.split("\n").every((line) => /^\s*([-*+]|\d+[.)])\s+/.test(line))) {
      const ordered = /^\s*\d/.test(text);
      nodes.push(el(ordered ? "ol" : "ul", {}, ...text.split("\n").map((line) =>
        el("li", {}, ...inline(line.replace(/^\s*([-*+]|\d+[.)])\s+/, ""))))));
    } else {
      const para = el("p");
      text.split("\n").forEach((line, i) => {
        if (i) para.append(el("br"));
        const image = /^!\[[^\]]*\]\(([^)]+)\)$/.exec(line.trim());
        if (image && figures.has(image[1])) {
          para.append(jpeg(figures.get(image[1]).image_base64, `Figure ${image[1]}`));
        } else if (image) {
          para.append(el("span", { class: "missing" }, `[figure ${image[1]}]`));
        } else {
          para.append(...inline(line));
        }
      });
      nodes.push(para);
    }
  }
  return nodes;
}

// Inline markup: the model's HTML (tables, <center>, <sup>) rebuilt from the allowed list,
// then **bold** and *italic* in its text.
function inline(text) {
  return [...sanitize(text).childNodes].map(emphasis);
}

function sanitize(html) {
  const parsed = new DOMParser().parseFromString(`<!doctype html><body>${html}`, "text/html");
  const out = document.createDocumentFragment();
  copy(parsed.body, out);
  return out;
}

function copy(from, to) {
  for (const node of from.childNodes) {
    if (node.nodeType === Node.TEXT_NODE) {
      to.append(document.createTextNode(node.data));
    } else if (node.nodeType === Node.ELEMENT_NODE) {
      const tag = node.localName;
      if (DROPPED.has(tag)) continue;
      if (tag === "center" || ALLOWED.has(tag)) {
        const clean = document.createElement(tag === "center" ? "div" : tag);
        if (tag === "center") clean.className = "center";
        for (const name of ["colspan", "rowspan"]) {
          const value = node.getAttribute(name);
          if (value && /^\d{1,3}$/.test(value)) clean.setAttribute(name, value);
        }
        copy(node, clean);
        to.append(clean);
      } else {
        copy(node, to); // an unknown element: its text stays, the element goes
      }
    }
  }
}

function emphasis(node) {
  if (node.nodeType !== Node.TEXT_NODE) {
    Array.from(node.childNodes).forEach((child) => {
      const replaced = emphasis(child);
      if (replaced !== child) node.replaceChild(replaced, child);
    });
    return node;
  }
  const parts = node.data.split(/(\*\*[^*\n]+\*\*|`[^`\n]+`)/);
  if (parts.length === 1) return node;
  const out = document.createDocumentFragment();
  for (const part of parts) {
    if (/^\*\*[^*]+\*\*$/.test(part)) out.append(el("strong", {}, part.slice(2, -2)));
    else if (/^`[^`]+`$/.test(part)) out.append(el("code", {}, part.slice(1, -1)));
    else if (part) out.append(part);
  }
  return out;
}

// ---- downloads ----------------------------------------------------------------------------

function ordered(current) {
  return [...current.pages.values()].sort((a, b) => a.page - b.page);
}

function pageMarkdown(page) {
  if (!page.error) return page.markdown;
  const note = page.error.message.split(/\s+/).join(" ").replaceAll("--", "-");
  return `<!-- page ${page.page} failed: ${note} -->`;
}

function save(blob, name) {
  const link = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function stem(current) {
  const name = current.file ? current.file.name : "document";
  return name.replace(/\.[^.]+$/, "") || "document";
}

function downloadMarkdown() {
  const text = ordered(run).map(pageMarkdown).join(PAGE_SPLIT);
  save(new Blob([text], { type: "text/markdown" }), `${stem(run)}.md`);
}

function downloadJson() {
  const pages = ordered(run).map(({ page_image_base64, ...rest }) => rest);
  const answer = { ...(run.summary || {}), markdown: ordered(run).map(pageMarkdown).join(PAGE_SPLIT), pages };
  save(new Blob([JSON.stringify(answer, null, 1)], { type: "application/json" }), `${stem(run)}.json`);
}

async function downloadZip() {
  const current = run;
  ui.downloads.setAttribute("aria-busy", "true");
  try {
    let response;
    if (current.job) {
      response = await call(`${API}/jobs/${current.job.id}/result?format=zip`);
    } else {
      // A streamed answer has no ZIP of its own: the service reads the document again.
      const params = new URLSearchParams(current.params);
      params.delete("include_page_image");
      params.set("format", "zip");
      response = await call(`${API}/ocr?${params}`, { method: "POST", ...body(current) });
    }
    save(await response.blob(), `${stem(current)}.zip`);
  } catch (error) {
    showError(error);
  } finally {
    ui.downloads.removeAttribute("aria-busy");
  }
}

// ---- wiring ---------------------------------------------------------------------------

function dropped(event) {
  event.preventDefault();
  ui.drop.classList.remove("over");
  if (event.dataTransfer && event.dataTransfer.files.length) {
    ui.file.files = event.dataTransfer.files;
    ui.file.dispatchEvent(new Event("change"));
  }
}

ui.form.addEventListener("submit", send);
ui.cancel.addEventListener("click", stop);
ui.model.addEventListener("change", modelChanged);
ui.mode.addEventListener("change", () => { ui.mode.dataset.touched = "1"; });
ui.key.addEventListener("change", loadModels);
ui.drop.addEventListener("dragover", (event) => { event.preventDefault(); ui.drop.classList.add("over"); });
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", dropped);
$("get-markdown").addEventListener("click", downloadMarkdown);
$("get-json").addEventListener("click", downloadJson);
$("get-zip").addEventListener("click", downloadZip);

loadSettings().then(loadModels).catch(showError);
