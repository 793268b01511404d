"""The Grafana dashboard and the PodMonitor, checked offline: the dashboard queries only series
that the service (``serve_app.telemetry.metrics``) and Ray Serve and vLLM
(``serve_app.telemetry.platform_metrics``) export, and the PodMonitor, included by the GPU overlays,
selects the pods KubeRay makes from our RayService, on a port those pods declare."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.telemetry.metrics import ALL_METRICS
from serve_app.telemetry.platform_metrics import PLATFORM_LABELS, PLATFORM_SERIES
from tests.k8s.conftest import OVERLAYS, ROOT, rayservice, render

MONITORING = ROOT / "k8s" / "monitoring"
DASHBOARD: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Series -> the labels it carries besides RAY_LABELS.
SERIES_LABELS: dict[str, frozenset[str]] = {
    series: frozenset(metric.tags) | ({"le"} if series.endswith("_bucket") else frozenset())
    for metric in ALL_METRICS
    for series in metric.series
} | dict(PLATFORM_LABELS)
RAY_LABELS = frozenset({"Component", "NodeAddress", "SessionName", "Version", "WorkerId"})
SCRAPE_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint"}) | {
    r["targetLabel"]
    for endpoint in yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())["spec"][
        "podMetricsEndpoints"
    ]
    for r in endpoint.get("relabelings", [])
}

# --- PromQL --------------------------------------------------------------------------------

AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "delta", "deriv",
    "floor", "histogram_quantile", "idelta", "increase", "irate", "label_join", "label_replace",
    "predict_linear", "rate", "resets", "round", "scalar", "sort", "sort_desc", "sqrt", "time",
    "timestamp", "vector", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "last_over_time", "quantile_over_time",
}  # fmt: skip
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"bool", "and", "or", "unless", "offset", "inf", "nan"})
# Meaningful on counters only: on a gauge they count its every drop as a reset.
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")

_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      |(?P<variable>\$\{[^}]*\}|\$\w+)
      |(?P<duration>(?:\d+(?:ms|[smhdwy]))+)
      |(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)
      |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],])
      |(?P<space>\s+)""",
    re.VERBOSE,
)
_CLOSING = {"(": ")", "{": "}", "[": "]"}


def tokens(expr: str) -> list[tuple[str, str]]:
    """``(kind, text)`` pairs, spaces dropped; ValueError on a character PromQL doesn't have."""
    found, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"unexpected {expr[pos:]!r}")
        if match.lastgroup != "space":
            found.append((match.lastgroup or "", match.group()))
        pos = match.end()
    return found


@dataclass
class _Frame:
    bracket: str
    function: str | None = None
    metrics: set[str] = field(default_factory=set)
    grouped: set[str] = field(default_factory=set)
    first: tuple[str, str] | None = None  # the first token inside


@dataclass
class Query:
    """What a PromQL expression names, and what is wrong with it (empty if nothing)."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)  # in matchers and grouping clauses
    grouped: set[str] = field(default_factory=set)  # in by (...) clauses
    problems: list[str] = field(default_factory=list)


def parse(expr: str) -> Query:
    """A structural reading of PromQL: metric names (identifiers that are not functions,
    keywords, label names or grouping labels), brackets, known functions, counter-only functions
    applied to counters, and histogram_quantile's quantile and ``le``. Not a full parser."""
    query = Query()
    try:
        toks = tokens(expr)
    except ValueError as error:
        return Query(problems=[str(error)])
    stack: list[_Frame] = []
    pending: str | None = None  # a function whose "(" is still to come (after a by clause)
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if stack and stack[-1].first is None:
            stack[-1].first = (kind, text)
        if kind == "name" and text in GROUPING and following == "(":
            end = next((j for j in range(i + 2, len(toks)) if toks[j][1] == ")"), len(toks))
            names = {t for k, t in toks[i + 2 : end] if k == "name"}
            query.labels |= names
            if text == "by":
                query.grouped |= names
                for frame in stack:
                    frame.grouped |= names
            i = end + 1
            continue
        if kind == "name":
            if stack and stack[-1].bracket == "{":
                query.labels.add(text)
            elif text in FUNCTIONS and (following == "(" or following in GROUPING):
                pending = text
            elif following == "(":
                query.problems.append(f"unknown function {text}")
            elif text not in KEYWORDS and text not in GROUPING:
                query.metrics.add(text)
                for frame in stack:
                    frame.metrics.add(text)
        elif text in _CLOSING:
            stack.append(_Frame(text, pending if text == "(" else None))
            pending = None
        elif text in _CLOSING.values():
            if not stack or _CLOSING[stack[-1].bracket] != text:
                query.problems.append(f"unbalanced {text!r}")
                return query
            _check_call(stack.pop(), query)
        i += 1
    if stack:
        query.problems.append(f"unclosed {stack[-1].bracket!r}")
    if not query.metrics:
        query.problems.append("no metric")
    return query


