"""The web page at /ui/ in headless Chromium against the running app (fake engine, API keys
on, jobs on): pages arrive in order with their boxes where their coordinates say, model
output cannot run a script, downloads work, the service's errors are shown, cancel stops the
stream and a job, and it works by keyboard and on a narrow screen without console errors."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pymupdf
import pytest

from serve_app.api.auth import hash_key
from serve_app.config import AppConfig
from serve_app.testing.serve import start_app, stop_apps, with_env
from serve_app.testing.synthetic import text_pdf
from tests.browsers import SCREENSHOTS, Console, box_of, wait_for_status

pytestmark = pytest.mark.serve

APP = "ocr-ui"
KEY = "ocr-browser-test-key"
INJECTED = ('<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
            "Plain words and **bold words**")  # fmt: skip
WIDE = {"width": 1400, "height": 1000}
NARROW = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:

    store = tmp_path_factory.mktemp("jobs") / "jobs.db"
    config = AppConfig.model_validate({
        "models": {"deepseek-ocr": {"kind": "fake", "fake": {
            "first_token_latency_s": 0.4, "extra_text": INJECTED}}},
        "ingress": {"api_keys_required": True, "pages_in_flight": 4},
        "jobs": {"enabled": True, "store_path": str(store), "poll_interval_s": 0.2,
                 "pages_in_flight": 4},
    })  # fmt: skip
    yield start_app(config, name=APP, options=with_env({"OCR_API_KEY_HASHES": hash_key(KEY)},
                                                        config))  # fmt: skip
    stop_apps()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    out = {"three": root / "three.pdf", "sixteen": root / "sixteen.pdf",
           "long": root / "long.pdf", "broken": root / "broken.pdf"}  # fmt: skip
    out["three"].write_bytes(text_pdf(3))
    out["sixteen"].write_bytes(text_pdf(16))
    with pymupdf.open(stream=text_pdf(24), filetype="pdf") as doc:  # a job: 20 pages or more
        # Its page objects packed in object streams, as PDF 1.5 writers do.
        out["long"].write_bytes(doc.tobytes(garbage=3, deflate=True, use_objstms=1))
    out["broken"].write_bytes(b"%PDF-1.7 not really")
    return out


def open_ui(browser: Any, server: str, viewport: dict[str, int] = WIDE) -> tuple[Any, Console]:
    """A fresh page at /, signed in with the key, once the models are listed."""
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    page = context.new_page()
    console = Console(page)
    page.goto(server + "/")
    assert page.url == server + "/ui/"
    page.wait_for_selector("#key-row:not([hidden])")
    assert page.inner_text("#key-hint") == "This service needs an API key."
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")  # the key is taken when the field is left
    page.wait_for_selector("#model option[value='deepseek-ocr']", state="attached")
    assert page.is_hidden("#error")
    return page, console


def read(page: Any, path: Path, pages: int) -> None:
    page.set_input_files("#file", str(path))
    page.click("#send")
    wait_for_status(page, f"Done: {pages}")


def service_answer(server: str, path: Path) -> dict[str, Any]:
    answer = httpx.post(f"{server}/v1/ocr", content=path.read_bytes(), timeout=60,
                        params={"include_regions": "true", "mode": "gundam"},
                        headers={"content-type": "application/pdf",
                                 "authorization": f"Bearer {KEY}"})  # fmt: skip
    answer.raise_for_status()
    return dict(answer.json())


def test_pages_arrive_in_order_with_each_box_where_its_coordinates_say(
    browser: Any, server: str, files: dict[str, Path]
) -> None:
    page, console = open_ui(browser, server)
    read(page, files["three"], 3)
    cards = page.query_selector_all("article.page")
    assert [card.get_attribute("data-page") for card in cards] == ["1", "2", "3"]
    assert page.inner_text("#progress-text") == "Done: 3 pages."
    expected = service_answer(server, files["three"])["pages"]
    for card, truth in zip(cards, expected, strict=True):
        boxes = [box for region in truth["regions"] for box in region["boxes"]]
        drawn = card.query_selector_all("g.region rect")
        assert len(drawn) == len(boxes) > 0
        image = box_of(card.query_selector(".frame img"))
        scale_x, scale_y = image["width"] / truth["width"], image["height"] / truth["height"]
        for rect, (x0, y0, x1, y1) in zip(drawn, boxes, strict=True):
            shown = box_of(rect)
            assert shown["x"] == pytest.approx(image["x"] + x0 * scale_x, abs=1.5)
            assert shown["y"] == pytest.approx(image["y"] + y0 * scale_y, abs=1.5)
            assert shown["width"] == pytest.approx((x1 - x0) * scale_x, abs=1.5)
            assert shown["height"] == pytest.approx((y1 - y0) * scale_y, abs=1.5)
        # The image is the page the model saw, at the size the boxes are in.
        natural = card.eval_on_selector(".frame img", "i => [i.naturalWidth, i.naturalHeight]")
        assert natural == [truth["width"], truth["height"]]
        assert card.query_selector(".markdown table td") is not None  # the model's table
        assert card.query_selector_all(".figures img")  # the figure crop
    assert console.errors == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "ui-wide.png"), full_page=True)
    page.context.close()


def test_model_output_is_shown_as_text_and_never_run(
    browser: Any, server: str, files: dict[str, Path]
) -> None:
    page, console = open_ui(browser, server)
    read(page, files["three"], 3)
    assert page.evaluate("window.__pwned") is None
    markdown = page.query_selector("article.page .markdown")
    assert markdown.query_selector_all("script, img[src='x'], [onerror]") == []
    assert "Plain words and bold words" in markdown.inner_text()
    assert markdown.query_selector("strong").inner_text() == "bold words"
    page.click("article.page details.raw summary")
    assert "<script>window.__pwned = 1</script>" in page.inner_text("article.page details.raw pre")
    time.sleep(0.5)  # an image's onerror would fire by now
    assert page.evaluate("window.__pwned") is None
    assert console.errors == []
    page.context.close()


def test_downloads_give_the_services_answer(
    browser: Any, server: str, files: dict[str, Path], tmp_path: Path
) -> None:
    page, console = open_ui(browser, server)
    read(page, files["three"], 3)
    expected = service_answer(server, files["three"])
    with page.expect_download() as download:
        page.click("#get-markdown")
    assert Path(download.value.path()).read_text() == expected["markdown"]
    with page.expect_download() as download:
        page.click("#get-json")
    saved = json.loads(Path(download.value.path()).read_text())
    assert [p["raw_text"] for p in saved["pages"]] == [p["raw_text"] for p in expected["pages"]]
    assert all("page_image_base64" not in p for p in saved["pages"])
    with page.expect_download(timeout=60_000) as download:
        page.click("#get-zip")
    assert download.value.suggested_filename == "three.zip"
    with zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())) as bundle:
        names = bundle.namelist()
        assert "result.json" in names
        assert json.loads(bundle.read("result.json"))["pages_processed"] == 3
    assert console.errors == []
    page.context.close()


def test_an_invalid_file_shows_the_services_error(
    browser: Any, server: str, files: dict[str, Path]
) -> None:
    page, console = open_ui(browser, server)
    page.set_input_files("#file", str(files["broken"]))
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("the PDF cannot be read")
    assert "(corrupt_document)" in page.inner_text("#error")
    assert page.query_selector_all("article.page") == []
    assert page.is_enabled("#send") and not page.is_enabled("#cancel")
    # The browser logs the 400 answer itself; nothing else may be logged.
    assert [e for e in console.errors if "status of 400" not in e] == []
    page.context.close()


def engine(method: str) -> int:
    """An engine replica's answer, asked from a thread of its own: Playwright's sync API keeps
    an event loop on this one, where Serve's handles refuse to block."""
    from ray import serve

    def ask() -> int:
        handle = serve.get_deployment_handle("EngineDeployment-deepseek-ocr", app_name=APP)
        answer = getattr(handle, method).remote().result(timeout_s=60)
        return int(answer["pages_recognized"] if method == "counters" else answer)

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(ask).result()


