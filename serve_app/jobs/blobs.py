"""Large job data (uploads, page bodies) as files under a directory every node mounts."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class LocalBlobs:
    """Blobs as files under ``root`` (a shared volume in a cluster). A blob appears whole or
    not at all (written aside, then renamed)."""

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self._root / key).resolve()
        if not path.is_relative_to(self._root.resolve()):
            raise ValueError(f"blob key {key!r} leaves the blob directory")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, aside = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(aside, path)
        except BaseException:
            Path(aside).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        """The blob's bytes. Raises ``KeyError`` for none."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> int:
        """Remove every blob under ``prefix`` (a directory); the bytes freed."""
        path = self._path(prefix)
        if not path.is_dir():
            return 0
        freed = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path, ignore_errors=True)
        return freed
