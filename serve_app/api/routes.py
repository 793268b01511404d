"""The HTTP routes, declared once: which are open without an API key, which hold an
admission slot, and the bounded set of route values that logs and metrics use."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    """One path of the API (``{name}`` stands for a path parameter).

    Attributes:
        open: Answered without an API key (probes).
        admitted: Does OCR work: holds an admission slot, and its deadline counts from
            arrival.
    """

    path: str
    open: bool = False
    admitted: bool = False


HEALTH = Route("/health", open=True)
READY = Route("/ready", open=True)
MODELS = Route("/v1/models")
OCR = Route("/v1/ocr", admitted=True)
CHAT = Route("/v1/chat/completions", admitted=True)
# Jobs do their OCR work in the runner deployment: their routes only read and write the store.
JOBS = Route("/v1/jobs")
JOB = Route("/v1/jobs/{job_id}")
JOB_EVENTS = Route("/v1/jobs/{job_id}/events")
JOB_RESULT = Route("/v1/jobs/{job_id}/result")
JOB_PAGE = Route("/v1/jobs/{job_id}/pages/{number}")
JOB_CANCEL = Route("/v1/jobs/{job_id}/cancel")
DOCS = (Route("/docs"), Route("/docs/oauth2-redirect"), Route("/redoc"), Route("/openapi.json"))
# The web page and its files are open: a browser fetches them before the person types a key;
# every call the page makes is checked as any other.
ROOT = Route("/", open=True)
UI_PAGE = Route("/ui/", open=True)
UI_SETTINGS = Route("/ui/settings", open=True)
UI = (ROOT, Route("/ui", open=True), UI_PAGE, UI_SETTINGS,
      Route("/ui/app.js", open=True), Route("/ui/app.css", open=True))  # fmt: skip

ROUTES = (HEALTH, READY, MODELS, OCR, CHAT, JOBS, JOB, JOB_EVENTS, JOB_RESULT, JOB_PAGE,
          JOB_CANCEL, *DOCS, *UI)  # fmt: skip

OPEN_PATHS = frozenset(route.path for route in ROUTES if route.open)
ADMITTED_PATHS = frozenset(route.path for route in ROUTES if route.admitted)
_PATHS = frozenset(route.path for route in ROUTES if "{" not in route.path)
_TEMPLATES = tuple(
    (re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", route.path) + "$"), route.path)
    for route in ROUTES
    if "{" in route.path
)


def route_label(path: str) -> str:
    """``path`` as a metric tag: one of the routes (a template for one with parameters),
    else ``other`` (tags stay bounded).

    >>> route_label("/v1/ocr"), route_label("/v1/jobs/job-1/events"), route_label("/wp-admin")
    ('/v1/ocr', '/v1/jobs/{job_id}/events', 'other')
    """
    if path in _PATHS:
        return path
    for pattern, template in _TEMPLATES:
        if pattern.match(path):
            return template
    return "other"
