"""A Ray cluster of several nodes on one machine whose worker nodes share no disk, for tests and
benchmarks of what crosses nodes (the job system's Redis and S3 stores, node loss).

Each node's processes run in their own mount namespace (``unshare -m``, so root or
CAP_SYS_ADMIN); every worker node gets a private tmpfs over each of :data:`PRIVATE_PATHS` and a
``$HOME`` inside its private /tmp, so a file one node writes there is invisible to the others.
The head keeps the machine's filesystem (the driver reaches its sockets) in a namespace of its
own only so that its processes can be found and ended. Nodes share the network: only the head
runs a Serve proxy (:meth:`LocalCluster.start_serve`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

from serve_app.testing.serve import free_port, free_ports

HEAD = "head"
# Every worker node has this resource too: ``{"worker": 0.01}`` keeps a replica off the head.
WORKER_RESOURCE = "worker"
# What a node of this project writes: Ray's session dirs, Serve's logs and the job store's
# default files (/tmp), Ray's object store (/dev/shm), onnxruntime's and the tiny checkpoint's
# caches (~/.cache). Other home files (OpenVINO's ~/intel) follow $HOME into the private /tmp.
PRIVATE_PATHS: tuple[str, ...] = ("/tmp", "/dev/shm", "~/.cache")
# Ray's GCS declares a node dead after this many failed health checks, one per period:
# ~3 s instead of Ray's default ~15 s (3 s x 5).
HEALTH_CHECK = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "3",
}
_NS_MARK = "MOUNT_NAMESPACE="
# Ports every node binds; Ray's defaults are fixed (the agent's 52365) or unknown to us.
_PORT_FLAGS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


@cache
def namespaces_available() -> bool:
    """Whether this process may create mount namespaces and mount tmpfs in them (a test skips
    without)."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-m", "--propagation", "private", "sh", "-c",
             "mount -t tmpfs tmpfs /tmp && umount /tmp"]  # fmt: skip
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def ray_binary() -> str:
    """The ``ray`` CLI of this interpreter's environment."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else "ray"


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Absolute paths with ``~`` expanded, deduplicated, parents before children (the order
    to mount them in)."""
    expanded = {os.path.normpath(os.path.expanduser(path)) for path in paths}
    return sorted(expanded, key=lambda path: (path.count("/"), path))


def mount_script(paths: Sequence[str], home: str | None, command: Sequence[str]) -> str:
    """The shell script run in a new mount namespace: a tmpfs over each of ``paths``, a private
    ``home``, report the namespace, then become ``command``."""
    lines = ["set -e"]
    for path in expand_paths(paths):
        quoted = shlex.quote(path)
        # /tmp and /dev/shm are world-writable with the sticky bit; keep that.
        mode = "1777" if path in ("/tmp", "/dev/shm") else "0755"
        lines += [f"mkdir -p {quoted}", f"mount -t tmpfs -o mode={mode} tmpfs {quoted}"]
    if home is not None:
        lines.append(f"mkdir -p {shlex.quote(home)}")
    lines.append(f'echo "{_NS_MARK}$(readlink /proc/self/ns/mnt)"')
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines)


def parse_namespace(output: str) -> str:
    """The ``mnt:[inode]`` line :func:`mount_script` printed."""
    for line in output.splitlines():
        if line.startswith(_NS_MARK):
            return line.removeprefix(_NS_MARK).strip()
    raise RuntimeError(f"the node did not report its mount namespace:\n{output}")


@dataclass
class Node:
    """A node of a :class:`LocalCluster`: what it was started with and where it runs."""

    name: str
    num_cpus: float
    resources: dict[str, float]
    private: bool  # worker nodes: private tmpfs over PRIVATE_PATHS
    namespace: str = ""  # "mnt:[inode]" of its processes
    node_id: str = ""  # Ray's node id, hex
    node_manager_port: int = 0
    dead_ids: set[str] = field(default_factory=set)
    process: subprocess.Popen[bytes] | None = None  # its `ray start --block`


