"""The offline batch path (``python -m batch``) on Ray Data with the fake engine:
every page once, the same page objects as the service's document run, failures recorded and
retried alone, resumable after a kill. Each run joins the module's Ray cluster and starts its
actors (20-30 s on two cores): a test makes the most of its runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from serve_app.testing.docset import text_page_png
from serve_app.testing.synthetic import text_pdf
from tests.batch.helpers import batch, fake_config, page_rows, service_pages, without_timings

PDF_PAGES = {"reports/a.pdf": 3, "reports/b.pdf": 2, "c.pdf": 4}
IMAGES = [f"scans/page_{n}.png" for n in range(5)]
TOTAL = sum(PDF_PAGES.values()) + len(IMAGES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name, pages in PDF_PAGES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text_pdf(pages))
    for n, name in enumerate(IMAGES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text_page_png([f"Scanned page {n}"]).data)
    return root


def test_every_page_once_as_the_service_answers_it_failures_recorded_and_retried_alone(
    corpus: Path, tmp_path: Path, ray_address: str
) -> None:
    docs = tmp_path / "in"
    subprocess.run(["cp", "-r", f"{corpus}/.", str(docs)], check=True)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 not really")
    (docs / "copy.pdf").write_bytes((docs / "c.pdf").read_bytes())  # the same bytes, twice
    config = fake_config(tmp_path / "failing", fail_every=5)  # every 5th engine request
    out = tmp_path / "out"
    args = (docs, "-o", out, "--config", config, "--mode", "tiny")
    pages_of = {**PDF_PAGES, "copy.pdf": PDF_PAGES["c.pdf"], **dict.fromkeys(IMAGES, 1)}
    total = sum(pages_of.values()) + 1  # and the broken file's row

    first = batch(*args, address=ray_address)

    assert first.returncode == 1, first.stdout
    failed_pages = sum(pages_of.values()) // 5
    assert f"{total} pages run now ({failed_pages + 1} failed)" in first.stdout
    rows = page_rows(out)
    keys = [(row["name"], row["page"]) for row in rows]
    assert len(keys) == len(set(keys)) == total  # every page once
    failed = {(row["name"], row["page"]): json.loads(row["page_json"])["error"]["code"]
              for row in rows if row["status"] == "failed"}  # fmt: skip
    assert failed.pop(("broken", 0)) == "corrupt_document"
    assert len(failed) == failed_pages and set(failed.values()) == {"generation_failed"}
    assert "FAILED broken, the document: corrupt_document" in first.stdout
    assert "rerun with --retry-failed" in first.stdout
    stems = {name.rsplit(".", 1)[0] for name in pages_of}
    written = {str(path.relative_to(out / "docs").with_suffix(""))
               for path in (out / "docs").rglob("*.json")}  # fmt: skip
    assert written == stems  # a failed page answers with its error in place, as /v1/ocr does
    for name, page in failed:
        answer = json.loads((out / "docs" / f"{name}.json").read_text())
        assert answer["pages"][page - 1]["error"]["code"] == "generation_failed"
        assert answer["pages_failed"] >= 1

    again = batch(*args, "--retry-failed", address=ray_address)

    assert again.returncode == 1, again.stdout  # the broken file fails again
    assert f"{len(failed) + 1} pages run now (1 failed)" in again.stdout
    latest = {(row["name"], row["page"]): row["status"] for row in page_rows(out)}
    assert len(latest) == total and latest.pop(("broken", 0)) == "failed"
    assert set(latest.values()) == {"ok"}
    service = fake_config(tmp_path / "service")
    expected = asyncio.run(
        service_pages(service, [(docs / name).read_bytes() for name in pages_of])
    )
    for (name, pages), pages_expected in zip(pages_of.items(), expected, strict=True):
        stem = name.rsplit(".", 1)[0]
        answer = json.loads((out / "docs" / f"{stem}.json").read_text())
        assert [without_timings(page) for page in answer["pages"]] == pages_expected
        assert answer["pages_processed"] == pages
        assert (out / "docs" / f"{stem}.md").read_text() == answer["markdown"]
    assert not (out / "docs" / "broken.json").exists()


def test_a_run_killed_halfway_reruns_only_the_missing_pages(
    corpus: Path, tmp_path: Path, ray_address: str
) -> None:
    config = fake_config(tmp_path, first_token_latency_s=0.5)
    out = tmp_path / "out"
    args = (corpus, "-o", out, "--config", config, "--mode", "tiny", "--flush-every", "2",
            "--engine-batch", "2")  # fmt: skip
    first = batch(*args, address=ray_address, wait=False)
    deadline = time.monotonic() + 240
    while len(page_rows(out)) < 4 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {(row["name"], row["page"]) for row in page_rows(out)}
    assert 4 <= len(before) < TOTAL, "the kill came too late to test a rerun"

    rerun = batch(*args, address=ray_address)

    assert rerun.returncode == 0, rerun.stdout
    assert f"{TOTAL - len(before)} pages run now (0 failed)" in rerun.stdout
    assert f"{len(before)} skipped as done before" in rerun.stdout
    keys = [(row["name"], row["page"]) for row in page_rows(out)]
    assert len(keys) == len(set(keys)) == TOTAL  # nothing written twice
    assert f"{len(PDF_PAGES) + len(IMAGES)} documents written" in rerun.stdout
