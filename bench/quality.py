"""OCR quality of a running service, over HTTP: a generated set with known truth, or OmniDocBench.

Generated set (``serve_app.testing.docset``: fonts and sizes, two columns, a ruled table, an
EXIF-rotated JPEG, a two-page PDF at two dpi values), sent one by one to ``POST /v1/ocr``::

    .venv/bin/python -m bench.quality --url http://127.0.0.1:8000 [--task ocr] [--json out.json]

prints character and word error rates, the overlap of the returned boxes with the true lines
and the share of true words whose ink lies inside a returned box, per case and overall; exits 1
if a request failed. OmniDocBench (``OmniDocBench.json`` and ``images/``), for its official
evaluation::

    .venv/bin/python -m bench.quality omnidocbench --url ... --data DIR --out DIR

writes ``OUT/<image stem>.md`` per page, cleaned as DeepSeek-OCR's own eval script does;
pages already written are skipped, so a second run resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import scoring
from serve_app.core.grounding import EOS_TEXT
from serve_app.core.prompts import Task, parse_task
from serve_app.testing.docset import Case, TruePage, document_set

TIMEOUT_S = 600.0
_HTML_TAG = re.compile(r"<[^<>\n]+>")


@dataclass(frozen=True)
class PageScore:
    """One page's counts, so pages add up into character- and line-weighted totals."""

    ref_chars: int
    char_edits: int
    ref_words: int
    word_edits: int
    line_ious: tuple[float, ...]
    line_hits: int
    true_words: int
    words_contained: int
    size: tuple[int, int] | None  # the page size the service reported, if it differs
    error: str | None = None


def page_hypothesis(page: Mapping[str, Any], *, labels_are_text: bool) -> tuple[str, list[Any]]:
    """The text and pixel boxes a page answer offers: its regions' texts in order, one per line
    (a region's label stands in for an empty text when labels are recognised text, as with
    ``task=ocr``), or the page markdown when there are no regions. HTML tags (tables of
    ``task=document``) become spaces."""
    regions = page.get("regions") or []
    if regions:
        texts = [r.get("text") or (r.get("label") if labels_are_text else "") for r in regions]
        text = "\n".join(t for t in texts if t)
    else:
        text = page.get("markdown") or ""
    boxes = [box for r in regions for box in r.get("boxes") or []]
    return _HTML_TAG.sub(" ", text), boxes


def score_page(
    page: Mapping[str, Any],
    truth: TruePage,
    *,
    labels_are_text: bool = True,
    threshold: float = 0.5,
    tolerance: float = 2.0,
) -> PageScore:
    """Score one page of a ``/v1/ocr`` answer against its truth: text against the lines, boxes
    against the lines' boxes (IoU) and the words' ink (containment, ``tolerance`` px). A failed
    page scores as if nothing was read."""
    error = page.get("error")
    text, boxes = ("", []) if error else page_hypothesis(page, labels_are_text=labels_are_text)
    char_edits, ref_chars = scoring.char_errors(truth.text, text)
    word_edits, ref_words = scoring.word_errors(truth.text, text)
    lines = scoring.match_lines([ln.box for ln in truth.lines], boxes, threshold=threshold)
    words = [w.ink for w in truth.words]
    size = (int(page.get("width") or 0), int(page.get("height") or 0))
    return PageScore(
        ref_chars=ref_chars,
        char_edits=char_edits,
        ref_words=ref_words,
        word_edits=word_edits,
        line_ious=lines.best,
        line_hits=lines.hits,
        true_words=len(words),
        words_contained=scoring.contained_words(words, boxes, tolerance=tolerance),
        size=None if error or size == (truth.width, truth.height) else size,
        error=f"{error.get('code')}: {error.get('message')}" if error else None,
    )


def score_answer(
    answer: Mapping[str, Any], case: Case, *, labels_are_text: bool = True
) -> list[PageScore]:
    """Each page of ``case`` scored against the answer's page of the same number."""
    by_number = {p.get("page"): p for p in answer.get("pages") or []}
    missing = {"error": {"code": "missing", "message": "the answer has no such page"}}
    return [
        score_page(by_number.get(n, missing), truth, labels_are_text=labels_are_text)
        for n, truth in enumerate(case.pages, start=1)
    ]


