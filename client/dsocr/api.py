"""The service's HTTP API as async calls: ``/v1/ocr`` streams, jobs and their events.

A 429 or 503 is retried after the server's ``Retry-After`` (at most ``max_waits`` times, each
wait at most a minute); any other error answer raises :class:`ApiError` with the service's
error code and message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

RETRIED = (429, 503)


class ApiError(Exception):
    """An error answer: its status, the service's code (``invalid_input``...) and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    @classmethod
    def of(cls, response: httpx.Response, body: bytes) -> ApiError:
        try:
            error = json.loads(body)["error"]
            return cls(response.status_code, error.get("code") or "error", error["message"])
        except (ValueError, KeyError, TypeError):
            text = body.decode(errors="replace").strip()[:200]
            return cls(response.status_code, "http_error", text or response.reason_phrase)


class Api:
    """One service at ``server``, with an optional API key."""

    def __init__(
        self, server: str, api_key: str | None = None, timeout_s: float = 600, max_waits: int = 8
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=server.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self._max_waits = max_waits
        self.requests = 0  # sent, retries included

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        """Send, waiting out 429/503 as the server asks; raise for other errors."""
        for attempt in range(self._max_waits + 1):
            self.requests += 1
            response = await self._http.send(request, stream=stream)
            if response.status_code < 400:
                return response
            body = await response.aread()
            await response.aclose()
            if response.status_code in RETRIED and attempt < self._max_waits:
                await asyncio.sleep(_retry_after(response, attempt))
                continue
            raise ApiError.of(response, body)
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(self._http.build_request(method, path, **kwargs))
        body: dict[str, Any] = response.json()
        return body

    async def ocr_stream(
        self, data: bytes, content_type: str, params: Mapping[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        """``POST /v1/ocr?stream=true``: one object per finished page, then the summary (or
        an error object, ``{"object": "error", "error": ...}``)."""
        request = self._http.build_request(
            "POST", "/v1/ocr", params={**params, "stream": "true"}, content=data,
            headers={"content-type": content_type},
        )  # fmt: skip
        response = await self._send(request, stream=True)
        try:
            async for line in response.aiter_lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            await response.aclose()

    async def submit(
        self, data: bytes, content_type: str, params: Mapping[str, str], key: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/jobs``; ``key`` makes a repeated submit return the same job."""
        headers = {"content-type": content_type}
        if key:
            headers["Idempotency-Key"] = key
        return await self._json("POST", "/v1/jobs", params=params, content=data, headers=headers)

    async def job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        params = {"wait": str(wait)} if wait else {}
        return await self._json("GET", f"/v1/jobs/{job_id}", params=params)

    async def jobs(self, status: str | None = None, limit: int = 20) -> dict[str, Any]:
        params = {"limit": str(limit), **({"status": status} if status else {})}
        return await self._json("GET", "/v1/jobs", params=params)

    async def events(self, job_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The job's pages after the first ``after``, as they are stored, then the job."""
        request = self._http.build_request(
            "GET", f"/v1/jobs/{job_id}/events", params={"after": str(after)}
        )
        response = await self._send(request, stream=True)
        try:
            async for line in response.aiter_lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            await response.aclose()

    async def result(self, job_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/jobs/{job_id}/result")

    async def result_markdown(self, job_id: str) -> str:
        request = self._http.build_request(
            "GET", f"/v1/jobs/{job_id}/result", params={"format": "markdown"}
        )
        return (await self._send(request)).text

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/v1/jobs/{job_id}/cancel")


def _retry_after(response: httpx.Response, attempt: int) -> float:
    """The server's ``Retry-After`` in seconds (at most a minute), else a growing pause."""
    value = response.headers.get("retry-after", "")
    if value.isdigit():
        return min(float(value), 60.0)
    return min(2.0**attempt, 60.0)