def _check_call(frame: _Frame, query: Query) -> None:
    if frame.function in COUNTER_FUNCTIONS:
        for metric in sorted(frame.metrics):
            if not metric.endswith(COUNTER_SUFFIXES):
                query.problems.append(f"{frame.function} over {metric}, not a counter")
    if frame.function == "histogram_quantile":
        kind, text = frame.first or ("", "")
        if kind != "number" or not 0 <= float(text) <= 1:
            query.problems.append(f"histogram_quantile of {text!r}, not a number in [0, 1]")
        if "le" not in frame.grouped:
            query.problems.append("histogram_quantile over buckets not grouped by le")
        for metric in sorted(frame.metrics):
            if not metric.endswith("_bucket"):
                query.problems.append(f"histogram_quantile over {metric}, not a _bucket series")


# --- the dashboard -------------------------------------------------------------------------


def all_panels(panels: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    for panel in DASHBOARD["panels"] if panels is None else panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def query_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels() if p["type"] != "row"]


TARGETS = [(p["title"], t) for p in query_panels() for t in p.get("targets", [])]
TARGET_IDS = [f"{title}/{target.get('refId')}" for title, target in TARGETS]


@pytest.mark.parametrize(("title", "target"), TARGETS, ids=TARGET_IDS)
def test_queries_are_well_formed_promql(title: str, target: dict[str, Any]) -> None:
    assert parse(target["expr"]).problems == []


@pytest.mark.parametrize(("title", "target"), TARGETS, ids=TARGET_IDS)
def test_queries_name_only_exported_series_and_their_labels(
    title: str, target: dict[str, Any]
) -> None:
    query = parse(target["expr"])
    assert query.metrics <= set(SERIES_LABELS), "not in ALL_METRICS series or PLATFORM_SERIES"
    labels = set().union(*(SERIES_LABELS[m] for m in query.metrics)) | RAY_LABELS | SCRAPE_LABELS
    assert query.labels <= labels


@pytest.mark.parametrize(("title", "target"), TARGETS, ids=TARGET_IDS)
def test_legends_name_labels_the_query_keeps(title: str, target: dict[str, Any]) -> None:
    legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    assert legend <= parse(target["expr"]).grouped - {"le"}


def test_every_service_metric_and_platform_series_is_on_the_dashboard() -> None:
    used = set().union(*(parse(t["expr"]).metrics for _, t in TARGETS))
    assert [m.name for m in ALL_METRICS if not used & set(m.series)] == []
    assert PLATFORM_SERIES - used == set(), "unused: drop them from PLATFORM_LABELS"


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        (
            'histogram_quantile(0.95, sum by (le, stage) (rate(ray_ocr_stage_seconds_bucket{stage!="x"}[$__rate_interval])))',
            {"ray_ocr_stage_seconds_bucket"},
        ),
        (
            "sum without (WorkerId) (ray_a) / ignoring(x) group_left(y) sum(ray_b offset 5m) > bool 1e3",
            {"ray_a", "ray_b"},
        ),
        ('label_replace(up, "dst", "$1", "src", "(.*)") * on() group_right vector(1)', {"up"}),
        ("max(ray_vllm:kv_cache_usage_perc[${__range}])", {"ray_vllm:kv_cache_usage_perc"}),
    ],
)
def test_query_check_finds_metric_names(expr: str, metrics: set[str]) -> None:
    assert parse(expr).metrics == metrics


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        (
            "sum(rate(ray_ocr_pages_in_flight[5m]))",
            "rate over ray_ocr_pages_in_flight, not a counter",
        ),
        (
            "histogram_quantile(0.95, sum by (stage) (rate(ray_ocr_stage_seconds_bucket[5m])))",
            "histogram_quantile over buckets not grouped by le",
        ),
        (
            "histogram_quantile(95, sum by (le) (rate(ray_ocr_stage_seconds_bucket[5m])))",
            "histogram_quantile of '95', not a number in [0, 1]",
        ),
        ("summ(ray_ocr_pages_total)", "unknown function summ"),
        ("sum(rate(ray_ocr_pages_total[5m])", "unclosed '('"),
        ("sum(ray_ocr_pages_total]", "unbalanced ']'"),
        ('sum({__name__="ray_ocr_pages_total"})', "no metric"),
    ],
)
def test_query_check_catches_mistakes(expr: str, problem: str) -> None:
    assert problem in parse(expr).problems


