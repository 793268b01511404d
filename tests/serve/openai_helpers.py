"""The official openai package pointed at a Serve app under test."""

from __future__ import annotations

import base64

import httpx
import openai

from serve_app.testing.synthetic import encode, noise_rgb

IMAGE_URL = (
    "data:image/png;base64," + base64.b64encode(encode(noise_rgb(640, 480, seed=4))).decode()
)


def client(app: httpx.Client) -> openai.OpenAI:
    """An OpenAI client for the app ``app`` talks to (``<base_url>/v1``), without retries."""
    return openai.OpenAI(
        base_url=f"{str(app.base_url).rstrip('/')}/v1", api_key="unused", max_retries=0
    )


def image_message(text: str = "Free OCR.", image_url: str = IMAGE_URL) -> list[dict[str, object]]:
    """One user turn: an ``image_url`` part (a data URL) and a text part."""
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "text", "text": text},
    ]}]  # fmt: skip
