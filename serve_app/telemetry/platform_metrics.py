"""Prometheus series of Ray Serve and vLLM that the Grafana dashboard queries (our own are in
:mod:`serve_app.telemetry.metrics`). Read from the installed sources, ray 2.60.0 and vllm 0.32.0.

Naming: Ray exports every metric as ``ray_<name>`` (``NAMESPACE = "ray"``,
``ray/_private/telemetry/open_telemetry_metric_recorder.py:21,230-312``), and Prometheus
appends ``_total`` to counters.

- ``ray_serve_deployment_replica_healthy``: gauge, tags ``deployment``, ``application`` and, by
  default (``RAY_SERVE_CONTROLLER_METRICS_INCLUDE_HIGH_CARDINALITY_TAGS=1``), ``replica`` with
  1 for each healthy replica; without the replica tag, the healthy count. Summed by
  deployment, it is the healthy replicas either way. Emitted by the Serve controller (head).
  ``ray/serve/_private/deployment_state.py:3079-3099``.
- ``ray_serve_autoscaling_target_replicas``: gauge, tags ``deployment``, ``application``.
  ``ray/serve/_private/deployment_state.py:3175-3186``.
- ``ray_serve_num_http_requests_total``: counter ``serve_num_{protocol}_requests`` with
  ``protocol = RequestProtocol.HTTP.lower()``, tags ``route``, ``method``, ``application``,
  ``status_code``; emitted by the proxies. ``ray/serve/_private/request_ingress_metrics.py:35-41``.
- ``ray_vllm_*``: vLLM's ``RayPrometheusStatLogger`` (what ``serve_app/engine/vllm_engine.py``
  attaches) replaces every character outside ``[a-zA-Z0-9_]`` with ``_``, so ``vllm:x`` becomes
  ``vllm_x`` before Ray adds ``ray_`` (``vllm/v1/metrics/ray_wrappers.py:69-80``). Tags
  ``model_name``, ``engine`` (``vllm/v1/metrics/loggers.py:499``) and ``ReplicaId``, the Serve
  replica (``ray_wrappers.py:38-44``). Gauges ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc`` (0 to 1):
  ``loggers.py:528,538,620``.
"""

from __future__ import annotations

from collections.abc import Mapping

SERVE_REPLICAS_HEALTHY = "ray_serve_deployment_replica_healthy"
SERVE_TARGET_REPLICAS = "ray_serve_autoscaling_target_replicas"
SERVE_HTTP_REQUESTS = "ray_serve_num_http_requests_total"
VLLM_REQUESTS_RUNNING = "ray_vllm_num_requests_running"
VLLM_REQUESTS_WAITING = "ray_vllm_num_requests_waiting"
VLLM_KV_CACHE_USAGE = "ray_vllm_kv_cache_usage_perc"

_VLLM_LABELS = frozenset({"model_name", "engine", "ReplicaId"})

# Each series with its own labels (Ray adds Component, NodeAddress, SessionName, Version and
# WorkerId to all of them).
PLATFORM_LABELS: Mapping[str, frozenset[str]] = {
    SERVE_REPLICAS_HEALTHY: frozenset({"deployment", "application", "replica"}),
    SERVE_TARGET_REPLICAS: frozenset({"deployment", "application"}),
    SERVE_HTTP_REQUESTS: frozenset({"route", "method", "application", "status_code"}),
    VLLM_REQUESTS_RUNNING: _VLLM_LABELS,
    VLLM_REQUESTS_WAITING: _VLLM_LABELS,
    VLLM_KV_CACHE_USAGE: _VLLM_LABELS,
}
PLATFORM_SERIES: frozenset[str] = frozenset(PLATFORM_LABELS)
