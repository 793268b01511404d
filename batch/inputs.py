"""The documents a batch reads: files, folders (recursive), globs, list files, or
object-storage URLs (``s3://``, ``gs://``, ``abfs://``), through ``pyarrow.fs``."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

SUFFIXES = frozenset({".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"})


@dataclass(frozen=True)
class InputDocument:
    """One document: where it is (a path or URL ``pyarrow.fs`` opens) and its name in the
    output (its path under the input it was found in, without the suffix)."""

    uri: str
    name: str


def find_documents(inputs: Sequence[str], list_files: Sequence[str] = ()) -> list[InputDocument]:
    """Every document ``inputs`` name, and those listed a line each in ``list_files``, in a
    stable order; a folder is searched recursively for the suffixes in :data:`SUFFIXES`.

    Raises:
        FileNotFoundError: For an input that does not exist or matches nothing.
        ValueError: For two documents that would share an output name.
    """
    entries = list(inputs)
    for listing in list_files:
        entries += [line.strip() for line in _read_text(listing).splitlines() if line.strip()]
    found: dict[str, InputDocument] = {}
    for entry in entries:
        for document in _expand(entry):
            found.setdefault(document.uri, document)
    return _distinct_names(list(found.values()))


def _distinct_names(documents: list[InputDocument]) -> list[InputDocument]:
    """Documents whose names clash (``a.pdf`` beside ``a.png``) keep their suffixes; a clash
    left after that (the same path under two inputs) is an error, since their outputs would
    overwrite each other.

    Raises:
        ValueError: Naming two documents that would share an output name.
    """
    counts = Counter(document.name for document in documents)
    renamed = [
        InputDocument(d.uri, d.name + PurePosixPath(d.uri).suffix) if counts[d.name] > 1 else d
        for d in documents
    ]
    owners: dict[str, str] = {}
    for document in renamed:
        if document.name in owners:
            raise ValueError(
                f"{owners[document.name]} and {document.uri} would both be written as "
                f"{document.name!r}: name one of them through a different input folder"
            )
        owners[document.name] = document.uri
    return renamed


def _expand(entry: str) -> list[InputDocument]:
    fs, path = pafs.FileSystem.from_uri(_as_uri(entry))
    prefix = entry.split("://", 1)[0] + "://" if "://" in entry else ""
    if any(ch in path for ch in "*?["):
        base = _glob_base(path)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        matches = [i for i in infos if i.is_file and fnmatch.fnmatch(i.path, path)]
        if not matches:
            raise FileNotFoundError(f"no document matches {entry}")
        return [_document(prefix, i.path, base) for i in sorted(matches, key=lambda i: i.path)]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such input: {entry}")
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(i.path for i in infos if i.is_file and _suffix(i.path) in SUFFIXES)
        return [_document(prefix, file, path) for file in files]
    return [_document(prefix, path, str(PurePosixPath(path).parent))]


def _document(prefix: str, path: str, base: str) -> InputDocument:
    relative = PurePosixPath(path).relative_to(base) if base else PurePosixPath(path)
    return InputDocument(prefix + path, str(relative.with_suffix("")))


def _as_uri(entry: str) -> str:
    return entry if "://" in entry else str(Path(entry).expanduser().absolute())


def _glob_base(pattern: str) -> str:
    """The folder above a glob's first wildcard."""
    parts = PurePosixPath(pattern).parts
    wild = next(n for n, part in enumerate(parts) if any(c in part for c in "*?["))
    return str(PurePosixPath(*parts[:wild])) if wild else "."


def _suffix(path: str) -> str:
    return PurePosixPath(path).suffix.lower()


def _read_text(uri: str) -> str:
    fs, path = pafs.FileSystem.from_uri(_as_uri(uri))
    with fs.open_input_stream(path) as stream:
        return str(stream.read().decode())


def read_bytes(uri: str) -> bytes:
    """A document's bytes."""
    fs, path = pafs.FileSystem.from_uri(_as_uri(uri))
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())