def test_dashboard_is_importable_grafana_json() -> None:
    assert isinstance(DASHBOARD["schemaVersion"], int) and DASHBOARD["schemaVersion"] >= 36
    assert DASHBOARD["title"] and DASHBOARD["uid"]
    (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    ids = [p["id"] for p in all_panels()]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    for panel in all_panels():
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    for panel in query_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target.get("datasource", DATASOURCE) == DATASOURCE


def _uids(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "uid":
                yield path, item
            yield from _uids(item, f"{path}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _uids(item, f"{path}[{n}]")


def test_datasources_only_through_the_variable() -> None:
    # The dashboard's own uid keeps its URL stable; every other uid would be one Grafana's.
    found = {path: uid for path, uid in _uids(DASHBOARD) if path}
    assert {path: uid for path, uid in found.items() if uid != "${datasource}"} == {}


def test_panels_do_not_overlap() -> None:
    def cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
        g = panel["gridPos"]
        return {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }

    for a, b in combinations(all_panels(), 2):
        assert not cells(a) & cells(b), (a["title"], b["title"])


# --- the PodMonitor ------------------------------------------------------------------------

# KubeRay v1.7 (ray-operator/controllers/ray/utils/constant.go): the ray container gets a
# `metrics` port 8080 unless it declares one, and `--metrics-export-port` 8080 unless set.
METRICS_PORT_DEFAULT = "8080"
HEAD_GROUP = "headgroup"
# Fields of monitoring.coreos.com/v1 PodMonitor that this check knows; others are typos here.
SPEC_FIELDS = frozenset(
    {"jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector", "namespaceSelector"}
    | {"sampleLimit", "targetLimit", "labelLimit", "attachMetadata", "selectorMechanism"}
)
ENDPOINT_FIELDS = frozenset(
    {"port", "portNumber", "path", "scheme", "params", "interval", "scrapeTimeout"}
    | {"honorLabels", "honorTimestamps", "relabelings", "metricRelabelings", "filterRunning"}
    | {"tlsConfig", "authorization", "basicAuth", "enableHttp2", "followRedirects", "proxyUrl"}
)
RELABEL_FIELDS = frozenset(
    {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
)


def ray_groups(service: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Group name -> (node type, group spec), as KubeRay labels the pods."""
    cluster = service["spec"]["rayClusterConfig"]
    return {HEAD_GROUP: ("head", cluster["headGroupSpec"])} | {
        g["groupName"]: ("worker", g) for g in cluster.get("workerGroupSpecs", [])
    }


def kuberay_pod_labels(
    service: Mapping[str, Any], group_name: str, node_type: str, group: Mapping[str, Any]
) -> dict[str, str]:
    """The labels of a group's pods: the template's and the group's `labels` over KubeRay's own,
    except cluster, node type and group, which the template cannot change (labelPod in
    ray-operator/controllers/ray/common/pod.go). A RayService's cluster is <name>-<5 chars>."""
    cluster = f"{service['metadata']['name']}-x1y2z"
    own = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group_name,
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    fixed = {k: own[k] for k in ("ray.io/cluster", "ray.io/node-type", "ray.io/group")}
    template = group["template"].get("metadata", {}).get("labels", {})
    return own | template | group.get("labels", {}) | fixed


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        held = {
            "In": key in labels and labels[key] in (values or []),
            "NotIn": key not in labels or labels[key] not in (values or []),
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def podmonitor_errors(monitor: Mapping[str, Any], objects: list[dict[str, Any]]) -> list[str]:
    """What the Prometheus Operator would reject or scrape wrongly: unknown fields, a selector
    that misses a Ray group or takes other pods, another namespace, a port the pods lack."""
    found = []
    if (monitor["apiVersion"], monitor["kind"]) != ("monitoring.coreos.com/v1", "PodMonitor"):
        found.append(f"{monitor['apiVersion']} {monitor['kind']} is not a v1 PodMonitor")
    spec = monitor["spec"]
    found += [f"spec.{k} is not a PodMonitor field" for k in sorted(set(spec) - SPEC_FIELDS)]
    service = rayservice(objects)
    namespace = service["metadata"]["namespace"]
    if monitor["metadata"].get("namespace") != namespace:
        found.append(f"PodMonitor not in the RayService's namespace {namespace}")
    selector = spec.get("namespaceSelector", {})
    if selector.get("any") or set(selector.get("matchNames", [namespace])) != {namespace}:
        found.append(f"namespaceSelector {selector} reaches beyond {namespace}")
    pod_selector = spec.get("selector", {})
    if set(pod_selector) - {"matchLabels", "matchExpressions"} or not pod_selector:
        found.append(f"selector {pod_selector} is empty or has unknown fields")
    selected = {}
    for group_name, (node_type, group) in ray_groups(service).items():
        labels = kuberay_pod_labels(service, group_name, node_type, group)
        if selects(pod_selector, labels):
            selected[group_name] = group
        else:
            found.append(f"selector misses the {group_name} pods {labels}")
    for obj in objects:
        labels = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
        if obj["kind"] != "RayService" and labels and selects(pod_selector, labels):
            found.append(f"selector takes the pods of {obj['kind']} {obj['metadata']['name']}")
    label_metas = {
        "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
        for name, (node_type, group) in ray_groups(service).items()
        for key in kuberay_pod_labels(service, name, node_type, group)
    }
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints:
        found.append("no podMetricsEndpoints")
    for endpoint in endpoints:
        found += [f"endpoint {k} is not a field" for k in sorted(set(endpoint) - ENDPOINT_FIELDS)]
        for relabel in endpoint.get("relabelings", []):
            found += [f"relabeling {k} is not a field" for k in set(relabel) - RELABEL_FIELDS]
            for source in relabel.get("sourceLabels", []):
                if source.startswith("__meta_kubernetes_pod_label_") and source not in label_metas:
                    found.append(f"relabeling reads {source}, a label the pods don't have")
        for group_name, group in selected.items():
            found += _port_errors(endpoint.get("port"), group_name, group)
    return found


def _port_errors(port_name: str | None, group_name: str, group: Mapping[str, Any]) -> list[str]:
    # KubeRay adds a `metrics` port if the container lacks one, but only a declared port can be
    # checked here: the manifests declare it.
    ray_container = group["template"]["spec"]["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in ray_container.get("ports", [])}
    if port_name not in ports:
        return [f"{group_name}: the ray container has no port named {port_name!r}"]
    export = group.get("rayStartParams", {}).get("metrics-export-port", METRICS_PORT_DEFAULT)
    if port_name == "metrics" and str(ports[port_name]) != export:
        return [f"{group_name}: port metrics is {ports[port_name]}, Ray exports on {export}"]
    return []


def podmonitor(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "PodMonitor"]
    return found


# The CPU dev overlay leaves monitoring out: a bare dev cluster has no Prometheus Operator CRDs,
# and a PodMonitor would make `kubectl apply -k` fail there.
MONITORED = [path for path in OVERLAYS if path.name != "cpu"]


def test_the_cpu_dev_overlay_applies_without_the_prometheus_operator() -> None:
    kinds = {o["kind"] for o in render(ROOT / "k8s" / "overlays" / "cpu")}
    assert "PodMonitor" not in kinds and "RayService" in kinds


@pytest.mark.parametrize("overlay", MONITORED, ids=[path.name for path in MONITORED])
def test_overlays_include_the_podmonitor_and_the_dashboard(overlay: Path) -> None:
    objects = render(overlay)
    assert podmonitor(objects)
    (configmap,) = [
        o for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]  # fmt: skip
    (content,) = configmap["data"].values()
    assert json.loads(content) == DASHBOARD


@pytest.mark.parametrize("overlay", MONITORED, ids=[path.name for path in MONITORED])
def test_podmonitor_scrapes_every_ray_pod_on_its_metrics_port(overlay: Path) -> None:
    objects = render(overlay)
    assert podmonitor_errors(podmonitor(objects), objects) == []


def test_podmonitor_check_catches_mistakes() -> None:
    objects = render(MONITORED[0])
    monitor = podmonitor(objects)
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"]["podMetricsEndpoints"]
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = "metric"
    monitor["spec"]["namespaceSelector"] = {"any": True}
    monitor["spec"]["selector"]["matchLabels"]["ray.io/node-type"] = "worker"
    monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["sourceLabels"] = [
        "__meta_kubernetes_pod_label_ray_io_clusters"
    ]
    found = podmonitor_errors(monitor, objects)
    assert found[0] == "spec.podMetricEndpoints is not a PodMonitor field"
    assert found[1].startswith("namespaceSelector {'any': True} reaches beyond")
    assert found[2].startswith("selector misses the headgroup pods")
    assert "relabeling reads __meta_kubernetes_pod_label_ray_io_clusters" in found[3]
    assert found[4:] and all("no port named 'metric'" in f for f in found[4:])
