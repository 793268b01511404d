"""A batch's plan: one row per page (document, page, content hash), so work is balanced by
page and a rerun skips the pages already written. A document that cannot be read or opened
becomes one row carrying its error (page 0)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from serve_app.config import PreprocessConfig
from serve_app.documents.messages import OCROptions
from serve_app.documents.stages import Preprocessor
from serve_app.errors import as_ocr_error

Row = dict[str, Any]
Key = tuple[str, str, int]
SCHEMA = pa.schema([("uri", pa.string()), ("name", pa.string()), ("doc_hash", pa.string()),
                    ("kind", pa.string()), ("page_count", pa.int64()), ("index", pa.int64()),
                    ("page", pa.int64()), ("pages_selected", pa.int64()),
                    ("error", pa.string())])  # fmt: skip


def page_key(row: Row) -> Key:
    """What identifies a page across runs: the document's name, its content and the page."""
    return str(row["name"]), str(row["doc_hash"]), int(row["page"])


def error_json(exc: BaseException) -> str:
    error = as_ocr_error(exc)
    return json.dumps({"code": error.code, "message": error.message})


class Planner:
    """A Ray Data ``map_batches`` stage: documents in, the rows of their pages not yet done
    out (a table, so that a batch whose pages are all done still has the plan's columns)."""

    def __init__(self, config: PreprocessConfig, options: OCROptions, max_pages: int,
                 done: set[Key]) -> None:  # fmt: skip
        self._pre = Preprocessor(config)
        self._options, self._max_pages, self._done = options, max_pages, done

    def __call__(self, documents: pa.Table) -> pa.Table:
        rows = [row for document in documents.to_pylist() for row in self.pages(document)]
        return pa.Table.from_pylist([r for r in rows if page_key(r) not in self._done], SCHEMA)

    def pages(self, document: Row) -> list[Row]:
        """A document's page rows, or one row with its error (page 0)."""
        from batch.inputs import read_bytes

        base: Row = {"uri": document["uri"], "name": document["name"], "doc_hash": "",
                     "kind": "", "page_count": 0, "index": -1, "page": 0, "pages_selected": 0,
                     "error": ""}  # fmt: skip
        try:
            data = read_bytes(document["uri"])
            base["doc_hash"] = hashlib.sha256(data).hexdigest()[:32]
            info = self._pre.inspect(data, self._options, self._max_pages)
        except Exception as exc:  # noqa: BLE001 - a broken document is recorded, the run goes on
            return [base | {"error": error_json(exc)}]
        document_fields = {"kind": info.kind, "page_count": info.page_count,
                           "pages_selected": len(info.selected)}  # fmt: skip
        return [base | document_fields | {"index": i, "page": i + 1} for i in info.selected]
