"""The official openai package as a plain client of /v1/chat/completions."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from serve_app.core.markdown import PAGE_SPLIT
from serve_app.testing.synthetic import text_pdf
from tests.serve.openai_helpers import client, image_message

pytestmark = pytest.mark.serve


def test_chat_completion_with_an_image(fake_app: httpx.Client) -> None:
    result = client(fake_app).chat.completions.create(
        model="deepseek-ocr",
        messages=image_message(),
        max_tokens=500,  # type: ignore[arg-type]
    )
    content = result.choices[0].message.content or ""
    assert content.startswith("Page 640x480")  # "Free OCR." has no grounding: plain text
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage is not None and result.usage.completion_tokens > 0


def test_chat_completion_streaming(fake_app: httpx.Client) -> None:
    stream = client(fake_app).chat.completions.create(
        model="deepseek-ocr",
        messages=image_message("<|grounding|>Convert the document to markdown."),  # type: ignore[arg-type]
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("# Page 640x480")
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_with_a_pdf_file_part_and_task(fake_app: httpx.Client) -> None:
    pdf = base64.b64encode(text_pdf(2)).decode()
    result = client(fake_app).chat.completions.create(
        model="deepseek-ocr",
        messages=[
            {
                "role": "user",
                "content": [  # type: ignore[list-item]
                    {
                        "type": "file",
                        "file": {
                            "file_data": f"data:application/pdf;base64,{pdf}",
                            "filename": "a.pdf",
                        },
                    },
                ],
            }
        ],
        extra_body={"task": "document", "mode": "tiny"},
    )
    content = result.choices[0].message.content or ""
    assert PAGE_SPLIT in content or "failed" in content


def test_chat_without_an_image_is_a_400(fake_app: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(fake_app).chat.completions.create(
            model="deepseek-ocr", messages=[{"role": "user", "content": "hello"}]
        )
    assert info.value.status_code == 400
