"""One log line per request with its id and outcome, written after the last byte."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.api.access_log import AccessLogMiddleware, access_record, log_unexpected
from serve_app.documents.run import Tally


def make_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(AccessLogMiddleware)

    @app.get("/ok")
    async def ok(request: Request) -> dict[str, str]:
        tally = Tally(pages=2, pages_failed=1, outcome="partial")
        tally.stage_seconds.update({"engine_s": 2.0, "preprocess_s": 0.25})
        access_record(request.scope).run = tally
        return {"ok": "yes"}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            for i in range(3):
                await asyncio.sleep(0.05)
                yield f"{i}\n"

        return StreamingResponse(body())

    @app.get("/boom")
    async def boom(request: Request) -> JSONResponse:
        try:
            raise KeyError("secret-key")
        except KeyError as exc:
            log_unexpected(access_record(request.scope), exc)
        access_record(request.scope).outcome = "internal_error"
        return JSONResponse({"error": {"code": "internal_error"}}, status_code=500)

    return app


def get(path: str, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go())


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("request_id=")]


def test_one_line_with_id_route_status_outcome_and_stage_totals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        r = get("/ok", headers={"x-request-id": "abc-1"})
    assert r.status_code == 200
    (line,) = lines(caplog)
    assert line.startswith(
        "request_id=abc-1 method=GET route=/ok status=200 outcome=partial pages=2 pages_failed=1 "
        "preprocess_s=0.250 engine_s=2.000 seconds="
    )


def test_a_stream_is_logged_after_its_last_byte(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        r = get("/stream")
    assert r.text == "0\n1\n2\n"
    request_id = r.headers["x-request-id"]
    assert len(request_id) == 16  # made here, as none came with the request
    (line,) = lines(caplog)
    assert f"request_id={request_id} " in line and "status=200 outcome=ok" in line
    assert float(line.rsplit("seconds=", 1)[1]) >= 0.15  # three chunks 50 ms apart


def test_a_given_id_is_kept_clean_and_not_returned_twice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        r = get("/ok", headers={"x-request-id": "a b\tc=d"})
    assert "x-request-id" not in r.headers  # the proxy that sent it returns it (Ray Serve does)
    (line,) = lines(caplog)
    assert line.startswith("request_id=abcd method=GET")


def test_an_unexpected_exception_is_logged_with_traceback_and_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        r = get("/boom", headers={"x-request-id": "req-9"})
    assert r.status_code == 500
    (error,) = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert "request req-9 failed unexpectedly: KeyError" in error.getMessage()
    assert error.exc_info is not None and error.exc_info[0] is KeyError
    (line,) = lines(caplog)
    assert "status=500 outcome=internal_error" in line
