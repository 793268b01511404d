"""The job store the configuration names (``jobs.store``)."""

from __future__ import annotations

import os

from serve_app.config import JobsConfig
from serve_app.jobs.blobs import LocalBlobs
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.jobs.store import JobStore


def open_store(config: JobsConfig) -> JobStore:
    """The ``sqlite`` store's file, or the ``redis`` store's server (the URL in
    ``$<redis_url_env>`` when set) and blob directory."""
    if config.store == "redis":
        url = os.environ.get(config.redis_url_env) or config.redis_url
        return RedisJobStore(url, LocalBlobs(config.blob_dir), prefix=config.redis_prefix)
    return SqliteJobStore(config.store_path)
