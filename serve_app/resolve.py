"""A request's options, resolved once at the door.

The OCR and chat routes turn what the client sent into :class:`RequestFields`;
:func:`resolve_options` checks every field against the configuration and returns the
:class:`~serve_app.pipeline.OCROptions` the stages use: the mode object, the final prompt,
a page selection whose syntax is valid, a dpi and a ``max_tokens`` within their limits. So a
client error is a 4xx before any page is rendered or sent to an engine. Pure: no Ray, vLLM
or FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import AppConfig
from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.pdf import page_spans
from serve_app.core.prompts import Task, build_prompt, custom_prompt, parse_task
from serve_app.errors import InvalidInputError, InvalidPageRangeError
from serve_app.messages import OCROptions


@dataclass(frozen=True)
class RequestFields:
    """What a client asked for, as sent; ``None`` takes the default.

    Attributes:
        task: ``document``, ``ocr``, ``free``, ``figure``, ``describe`` or ``locate``.
        text: The phrase to find (``locate`` only).
        prompt: A free-form instruction instead of a task (the chat route's user text).
    """

    task: str | None = None
    text: str | None = None
    prompt: str | None = None
    mode: str | None = None
    max_crops: int | None = None
    pages: str | None = None
    dpi: int | None = None
    include_regions: bool = True
    include_figures: bool = False
    include_annotated: bool = False
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class Limits:
    """What the deployment allows (from ``AppConfig``)."""

    family: ModelFamily = ModelFamily.OCR1
    default_mode: str = "gundam"
    default_dpi: int = 144
    max_dpi: int = 300
    max_model_len: int = 8192


def door_limits(config: AppConfig) -> Limits:
    """The limits ``config`` sets for requests."""
    return Limits(
        family=config.engine.family,
        default_mode=config.preprocess.default_mode,
        default_dpi=config.preprocess.default_dpi,
        max_dpi=config.preprocess.max_dpi,
        max_model_len=config.engine.max_model_len,
    )


def resolve_options(fields: RequestFields, limits: Limits) -> OCROptions:
    """The stages' options for ``fields``.

    Raises:
        InvalidInputError: Naming the first field that is wrong (unknown task or mode,
            ``max_crops`` out of range, ``text`` missing for ``locate`` or given to another
            task, a prompt too long, dpi or ``max_tokens`` over the limit).
        InvalidPageRangeError: For a malformed page selection (its range against the
            document is checked when the document is opened, before any page is rendered).
    """
    task = _task(fields)
    prompt = _prompt(fields, task)
    mode_name = fields.mode or limits.default_mode
    try:
        mode = get_mode(mode_name, family=limits.family, max_crops=fields.max_crops)
    except ValueError as exc:
        raise InvalidInputError(str(exc), param="mode") from None
    try:
        page_spans(fields.pages)
    except InvalidPageRangeError as exc:
        raise InvalidPageRangeError(exc.message, param="pages") from None
    dpi = fields.dpi if fields.dpi is not None else limits.default_dpi
    if dpi > limits.max_dpi:
        raise InvalidInputError(f"dpi {dpi} is above the limit {limits.max_dpi}", param="dpi")
    # The engine also clamps to what the page's prompt leaves; past the window is an error.
    if fields.max_tokens is not None and fields.max_tokens >= limits.max_model_len:
        raise InvalidInputError(
            f"max_tokens {fields.max_tokens} does not fit the context window of "
            f"{limits.max_model_len} tokens (the page's image tokens take part of it)",
            param="max_tokens",
        )
    return OCROptions(
        mode=mode,
        prompt=prompt,
        labels_are_text=task.labels_are_text,
        pages=fields.pages,
        dpi=dpi,
        include_regions=fields.include_regions,
        include_figures=fields.include_figures,
        include_annotated=fields.include_annotated,
        max_tokens=fields.max_tokens,
        temperature=fields.temperature,
    )


def _task(fields: RequestFields) -> Task:
    try:
        return parse_task(fields.task) if fields.task else Task.DOCUMENT
    except ValueError as exc:
        raise InvalidInputError(str(exc), param="task") from None


def _prompt(fields: RequestFields, task: Task) -> str:
    try:
        if fields.prompt and not fields.task:
            if fields.text is not None:
                raise ValueError("'text' goes with task 'locate', not with a free-form prompt")
            return custom_prompt(fields.prompt)
        return build_prompt(task, fields.text)
    except ValueError as exc:
        param = "text" if fields.text is not None or task is Task.LOCATE else "prompt"
        raise InvalidInputError(str(exc), param=param) from None
