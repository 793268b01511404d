"""The run's state record under the output folder: what is done is decided here, never by
an output file existing.

``<out>/.dsocr-state.json`` holds one entry per input: its content hash and options, its
status (``running``, ``done``, ``failed``), its job id, pages done and error. It is rewritten
whole (to a temporary name, then renamed) after every change, so an interrupted run leaves
either the old or the new record.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_FILE = ".dsocr-state.json"


@dataclass
class Entry:
    input: str
    sha256: str
    options: str
    status: str  # running, done, failed
    job_id: str | None = None
    pages_done: int = 0
    error: str | None = None


class State:
    """The record at ``<out>/.dsocr-state.json`` (read if it exists)."""

    def __init__(self, out: Path) -> None:
        self._path = out / STATE_FILE
        self.entries: dict[str, Entry] = {}
        if self._path.exists():
            raw = json.loads(self._path.read_text())
            self.entries = {key: Entry(**value) for key, value in raw["inputs"].items()}

    def get(self, key: str, sha256: str, options: str) -> Entry | None:
        """The entry of this content with these options, if any."""
        entry = self.entries.get(key)
        if entry is None or (entry.sha256, entry.options) != (sha256, options):
            return None
        return entry

    def put(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry
        self.save()

    def save(self) -> None:
        body = {"version": 1, "inputs": {k: asdict(v) for k, v in self.entries.items()}}
        write_atomically(self._path, json.dumps(body, indent=1).encode())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def options_key(options: dict[str, Any]) -> str:
    """The options as the state compares them (a change means the document is read again)."""
    return json.dumps(options, sort_keys=True)


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(aside, path)
    except BaseException:
        Path(aside).unlink(missing_ok=True)
        raise
