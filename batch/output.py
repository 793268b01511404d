"""A batch's output folder: ``pages/`` holds every finished page as Parquet rows (written as
they finish, each file whole or not at all), ``docs/`` each document's markdown and JSON,
the same as ``/v1/ocr`` answers, once all its selected pages are written.

A rerun reads ``pages/`` to skip what is done: a page is done when a row with its document's
name, content hash and page number says ``ok`` (or ``failed``, unless failures are retried);
the latest row of a page wins: parts are named by run (each run numbered after the runs
before it) and by part within the run, so their names sort in the order they were written,
whatever the files' times say after a copy."""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.plan import Key, page_key
from serve_app.jobs.results import result_markdown, stored_result_json

logger = logging.getLogger(__name__)
COLUMNS = ("uri", "name", "doc_hash", "kind", "page_count", "page", "pages_selected", "status",
           "page_json")  # fmt: skip

PART = re.compile(r"part-(\d{6})-\d{6}-[0-9a-f]+\.parquet")


class Output:
    """The output folder of one batch (local; parts are written under a temporary name and
    renamed, so a killed run leaves no torn part)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pages_dir = root / "pages"
        self.docs_dir = root / "docs"
        earlier = (PART.fullmatch(part.name) for part in self._parts())
        self._run = 1 + max((int(match[1]) for match in earlier if match), default=0)
        self._written = 0
        # Two runs started at once on one folder would share a number, not a file name.
        self._tag = uuid.uuid4().hex[:8]

    def _parts(self) -> list[Path]:
        """The page parts, in the order they were written."""
        return sorted(self.pages_dir.glob("part-*.parquet"))

    def rows(self) -> list[dict[str, Any]]:
        """Every page row written so far, oldest part first (unreadable parts skipped)."""
        out: list[dict[str, Any]] = []
        for part in self._parts():
            try:
                out += pq.read_table(part).to_pylist()
            except (OSError, pa.ArrowInvalid) as exc:
                logger.warning("skipping unreadable part %s: %s", part, exc)
        return out

    def done(self, retry_failed: bool) -> set[Key]:
        """The pages a rerun skips."""
        latest = {page_key(row): row["status"] for row in self.rows()}
        return {key for key, status in latest.items() if status == "ok" or not retry_failed}

    def write(self, rows: list[dict[str, Any]]) -> None:
        """One part of finished page rows."""
        if not rows:
            return
        self.pages_dir.mkdir(parents=True, exist_ok=True)
        self._written += 1
        final = self.pages_dir / f"part-{self._run:06d}-{self._written:06d}-{self._tag}.parquet"
        temporary = final.with_suffix(".parquet.tmp")
        table = pa.Table.from_pylist([{c: row[c] for c in COLUMNS} for row in rows])
        pq.write_table(table, temporary)
        os.replace(temporary, final)

    def write_documents(self, model: str) -> tuple[int, int]:
        """Markdown and JSON for every document whose selected pages are all written:
        ``(documents written, documents incomplete)``."""
        pages: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
        first: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self.rows():
            document = (row["name"], row["doc_hash"])
            pages[document][int(row["page"])] = row
            first.setdefault(document, row)
        written = incomplete = 0
        for document, by_page in pages.items():
            row = first[document]
            if 0 in by_page:
                continue  # the document itself failed: listed among the failures
            if len(by_page) < int(row["pages_selected"]):
                incomplete += 1
                continue
            page_objects = [json.loads(r["page_json"]) for r in by_page.values()]
            answer = stored_result_json(row["doc_hash"], model, row["kind"],
                                        int(row["page_count"]), page_objects)  # fmt: skip
            self._write_text(f"{row['name']}.md", result_markdown(page_objects))
            self._write_text(f"{row['name']}.json", json.dumps(answer, indent=1))
            written += 1
        return written, incomplete

    def _write_text(self, name: str, text: str) -> None:
        path = self.docs_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, path)


def failures(rows: Iterable[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """``(name, page, error)`` of each page whose latest row failed (page 0: the document)."""
    latest = {page_key(row): row for row in rows}
    out = []
    for (name, _, page), row in sorted(latest.items()):
        if row["status"] == "failed":
            error = json.loads(row["page_json"])["error"]
            out.append((name, page, f"{error['code']}: {error['message']}"))
    return out
