"""``POST /v1/ocr``: its options, reading its body (multipart, form, JSON, raw, or a URL),
and its answer as a stream of JSON lines or a ZIP file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.api.uploads import check_upload_size, decode_file_field
from serve_app.config import IngressConfig
from serve_app.documents.door import RequestFields
from serve_app.documents.messages import PageReport
from serve_app.documents.results import page_json, summary_json, zip_bytes
from serve_app.documents.run import DocumentRun
from serve_app.documents.sources import Source, UrlSource
from serve_app.errors import InvalidInputError, OCRError


class OCRParams(BaseModel):
    """Options of ``POST /v1/ocr`` (JSON fields, form fields or query parameters)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="The model to read with (see /v1/models)")
    task: str | None = Field(
        None, description="document (default), ocr, free, figure, describe, locate"
    )
    mode: str | None = Field(None, description="tiny, small, base, large, gundam")
    max_crops: int | None = Field(None, description="Gundam tile limit, 2..9")
    text: str | None = Field(None, description="What to find, for task=locate")
    pages: str | None = Field(None, description="PDF pages, e.g. '1-3,7' (1-based)")
    dpi: int | None = Field(None, description="PDF render resolution (36 to the service's max)")
    include_regions: bool = True
    include_figures: bool = False
    include_annotated: bool = False
    include_page_image: bool = Field(
        False, description="Each page's image as the model saw it (JPEG, base64): the pixels its "
        "regions' boxes are in"
    )  # fmt: skip
    format: Literal["json", "zip"] = "json"
    stream: bool = Field(False, description="One JSON line per finished page (NDJSON)")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)

    def fields(self) -> RequestFields:
        """The request's fields for :func:`serve_app.documents.door.resolve_options`; a ZIP always
        carries figure crops and annotated pages."""
        return RequestFields(
            model=self.model,
            task=self.task,
            text=self.text,
            mode=self.mode,
            max_crops=self.max_crops,
            pages=self.pages,
            dpi=self.dpi,
            include_regions=self.include_regions,
            include_figures=self.include_figures or self.format == "zip",
            include_annotated=self.include_annotated or self.format == "zip",
            include_page_image=self.include_page_image,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )


P = TypeVar("P", bound=OCRParams)


def ocr_request_body_schema(params: type[OCRParams] = OCRParams) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for ``/v1/ocr`` (or another route taking a document and
    ``params``): the route reads the body itself, so FastAPI cannot derive it."""
    options = params.model_json_schema()
    props = options["properties"]

    url = {"type": "string", "description": "http(s) URL of the image or PDF, instead of file"}

    def with_file(file_schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {"file": file_schema, "url": url, **props}}

    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": with_file({"type": "string", "format": "binary"})},
            "application/json": {
                "schema": with_file(
                    {"type": "string", "description": "base64, or a data: URL with ;base64"}
                )
            },
            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }


async def read_ocr_request(
    request: Request, config: IngressConfig, params: type[P]
) -> tuple[Source, P]:
    """The input (its bytes, or the URL to fetch it from: a JSON or form field, or a query
    parameter ``url``) and the options of a JSON, multipart or raw-body request, read as
    ``params``.

    Raises:
        PayloadTooLargeError: Past ``max_upload_bytes``.
        InvalidInputError: For no file or URL, both, bad base64 or invalid options.
    """
    check_upload_size(request, config)
    fields: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    data = b""
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        upload = form.get("file")
        if isinstance(upload, str):
            raise InvalidInputError("'file' must be a file part", param="file")
        data = await upload.read() if upload is not None else b""
        fields.update({k: v for k, v in form.items() if k != "file" and isinstance(v, str)})
    elif content_type.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"the body is not valid JSON: {exc.msg}") from None
        if not isinstance(body, dict) or not isinstance(body.get("file", body.get("url")), str):
            raise InvalidInputError(
                "JSON requests need 'file' (base64 data or a data URL) or 'url'"
            )
        data = decode_file_field(body.pop("file")) if "file" in body else b""
        fields.update(body)
    else:
        data = await request.body()
    url = fields.pop("url", None)
    source: Source = data
    if url is not None:
        if data:
            raise InvalidInputError("send a file or a 'url', not both", param="url")
        if not isinstance(url, str):
            raise InvalidInputError("'url' must be a string", param="url")
        source = UrlSource(url)
    elif not data:
        raise InvalidInputError("the request carries no file (send one, or a 'url')")
    check_upload_size(data, config)
    try:
        return source, params.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInputError(_validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


async def ndjson_lines(run: DocumentRun) -> AsyncIterator[str]:
    """A stream: one line per finished page, then the summary; or an error as the last line
    (a deadline, a full service), since the status was sent with the first line."""
    reports: list[PageReport] = []
    try:
        async for report in run.reports():
            reports.append(report)
            yield json.dumps(page_json(report, run.options)) + "\n"
    except OCRError as error:
        yield json.dumps({"object": "error", **error.to_body()}) + "\n"
        return
    yield json.dumps(summary_json(run.request_id, run.model, run.info, reports)) + "\n"


async def zip_response(run: DocumentRun, reports: Sequence[PageReport]) -> Response:
    """The document as a ZIP download (built off the event loop: seconds for long ones)."""
    data = await asyncio.to_thread(
        zip_bytes, run.request_id, run.model, run.info, reports, run.options
    )
    headers = {"Content-Disposition": f'attachment; filename="{run.request_id}.zip"'}
    return Response(data, media_type="application/zip", headers=headers)