@dataclass(frozen=True)
class CaseResult:
    """A case's page scores and request time; ``error`` if the request itself failed."""

    name: str
    pages: tuple[PageScore, ...]
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    """Totals over pages: CER and WER weighted by reference length, IoU by true line."""

    pages: int
    cer: float
    wer: float
    mean_iou: float
    recall: float
    contained: float

    @classmethod
    def of(cls, pages: Sequence[PageScore]) -> Summary:
        ious = [iou for p in pages for iou in p.line_ious]

        def ratio(num: float, den: float) -> float:
            return num / den if den else 0.0

        return cls(
            pages=len(pages),
            cer=ratio(sum(p.char_edits for p in pages), sum(p.ref_chars for p in pages)),
            wer=ratio(sum(p.word_edits for p in pages), sum(p.ref_words for p in pages)),
            mean_iou=ratio(sum(ious), len(ious)),
            recall=ratio(sum(p.line_hits for p in pages), len(ious)),
            contained=ratio(
                sum(p.words_contained for p in pages), sum(p.true_words for p in pages)
            ),
        )


_HEADER = ("case", "pages", "CER", "WER", "line IoU", "R@0.5", "words in", "seconds")


def format_report(results: Sequence[CaseResult]) -> str:
    """A fixed-width table: one row per case, then an overall row; notes below it."""
    rows = [_row(r.name, Summary.of(r.pages), r.seconds) for r in results]
    every = [p for r in results for p in r.pages]
    rows.append(_row("overall", Summary.of(every), sum(r.seconds for r in results)))
    width = max(len(_HEADER[0]), *(len(r[0]) for r in rows))
    lines = [f"{_HEADER[0]:<{width}}" + "".join(f"{h:>10}" for h in _HEADER[1:])]
    lines += [f"{r[0]:<{width}}" + "".join(f"{c:>10}" for c in r[1:]) for r in rows]
    for r in results:
        if r.error:
            lines.append(f"{r.name}: request failed: {r.error}")
        for n, p in enumerate(r.pages, start=1):
            if p.error:
                lines.append(f"{r.name} page {n}: {p.error}")
            elif p.size:
                lines.append(f"{r.name} page {n}: the service saw {p.size[0]}x{p.size[1]} px")
    return "\n".join(lines)


def _row(name: str, s: Summary, seconds: float) -> tuple[str, ...]:
    return (name, str(s.pages), *(f"{v:.3f}" for v in (s.cer, s.wer, s.mean_iou, s.recall)),
            f"{s.contained:.3f}", f"{seconds:.1f}")  # fmt: skip


def run_cases(
    client: httpx.Client, cases: Sequence[Case], *, task: str, model: str | None = None
) -> list[CaseResult]:
    """Send each case to ``/v1/ocr`` in turn and score the answer; a failed request scores
    its pages as empty and carries the error."""
    labels_are_text = parse_task(task).labels_are_text
    results = []
    for case in cases:
        fields = {**case.fields, "task": task, **({"model": model} if model else {})}
        start = time.perf_counter()
        answer, error = _post_case(client, case, fields)
        seconds = time.perf_counter() - start
        scores = score_answer(answer, case, labels_are_text=labels_are_text)
        results.append(CaseResult(case.name, tuple(scores), seconds, error))
    return results


def _post_case(
    client: httpx.Client, case: Case, fields: dict[str, str]
) -> tuple[dict[str, Any], str | None]:
    """The answer, or an empty one and what went wrong."""
    upload = {"file": (case.filename, case.data, case.content_type)}
    try:
        reply = client.post("/v1/ocr", files=upload, data=fields)
    except httpx.HTTPError as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    if reply.status_code != 200:
        return {}, f"HTTP {reply.status_code}: {reply.text[:300]}"
    return reply.json(), None


