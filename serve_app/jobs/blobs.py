"""Large job data (uploads, page bodies) as blobs: objects in an S3 bucket every node reaches
(:class:`S3Blobs`), or files under a local directory on one machine (:class:`LocalBlobs`).

S3 goes through ``pyarrow.fs``: the offline batch already reads and writes ``s3://`` with it,
so one client, one set of credentials (the AWS variables or the node's cloud role) and one
endpoint setting serve both, and no dependency is added. A blob appears whole or not at all
(an S3 PUT is atomic; a local file is written aside and renamed). A missing blob is
``KeyError``; a server that does not answer is
:class:`~serve_app.jobs.store.StoreUnavailableError`, which callers may retry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from serve_app.jobs.store import StoreUnavailableError


class Blobs(Protocol):
    """Where a job store keeps large data, by key (``jobs/<id>/upload``)."""

    @property
    def url(self) -> str:
        """Where the blobs live, for log lines and errors."""
        ...

    @property
    def local(self) -> bool:
        """True for a directory of this machine (other nodes do not see it)."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes:
        """The blob's bytes. Raises ``KeyError`` for none."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_tree(self, prefix: str) -> None:
        """Remove every blob under ``prefix/``."""
        ...


class BlobsUnreachableError(RuntimeError):
    """The configured blob location cannot be written and read back: the service does not
    start."""


def check_blobs(blobs: Blobs) -> None:
    """Write, read back and delete a probe blob.

    Raises:
        BlobsUnreachableError: Naming the location and what went wrong.
    """
    key = f"probe/{uuid.uuid4().hex}"
    try:
        blobs.put(key, b"probe")
        if blobs.get(key) != b"probe":
            raise BlobsUnreachableError(f"{blobs.url}: a probe blob read back differently")
        blobs.delete(key)
    except (StoreUnavailableError, KeyError, OSError) as error:
        raise BlobsUnreachableError(
            f"the job store's blobs at {blobs.url} cannot be written and read back ({error}). "
            "For s3:// check that the bucket exists, the endpoint (jobs.blob_endpoint or "
            "$AWS_ENDPOINT_URL_S3) answers, and the credentials ($AWS_ACCESS_KEY_ID and "
            "$AWS_SECRET_ACCESS_KEY, or the node's role) may read and write it"
        ) from error


def open_blobs(
    url: str,
    endpoint: str | None = None,
    region: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Blobs:
    """The blobs at ``url``: ``s3://bucket/prefix`` or a local directory. The standard AWS
    variables in ``env`` replace ``endpoint`` (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``)
    and ``region`` (``AWS_REGION``) and give the credentials (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; without them, the SDK's own chain: a
    role, a profile).

    Raises:
        ValueError: For a URL of another scheme, or an S3 URL without a bucket.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"blob URL {url!r} names no bucket (s3://bucket/prefix)")
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or endpoint
        region = env.get("AWS_REGION") or region
        keys = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"))
        credentials = (*keys, env.get("AWS_SESSION_TOKEN")) if all(keys) else None
        return S3Blobs(parts.netloc, parts.path.strip("/"), endpoint, region, credentials)
    if parts.scheme in ("", "file"):
        return LocalBlobs(parts.path if parts.scheme else url)
    raise ValueError(f"blob URL {url!r}: use s3://bucket/prefix or a local directory")


class LocalBlobs:
    """Blobs as files under ``root``: one machine only."""

    local = True

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return str(self._root)

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
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


class S3Blobs:
    """Blobs as objects under ``prefix/`` in ``bucket``, on AWS or the S3 server at
    ``endpoint`` (``http://host:port``), with ``credentials`` (key id, secret, session token)
    or the SDK's own chain. Each call fails within ``timeout_s`` when the server does not
    answer (after the SDK's own retries)."""

    local = False

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        credentials: tuple[str | None, ...] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        from pyarrow import fs

        options: dict[str, object] = {
            "connect_timeout": timeout_s,
            "request_timeout": timeout_s,
            "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=2),
        }
        if endpoint:
            where = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            options.update(endpoint_override=where.netloc, scheme=where.scheme)
        if region:
            options["region"] = region
        if credentials is not None:
            access_key, secret_key, session_token = credentials
            options.update(access_key=access_key, secret_key=secret_key)
            if session_token:
                options["session_token"] = session_token
        self._fs = fs.S3FileSystem(**options)
        self._root = f"{bucket}/{prefix}".rstrip("/")
        self._url = f"s3://{self._root}" + (f" at {endpoint}" if endpoint else "")

    @property
    def url(self) -> str:
        return self._url

    def _path(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"blob key {key!r} leaves the blob prefix")
        return f"{self._root}/{key}"

    def put(self, key: str, data: bytes) -> None:
        try:
            with self._fs.open_output_stream(self._path(key)) as out:
                out.write(data)
        except OSError as error:
            raise StoreUnavailableError(f"writing {key} to {self._url}: {error}") from error

    def get(self, key: str) -> bytes:
        try:
            with self._fs.open_input_stream(self._path(key)) as blob:
                data: bytes = blob.read()
                return data
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as error:
            raise StoreUnavailableError(f"reading {key} from {self._url}: {error}") from error

    def delete(self, key: str) -> None:
        try:
            self._fs.delete_file(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as error:
            raise StoreUnavailableError(f"deleting {key} from {self._url}: {error}") from error

    def delete_tree(self, prefix: str) -> None:
        try:
            self._fs.delete_dir_contents(self._path(prefix), missing_dir_ok=True)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise StoreUnavailableError(f"deleting {prefix}/ from {self._url}: {error}") from error
