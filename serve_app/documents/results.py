"""A document's results as the service answers them, built from page reports: each page's
JSON object, the summary, the whole document's JSON, the ZIP bundle; and the document's error
when no page succeeded. Plain values (dicts, bytes): ``/v1/ocr``, jobs and batch output share
them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from serve_app.core.document import PageFailure, PageResult, bundle_zip, document_markdown
from serve_app.documents.messages import DocumentInfo, OCROptions, PageReport
from serve_app.errors import OCRError, ServerError, error_class


def page_json(report: PageReport, options: OCROptions) -> dict[str, Any]:
    """One page: its result (markdown, raw text, regions, figures, usage) or its error."""
    out: dict[str, Any] = {"object": "ocr.page", "index": report.number - 1,
                           "page": report.number, "timings": report.timings}  # fmt: skip
    if report.engine_crashes:
        out["engine_crashes"] = report.engine_crashes
    if isinstance(report.outcome, PageFailure):
        out["error"] = {"code": report.outcome.code, "message": report.outcome.message}
        return out
    result: PageResult = report.outcome
    gen = report.generation
    out.update(
        width=result.width,
        height=result.height,
        mode=report.mode,
        grid=list(report.grid) if report.grid else None,
        markdown=result.markdown,
        raw_text=result.raw_text,
        finish_reason=gen.finish_reason if gen else None,
        truncated=gen.truncated if gen else False,
        attempts=gen.attempts if gen else 0,
        usage={
            "prompt_tokens": gen.prompt_tokens if gen else 0,
            "completion_tokens": gen.completion_tokens if gen else 0,
        },
        problems=list(result.grounded.problems),
    )
    if options.include_regions:
        out["regions"] = [
            {
                "label": region.label,
                "boxes": [b.to_pixels(result.width, result.height).as_list() for b in region.boxes],
                "boxes_999": [b.as_list() for b in region.boxes],
                "text": region.text.strip(),
            }
            for region in result.grounded.regions
        ]
    if options.include_figures:
        out["figures"] = [
            {
                "name": f.name,
                "box": f.pixel_box.as_list(),
                "box_999": f.box.as_list(),
                "image_base64": base64.b64encode(f.jpeg).decode(),
            }  # fmt: skip
            for f in result.figures
        ]
    if options.include_annotated and result.annotated_jpeg is not None:
        out["annotated_image_base64"] = base64.b64encode(result.annotated_jpeg).decode()
    if options.include_page_image and result.page_jpeg is not None:
        out["page_image_base64"] = base64.b64encode(result.page_jpeg).decode()
    return out


def summary_json(
    request_id: str, model: str, info: DocumentInfo, reports: Sequence[PageReport]
) -> dict[str, Any]:
    """Totals over a document (the last line of a stream, and part of the full answer)."""
    ok = [r for r in reports if isinstance(r.outcome, PageResult)]
    return {
        "id": request_id,
        "object": "ocr.result",
        "model": model,
        "kind": info.kind,
        "page_count": info.page_count,
        "pages_processed": len(reports),
        "pages_failed": len(reports) - len(ok),
        "pages_truncated": sum(1 for r in ok if r.generation and r.generation.truncated),
        "usage": {
            "prompt_tokens": sum(r.generation.prompt_tokens for r in ok if r.generation),
            "completion_tokens": sum(r.generation.completion_tokens for r in ok if r.generation),
        },
    }


def document_failure(reports: Sequence[PageReport]) -> OCRError | None:
    """The error of a document none of whose pages succeeded: the pages' error if they share
    one (a 5xx for server-side reasons, a 4xx such as a quarantined page), else a 500;
    ``None`` when a page succeeded."""
    failures = [r.outcome for r in reports if isinstance(r.outcome, PageFailure)]
    if not reports or len(failures) < len(reports):
        return None
    kinds = {error_class(f.code) for f in failures}
    kind = kinds.pop() if len(kinds) == 1 else ServerError
    plural = "s" if len(failures) > 1 else ""
    return kind(f"no page succeeded ({len(failures)} page{plural}): {failures[0].message}")


def document_json(
    request_id: str,
    model: str,
    info: DocumentInfo,
    reports: Sequence[PageReport],
    options: OCROptions,
) -> dict[str, Any]:
    """The full answer: summary, joined markdown and every page."""
    out = summary_json(request_id, model, info, reports)
    out["markdown"] = document_markdown([r.outcome for r in reports])
    out["pages"] = [page_json(r, options) for r in reports]
    return out


def zip_bytes(
    request_id: str,
    model: str,
    info: DocumentInfo,
    reports: Sequence[PageReport],
    options: OCROptions,
) -> bytes:
    """``result.json`` (without inline images), page markdown, figures, annotated pages and
    the layout PDF, as one ZIP (CPU-heavy for long documents: call it off the event loop)."""
    summary = document_json(request_id, model, info, reports, options)
    for page in summary["pages"]:
        page.pop("figures", None)
        page.pop("annotated_image_base64", None)
        page.pop("page_image_base64", None)
    return bundle_zip(
        [r.outcome for r in reports],
        dpi=options.dpi if info.kind == "pdf" else 72,
        extra_files={"result.json": json.dumps(summary, indent=2).encode()},
    )
