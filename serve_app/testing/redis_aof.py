"""A restartable Redis for tests and benchmarks: Debian's ``redis-server`` with its append-only
file on, on a free loopback port in a temporary directory, which a test may stop (gracefully
or with SIGKILL) and start again on the same port and data.

``appendfsync always`` by default: every write is in the file before Redis answers it, so a
test that SIGKILLs the server and finds a job missing has found a bug in the job system, not
the second of writes that ``everysec`` may keep in memory (production's usual choice). A test
writes little, so the fsync per write costs nothing measurable here.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from serve_app.testing.redis import RedisNotInstalledError
from serve_app.testing.serve import free_port

Fsync = Literal["always", "everysec", "no"]


class RedisServer:
    """One ``redis-server`` with AOF persistence in ``workdir``.

    Use :func:`redis_aof_server` for a started one that is removed on exit.
    """

    def __init__(self, workdir: Path, appendfsync: Fsync = "always") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalledError(
                "redis-server is not installed: `make test` installs it "
                "(apt-get install redis-server)"
            )
        self.binary = binary
        self.workdir = workdir
        self.appendfsync = appendfsync
        self.port = free_port()
        self.log_path = workdir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def start(self, timeout_s: float = 30.0) -> float:
        """Start it (loading the AOF written before) and wait until it answers PING with the
        data loaded; the seconds that took.

        Raises:
            RuntimeError: It exited, or did not answer within ``timeout_s``.
        """
        if self.running:
            raise RuntimeError(f"redis-server is already running (pid {self.pid})")
        started = time.monotonic()
        self._process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--save", "",
             "--appendonly", "yes", "--appendfsync", self.appendfsync,
             "--logfile", str(self.log_path), "--loglevel", "notice"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_ready(started + timeout_s)
        return time.monotonic() - started

    def stop(self, timeout_s: float = 20.0) -> float:
        """Graceful stop (SIGTERM: Redis fsyncs its AOF and exits); the seconds that took."""
        return self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> float:
        """SIGKILL: what a node or OOM kill does; the AOF holds what was fsynced."""
        return self._signal(signal.SIGKILL, 10.0)

    def restart(self, down_s: float = 0.0, hard: bool = False) -> float:
        """Stop (:meth:`kill` when ``hard``), stay down ``down_s`` seconds, start on the same
        port and data; the seconds from the stop until it answered again."""
        started = time.monotonic()
        if hard:
            self.kill()
        else:
            self.stop()
        time.sleep(down_s)
        self.start()
        return time.monotonic() - started - down_s

    def _signal(self, signum: int, timeout_s: float) -> float:
        started = time.monotonic()
        process = self._process
        if process is None or process.poll() is not None:
            return 0.0
        process.send_signal(signum)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; its log: {self._log_tail()}")
                try:
                    client.ping()  # answers LOADING (an error) until the AOF is read
                    return
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    time.sleep(0.05)
        finally:
            client.close()
        self.kill()
        raise RuntimeError(f"redis-server did not answer in time; its log: {self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextmanager
def redis_aof_server(appendfsync: Fsync = "always") -> Iterator[RedisServer]:
    """Run a restartable ``redis-server`` with AOF on for the block; stopped and removed on exit.

    Raises:
        RedisNotInstalledError: It is not installed.
    """
    with tempfile.TemporaryDirectory(prefix="redis-aof-") as workdir:
        server = RedisServer(Path(workdir), appendfsync=appendfsync)
        try:
            server.start()
            yield server
        finally:
            server.kill()
