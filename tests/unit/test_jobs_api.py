"""``/v1/jobs`` without Ray: the API and a job loop over in-process stages (fake engine) and
the embedded store, through httpx: submit, follow, fetch, resume a stream, cancel, expire,
and one key never seeing another's jobs."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.api.admission import Admission
from serve_app.api.app import create_api
from serve_app.api.auth import ApiKeys, hash_key
from serve_app.api.jobs import JobsService
from serve_app.api.service import OCRService
from serve_app.config import AppConfig
from serve_app.documents.door import Door
from serve_app.documents.run import DocumentRunner
from serve_app.documents.stages import LocalStages
from serve_app.jobs.runner import JobLoop, JobRunner
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.testing.synthetic import text_pdf
from tests.support import LoopThread, LoopTransport, always_ready

KEY_A, KEY_B = "ocr-key-a", "ocr-key-b"
PDF = {"content-type": "application/pdf"}


class Service:
    """The API, its store and a running job loop; clients per key."""

    def __init__(self, tmp: Path) -> None:
        self.loop = LoopThread()
        self.config = AppConfig.model_validate(
            {
                "models": {
                    "deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": 0.05}}
                },
                "jobs": {"store_path": str(tmp / "jobs.db"), "pages_in_flight": 2},
            }
        )
        self.stages = self.loop.run(LocalStages.started(self.config))
        self.documents = documents = DocumentRunner.from_config(self.config.ingress, self.stages)
        self.store = SqliteJobStore(self.config.jobs.store_path)
        runner = JobRunner(self.store, documents, Door(self.config), "runner-1", lease_s=3.0,
                           check_s=0.1)  # fmt: skip
        self.jobs = JobLoop(runner, jobs_at_once=2, poll_s=0.2, result_ttl_s=3600)
        self.task = self.loop.run(self._start())
        service = OCRService(self.config, documents)
        self.keys = keys = ApiKeys((hash_key(KEY_A), hash_key(KEY_B)))
        self.app = create_api(service, Admission(4, 4), always_ready, keys,
                              JobsService(self.config, self.store, wake=self.jobs.wake))  # fmt: skip

    async def _start(self) -> Any:
        import asyncio

        return asyncio.get_running_loop().create_task(self.jobs.run())

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            transport=LoopTransport(self.app, self.loop),
            base_url="http://test",
            headers={"Authorization": f"Bearer {key}"},
        )

    @property
    def unfinished(self) -> int:
        return int(self.stages._rec["deepseek-ocr"].engine.num_unfinished())

    def close(self) -> None:
        self.loop.run(self.jobs.stop(self.task))
        self.loop.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = Service(tmp_path_factory.mktemp("jobs"))
    yield running
    running.close()


@pytest.fixture
def a(service: Service) -> Iterator[httpx.Client]:
    with service.client(KEY_A) as client:
        yield client


def finished(client: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The job once it ended, long-polling."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        body = client.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
        if body["status"] not in ("queued", "running"):
            return body
    raise AssertionError(f"job {job_id} did not finish")


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def sse(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for block in response.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


def test_a_job_runs_to_the_same_result_as_v1_ocr(a: httpx.Client) -> None:
    pdf = text_pdf(6)
    submitted = a.post("/v1/jobs", params={"mode": "tiny", "metadata": '{"batch": "7"}'},
                       content=pdf, headers=PDF)  # fmt: skip
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["object"] == "job" and job["status"] in ("queued", "running")
    assert submitted.headers["location"] == job["urls"]["self"] == f"/v1/jobs/{job['id']}"
    assert job["metadata"] == {"batch": "7"} and job["model"] == "deepseek-ocr"

    done = finished(a, job["id"])
    assert done["status"] == "succeeded", done
    assert done["pages"] == {"total": 6, "done": 6, "failed": 0}
    assert done["kind"] == "pdf" and done["page_count"] == 6
    assert done["estimated_seconds_left"] == 0.0 and done["finished_at"] >= done["started_at"]

    direct = a.post("/v1/ocr", params={"mode": "tiny"}, content=pdf, headers=PDF).json()
    result = a.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["status"] == "succeeded" and result["pages_processed"] == 6
    assert result["markdown"] == direct["markdown"]
    assert result["usage"] == direct["usage"]

    def same(page: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in page.items() if k != "timings"}

    assert [same(p) for p in result["pages"]] == [same(p) for p in direct["pages"]]
    markdown = a.get(f"/v1/jobs/{job['id']}/result", params={"format": "markdown"})
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text == direct["markdown"]
    bundle = zipfile.ZipFile(io.BytesIO(a.get(f"/v1/jobs/{job['id']}/result?format=zip").content))
    assert bundle.read("result.md").decode() == direct["markdown"]
    assert [p["page"] for p in json.loads(bundle.read("result.json"))["pages"]] == list(range(1, 7))

    assert same(a.get(f"/v1/jobs/{job['id']}/pages/3").json()) == same(direct["pages"][2])
    missing = a.get(f"/v1/jobs/{job['id']}/pages/9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "page_not_found"


def test_a_repeated_submit_with_an_idempotency_key_returns_the_same_job(a: httpx.Client) -> None:
    pdf, key = text_pdf(1), {"Idempotency-Key": "order-42", **PDF}
    first = a.post("/v1/jobs", params={"mode": "tiny"}, content=pdf, headers=key)
    again = a.post("/v1/jobs", params={"mode": "tiny"}, content=pdf, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    for params, body in (({"mode": "small"}, pdf), ({"mode": "tiny"}, text_pdf(2))):
        other = a.post("/v1/jobs", params=params, content=body, headers=key)
        assert other.status_code == 422, other.text
        error = other.json()["error"]
        assert error["code"] == "idempotency_key_reused" and first.json()["id"] in error["message"]


def test_a_key_past_its_queued_jobs_gets_429(service: Service, tmp_path: Path) -> None:
    limited = service.config.jobs.model_copy(update={"max_queued_per_key": 1})
    store = SqliteJobStore(tmp_path / "unclaimed.db")  # no runner: jobs stay queued
    jobs = JobsService(service.config.model_copy(update={"jobs": limited}), store)
    app = create_api(OCRService(service.config, service.documents), Admission(4, 4),
                     always_ready, service.keys, jobs)  # fmt: skip
    with httpx.Client(transport=LoopTransport(app, service.loop), base_url="http://test",
                      headers={"Authorization": f"Bearer {KEY_B}"}) as b:  # fmt: skip
        first = b.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(1), headers=PDF)
        refused = b.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(1), headers=PDF)
        assert first.status_code == 202 and refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_queued_jobs"
        assert refused.headers["retry-after"] == "30"
        assert b.post(f"/v1/jobs/{first.json()['id']}/cancel").status_code == 200
        again = b.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(1), headers=PDF)
        assert again.status_code == 202  # a queued job less: room again


def test_events_resume_after_the_last_event_id_without_a_gap_or_a_repeat(
    a: httpx.Client,
) -> None:
    job = a.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(7), headers=PDF).json()
    finished(a, job["id"])
    url = f"/v1/jobs/{job['id']}/events"

    everything = lines(a.get(url))
    assert [e["object"] for e in everything] == ["ocr.page"] * 7 + ["job"]
    assert sorted(e["page"] for e in everything[:7]) == list(range(1, 8))
    assert everything[-1]["status"] == "succeeded"
    rest = lines(a.get(url, params={"after": 3}))
    assert [e["page"] for e in rest[:-1]] == [e["page"] for e in everything[3:7]]

    head = {"Accept": "text/event-stream"}
    events = sse(a.get(url, headers=head))
    assert [e["id"] for e in events[:7]] == [str(n) for n in range(1, 8)]
    assert events[-1]["event"] == "job" and "id" not in events[-1]
    resumed = sse(a.get(url, headers={**head, "Last-Event-ID": "5"}))
    pages = [e["data"]["page"] for e in events[:5]] + [e["data"]["page"] for e in resumed[:-1]]
    assert sorted(pages) == list(range(1, 8))  # the two halves: every page once
    assert [e["id"] for e in resumed[:-1]] == ["6", "7"]


def test_a_key_sees_only_its_own_jobs(service: Service, a: httpx.Client) -> None:
    job = a.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(1), headers=PDF).json()
    with service.client(KEY_B) as b:
        for call in (
            b.get(f"/v1/jobs/{job['id']}"),
            b.get(f"/v1/jobs/{job['id']}/result"),
            b.get(f"/v1/jobs/{job['id']}/events"),
            b.post(f"/v1/jobs/{job['id']}/cancel"),
            b.delete(f"/v1/jobs/{job['id']}"),
        ):
            assert call.status_code == 404 and call.json()["error"]["code"] == "job_not_found"
        assert job["id"] not in [j["id"] for j in b.get("/v1/jobs").json()["data"]]
    listed = a.get("/v1/jobs", params={"limit": 100}).json()
    assert job["id"] in [j["id"] for j in listed["data"]]
    anonymous = httpx.Client(transport=LoopTransport(service.app, service.loop),
                             base_url="http://test")  # fmt: skip
    assert anonymous.get(f"/v1/jobs/{job['id']}").status_code == 401


def test_cancel_stops_the_engine_work_and_keeps_the_pages_done(
    service: Service, a: httpx.Client
) -> None:
    job = a.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(40), headers=PDF).json()
    end = time.monotonic() + 30
    while a.get(f"/v1/jobs/{job['id']}").json()["pages"]["done"] < 2:
        assert time.monotonic() < end
        time.sleep(0.05)
    cancelled = a.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    end = time.monotonic() + 5
    while service.unfinished and time.monotonic() < end:
        time.sleep(0.05)
    assert service.unfinished == 0
    after = a.get(f"/v1/jobs/{job['id']}").json()
    assert after["status"] == "cancelled" and 2 <= after["pages"]["done"] < 40
    kept = a.get(f"/v1/jobs/{job['id']}/result").json()
    assert kept["pages_processed"] == after["pages"]["done"]


def test_an_expired_job_answers_410_and_a_deleted_one_404(
    service: Service, a: httpx.Client
) -> None:
    job = a.post("/v1/jobs", params={"mode": "tiny"}, content=text_pdf(1), headers=PDF).json()
    finished(a, job["id"])
    service.store.expire(older_than_s=-1)  # as if a day had passed
    for path in ("", "/result", "/pages/1"):
        gone = a.get(f"/v1/jobs/{job['id']}{path}")
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "job_expired"
    assert service.store.pages(job["id"]) == []
    assert a.delete(f"/v1/jobs/{job['id']}").json()["deleted"] is True
    assert a.get(f"/v1/jobs/{job['id']}").status_code == 404


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"stream": "true"}, None),
        ({"metadata": "not json"}, None),
        ({"webhook_url": "https://example.com/hook"}, "webhook_url"),
        ({"mode": "enormous"}, "mode"),
        ({"pages": "3-1"}, "pages"),
    ],
)
def test_a_bad_submit_is_a_4xx_before_any_job_exists(
    a: httpx.Client, params: dict[str, str], param: str | None
) -> None:
    before = a.get("/v1/jobs", params={"limit": 100}).json()["data"]
    answer = a.post("/v1/jobs", params=params, content=text_pdf(1), headers=PDF)
    assert 400 <= answer.status_code < 500, answer.text
    if param:
        assert answer.json()["error"]["param"] == param
    assert a.get("/v1/jobs", params={"limit": 100}).json()["data"] == before
