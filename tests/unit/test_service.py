"""The HTTP API without Ray: the service over in-process stages, through httpx.ASGITransport."""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from collections.abc import Iterator

import httpx
import pymupdf
import pytest
from PIL import Image

from serve_app.config import AppConfig
from serve_app.errors import NotReadyError
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf
from tests.support import LoopThread, LoopTransport, local_api

LETTER_LANDSCAPE = (792.0, 612.0)  # points: a non-square page, wider than tall


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """A sync client over the ASGI app, whose coroutines run on one background loop."""
    runner = LoopThread()
    config = AppConfig.model_validate({"models": {"deepseek-ocr": {"kind": "fake"}}})
    ready = {"engines": True}

    async def check_ready() -> None:
        if not ready["engines"]:
            raise NotReadyError("the engine is still loading")

    app = local_api(runner, config, ready=check_ready)
    transport = LoopTransport(app, runner)
    with httpx.Client(transport=transport, base_url="http://test") as http:
        http.ready = ready  # type: ignore[attr-defined]
        yield http
    runner.close()


def test_ready_follows_the_engines(client: httpx.Client) -> None:
    assert client.get("/ready").json() == {"ready": True}
    client.ready["engines"] = False  # type: ignore[attr-defined]
    try:
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    finally:
        client.ready["engines"] = True  # type: ignore[attr-defined]


def test_zip_files_agree_with_the_json(client: httpx.Client) -> None:
    pdf = text_pdf(3, size=LETTER_LANDSCAPE)
    as_json = client.post("/v1/ocr", params={"pages": "1-3", "include_figures": "true"},
                          content=pdf, headers={"content-type": "application/pdf"})  # fmt: skip
    as_zip = client.post("/v1/ocr", params={"pages": "1-3", "format": "zip"}, content=pdf,
                         headers={"content-type": "application/pdf"})  # fmt: skip
    assert as_json.status_code == 200 and as_zip.status_code == 200, as_zip.text
    assert as_zip.headers["content-type"] == "application/zip"
    body = as_json.json()
    bundle = zipfile.ZipFile(io.BytesIO(as_zip.content))
    names = set(bundle.namelist())

    assert bundle.read("result.md").decode() == body["markdown"]
    assert "<|ref|>" in bundle.read("result_det.md").decode()
    result = json.loads(bundle.read("result.json"))
    assert [p["page"] for p in result["pages"]] == [1, 2, 3]
    assert all("image_base64" not in json.dumps(p) for p in result["pages"])
    for page in body["pages"]:
        for figure in page["figures"]:
            assert figure["name"] in names and bundle.read(figure["name"])[:2] == b"\xff\xd8"
        assert f"annotated/page_{page['page']}.jpg" in names

    layout = pymupdf.open(stream=bundle.read("layout.pdf"), filetype="pdf")
    assert layout.page_count == 3
    # Rendered at 144 dpi, laid out at the same dpi: the page size in points comes back.
    for page in layout:
        assert (round(page.rect.width), round(page.rect.height)) == (792, 612)


def test_pixel_boxes_agree_with_999_boxes_on_a_non_square_page(client: httpx.Client) -> None:
    png = encode(noise_rgb(1500, 600, seed=5))
    r = client.post("/v1/ocr", files={"file": ("wide.png", png, "image/png")})
    assert r.status_code == 200, r.text
    (page,) = r.json()["pages"]
    assert (page["width"], page["height"]) == (1500, 600)
    assert page["regions"]
    for region in page["regions"]:
        for pixels, rel in zip(region["boxes"], region["boxes_999"], strict=True):
            expected = [rel[0] / 999 * 1500, rel[1] / 999 * 600,
                        rel[2] / 999 * 1500, rel[3] / 999 * 600]  # fmt: skip
            assert pixels == pytest.approx(expected, abs=1.0)
            assert 0 <= pixels[0] < pixels[2] <= 1500 and 0 <= pixels[1] < pixels[3] <= 600


def test_stream_and_chat_share_totals(client: httpx.Client) -> None:
    pdf = text_pdf(2)
    lines = client.post("/v1/ocr", params={"stream": "true"}, content=pdf,
                        headers={"content-type": "application/pdf"}).text.splitlines()  # fmt: skip
    pages, summary = [json.loads(x) for x in lines[:-1]], json.loads(lines[-1])
    assert [p["page"] for p in pages] == [1, 2] and summary["object"] == "ocr.result"
    assert summary["usage"]["completion_tokens"] == sum(
        p["usage"]["completion_tokens"] for p in pages
    )

    data_url = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    message = {"role": "user", "content": [{"type": "file", "file": {"file_data": data_url}}]}
    chat = client.post("/v1/chat/completions", json={"messages": [message]}).json()
    assert chat["usage"]["completion_tokens"] == summary["usage"]["completion_tokens"]
    events = client.post("/v1/chat/completions", json={"messages": [message], "stream": True})
    data = [e.removeprefix("data: ") for e in events.text.split("\n\n") if e]
    assert data[-1] == "[DONE]"
    last = json.loads(data[-2])
    assert last["usage"] == chat["usage"]
    streamed = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in data[:-1])
    assert streamed == chat["choices"][0]["message"]["content"]


def test_bad_options_never_reach_a_stage(client: httpx.Client) -> None:
    r = client.post("/v1/ocr", params={"task": "locate"}, content=text_pdf(1),
                    headers={"content-type": "application/pdf"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "text"
    assert r.headers["x-request-id"]


def test_the_web_page_is_served_with_its_files_and_a_policy_that_runs_only_its_own_script(
    client: httpx.Client,
) -> None:
    for path in ("/", "/ui"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert '<script src="app.js" defer></script>' in page.text
    # Nothing loaded from elsewhere: every src and href is the page's own file or inline.
    assert re.findall(r'(?:src|href)="([^"]*)"', page.text) == ["data:,", "app.css", "app.js"]
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        own = r.text.replace("http://www.w3.org/2000/svg", "")  # a namespace, not a fetch
        assert "https://" not in own and "http://" not in own
    assert client.get("/ui/settings").json() == {
        "api_keys": False, "url_inputs": False, "jobs": False, "max_upload_bytes": 50 * 2**20}  # fmt: skip
    assert client.get("/ui/../serve_app/config.py").status_code == 404


def test_the_page_image_comes_at_the_size_its_boxes_are_in(client: httpx.Client) -> None:
    png = encode(noise_rgb(900, 500, seed=6))
    r = client.post("/v1/ocr", params={"include_page_image": "true"},
                    files={"file": ("p.png", png, "image/png")})  # fmt: skip
    (page,) = r.json()["pages"]
    image = Image.open(io.BytesIO(base64.b64decode(page["page_image_base64"])))
    assert (
        (image.format, image.size)
        == ("JPEG", (page["width"], page["height"]))
        == ("JPEG", (900, 500))
    )
    plain = client.post("/v1/ocr", files={"file": ("p.png", png, "image/png")}).json()
    assert "page_image_base64" not in plain["pages"][0]
