"""The batch's output folder: the latest row of a page wins across runs, by the order the
runs wrote their parts, whatever the files' times say."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from batch.output import Output, failures


def row(page: int, status: str) -> dict[str, Any]:
    error = (
        {"error": {"code": "generation_failed", "message": "boom"}} if status == "failed" else {}
    )
    return {"uri": "file:///a.pdf", "name": "a", "doc_hash": "h", "kind": "pdf", "page_count": 2,
            "page": page, "pages_selected": 2, "status": status,
            "page_json": json.dumps({"page": page, **error})}  # fmt: skip


def test_a_later_runs_row_wins_even_when_its_part_looks_older(tmp_path: Path) -> None:
    first = Output(tmp_path)
    first.write([row(1, "ok"), row(2, "failed")])
    first.write([])  # nothing to write: no part
    (before,) = (tmp_path / "pages").iterdir()
    retry = Output(tmp_path)
    retry.write([row(2, "ok")])
    (after,) = set((tmp_path / "pages").iterdir()) - {before}
    os.utime(after, ns=(0, 0))  # copied or synced: the retry's part now looks oldest

    again = Output(tmp_path)

    assert [(r["page"], r["status"]) for r in again.rows()] == [(1, "ok"), (2, "failed"), (2, "ok")]
    assert again.done(retry_failed=True) == {("a", "h", 1), ("a", "h", 2)}
    assert failures(again.rows()) == []


def test_a_failed_page_is_skipped_unless_failures_are_retried(tmp_path: Path) -> None:
    Output(tmp_path).write([row(1, "ok"), row(2, "failed")])
    (tmp_path / "pages" / "part-000009-000001-0.parquet.tmp").write_bytes(b"torn")

    output = Output(tmp_path)

    assert output.done(retry_failed=False) == {("a", "h", 1), ("a", "h", 2)}
    assert output.done(retry_failed=True) == {("a", "h", 1)}
    assert failures(output.rows()) == [("a", 2, "generation_failed: boom")]