class LocalCluster:
    """A Ray head and ``workers`` worker nodes started with ``ray start``, for the block.

    Worker nodes are named ``w1``, ``w2``, ... (or ``workers`` when it is a list of names);
    each has the resources ``{name: 1, "worker": 1}`` and ``worker_cpus`` CPUs, the head
    ``{"head": 1}`` and ``head_cpus``. ``env`` reaches every node's processes (Ray's workers,
    so Serve replicas, inherit their raylet's environment). Ray's token authentication is
    disabled throughout: :meth:`driver_env` holds what another driver needs.
    """

    def __init__(
        self,
        workers: int | Sequence[str] = 2,
        *,
        head_cpus: float = 1,
        worker_cpus: float = 2,
        env: Mapping[str, str] | None = None,
        private_paths: Sequence[str] = PRIVATE_PATHS,
        object_store_mb: int = 256,
        health_check: Mapping[str, str] = HEALTH_CHECK,
        start_timeout_s: float = 90.0,
        log_monitor: bool = False,
    ) -> None:
        names = [f"w{i}" for i in range(1, workers + 1)] if isinstance(workers, int) else workers
        if len(set(names)) != len(names) or HEAD in names or WORKER_RESOURCE in names:
            raise ValueError(f"worker names must be distinct, not {HEAD!r} or "
                             f"{WORKER_RESOURCE!r}: {names}")  # fmt: skip
        self.nodes: dict[str, Node] = {HEAD: Node(HEAD, head_cpus, {HEAD: 1}, private=False)}
        for name in names:
            resources = {name: 1.0, WORKER_RESOURCE: 1.0}
            self.nodes[name] = Node(name, worker_cpus, resources, private=True)
        self.private_paths = tuple(private_paths)
        self.env = dict(env or {})
        self.object_store_mb = object_store_mb
        self.health_check = dict(health_check)
        self.start_timeout_s = start_timeout_s
        self.log_monitor = log_monitor
        # One path for every node (each sees its own, except the head's, which is the
        # machine's): short, as Ray's socket paths must be.
        self.temp_dir = f"/tmp/rtc-{uuid.uuid4().hex[:6]}"
        self.gcs_port = free_port()
        self._ports: set[int] = {self.gcs_port}
        self.http_port: int | None = None
        self._saved_env: dict[str, str | None] = {}
        self._connected = False
        self._gcs_client: Any = None
        self._address: str | None = None

    # Starting and stopping

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """The GCS address: ``ray.init(address=...)`` or ``RAY_ADDRESS``. Ray names nodes by
        the machine's IP address, not 127.0.0.1; this is its spelling (what
        ``ray.get_runtime_context().gcs_address`` says)."""
        return self._address or f"127.0.0.1:{self.gcs_port}"

    @property
    def session_dir(self) -> str:
        """This cluster's Ray session directory: the same path on every node (only the head
        has a ``session_latest`` link to it)."""
        return os.path.realpath(f"{self.temp_dir}/session_latest")

    @property
    def worker_names(self) -> list[str]:
        return [name for name in self.nodes if name != HEAD]

    def start(self) -> float:
        """Start the head, then every worker node at once; wait until all are alive in Ray's
        GCS. The seconds that took."""
        if not namespaces_available():
            raise RuntimeError("LocalCluster needs mount namespaces (unshare -m; root)")
        started = time.monotonic()
        # This process's GCS client (and driver) must match the cluster's auth mode.
        self._set_env({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
        self._popen_node(HEAD)
        deadline = time.monotonic() + self.start_timeout_s
        # Worker nodes join as soon as the GCS listens: the head's other daemons start
        # meanwhile (sequential starts: ~20 s for three nodes on 2 cores).
        self._wait_gcs_listening(deadline)
        self._start_nodes(self.worker_names)
        self._wait_started(self.nodes[HEAD], deadline)
        self._address = self._read_address(deadline)
        return time.monotonic() - started

    def start_node(self, name: str) -> float:
        """Start worker node ``name`` again after :meth:`kill_node` (a new Ray node: new id,
        empty private paths); the seconds until it was alive."""
        if self.alive(name):
            raise RuntimeError(f"node {name} is alive")
        started = time.monotonic()
        self._start_nodes([name])
        return time.monotonic() - started

    def stop(self) -> None:
        """Disconnect this process's driver, SIGKILL every node's processes, remove the head's
        temp dir (worker nodes' tmpfs go with their namespaces)."""
        if self._connected or self._driver_here():
            import ray

            import serve_app.testing.serve as serve_helpers

            # A driver left connected would exit its process a minute after the GCS is gone.
            ray.shutdown()
            if serve_helpers._port == self.http_port:
                serve_helpers._port = None  # that Serve instance is gone with the cluster
            self._connected = False
        self.http_port = None
        for name in [*self.worker_names, HEAD]:
            self._kill_processes(name)
        self._gcs_client = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    # Drivers and Serve

    def driver_env(self) -> dict[str, str]:
        """What a driver process needs to join (``bench/jobs.py --cluster``, ``serve run``)."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip

    def connect(self, **init_options: Any) -> None:
        """Make this process a driver of the cluster (``ray.init``), leaving any other Ray
        first; :func:`serve_app.testing.serve.local_ray` then returns this cluster."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self._set_env(self.driver_env())
        options: dict[str, Any] = {"log_to_driver": False}
        ray.init(address=self.address, **{**options, **init_options})
        self._connected = True

    def start_serve(self) -> str:
        """Start Serve with its HTTP proxy on the head only, on a free port (every node's proxy
        would bind the same one: the nodes share the network); its URL.

        :func:`serve_app.testing.serve.start_app` deploys onto this instance afterwards.
        """
        from ray import serve

        import serve_app.testing.serve as serve_helpers

        if self.http_port is not None:
            return self.http_url
        if not self._driver_here():
            self.connect()
        self.http_port = free_port()
        serve.start(proxy_location="HeadOnly",
                    http_options={"host": "127.0.0.1", "port": self.http_port})  # fmt: skip
        # start_app starts Serve itself (a proxy on every node) unless this process started
        # the running instance, which it knows by its port.
        serve_helpers._port = self.http_port
        return self.http_url

    @property
    def http_url(self) -> str:
        if self.http_port is None:
            raise RuntimeError("Serve is not started: call start_serve()")
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def serve_log_dir(self) -> str:
        """Serve's logs on each node, as that node sees it (read through :meth:`node_path`):
        ``replica_<app>_<deployment>_<replica id>.log`` of the replicas the node ran."""
        return f"{self.session_dir}/logs/serve"

    # Nodes

    def node_id(self, name: str) -> str:
        """Ray's id (hex) of node ``name``'s current incarnation."""
        return self.nodes[name].node_id

    def alive(self, name: str) -> bool:
        """Whether Ray's GCS has node ``name`` alive."""
        node = self.nodes[name]
        states = self._gcs_nodes()
        return bool(node.node_id) and states.get(node.node_id, (False, {}))[0]

    def node_processes(self, name: str) -> list[int]:
        """The live processes of node ``name`` (those in its mount namespace)."""
        return _pids_in_namespace(self.nodes[name].namespace)

    def node_path(self, name: str, path: str | os.PathLike[str]) -> Path:
        """``path`` as node ``name`` sees it, for this process to read (through the root of one
        of its processes: ``/proc/<pid>/root/...``). The node must be running."""
        pids = self.node_processes(name)
        if not pids:
            raise RuntimeError(f"node {name} has no live process")
        process = self.nodes[name].process
        # Its `ray start` lives as long as the node; a Ray worker may be gone mid-read.
        pid = process.pid if process is not None and process.pid in pids else pids[0]
        return Path(f"/proc/{pid}/root") / Path(path).relative_to("/")

    def read_file(self, name: str, path: str | os.PathLike[str]) -> bytes:
        """A file's bytes as node ``name`` sees it."""
        return self.node_path(name, path).read_bytes()

    def kill_node(self, name: str, timeout_s: float = 60.0) -> float:
        """SIGKILL every process of worker node ``name`` (its raylet, Ray's workers, Serve's
        replicas) and wait until Ray's GCS declares the node dead; the seconds from the kill
        until then. Its private paths are gone with it.

        Raises:
            TimeoutError: The GCS still has it alive after ``timeout_s``.
        """
        if name == HEAD:
            raise ValueError("kill a worker node; the head holds the GCS")
        node = self.nodes[name]
        killed = time.monotonic()
        self._kill_processes(name)
        while time.monotonic() - killed < timeout_s:
            if not self._gcs_nodes().get(node.node_id, (False, {}))[0]:
                node.dead_ids.add(node.node_id)
                return time.monotonic() - killed
            time.sleep(0.1)
        raise TimeoutError(f"Ray still has node {name} ({node.node_id}) alive after {timeout_s}s")

    # Internals

    def _driver_here(self) -> bool:
        """Whether this process is a driver of this cluster (however it connected)."""
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return False
        address = str(ray.get_runtime_context().gcs_address)
        return address.rsplit(":", 1)[-1] == str(self.gcs_port)

    def _set_env(self, values: Mapping[str, str]) -> None:
        """Set variables in this process's environment until :meth:`stop`."""
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _start_nodes(self, names: Sequence[str]) -> None:
        for name in names:
            self._popen_node(name)
        deadline = time.monotonic() + self.start_timeout_s
        for name in names:
            self._wait_started(self.nodes[name], deadline)

    def _popen_node(self, name: str) -> None:
        node = self.nodes[name]
        # Distinct from each other and from every port this cluster handed out before: a node
        # binds them only once it starts, after the next node's were chosen.
        chosen = free_ports(len(_PORT_FLAGS) + 1, avoid=self._ports)
        self._ports.update(chosen)
        ports = dict(zip(_PORT_FLAGS, chosen, strict=False))
        node.node_manager_port = ports["node-manager-port"]
        command = [ray_binary(), "start", "--node-ip-address=127.0.0.1",
                   f"--num-cpus={node.num_cpus:g}", f"--resources={json.dumps(node.resources)}",
                   f"--temp-dir={self.temp_dir}",
                   f"--object-store-memory={self.object_store_mb * 2**20}",
                   "--disable-usage-stats", "--block",
                   f"--include-log-monitor={str(self.log_monitor).lower()}",
                   *(f"--{flag}={port}" for flag, port in ports.items())]  # fmt: skip
        if name == HEAD:
            command += ["--head", f"--port={self.gcs_port}", "--include-dashboard=false",
                        f"--ray-client-server-port={chosen[-1]}"]  # fmt: skip
        else:
            command += [f"--address={self.address}"]
        env = {**os.environ, **self.env, **self.health_check,
               "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
        env.pop("RAY_ADDRESS", None)
        home = None
        paths: Sequence[str] = ()
        if node.private:
            paths = self.private_paths
            if "/tmp" in expand_paths(paths):
                home = env["HOME"] = f"/tmp/home-{name}"
        script = mount_script(paths, home, command)
        Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
        with self._cli_log(name).open("w") as log:
            # --block: this process stays (in the namespace) and ends the node when one of its
            # daemons dies; without it, `ray start` spends ~3 s exiting after the node is up.
            node.process = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd="/",
            )  # fmt: skip

    def _wait_gcs_listening(self, deadline: float) -> None:
        head = self.nodes[HEAD]
        while time.monotonic() < deadline:
            if head.process is not None and head.process.poll() is not None:
                self._wait_started(head, deadline)  # raises with its output
            with suppress(OSError), socket.create_connection(("127.0.0.1", self.gcs_port), 1):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the head's GCS did not listen on {self.address} in time")

    def _read_address(self, deadline: float) -> str:
        """The GCS address as Ray spells it, which `ray start` writes after its last words."""
        written = Path(self.temp_dir, "ray_current_cluster")
        while time.monotonic() < deadline:
            with suppress(OSError):
                if address := written.read_text().strip():
                    return address
            time.sleep(0.05)
        raise TimeoutError(f"ray start of the head wrote no {written}")

    def _cli_log(self, name: str) -> Path:
        """Node ``name``'s ``ray start`` output (the head's temp dir, on the machine's disk)."""
        return Path(self.temp_dir) / f"ray-start-{name}.log"

    def _wait_started(self, node: Node, deadline: float) -> None:
        """Wait until ``ray start`` says the node runs and the GCS has it alive."""
        log = self._cli_log(node.name)
        while time.monotonic() < deadline:
            output = log.read_text(errors="replace")
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"ray start of node {node.name} exited "
                                   f"({node.process.returncode}):\n{output}")  # fmt: skip
            if not node.namespace and _NS_MARK in output:
                node.namespace = parse_namespace(output)
            if "Ray runtime started" in output:
                self._wait_registered(node, deadline)
                return
            time.sleep(0.1)
        raise TimeoutError(f"ray start of node {node.name} did not finish in time:\n"
                           f"{log.read_text(errors='replace')}")  # fmt: skip

    def _wait_registered(self, node: Node, deadline: float) -> None:
        while time.monotonic() < deadline:
            for node_id, (alive, resources) in self._gcs_nodes().items():
                if (alive and node_id not in node.dead_ids and node_id != node.node_id
                        and resources.get(node.name) == node.resources[node.name]):  # fmt: skip
                    node.node_id = node_id
                    return
            time.sleep(0.1)
        raise TimeoutError(f"node {node.name} did not join the cluster at {self.address}")

    def _gcs_nodes(self) -> dict[str, tuple[bool, dict[str, float]]]:
        """Every node the GCS knows: id -> (alive, total resources). Asked without a driver
        (``ray.nodes()`` needs one), as ``ray status`` does."""
        if self._gcs_client is None:
            # Ray's compiled module; its stub omits the class.
            from ray._raylet import GcsClient  # type: ignore[attr-defined]

            self._gcs_client = GcsClient(address=self.address)
        infos = self._gcs_client.get_all_node_info(timeout=10)
        alive_state = 0  # GcsNodeInfo.ALIVE
        return {node_id.hex(): (info.state == alive_state, dict(info.resources_total))
                for node_id, info in infos.items()}  # fmt: skip

    def _kill_processes(self, name: str, timeout_s: float = 10.0) -> None:
        node = self.nodes[name]
        if node.process is not None and not node.namespace:
            # Stopped while starting: the namespace may be reported by now.
            with suppress(OSError, RuntimeError):
                node.namespace = parse_namespace(self._cli_log(name).read_text(errors="replace"))
            if not node.namespace:
                node.process.kill()
        namespace = node.namespace
        deadline = time.monotonic() + timeout_s
        # A raylet may fork a worker between listing and killing: repeat until none is left.
        while pids := _pids_in_namespace(namespace):
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of node {name} survive SIGKILL: {pids}")
            time.sleep(0.05)
        if node.process is not None:
            node.process.wait()  # reap our child, `ray start`
            node.process = None
        # A namespace's inode is reused once it is gone: forget it, lest a later one be taken
        # for this node.
        node.namespace = ""


def _pids_in_namespace(namespace: str) -> list[int]:
    """Live (not zombie) processes whose mount namespace is ``namespace`` (``mnt:[inode]``)."""
    if not namespace:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "mnt") != namespace:
                continue
            stat = (entry / "stat").read_text()
        except OSError:  # gone, or a zombie's namespace links
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)