def engine_pages() -> int:
    return engine("counters")


def engine_in_flight() -> int:
    return engine("num_unfinished")


def settled(read_value: Any, seconds: float = 10) -> Any:
    """``read_value()`` once it reads the same twice a second apart."""
    last, end = read_value(), time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(1)
        now = read_value()
        if now == last:
            return now
        last = now
    return last


def test_cancel_stops_the_stream_and_its_engine_work(
    browser: Any, server: str, files: dict[str, Path]
) -> None:
    page, console = open_ui(browser, server)
    before = engine_pages()
    page.set_input_files("#file", str(files["sixteen"]))
    page.click("#send")
    page.wait_for_selector("article.page", timeout=60_000)
    page.click("#cancel")
    wait_for_status(page, "Cancelled")
    shown = len(page.query_selector_all("article.page"))
    assert 1 <= shown < 16
    assert settled(engine_in_flight) == 0
    assert settled(engine_pages) - before < 16  # the rest never reached the engine
    assert len(page.query_selector_all("article.page")) == shown
    assert page.is_enabled("#send") and page.is_visible("#downloads")
    assert console.errors == []
    page.context.close()


def test_a_long_pdf_runs_as_a_job_and_cancel_cancels_it(
    browser: Any, server: str, files: dict[str, Path]
) -> None:
    page, console = open_ui(browser, server)
    page.set_input_files("#file", str(files["long"]))
    page.click("#send")
    page.wait_for_selector("article.page", timeout=60_000)
    assert page.inner_text("#progress-text").endswith("of 24 pages")
    page.click("#cancel")
    wait_for_status(page, "Cancelled")
    jobs = httpx.get(f"{server}/v1/jobs", headers={"authorization": f"Bearer {KEY}"}).json()
    (job,) = [j for j in jobs["data"] if j["pages"]["total"] == 24]
    ended = settled(lambda: httpx.get(f"{server}/v1/jobs/{job['id']}",
                                      headers={"authorization": f"Bearer {KEY}"}).json()["status"])  # fmt: skip
    assert ended == "cancelled"
    assert console.errors == []
    page.context.close()


def test_it_works_by_keyboard_alone_and_on_a_narrow_screen(
    browser: Any, server: str, files: dict[str, Path]
) -> None:
    page, console = open_ui(browser, server, NARROW)
    page.set_input_files("#file", str(files["three"]))
    page.focus("#pages")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"
    page.keyboard.press("Enter")
    wait_for_status(page, "Done: 3")
    page.focus("#get-zip")
    page.keyboard.press("Tab")  # into the first page's boxes
    focused = page.evaluate("document.activeElement.getAttribute('class')")
    assert focused.startswith("region")
    caption = page.inner_text("article.page .region-text")
    assert caption.startswith("title: ")  # the focused box's text, shown
    # One column: the markdown under the page image, nothing wider than the screen.
    card = page.query_selector("article.page")
    image = box_of(card.query_selector(".frame"))
    markdown = box_of(card.query_selector(".markdown"))
    assert markdown["y"] >= image["y"] + image["height"]
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    assert console.errors == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "ui-narrow.png"), full_page=True)
    page.context.close()
