"""The Serve graph over real HTTP with the fake engine: formats, streaming, errors."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import httpx
import pytest

from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

pytestmark = pytest.mark.serve

PNG = encode(noise_rgb(900, 700, seed=3))


def encrypted_pdf() -> bytes:
    import pymupdf

    doc = pymupdf.open(stream=text_pdf(1), filetype="pdf")
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="o")


def test_health_ready_models(fake_app: httpx.Client) -> None:
    assert fake_app.get("/health").json() == {"status": "ok"}
    assert fake_app.get("/ready").json() == {"ready": True}
    assert fake_app.get("/v1/models").json()["data"][0]["id"] == "deepseek-ocr"
    assert fake_app.get("/docs").status_code == 200
    spec = fake_app.get("/openapi.json").json()
    body = spec["paths"]["/v1/ocr"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "pages" in body["multipart/form-data"]["schema"]["properties"]


def test_multipart_image(fake_app: httpx.Client) -> None:
    r = fake_app.post("/v1/ocr", files={"file": ("page.png", PNG, "image/png")},
                      data={"include_figures": "true"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    (page,) = body["pages"]
    assert (page["width"], page["height"], page["mode"]) == (900, 700, "gundam")
    assert page["markdown"].startswith("# Page 900x700")
    assert page["regions"][0]["label"] == "title"
    assert page["figures"][0]["name"] == "images/1_1.jpg"
    assert page["finish_reason"] == "stop" and page["usage"]["completion_tokens"] > 0
    assert body["markdown"] == page["markdown"]


def test_json_pdf_pages_in_order(fake_app: httpx.Client) -> None:
    data = base64.b64encode(text_pdf(6)).decode()
    r = fake_app.post("/v1/ocr", json={"file": f"data:application/pdf;base64,{data}",
                                       "pages": "2-6", "task": "document"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["page"] for p in body["pages"]] == [2, 3, 4, 5, 6]
    assert body["page_count"] == 6 and body["pages_processed"] == 5
    failed = [p["page"] for p in body["pages"] if "error" in p]
    assert len(failed) == body["pages_failed"]  # injected faults stay in place as errors


def test_stream_yields_one_line_per_page_then_summary(fake_app: httpx.Client) -> None:
    with fake_app.stream("POST", "/v1/ocr?stream=true&pages=1-3",
                         content=text_pdf(3), headers={"content-type": "application/pdf"}) as r:  # fmt: skip
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [line.get("page") for line in lines[:-1]] == [1, 2, 3]
    assert lines[-1]["object"] == "ocr.result" and lines[-1]["pages_processed"] == 3


def test_zip_bundle(fake_app: httpx.Client) -> None:
    r = fake_app.post("/v1/ocr", params={"format": "zip", "pages": "1-3"}, content=text_pdf(3),
                      headers={"content-type": "application/pdf"})  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    bundle = zipfile.ZipFile(io.BytesIO(r.content))
    names = set(bundle.namelist())
    assert {"result.md", "result_det.md", "result.json", "layout.pdf"} <= names
    pages = json.loads(bundle.read("result.json"))["pages"]
    ok = [p["page"] for p in pages if "error" not in p]
    assert ok  # the fake fails every 5th request; at most one of three pages here
    for n in ok:
        assert {f"images/{n}_1.jpg", f"annotated/page_{n}.jpg"} <= names


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"content": b"not an image", "headers": {"content-type": "image/png"}},
            415,
            "unsupported_media_type",
        ),
        (
            {"content": b"%PDF-1.4 broken", "headers": {"content-type": "application/pdf"}},
            400,
            "corrupt_document",
        ),
        ({"json": {"file": "!!!"}}, 400, "invalid_input"),
        ({"json": {"file": base64.b64encode(PNG).decode(), "mode": "huge"}}, 400, "invalid_input"),
        ({"json": {"file": base64.b64encode(PNG).decode(), "modee": "tiny"}}, 400, "invalid_input"),
        ({"params": {"pages": "9"}, "content": text_pdf(2)}, 400, "invalid_page_range"),
        ({"content": text_pdf(21)}, 413, "too_many_pages"),
        ({"content": encrypted_pdf()}, 422, "encrypted_document"),
        ({"content": b"x" * 5_000_001}, 413, "payload_too_large"),
    ],
)
def test_errors_are_json_with_status(
    fake_app: httpx.Client, kwargs: dict[str, object], status: int, code: str
) -> None:
    r = fake_app.post("/v1/ocr", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
