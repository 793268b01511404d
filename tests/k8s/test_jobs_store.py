"""Jobs are on in every overlay, on the cluster store: state in the jobs' own Redis (persistent,
never evicting), uploads and pages in a bucket; the URLs and keys reach every Ray container
from the Secret deepseek-ocr-jobs, never inlined."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serve_app.config import AppConfig, JobsConfig
from tests.k8s.conftest import OVERLAYS, ROOT, rayservice, render, serve_config

SECRET = "deepseek-ocr-jobs"
REDIS = "deepseek-ocr-jobs-redis"
# What the store reads besides its two URLs, each from an optional key: without the endpoint
# the bucket is on AWS, without a region the SDK's, without keys the pod's cloud role.
OPTIONAL = {
    "AWS_ENDPOINT_URL_S3": "blob-endpoint",
    "AWS_REGION": "blob-region",
    "AWS_ACCESS_KEY_ID": "blob-key-id",
    "AWS_SECRET_ACCESS_KEY": "blob-secret-key",
}


def jobs_config(objects: list[dict[str, Any]]) -> JobsConfig:
    (app,) = serve_config(objects)["applications"]
    return AppConfig.model_validate(app["args"]).jobs


def store_env(jobs: JobsConfig) -> dict[str, tuple[str, bool]]:
    """Each variable the store reads: its key in the Secret, and whether the key may be absent."""
    required = {jobs.redis_url_env: ("redis-url", False), jobs.blob_url_env: ("blob-url", False)}
    return required | {var: (key, True) for var, key in OPTIONAL.items()}


def ray_containers(service: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]}
    groups |= {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for name, group in groups.items():
        for container in group["template"]["spec"]["containers"]:
            yield f"{name}/{container['name']}", container


def store_env_problems(service: dict[str, Any], jobs: JobsConfig) -> list[str]:
    """Where a Ray container lacks a store variable, or gets it other than from its Secret key.

    Every group: Ray places the ingress and runner replicas by logical resources, on whichever
    pod offers them (a group's resources or a replica's num_cpus may change), not by group."""
    found = []
    for where, container in ray_containers(service):
        env = {e["name"]: e for e in container.get("env", [])}
        for var, (key, optional) in store_env(jobs).items():
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
            if var not in env:
                found.append(f"{where}: {var} is not set")
            elif "value" in env[var] or ref is None:
                found.append(f"{where}: {var} is not from a Secret")
            elif (ref["name"], ref["key"]) != (SECRET, key):
                found.append(f"{where}: {var} is not from {SECRET}/{key}")
            elif ref.get("optional", False) != optional:
                want = "optional" if optional else "required"
                found.append(f"{where}: {var} from {SECRET}/{key} must be {want}")
    return found


def test_every_overlay_runs_jobs_on_the_redis_store(overlay: Path) -> None:
    objects = render(overlay)
    jobs = jobs_config(objects)
    assert jobs.enabled and jobs.store == "redis"
    (app,) = serve_config(objects)["applications"]
    assert "JobRunnerDeployment" in {d["name"] for d in app["deployments"]}
    # The URLs come from the environment (the Secret), never from the Serve config.
    assert {"redis_url", "blob_url", "blob_endpoint"}.isdisjoint(app["args"]["jobs"])


def test_every_ray_container_reads_the_store_from_the_jobs_secret(overlay: Path) -> None:
    objects = render(overlay)
    assert store_env_problems(rayservice(objects), jobs_config(objects)) == []


def test_the_aws_variables_the_config_documents_are_all_set() -> None:
    documented = set()
    for field in JobsConfig.model_fields.values():
        documented |= set(re.findall(r"\$(AWS_[A-Z0-9_]+)", field.description or ""))
    # AWS_ENDPOINT_URL_S3 comes before it, and the blobs are S3 only.
    assert documented - {"AWS_ENDPOINT_URL"} <= set(OPTIONAL), documented


def test_store_env_check_catches_mistakes() -> None:
    objects = render(next(p for p in OVERLAYS if p.name == "gpu"))
    service, jobs = rayservice(objects), jobs_config(objects)
    containers = dict(ray_containers(service))

    def env(where: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = containers[where]["env"]
        return result

    gpu = env("gpu-h100/ray-worker")
    gpu[:] = [e for e in gpu if e["name"] != "AWS_REGION"]
    (blob,) = [e for e in env("head/ray-head") if e["name"] == "OCR_JOBS_BLOB_URL"]
    blob["valueFrom"]["secretKeyRef"]["optional"] = True
    (redis,) = [e for e in env("cpu/ray-worker") if e["name"] == "OCR_JOBS_REDIS_URL"]
    redis["value"] = "redis://:hunter2@redis:6379/0"
    (keys,) = [e for e in env("cpu/ray-worker") if e["name"] == "AWS_SECRET_ACCESS_KEY"]
    keys["valueFrom"]["secretKeyRef"]["name"] = "aws"
    assert store_env_problems(service, jobs) == [
        f"head/ray-head: OCR_JOBS_BLOB_URL from {SECRET}/blob-url must be required",
        "cpu/ray-worker: OCR_JOBS_REDIS_URL is not from a Secret",
        f"cpu/ray-worker: AWS_SECRET_ACCESS_KEY is not from {SECRET}/blob-secret-key",
        "gpu-h100/ray-worker: AWS_REGION is not set",
    ]


def _bytes(size: str) -> int:
    """A Redis size (1gb, 512mb, 100k) or a Kubernetes quantity (2Gi, 512Mi, 1G) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", size).groups()  # type: ignore[union-attr]
    units = {"": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30,
             "ki": 2**10, "mi": 2**20, "gi": 2**30}  # fmt: skip
    return int(number) * units[unit.lower()]