# --- OmniDocBench ---------------------------------------------------------------------------

# DeepSeek-OCR's run_dpsk_ocr_eval_batch.py (DeepSeek-OCR-master/DeepSeek-OCR-vllm/), as
# summarised in ../shared/reference/deepseek-ocr-in-vllm.md section E.8: clean_formula, then
# every grounding match removed (image refs too: the eval keeps no figure links), each removal
# followed by the same chain of replaces.
_GROUNDING = re.compile(r"(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)", re.DOTALL)
_FORMULA = re.compile(r"\\\[(.*?)\\\]")
_EQUATION_NUMBER = re.compile(r"\\quad\s*\([^)]*\)")


def clean_formula(text: str) -> str:
    """Drop ``\\quad (n)`` equation numbers inside one-line ``\\[...\\]`` (the official
    ``clean_formula``)."""
    return _FORMULA.sub(
        lambda m: r"\[" + _EQUATION_NUMBER.sub("", m.group(1)).strip() + r"\]", text
    )


def official_markdown(raw: str) -> str:
    """A page's raw model text as the official eval script writes it to ``<stem>.md``.

    The end-of-sentence text is removed first: the official script never sees it (vLLM's V0
    engine left it out), while a server may keep it.
    """
    content = clean_formula(raw.replace(EOS_TEXT, ""))
    # Literally the official loop: the replaces run once per match, and not at all without one.
    for match in [m[0] for m in _GROUNDING.findall(content)]:
        content = (
            content.replace(match, "")
            .replace("\n\n\n\n", "\n\n")
            .replace("\n\n\n", "\n\n")
            .replace("<center>", "")
            .replace("</center>", "")
        )
    return content


@dataclass(frozen=True)
class BenchPage:
    """One OmniDocBench image and the markdown file it goes to."""

    image: Path
    out: Path


def omnidocbench_pages(data_dir: Path, out_dir: Path) -> list[BenchPage]:
    """The pages listed in ``data_dir/OmniDocBench.json`` (images under ``data_dir/images``),
    each with its output ``out_dir/<image stem>.md``, in file order, without repeats."""
    entries = json.loads((data_dir / "OmniDocBench.json").read_text(encoding="utf-8"))
    names = dict.fromkeys(e["page_info"]["image_path"] for e in entries)
    return [BenchPage(data_dir / "images" / n, out_dir / f"{Path(n).stem}.md") for n in names]


@dataclass(frozen=True)
class BenchRun:
    """What a run did: pages written, found already written, and failures (name: reason)."""

    written: int
    skipped: int
    failed: tuple[str, ...]


async def run_omnidocbench(
    client: httpx.AsyncClient,
    pages: Sequence[BenchPage],
    *,
    mode: str | None = "gundam",
    model: str | None = None,
    concurrency: int = 4,
    log: Callable[[str], None] = print,
) -> BenchRun:
    """OCR every page not yet written, ``concurrency`` requests at a time, with the document
    task (the prompt ``<|grounding|>Convert the document to markdown.``), and write each one's
    :func:`official_markdown`. A failed page is reported and left unwritten."""
    todo = [p for p in pages if not p.out.exists()]
    log(f"{len(pages)} pages, {len(pages) - len(todo)} already written, {len(todo)} to run")
    fields = {"task": Task.DOCUMENT.value, "include_regions": "false"}
    fields |= {k: v for k, v in (("mode", mode), ("model", model)) if v}
    queue: asyncio.Queue[BenchPage] = asyncio.Queue()
    for page in todo:
        queue.put_nowait(page)
    failed: list[str] = []
    done = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while not queue.empty():
            page = queue.get_nowait()
            t0 = time.perf_counter()
            problem = await _ocr_to_file(client, page, fields)
            done += 1
            if problem:
                failed.append(f"{page.image.name}: {problem}")
            status = f"FAILED {problem}" if problem else f"{time.perf_counter() - t0:.1f} s"
            log(f"[{done}/{len(todo)}] {page.image.name}: {status}")

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(todo))))))
    written = len(todo) - len(failed)
    if todo:
        wall = time.perf_counter() - start
        log(f"{written} written, {len(failed)} failed; {wall / len(todo):.2f} s per page (wall)")
    return BenchRun(written, len(pages) - len(todo), tuple(failed))


