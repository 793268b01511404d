"""Two models in one Serve app over HTTP: the CPU OCR engine (rapidocr, the default) reads the
words drawn on a page back into boxes that contain them, and each request is answered by the
model it named."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig
from serve_app.testing.docset import Case, exif_jpeg_case, pdf_cases, png_case, text_page
from serve_app.testing.serve import start_app, stop_apps
from tests.browsers import Console, box_of, wait_for_status

pytestmark = pytest.mark.serve

APP = "ocr-models"
# Words a reader should not confuse (no 0/O or 1/l pairs), at sizes PP-OCR reads at 72 dpi too.
PAGE_1 = text_page(["Quarterly report for Northwind", "Revenue grew by twelve percent"], size=18)
PAGE_2 = text_page(["Shipping address", "Seven Harbour Street Dublin"], font="tiro", size=20)


def cases() -> list[Case]:
    return [
        png_case("png", PAGE_1),
        exif_jpeg_case("exif_jpeg", PAGE_2, orientation=6),
        *pdf_cases("pdf", [PAGE_1, PAGE_2], (72, 144)),
    ]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    config = AppConfig.model_validate({"models": {
        "rapidocr": {"kind": "rapidocr"},
        "deepseek-ocr": {"kind": "fake"},
    }})  # fmt: skip
    url = start_app(config, name=APP)
    with httpx.Client(base_url=url, timeout=120) as http:
        yield http
    stop_apps()


def post(client: httpx.Client, case: Case, **fields: str) -> httpx.Response:
    files = {"file": (case.filename, case.data, case.content_type)}
    return client.post("/v1/ocr", files=files, data={**case.fields, **fields})


def counters(model: str) -> dict[str, int]:
    from ray import serve

    handle = serve.get_deployment_handle(f"EngineDeployment-{model}", app_name=APP)
    return handle.counters.remote().result()  # type: ignore[no-any-return]


def inside(ink: tuple[float, ...], box: list[int], slack: float = 1.0) -> bool:
    return (box[0] - slack <= ink[0] and box[1] - slack <= ink[1]
            and ink[2] <= box[2] + 1 + slack and ink[3] <= box[3] + 1 + slack)  # fmt: skip


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_drawn_words_come_back_inside_their_boxes(client: httpx.Client, case: Case) -> None:
    r = post(client, case, task="ocr")

    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["pages_processed"]) == ("rapidocr", len(case.pages))
    for page, truth in zip(body["pages"], case.pages, strict=True):
        assert (page["width"], page["height"]) == (truth.width, truth.height)
        assert page["mode"] == "page" and page["finish_reason"] == "stop"
        regions = page["regions"]
        assert len(regions) == len(truth.lines), [r["label"] for r in regions]
        for line in truth.lines:
            for word in line.words:
                holders = [r for r in regions if word.text.casefold() in r["label"].casefold()]
                assert holders, f"{word.text!r} not read on page {page['page']}: {regions}"
                assert any(inside(word.ink, r["boxes"][0]) for r in holders), (
                    f"{word.text!r} drawn at {word.ink}, boxes {[r['boxes'] for r in holders]}"
                )


def test_the_document_task_gives_paragraphs_as_markdown(client: httpx.Client) -> None:
    (case,) = [c for c in cases() if c.name == "png"]
    r = post(client, case)  # the default task: document

    page = r.json()["pages"][0]
    # The page's two lines, set one below the other, read as one paragraph in one box.
    assert page["markdown"] == " ".join(line.text for line in case.pages[0].lines)
    (region,) = page["regions"]
    assert region["label"] == "text"
    assert all(inside(word.ink, region["boxes"][0]) for word in case.pages[0].words)


def test_each_request_is_answered_by_the_model_it_names(client: httpx.Client) -> None:
    (case,) = [c for c in cases() if c.name == "png"]
    before = {model: counters(model)["pages_recognized"] for model in ("rapidocr", "deepseek-ocr")}

    fake = post(client, case, model="deepseek-ocr").json()
    default = post(client, case).json()
    named = post(client, case, model="rapidocr").json()

    assert fake["model"] == "deepseek-ocr"
    assert fake["pages"][0]["mode"] == "gundam"  # DeepSeek's views were made for it
    assert fake["pages"][0]["raw_text"].startswith("<|ref|>title<|/ref|>")  # the fake's script
    for answer in (default, named):
        assert answer["model"] == "rapidocr" and answer["pages"][0]["mode"] == "page"
        assert "Northwind" in answer["markdown"]
    after = {model: counters(model)["pages_recognized"] for model in ("rapidocr", "deepseek-ocr")}
    assert after["rapidocr"] - before["rapidocr"] == 2
    assert after["deepseek-ocr"] - before["deepseek-ocr"] == 1


def test_models_lists_both_the_default_first(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()

    assert [m["id"] for m in body["data"]] == ["rapidocr", "deepseek-ocr"]
    rapid, deepseek = body["data"]
    assert rapid["tasks"] == ["document", "ocr", "free", "locate"]
    assert not rapid["free_form_prompts"] and deepseek["free_form_prompts"]
    assert (rapid["modes"], deepseek["modes"]) == ([], ["tiny", "small", "base", "large", "gundam"])
    assert deepseek["tasks"] == ["document", "ocr", "free", "figure", "describe", "locate"]


def assert_openai_error(r: httpx.Response, status: int, code: str, param: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    return error


def test_an_unknown_model_is_a_404_in_openai_shape(client: httpx.Client) -> None:
    (case,) = [c for c in cases() if c.name == "png"]
    error = assert_openai_error(post(client, case, model="gpt-4o"), 404, "model_not_found", "model")
    assert (
        "'gpt-4o' does not exist" in error["message"]
        and "rapidocr, deepseek-ocr" in error["message"]
    )

    chat = client.post("/v1/chat/completions", json=chat_body("gpt-4o", case, "Free OCR."))
    assert_openai_error(chat, 404, "model_not_found", "model")


def test_a_task_the_model_cannot_do_names_the_models_that_can(client: httpx.Client) -> None:
    (case,) = [c for c in cases() if c.name == "png"]
    error = assert_openai_error(
        post(client, case, task="describe"), 422, "task_not_supported", "task"
    )
    assert "'rapidocr' cannot do task 'describe'" in error["message"]
    assert "models that can: deepseek-ocr" in error["message"]

    chat = client.post("/v1/chat/completions", json=chat_body("rapidocr", case, "What is this?"))
    error = assert_openai_error(chat, 422, "task_not_supported", "messages")
    assert "free-form prompt" in error["message"]


def chat_body(model: str, case: Case, text: str) -> dict[str, Any]:
    url = f"data:{case.content_type};base64,{base64.b64encode(case.data).decode()}"
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def test_chat_with_deepseek_ocrs_own_prompt_reads_with_the_cpu_engine(
    client: httpx.Client,
) -> None:
    (case,) = [c for c in cases() if c.name == "png"]
    body = chat_body("rapidocr", case, "<|grounding|>OCR this image.")

    answer = client.post("/v1/chat/completions", json=body).json()

    assert answer["model"] == "rapidocr"
    content = answer["choices"][0]["message"]["content"]
    assert content.splitlines() == [line.text for line in case.pages[0].lines]


def test_annotated_pages_and_the_layout_pdf_work_for_the_cpu_engine(client: httpx.Client) -> None:
    import io
    import zipfile

    import pymupdf

    (case,) = [c for c in cases() if c.name == "pdf_72dpi"]
    r = post(client, case, format="zip")

    assert r.status_code == 200, r.text
    bundle = zipfile.ZipFile(io.BytesIO(r.content))
    assert {"result.md", "result_det.md", "result.json", "layout.pdf",
            "annotated/page_1.jpg", "annotated/page_2.jpg"} <= set(bundle.namelist())  # fmt: skip
    markdown = bundle.read("result.md").decode()
    assert all(line.text in markdown for page in case.pages for line in page.lines)
    with pymupdf.open(stream=bundle.read("layout.pdf"), filetype="pdf") as layout:
        # One page per document page, sized as rendered at the request's 72 dpi.
        assert [(round(p.rect.width), round(p.rect.height)) for p in layout] == [
            (page.width, page.height) for page in case.pages
        ]


def test_locate_finds_the_line_with_the_phrase(client: httpx.Client) -> None:
    (case,) = [c for c in cases() if c.name == "png"]
    r = post(client, case, task="locate", text="twelve")

    (region,) = r.json()["pages"][0]["regions"]
    assert region["label"] == "twelve"
    (line,) = [line for line in case.pages[0].lines if "twelve" in line.text]
    (word,) = [word for word in line.words if word.text == "twelve"]
    assert inside(word.ink, region["boxes"][0])


def test_the_web_page_draws_the_cpu_engines_boxes_over_its_words(
    client: httpx.Client, browser: Any, tmp_path: Path
) -> None:
    (case,) = [c for c in cases() if c.name == "png"]
    (truth,) = case.pages
    upload = tmp_path / case.filename
    upload.write_bytes(case.data)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    console = Console(page)
    page.goto(f"{client.base_url}/ui/")
    page.wait_for_selector("#model option[value='rapidocr']", state="attached")
    assert page.is_hidden("#key-row")  # no keys configured
    page.select_option("#task", "ocr")  # a region per line
    page.set_input_files("#file", str(upload))
    page.click("#send")
    wait_for_status(page, "Done: 1", timeout_s=120)
    image = box_of(page.query_selector(".frame img"))
    scale = image["width"] / truth.width
    drawn = [box_of(rect) for rect in page.query_selector_all("g.region rect")]
    assert len(drawn) == len(truth.lines)
    for word in truth.words:
        x0, y0, x1, y1 = (image["x"] + word.ink[0] * scale, image["y"] + word.ink[1] * scale,
                          image["x"] + word.ink[2] * scale, image["y"] + word.ink[3] * scale)  # fmt: skip
        assert any(box["x"] - 2 <= x0 and box["y"] - 2 <= y0
                   and x1 <= box["x"] + box["width"] + 2 and y1 <= box["y"] + box["height"] + 2
                   for box in drawn), f"{word.text!r} at {word.ink} is outside every box"  # fmt: skip
    assert "Northwind" in page.inner_text(".markdown")
    assert console.errors == []
    context.close()
