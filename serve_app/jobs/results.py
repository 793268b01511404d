"""A job as the API shows it, and its result built from its stored pages: the same JSON,
markdown and ZIP that ``/v1/ocr`` answers for the document, with the job's state beside it.
Pure: plain values in, plain values out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from serve_app.core.document import (
    Figure,
    PageFailure,
    PageOutcome,
    PageResult,
    bundle_zip,
    document_markdown,
)
from serve_app.core.grounding import Box, Grounded
from serve_app.jobs.model import Job, JobState


def job_json(
    job: Job, now: float, queue_position: int | None = None, base: str = ""
) -> dict[str, Any]:
    """What ``GET /v1/jobs/{id}`` answers: state, pages, times (Unix seconds), an estimate of
    the seconds left, and the job's URLs under ``base`` (the app's root path)."""
    url = f"{base}/v1/jobs/{job.id}"
    out: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "status": job.state.value,
        "model": job.spec.fields.model,
        "kind": job.kind,
        "page_count": job.page_count,
        "pages": {"total": job.pages_total, "done": job.pages_done, "failed": job.pages_failed},
        "queue_position": queue_position if job.state is JobState.QUEUED else None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "expired_at": job.expired_at,
        "estimated_seconds_left": seconds_left(job, now),
        "error": job.error,
        "metadata": job.spec.metadata,
        "urls": {
            "self": url,
            "events": f"{url}/events",
            "result": f"{url}/result",
            "cancel": f"{url}/cancel",
        },
    }
    return out


def seconds_left(job: Job, now: float) -> float | None:
    """The pages left at the rate pages were stored since the job started; ``None`` before
    a page was stored (or once the job ended: 0)."""
    if job.state.final:
        return 0.0
    total = job.pages_total
    if job.started_at is None or total is None or job.pages_done == 0:
        return None
    rate = job.pages_done / max(now - job.started_at, 1e-3)
    return round((total - job.pages_done) / rate, 1)


def result_json(job: Job, pages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The document's answer as ``/v1/ocr`` gives it (pages done so far, in page order),
    with the job's ``status``."""
    out = stored_result_json(job.id, job.spec.fields.model, job.kind, job.page_count, pages)
    return {"id": out.pop("id"), "object": out.pop("object"), "status": job.state.value} | out


def stored_result_json(
    result_id: str, model: str | None, kind: str | None, page_count: int | None,
    pages: Sequence[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """A document's answer as ``/v1/ocr`` gives it, from its stored page objects (in page
    order whatever their order here)."""
    ordered = _in_order(pages)
    ok = [page for page in ordered if "error" not in page]
    return {
        "id": result_id,
        "object": "ocr.result",
        "model": model,
        "kind": kind,
        "page_count": page_count,
        "pages_processed": len(ordered),
        "pages_failed": len(ordered) - len(ok),
        "pages_truncated": sum(1 for page in ok if page.get("truncated")),
        "usage": {
            "prompt_tokens": sum(page["usage"]["prompt_tokens"] for page in ok),
            "completion_tokens": sum(page["usage"]["completion_tokens"] for page in ok),
        },
        "markdown": result_markdown(ordered),
        "pages": ordered,
    }


def result_markdown(pages: Sequence[dict[str, Any]]) -> str:
    """The pages' markdown joined in page order, a failed page as a comment naming why."""
    return document_markdown([page_outcome(page) for page in _in_order(pages)])


def result_zip(job: Job, pages: Sequence[dict[str, Any]], dpi: int) -> bytes:
    """The ZIP ``/v1/ocr?format=zip`` answers, from the stored pages (figures and annotated
    pages as far as the job asked for them). CPU-heavy: call it off the event loop."""
    summary = result_json(job, pages)
    inline = ("figures", "annotated_image_base64", "page_image_base64")
    summary["pages"] = [
        {k: v for k, v in page.items() if k not in inline} for page in summary["pages"]
    ]
    outcomes = [page_outcome(page) for page in _in_order(pages)]
    return bundle_zip(
        outcomes,
        dpi=dpi if job.kind == "pdf" else 72,
        extra_files={"result.json": json.dumps(summary, indent=2).encode()},
    )


def page_outcome(page: dict[str, Any]) -> PageOutcome:
    """A stored page's JSON back as the page outcome the document outputs are built from
    (its regions are not needed for them)."""
    number = int(page["page"])
    if "error" in page:
        return PageFailure(number, page["error"]["code"], page["error"]["message"])
    figures = tuple(
        Figure(
            figure["name"],
            Box(*figure["box_999"]),
            Box(*figure["box"]),
            base64.b64decode(figure["image_base64"]),
        )  # fmt: skip
        for figure in page.get("figures", ())
    )
    annotated = page.get("annotated_image_base64")
    return PageResult(
        number=number,
        width=page["width"],
        height=page["height"],
        raw_text=page["raw_text"],
        grounded=Grounded(blocks=(), problems=tuple(page.get("problems", ()))),
        markdown=page["markdown"],
        figures=figures,
        annotated_jpeg=base64.b64decode(annotated) if annotated else None,
    )


def _in_order(pages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pages, key=lambda page: int(page["page"]))
