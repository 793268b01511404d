"""What to read: files, folders (recursively) and globs, each with where its outputs go."""

from __future__ import annotations

import glob
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CONTENT_TYPES = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
}
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_STREAM_START = re.compile(rb"\bstream\r?\n")


@dataclass(frozen=True)
class Input:
    """A document and its outputs' stem, relative to the output folder (``a/b`` for
    ``a/b.md``): a folder's files keep their place under it."""

    path: Path
    stem: Path

    @property
    def key(self) -> str:
        """The input in the state record."""
        return self.stem.as_posix() + self.path.suffix.lower()

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.path.suffix.lower(), "application/octet-stream")


def find_inputs(paths: list[str]) -> list[Input]:
    """The documents ``paths`` name: a file as it is (whatever its type: the service says
    what it cannot read), a folder's supported files recursively, a glob's matches.

    Raises:
        FileNotFoundError: For a path that names nothing.
    """
    found: dict[Path, Input] = {}
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in CONTENT_TYPES:
                    stem = file.relative_to(path).with_suffix("")
                    found.setdefault(file.resolve(), Input(file, stem))
        elif path.is_file():
            found.setdefault(path.resolve(), Input(path, Path(path.stem)))
        else:
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            files = [m for m in matches if m.is_file()]
            if not files:
                raise FileNotFoundError(f"{arg}: no such file, folder or matching files")
            for file in files:
                found.setdefault(file.resolve(), Input(file, Path(file.stem)))
    return list(found.values())


def page_count(data: bytes, content_type: str) -> int:
    """About how many pages a document has (for progress and the job threshold): a PDF's
    page objects, also those packed in compressed object streams, else 1."""
    if content_type != "application/pdf":
        return 1
    pages = len(_PDF_PAGE.findall(data))
    if pages == 0:
        pages = sum(len(_PDF_PAGE.findall(body)) for body in _object_streams(data))
    return max(1, pages)


def _object_streams(data: bytes) -> Iterator[bytes]:
    """The inflated bodies of a PDF's object streams (``/Type /ObjStm``, Flate), where PDF 1.5
    and later writers put the page objects."""
    for start in _STREAM_START.finditer(data):
        if b"/ObjStm" not in data[max(0, start.start() - 512) : start.start()]:
            continue
        end = data.find(b"endstream", start.end())
        try:
            yield zlib.decompressobj().decompress(data[start.end() : end], 64 * 2**20)
        except zlib.error:
            continue
