"""A document's outputs: ``<stem>.md``, ``<stem>.json`` (the service's answer: pages with
boxes) and, when asked, ``<stem>_figures/``; each written aside and renamed."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from dsocr.state import write_atomically

PAGE_SPLIT = "\n\n<--- Page Split --->\n\n"  # the service's marker between pages


def page_markdown(page: dict[str, Any]) -> str:
    """A page's markdown; a failed page as the comment the service puts in its place."""
    if "error" in page:
        note = " ".join(page["error"]["message"].split()).replace("--", "-")
        return f"<!-- page {page['page']} failed: {note} -->"
    return str(page["markdown"])


def document(summary: dict[str, Any], pages: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``/v1/ocr`` answer from a stream's pages and summary line."""
    ordered = sorted(pages, key=lambda page: int(page["page"]))
    markdown = PAGE_SPLIT.join(page_markdown(page) for page in ordered)
    return {**summary, "markdown": markdown, "pages": ordered}


def write_outputs(out: Path, stem: Path, answer: dict[str, Any]) -> list[Path]:
    """Write the document's files; figures go to files, not into the JSON."""
    written = []
    figures_dir = out / f"{stem}_figures"
    for page in answer["pages"]:
        for figure in page.get("figures", ()):
            data = figure.pop("image_base64", None)
            if data is not None:
                path = figures_dir / Path(figure["name"]).name
                write_atomically(path, base64.b64decode(data))
                figure["file"] = str(path.relative_to(out))
                written.append(path)
    markdown, as_json = out / f"{stem}.md", out / f"{stem}.json"
    write_atomically(markdown, answer["markdown"].encode())
    write_atomically(as_json, json.dumps(answer, indent=1).encode())
    return [markdown, as_json, *written]
