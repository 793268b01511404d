"""Progress in pages: bars in a terminal, else one line per finished document (plain or
JSON)."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from dsocr.inputs import Input
from dsocr.run import Outcome

_MARK = {"done": "done", "skipped": "done before", "failed": "FAILED", "kept": "FAILED before"}


def describe(outcome: Outcome) -> str:
    """One line for a finished document."""
    name = outcome.input.path.as_posix()
    if outcome.status in ("failed", "kept"):
        return f"{_MARK[outcome.status]:<13} {name}: {outcome.error}"
    failed = f", {outcome.pages_failed} failed" if outcome.pages_failed else ""
    via = f" via {outcome.via}" if outcome.via != "-" else ""
    took = f" in {outcome.seconds:.1f} s" if outcome.status == "done" else ""
    pages = f"{outcome.pages} page{'' if outcome.pages == 1 else 's'}"
    return f"{_MARK[outcome.status]:<13} {name}: {pages}{failed}{via}{took}"


class LineReporter:
    """One line per finished document: plain text, or a JSON object (``json``)."""

    def __init__(self, as_json: bool = False, stream: TextIO = sys.stdout) -> None:
        self._json, self._stream = as_json, stream

    def started(self, item: Input, pages: int) -> None:
        pass

    def total(self, item: Input, pages: int) -> None:
        pass

    def page(self, item: Input) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        if self._json:
            line = json.dumps({
                "input": outcome.input.path.as_posix(), "status": outcome.status,
                "pages": outcome.pages, "pages_failed": outcome.pages_failed,
                "via": outcome.via, "seconds": round(outcome.seconds, 3),
                "job_id": outcome.job_id, "error": outcome.error,
            })  # fmt: skip
        else:
            line = describe(outcome)
        self._stream.write(line + "\n")
        self._stream.flush()


class BarReporter:
    """An overall bar in pages (pages/s, time left) and a bar per document being read; a line
    per finished document above them."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self._overall = self._progress.add_task("[bold]all pages", total=0, rate="")
        self._rows: dict[str, TaskID] = {}
        self._estimates: dict[str, int] = {}

    def __enter__(self) -> BarReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def started(self, item: Input, pages: int) -> None:
        self._estimates[item.key] = pages
        self._grow(pages)
        self._rows[item.key] = self._progress.add_task(item.path.name[:40], total=pages, rate="")

    def total(self, item: Input, pages: int) -> None:
        """The document's real page count, once the service knows it."""
        self._grow(pages - self._estimates.get(item.key, pages))
        self._estimates[item.key] = pages
        if item.key in self._rows:
            self._progress.update(self._rows[item.key], total=pages)

    def page(self, item: Input) -> None:
        self._progress.advance(self._overall)
        if item.key in self._rows:
            self._progress.advance(self._rows[item.key])
        task = self._progress.tasks[self._overall]
        if task.speed:
            self._progress.update(self._overall, rate=f"{task.speed:.1f} pages/s")

    def finished(self, outcome: Outcome) -> None:
        row = self._rows.pop(outcome.input.key, None)
        if row is not None:
            self._progress.remove_task(row)
        if outcome.status == "failed":  # its unread pages leave the total
            done = outcome.pages
            self._grow(done - self._estimates.get(outcome.input.key, done))
        self._progress.console.print(describe(outcome), highlight=False)

    def _grow(self, pages: int) -> None:
        task = self._progress.tasks[self._overall]
        self._progress.update(self._overall, total=(task.total or 0) + pages)