def redis_problems(objects: list[dict[str, Any]]) -> list[str]:
    """What keeps the jobs' Redis from keeping every job through a restart."""
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    redis = by_kind.get(("StatefulSet", REDIS))
    if redis is None:
        return [f"no StatefulSet {REDIS}"]
    found = []
    spec = redis["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {c["metadata"]["name"]: c["spec"] for c in spec.get("volumeClaimTemplates", [])}

    (config_volume,) = [v for v in volumes.values() if "configMap" in v]
    config_map = by_kind[("ConfigMap", config_volume["configMap"]["name"])]
    conf = config_map["data"]["redis.conf"]
    settings = {}
    for line in conf.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            settings[name.lower()] = value.strip()  # the last one counts, as in Redis
    command = " ".join(container.get("command", []) + container.get("args", []))
    if f"{mounts[config_volume['name']]}/redis.conf" not in command:
        found.append("redis-server is not started with the redis.conf of the ConfigMap")

    if settings.get("appendonly") != "yes":
        found.append("appendonly is not yes")
    if settings.get("appendfsync") not in ("everysec", "always"):
        found.append(f"appendfsync is {settings.get('appendfsync')}, not everysec")
    if settings.get("maxmemory-policy") != "noeviction":
        found.append(f"maxmemory-policy is {settings.get('maxmemory-policy')}, not noeviction")
    limit = container["resources"]["limits"]["memory"]
    if not 0 < _bytes(settings.get("maxmemory", "0")) < _bytes(limit):
        found.append(f"maxmemory is not set below the memory limit {limit}")
    data = [name for name, path in mounts.items() if path == settings.get("dir")]
    if not data or data[0] not in claims:
        found.append(f"dir {settings.get('dir')} is not on a volume claim")
    for name, claim in claims.items():
        if claim.get("accessModes") != ["ReadWriteOnce"] or "storageClassName" in claim:
            found.append(f"claim {name}: not ReadWriteOnce in the default storage class")
    if spec.get("replicas", 1) != 1:
        found.append("more than one pod writes the ReadWriteOnce volume")

    env = {e["name"]: e for e in container.get("env", [])}
    password = re.search(r'--requirepass "\$(\w+)"', command)
    ref = env.get(password.group(1) if password else "", {}).get("valueFrom", {})
    if ref.get("secretKeyRef") != {"name": SECRET, "key": "redis-password"}:
        found.append(f"the password is not {SECRET}/redis-password")

    service = by_kind.get(("Service", REDIS))
    labels = spec["template"]["metadata"]["labels"]
    if service is None or not service["spec"]["selector"].items() <= labels.items():
        found.append(f"no Service {REDIS} selects the pod")
    else:
        ports = {p["name"] for p in container["ports"] if p["containerPort"] == 6379} | {6379}
        targets = {p.get("targetPort", 6379) for p in service["spec"]["ports"] if p["port"] == 6379}
        if not targets or not targets <= ports:
            found.append(f"Service {REDIS} does not reach the pod's port 6379")
    return found


def test_the_jobs_redis_persists_and_never_evicts(overlay: Path) -> None:
    assert redis_problems(render(overlay)) == []


def test_redis_check_catches_mistakes() -> None:
    objects = render(OVERLAYS[0])
    (config_map,) = [o for o in objects if o["metadata"]["name"].startswith(f"{REDIS}-")]
    config_map["data"]["redis.conf"] += "appendonly no\nmaxmemory-policy allkeys-lru\n"
    (redis,) = [o for o in objects if o["kind"] == "StatefulSet"]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    claim["spec"]["accessModes"] = ["ReadWriteMany"]
    redis["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    assert redis_problems(objects) == [
        "appendonly is not yes",
        "maxmemory-policy is allkeys-lru, not noeviction",
        "maxmemory is not set below the memory limit 1Gi",
        "claim data: not ReadWriteOnce in the default storage class",
    ]
    del redis["spec"]["volumeClaimTemplates"]
    assert "dir /data is not on a volume claim" in redis_problems(objects)
    assert redis_problems([o for o in objects if o["kind"] != "StatefulSet"]) == [
        f"no StatefulSet {REDIS}"
    ]


def test_the_readme_names_every_key_of_the_jobs_secret() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Kubernetes (KubeRay)\n")[1].split("\n## ")[0]
    keys = {"redis-password"} | {key for key, _ in store_env(JobsConfig()).values()}
    missing = sorted(k for k in keys if f"{k}=" not in section)
    assert SECRET in section and not missing, missing


def test_the_jobs_secret_is_only_referenced(overlay: Path) -> None:
    objects = render(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"]
    text = rayservice(objects)["spec"]["serveConfigV2"]
    assert "redis://" not in text and "s3://" not in text
