"""The ``dsocr`` command against the running app (fake engine): a folder of two PDFs (one read
as a job), two images and a broken file gives the service's answers as files, reports the
broken one and exits 1; a run interrupted with SIGINT mid-job and rerun redoes no finished
document and follows the same job; ``--retry-failed`` sends only the failure again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsocr.state import STATE_FILE, State
from serve_app.config import AppConfig
from serve_app.testing.serve import SERVE_LOGS, start_app, stop_apps
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

pytestmark = pytest.mark.serve

APP = "ocr-client"
DSOCR = str(Path(sys.executable).parent / "dsocr")
PAGES = {"a_small.pdf": 2, "b_photo.png": 1, "c_big.pdf": 8, "d_photo.png": 1}
THRESHOLD = ["--job-threshold", "5"]  # c_big.pdf goes as a job, the rest as streams


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:

    store = tmp_path_factory.mktemp("jobs") / "jobs.db"
    config = AppConfig.model_validate({
        "models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": 0.3}}},
        # One job page at a time: the 8-page job lasts 2.4 s, long enough to interrupt.
        "jobs": {"enabled": True, "store_path": str(store), "poll_interval_s": 0.2,
                 "pages_in_flight": 1},
    })  # fmt: skip
    yield start_app(config, name=APP)
    stop_apps()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    (root / "a_small.pdf").write_bytes(text_pdf(2))
    (root / "scans").mkdir()
    (root / "scans" / "b_photo.png").write_bytes(encode(noise_rgb(320, 240, seed=1)))
    (root / "c_big.pdf").write_bytes(text_pdf(8))
    (root / "scans" / "d_photo.png").write_bytes(encode(noise_rgb(240, 320, seed=2)))
    (root / "e_broken.pdf").write_bytes(b"%PDF-1.7 this is not a PDF")
    return root


def dsocr(server: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "DSOCR_SERVER": server}  # the server from the environment
    return subprocess.Popen([DSOCR, *args], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)  # fmt: skip


def finish(run: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = run.communicate(timeout=180)
    return run.returncode, out, err


def ocr(server: str, *args: str) -> tuple[int, str, str]:
    return finish(dsocr(server, "ocr", *args))


def engine_pages() -> int:
    from ray import serve

    handle = serve.get_deployment_handle("EngineDeployment-deepseek-ocr", app_name=APP)
    return int(handle.counters.remote().result(timeout_s=60)["pages_recognized"])


def posts() -> dict[str, int]:
    """Document submissions the ingress logged: POST /v1/ocr and POST /v1/jobs."""
    text = "".join(log.read_text() for log in SERVE_LOGS.glob(f"replica_{APP}_OCRIngress_*.log"))
    return {route: text.count(f"method=POST route={route} ") for route in ("/v1/ocr", "/v1/jobs")}


def settled_posts() -> dict[str, int]:
    """:func:`posts` once two reads a moment apart agree (log lines land after the answer)."""
    last = posts()
    for _ in range(20):
        time.sleep(0.25)
        now = posts()
        if now == last:
            return now
        last = now
    return last


def state(out: Path) -> dict[str, dict[str, Any]]:
    return {key: asdict(entry) for key, entry in State(out).entries.items()}


def service_answer(server: str, path: Path, content_type: str) -> dict[str, Any]:
    answer = httpx.post(f"{server}/v1/ocr", content=path.read_bytes(), timeout=120,
                        headers={"content-type": content_type})  # fmt: skip
    answer.raise_for_status()
    return dict(answer.json())


def test_a_folder_gives_the_services_answers_as_files_and_the_broken_file_fails_the_run(
    server: str, folder: Path, tmp_path: Path
) -> None:
    code, out, err = ocr(server, str(folder), "-o", str(tmp_path), *THRESHOLD,
                         "--log-format", "json")  # fmt: skip
    assert code == 1, err
    lines = {Path(line["input"]).name: line for line in map(json.loads, out.splitlines())}
    assert {name: (line["status"], line["via"], line["pages"]) for name, line in lines.items()} == {
        "a_small.pdf": ("done", "stream", 2),
        "b_photo.png": ("done", "stream", 1),
        "c_big.pdf": ("done", "job", 8),
        "d_photo.png": ("done", "stream", 1),
        "e_broken.pdf": ("failed", "stream", 0),
    }
    assert lines["e_broken.pdf"]["error"].startswith("400 corrupt_document: the PDF cannot be read")
    assert "4 of 5 documents done (12 pages); 1 failed" in err
    assert "e_broken.pdf" in err.split("failed", 1)[1]  # named again in the summary

    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file() and p.name != STATE_FILE)  # fmt: skip
    assert written == ["a_small.json", "a_small.md", "c_big.json", "c_big.md",
                       "scans/b_photo.json", "scans/b_photo.md",
                       "scans/d_photo.json", "scans/d_photo.md"]  # fmt: skip
    for stem, source, kind in [("a_small", "a_small.pdf", "application/pdf"),
                               ("c_big", "c_big.pdf", "application/pdf"),
                               ("scans/b_photo", "scans/b_photo.png", "image/png")]:  # fmt: skip
        expected = service_answer(server, folder / source, kind)
        saved = json.loads((tmp_path / f"{stem}.json").read_text())
        assert (tmp_path / f"{stem}.md").read_text() == expected["markdown"]
        assert [p["page"] for p in saved["pages"]] == [p["page"] for p in expected["pages"]]
        assert [p["raw_text"] for p in saved["pages"]] == [p["raw_text"] for p in expected["pages"]]
        assert [p["regions"] for p in saved["pages"]] == [p["regions"] for p in expected["pages"]]
    recorded = state(tmp_path)
    assert {key: entry["status"] for key, entry in recorded.items()} == {
        "a_small.pdf": "done", "scans/b_photo.png": "done", "c_big.pdf": "done",
        "scans/d_photo.png": "done", "e_broken.pdf": "failed"}  # fmt: skip
    assert recorded["c_big.pdf"]["job_id"] and recorded["c_big.pdf"]["pages_done"] == 8


def test_an_interrupted_run_resumes_its_job_and_redoes_nothing_and_retries_only_failures(
    server: str, folder: Path, tmp_path: Path
) -> None:
    before_jobs = httpx.get(f"{server}/v1/jobs", params={"limit": 100}).json()["data"]
    run = dsocr(server, "ocr", str(folder), "-o", str(tmp_path), *THRESHOLD,
                "--concurrency", "1", "--log-format", "plain")  # fmt: skip
    job = wait_for_new_job(server, {j["id"] for j in before_jobs}, pages_done=2)
    run.send_signal(signal.SIGINT)
    code, out, err = finish(run)
    assert code == 130 and "run the same command again" in err, (out, err)
    recorded = state(tmp_path)  # inputs go in sorted order: a_small.pdf, c_big.pdf, ...
    assert recorded["a_small.pdf"]["status"] == "done"
    assert recorded["c_big.pdf"]["status"] == "running"
    assert recorded["c_big.pdf"]["job_id"] == job["id"]
    assert set(recorded) == {"a_small.pdf", "c_big.pdf"}  # the rest not reached
    # The job runs on at the server without its client.
    ended = httpx.get(f"{server}/v1/jobs/{job['id']}", params={"wait": 60}, timeout=90).json()
    while ended["status"] == "running":
        ended = httpx.get(f"{server}/v1/jobs/{job['id']}", params={"wait": 60}, timeout=90).json()
    assert ended["status"] == "succeeded"

    pages, sent = engine_pages(), settled_posts()
    code, out, err = ocr(server, str(folder), "-o", str(tmp_path), *THRESHOLD)
    assert code == 1, err
    # Only the two images reached the engine; the job was followed, not submitted again.
    assert engine_pages() - pages == PAGES["b_photo.png"] + PAGES["d_photo.png"]
    now = settled_posts()
    assert now["/v1/jobs"] == sent["/v1/jobs"]
    assert now["/v1/ocr"] == sent["/v1/ocr"] + 3  # the two images and the broken file
    assert f"done before   {folder / 'a_small.pdf'}: 2 pages" in out
    assert f"done          {folder / 'c_big.pdf'}: 8 pages via job" in out
    assert (tmp_path / "c_big.md").read_text().count("<--- Page Split --->") == 7
    assert all(entry["status"] == "done" for key, entry in state(tmp_path).items()
               if key != "e_broken.pdf")  # fmt: skip
    # The job as `dsocr jobs` shows it.
    code, out, _ = finish(dsocr(server, "jobs", "status", job["id"]))
    shown = json.loads(out)
    assert code == 0 and (shown["status"], shown["pages"]["done"]) == ("succeeded", 8)
    code, out, _ = finish(dsocr(server, "jobs", "result", job["id"], "--markdown"))
    assert code == 0 and out == (tmp_path / "c_big.md").read_text()
    code, out, _ = finish(dsocr(server, "jobs", "list", "--status", "succeeded"))
    assert code == 0 and f"{job['id']}  succeeded  8/8 pages" in out

    # Again: nothing is sent; the failure is kept. With --retry-failed, only it is sent.
    code, out, err = ocr(server, str(folder), "-o", str(tmp_path), *THRESHOLD)
    assert code == 1 and f"FAILED before {folder / 'e_broken.pdf'}" in out
    assert settled_posts() == now
    code, out, err = ocr(server, str(folder), "-o", str(tmp_path), *THRESHOLD, "--retry-failed")
    assert code == 1 and f"FAILED        {folder / 'e_broken.pdf'}" in out
    assert settled_posts() == {**now, "/v1/ocr": now["/v1/ocr"] + 1}


def wait_for_new_job(server: str, known: set[str], pages_done: int) -> dict[str, Any]:
    """The job a run submitted, once it has ``pages_done`` pages stored."""
    end = time.monotonic() + 120
    while time.monotonic() < end:
        for job in httpx.get(f"{server}/v1/jobs", params={"limit": 100}).json()["data"]:
            if job["id"] not in known and job["pages"]["done"] >= pages_done:
                return dict(job)
        time.sleep(0.1)
    raise AssertionError("the run submitted no job")
