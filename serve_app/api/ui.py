"""The web page at ``/ui/`` (``/`` redirects there): static files shipped in the package,
nothing loaded from elsewhere, no build step. ``/ui/settings`` tells the page what this
service offers (keys, URL inputs, jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse

from serve_app.api import routes

FILES = Path(__file__).parent / "ui"
MEDIA_TYPES = {"app.js": "text/javascript", "app.css": "text/css"}
# Model output is untrusted: whatever markup slips past the page's sanitizer still cannot run
# a script, load from elsewhere or be framed.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def add_ui_routes(api: FastAPI, settings: dict[str, Any]) -> None:
    """The page, its script and style, and its settings."""

    @api.get(routes.ROOT.path, include_in_schema=False)
    @api.get(routes.UI_PAGE.path.rstrip("/"), include_in_schema=False)
    async def to_ui() -> RedirectResponse:
        return RedirectResponse("ui/")  # relative: right behind a route prefix too

    @api.get(routes.UI_PAGE.path, include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(FILES / "index.html", media_type="text/html", headers=HEADERS)

    @api.get(routes.UI_SETTINGS.path, include_in_schema=False)
    async def ui_settings() -> dict[str, Any]:
        return settings

    for name, media_type in MEDIA_TYPES.items():
        api.add_api_route(
            f"{routes.UI_PAGE.path}{name}",
            _file_route(FILES / name, media_type),
            methods=["GET"],
            include_in_schema=False,
        )


def _file_route(path: Path, media_type: str) -> Any:
    async def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers=HEADERS)

    return serve
