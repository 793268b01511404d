"""A throwaway Redis server for tests and benchmarks: Debian's ``redis-server`` on a free
local port, nothing saved to disk, stopped on exit."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from serve_app.testing.serve import free_port


class RedisNotInstalledError(RuntimeError):
    """``redis-server`` is not on PATH (``make test`` installs it: apt redis-server)."""


@contextmanager
def redis_server() -> Iterator[str]:
    """Run ``redis-server`` for the block; its URL.

    Raises:
        RedisNotInstalledError: It is not installed.
    """
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisNotInstalledError(
            "redis-server is not installed: `make test` installs it (apt-get install redis-server)"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-") as workdir:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if server.poll() is not None:
                        raise RuntimeError(f"redis-server exited ({server.returncode})") from None
                    time.sleep(0.05)
            client.close()
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)
