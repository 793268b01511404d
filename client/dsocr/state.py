"""The run's state record under the output folder: what is done is decided here, never by
an output file existing.

``<out>/.dsocr-state.jsonl`` is a journal: a line per change of an input's entry (its content
hash and options, status ``running``, ``done`` or ``failed``, job id, pages done, error), the
last line of an input winning. A change costs one appended line however long the run (a
record rewritten whole would cost a run of n documents n² work). Reading it back skips a line
torn by a crash and rewrites the journal compact (a line per input, to a temporary name, then
renamed). Outputs are renamed into place before their ``done`` line is written, so a lost
line means a document read again, never one skipped. The first line names the run (a random
id): a rerun into the same folder is the same run, a fresh folder another.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_FILE = ".dsocr-state.jsonl"


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
    """The journal at ``<out>/.dsocr-state.jsonl``: read and compacted if it exists, else
    begun."""

    def __init__(self, out: Path) -> None:
        self._path = out / STATE_FILE
        self.entries: dict[str, Entry] = {}
        self.run_id = ""
        data = self._path.read_bytes() if self._path.exists() else b""
        lines = data.splitlines()
        for line in lines:
            try:
                raw = json.loads(line)
                if "run" in raw:
                    self.run_id = str(raw["run"])
                else:
                    entry = Entry(**raw)
                    self.entries[entry.input] = entry
            except (ValueError, TypeError):  # torn by a crash mid-write, or not ours
                continue
        if not self.run_id or len(lines) > len(self.entries) + 1 or not data.endswith(b"\n"):
            self.run_id = self.run_id or uuid.uuid4().hex
            header = json.dumps({"run": self.run_id}).encode() + b"\n"
            write_atomically(self._path, header + b"".join(map(_line, self.entries.values())))

    def get(self, key: str, sha256: str, options: str) -> Entry | None:
        """The entry of this content with these options, if any."""
        entry = self.entries.get(key)
        if entry is None or (entry.sha256, entry.options) != (sha256, options):
            return None
        return entry

    def put(self, entry: Entry) -> None:
        self.entries[entry.input] = entry
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("ab") as journal:
            journal.write(_line(entry))


def _line(entry: Entry) -> bytes:
    return json.dumps(asdict(entry)).encode() + b"\n"


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
