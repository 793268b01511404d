"""The HTTP routes, declared once: which are open without an API key, which hold an
admission slot, and the bounded set of route values that logs and metrics use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    """One path of the API.

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
DOCS = (Route("/docs"), Route("/docs/oauth2-redirect"), Route("/redoc"), Route("/openapi.json"))

ROUTES = (HEALTH, READY, MODELS, OCR, CHAT, *DOCS)

OPEN_PATHS = frozenset(route.path for route in ROUTES if route.open)
ADMITTED_PATHS = frozenset(route.path for route in ROUTES if route.admitted)
_PATHS = frozenset(route.path for route in ROUTES)


def route_label(path: str) -> str:
    """``path`` as a metric tag: one of the routes, else ``other`` (tags stay bounded).

    >>> route_label("/v1/ocr"), route_label("/wp-admin/../etc")
    ('/v1/ocr', 'other')
    """
    return path if path in _PATHS else "other"
