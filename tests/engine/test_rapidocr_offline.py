"""The CPU OCR engine needs no network: its models come from inside the rapidocr wheel."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, NoReturn

import numpy as np
import pytest

from serve_app.config import RapidOCRConfig
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import PageImage
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.rapid import RapidOCREngine
from serve_app.engine.recognize import generate_once
from serve_app.testing.docset import render, text_page


def test_it_starts_and_reads_with_the_network_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        attempts.append(args)
        raise OSError("network access in a test of the offline engine")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)

    async def start_and_read() -> str:
        engine = RapidOCREngine(RapidOCRConfig())
        await engine.start()
        ((image, _),) = render([text_page(["Offline reading works"])])
        page = PageImage(np.asarray(image))
        request = GenerateRequest("offline", build_prompt(Task.FREE), page, task=Task.FREE)
        return (await generate_once(engine, request)).text

    assert asyncio.run(start_and_read()) == "Offline reading works\n"
    assert attempts == []