async def _ocr_to_file(client: httpx.AsyncClient, page: BenchPage, fields: dict[str, str]) -> str:
    """Empty on success, else why the page failed."""
    kind = mimetypes.guess_type(page.image.name)[0] or "application/octet-stream"
    try:
        data = page.image.read_bytes()
        reply = await client.post(
            "/v1/ocr", files={"file": (page.image.name, data, kind)}, data=fields
        )
    except (OSError, httpx.HTTPError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if reply.status_code != 200:
        return f"HTTP {reply.status_code}: {reply.text[:300]}"
    try:
        first = (reply.json().get("pages") or [{}])[0]
    except (ValueError, AttributeError):
        return f"not an OCR answer: {reply.text[:300]}"
    if "raw_text" not in first:
        return str(first.get("error") or "no raw_text in the answer")
    page.out.parent.mkdir(parents=True, exist_ok=True)
    partial = page.out.with_name(page.out.name + ".partial")
    partial.write_text(official_markdown(first["raw_text"]), encoding="utf-8")
    partial.replace(page.out)  # a crash never leaves a half file that a resume would skip
    return ""


# --- command line ---------------------------------------------------------------------------


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return {"base_url": args.url, "headers": headers, "timeout": httpx.Timeout(TIMEOUT_S)}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--model", help="the model field to send (not sent by default)")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")


def _command_line(argv: Sequence[str]) -> str:
    shown = list(argv)
    for i, arg in enumerate(shown):
        if arg.startswith("--api-key="):
            shown[i] = "--api-key=***"
        elif i and shown[i - 1] == "--api-key":
            shown[i] = "***"
    return shlex.join(["python", "-m", "bench.quality", *shown])


def _models(client: httpx.Client) -> str:
    try:
        reply = client.get("/v1/models", timeout=10)
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"
    return reply.text.strip() if reply.status_code == 200 else f"HTTP {reply.status_code}"


def docset_main(argv: Sequence[str]) -> int:
    """``python -m bench.quality``: the generated set; 1 if a request or a page failed."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.add_argument(
        "--task",
        default=Task.OCR.value,
        choices=[t.value for t in Task if t is not Task.LOCATE],
        help="ocr (the default) returns one region per text line",
    )
    parser.add_argument("--json", type=Path, help="also write the page scores here")
    args = parser.parse_args(argv)
    with httpx.Client(**_client_options(args)) as client:
        print(_command_line(argv))
        print(f"/v1/models: {_models(client)}")
        results = run_cases(client, document_set(), task=args.task, model=args.model)
    print(format_report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 1 if any(r.error or any(p.error for p in r.pages) for r in results) else 0


def omnidocbench_main(argv: Sequence[str]) -> int:
    """``python -m bench.quality omnidocbench``: 1 if any page failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.quality omnidocbench")
    _common(parser)
    parser.add_argument("--data", type=Path, required=True, help="has OmniDocBench.json, images/")
    parser.add_argument("--out", type=Path, required=True, help="where <image stem>.md go")
    parser.add_argument("--mode", default="gundam", help="the official eval's mode is gundam")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    args = parser.parse_args(argv)
    print(_command_line(["omnidocbench", *argv]))
    pages = omnidocbench_pages(args.data, args.out)

    async def run() -> BenchRun:
        async with httpx.AsyncClient(**_client_options(args)) as client:
            return await run_omnidocbench(
                client, pages, mode=args.mode, model=args.model, concurrency=args.concurrency
            )

    outcome = asyncio.run(run())
    for failure in outcome.failed:
        print(f"failed: {failure}")
    return 1 if outcome.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["omnidocbench"]:
        return omnidocbench_main(args[1:])
    return docset_main(args)


if __name__ == "__main__":
    sys.exit(main())
