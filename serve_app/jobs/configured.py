"""The job store the configuration names (``jobs.store``), checked before it is used."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from serve_app.config import JobsConfig
from serve_app.jobs.blobs import BlobsUnreachableError, check_blobs, open_blobs
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.jobs.store import JobStore, StoreUnavailableError

logger = logging.getLogger("ray.serve")


class JobStoreConfigError(RuntimeError):
    """The job store cannot work where it runs (a replica refuses to start)."""


def open_store(
    config: JobsConfig,
    env: Mapping[str, str] = os.environ,
    nodes: int = 1,
    wait_s: float = 30.0,
) -> JobStore:
    """The ``sqlite`` store's file, or the ``redis`` store's server (``$<redis_url_env>``
    replaces ``redis_url``) and blobs (``$<blob_url_env>`` replaces ``blob_url``), once both
    answered (waiting up to ``wait_s`` for servers still starting).

    Raises:
        JobStoreConfigError: The redis store's blobs are a local directory on a Ray cluster
            of ``nodes`` > 1 (nodes share no disk), or Redis does not answer.
        BlobsUnreachableError: The blobs cannot be written and read back.
    """
    if config.store != "redis":
        return SqliteJobStore(config.store_path)
    url = env.get(config.redis_url_env) or config.redis_url
    location = env.get(config.blob_url_env) or config.blob_url
    blobs = open_blobs(location, config.blob_endpoint, config.blob_region, env)
    if blobs.local and nodes > 1:
        raise JobStoreConfigError(
            f"jobs.blob_url is the local directory {location!r}, but this Ray cluster has "
            f"{nodes} nodes, which share no disk: a job uploaded on one node could not be run "
            "or read on another. Set jobs.blob_url (or $" + config.blob_url_env + ") to an "
            "s3://bucket/prefix every node reaches"
        )
    store = RedisJobStore(url, blobs, prefix=config.redis_prefix)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            store.stats()
            check_blobs(blobs)
            return store
        except (StoreUnavailableError, BlobsUnreachableError) as error:
            if time.monotonic() >= deadline:
                if isinstance(error, BlobsUnreachableError):
                    raise
                raise JobStoreConfigError(
                    f"the job store's Redis at {config.describe_redis(env)} does not answer "
                    f"({error}); check jobs.redis_url or ${config.redis_url_env}"
                ) from error
            logger.warning("job store not ready yet (%s); retrying", error)
            time.sleep(2.0)
