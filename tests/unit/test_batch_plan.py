"""The batch's plan: a row per selected page not yet done, with the plan's columns even when
every page of a document is done, and one row carrying the error of a document that cannot
be read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from batch.plan import SCHEMA, Planner
from serve_app.config import AppConfig
from serve_app.documents.door import Door, RequestFields
from serve_app.testing.synthetic import text_pdf


def planner(done: set[tuple[str, str, int]], pages: str | None = None) -> Planner:
    config = AppConfig.model_validate({"models": {"fake": {"kind": "fake"}}})
    options = Door(config).resolve(RequestFields(mode="tiny", pages=pages))
    return Planner(config.preprocess, options, max_pages=100, done=done)


def documents(tmp_path: Path, **files: bytes) -> pa.Table:
    for name, data in files.items():
        (tmp_path / f"{name}.pdf").write_bytes(data)
    return pa.Table.from_pylist([{"uri": str(tmp_path / f"{n}.pdf"), "name": n} for n in files])


def test_pages_done_before_are_left_out_and_a_broken_document_is_one_row(tmp_path: Path) -> None:
    table = documents(tmp_path, a=text_pdf(3), broken=b"%PDF-1.7 not really")
    content_hash = planner(set())(table.slice(0, 1))["doc_hash"][0].as_py()
    done = {("a", content_hash, 2)}

    rows = planner(done)(table).to_pylist()

    assert [(r["name"], r["page"], r["index"]) for r in rows] == [
        ("a", 1, 0), ("a", 3, 2), ("broken", 0, -1),
    ]  # fmt: skip
    assert {r["page_count"] for r in rows[:2]} == {3} and rows[0]["kind"] == "pdf"
    assert '"code": "corrupt_document"' in rows[2]["error"] and not rows[0]["error"]


def test_a_document_whose_selected_pages_are_all_done_leaves_an_empty_plan(tmp_path: Path) -> None:
    table = documents(tmp_path, a=text_pdf(3))
    rows = planner(set(), pages="2-3")(table).to_pylist()
    assert [(r["page"], r["pages_selected"]) for r in rows] == [(2, 2), (3, 2)]
    done = {("a", rows[0]["doc_hash"], page) for page in (2, 3)}

    plan = planner(done, pages="2-3")(table)

    assert plan.num_rows == 0 and plan.schema == SCHEMA
