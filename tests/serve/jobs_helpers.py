"""What the Serve job tests share: submitting a long PDF and following it to its end."""

from __future__ import annotations

import time
from typing import Any

import httpx

from serve_app.testing.synthetic import text_pdf

PAGES = 40


def submit(client: httpx.Client, pages: int = PAGES) -> str:
    answer = client.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(pages),
                         headers={"content-type": "application/pdf"})  # fmt: skip
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def wait_for(client: httpx.Client, job_id: str, done: int) -> dict[str, Any]:
    """The job once ``done`` pages are stored or it ended (long-polling)."""
    end = time.monotonic() + 120
    while time.monotonic() < end:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 2}).json()
        if job["pages"]["done"] >= done or job["status"] not in ("queued", "running"):
            return dict(job)
    raise AssertionError(f"job {job_id}: fewer than {done} pages after 120 s")


def every_page_once(client: httpx.Client, job_id: str, pages: int = PAGES) -> None:
    """The job succeeds with each page stored, fetched and streamed exactly once."""
    job = wait_for(client, job_id, pages + 1)  # i.e. until it ends
    assert job["status"] == "succeeded", job
    assert job["pages"] == {"total": pages, "done": pages, "failed": 0}
    result = client.get(f"/v1/jobs/{job_id}/result").json()["pages"]
    assert [page["page"] for page in result] == list(range(1, pages + 1))
    events = [line for line in client.get(f"/v1/jobs/{job_id}/events").text.splitlines() if line]
    assert len(events) == pages + 1  # each page once, then the job
