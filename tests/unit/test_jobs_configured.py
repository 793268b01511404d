"""The job store a replica opens refuses, at start, what cannot work: blobs on one node's disk
on a cluster of several, a bucket it cannot write and read back, a Redis that does not answer;
each with a message that names the setting to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config import JobsConfig
from serve_app.jobs.blobs import BlobsUnreachableError, LocalBlobs, S3Blobs, open_blobs
from serve_app.jobs.configured import JobStoreConfigError, open_store
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite import SqliteJobStore
from serve_app.testing.serve import free_port


def redis_jobs(redis_url: str, blob_url: str) -> JobsConfig:
    return JobsConfig(enabled=True, store="redis", redis_url=redis_url, blob_url=blob_url)


def test_local_blobs_on_a_cluster_of_several_nodes_are_refused(
    redis_url: str, tmp_path: Path
) -> None:
    config = redis_jobs(redis_url, str(tmp_path / "blobs"))
    assert isinstance(open_store(config, env={}, nodes=1), RedisJobStore)  # one machine: fine
    with pytest.raises(JobStoreConfigError, match=r"3 nodes.*s3://bucket/prefix"):
        open_store(config, env={}, nodes=3)


def test_a_bucket_that_does_not_answer_stops_the_start(redis_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = redis_jobs(redis_url, "s3://ocr-jobs/prefix")
    env = {"AWS_ENDPOINT_URL_S3": dead, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    with pytest.raises(BlobsUnreachableError, match=r"s3://ocr-jobs/prefix.*AWS_ACCESS_KEY_ID"):
        open_store(config, env=env, nodes=3, wait_s=0)


def test_a_redis_that_does_not_answer_stops_the_start(tmp_path: Path) -> None:
    config = redis_jobs(f"redis://:secret@127.0.0.1:{free_port()}/0", str(tmp_path))
    with pytest.raises(JobStoreConfigError, match="does not answer") as refused:
        open_store(config, env={}, wait_s=0)
    assert "secret" not in str(refused.value)  # the URL's password stays out of logs


def test_the_environment_names_the_store_and_its_credentials(
    redis_url: str, tmp_path: Path
) -> None:
    env = {"OCR_JOBS_REDIS_URL": redis_url, "OCR_JOBS_BLOB_URL": str(tmp_path / "b")}
    store = open_store(redis_jobs("redis://nowhere:1/0", "s3://unused/x"), env=env)
    assert isinstance(store, RedisJobStore) and store.blobs.url == str(tmp_path / "b")
    s3 = open_blobs(
        "s3://bucket/a/b", "http://config:1", env={"AWS_ENDPOINT_URL_S3": "http://env:2"}
    )
    assert isinstance(s3, S3Blobs) and s3.url == "s3://bucket/a/b at http://env:2"
    assert isinstance(open_blobs(f"file://{tmp_path}"), LocalBlobs)
    with pytest.raises(ValueError, match="no bucket"):
        open_blobs("s3:///prefix")
    with pytest.raises(ValueError, match="s3://bucket/prefix or a local directory"):
        open_blobs("gs://bucket/prefix")
    assert isinstance(open_store(JobsConfig(store_path=str(tmp_path / "j.db"))), SqliteJobStore)
