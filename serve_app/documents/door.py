"""A request's options, resolved once at the door.

The OCR and chat routes turn what the client sent into :class:`RequestFields`;
:func:`resolve_options` checks every field against the configuration and returns the
:class:`~serve_app.documents.messages.OCROptions` the stages use: the mode object, the final prompt,
a page selection whose syntax is valid, a dpi and a ``max_tokens`` within their limits. So a
client error is a 4xx before any page is rendered or sent to an engine. Pure: no Ray, vLLM
or FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from serve_app.config import AppConfig
from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.pdf import page_spans
from serve_app.core.prompts import Task, build_prompt, custom_prompt, parse_task, task_of_prompt
from serve_app.documents.messages import OCROptions
from serve_app.errors import (
    InvalidInputError,
    InvalidPageRangeError,
    ModelNotFoundError,
    TaskNotSupportedError,
)

EVERY_TASK: frozenset[Task | None] = frozenset({*Task, None})
MIN_DPI = 36  # below it a page's text is a few pixels high


@dataclass(frozen=True)
class RequestFields:
    """What a client asked for, as sent; ``None`` takes the default.

    Attributes:
        model: The served model's id; ``None`` takes the service's default.
        task: ``document``, ``ocr``, ``free``, ``figure``, ``describe`` or ``locate``.
        text: The phrase to find (``locate`` only).
        prompt: A free-form instruction instead of a task (the chat route's user text).
    """

    model: str | None = None
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
    include_page_image: bool = False
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class Limits:
    """What the deployment allows one model's requests (from ``AppConfig``).

    Attributes:
        reads: What the model's engine needs from preprocess (``views`` or ``page``).
        tasks: The tasks it can do; ``None`` stands for a free-form prompt.
    """

    model: str = "deepseek-ocr"
    reads: Literal["views", "page"] = "views"
    tasks: frozenset[Task | None] = field(default=EVERY_TASK)
    family: ModelFamily = ModelFamily.OCR1
    default_mode: str = "gundam"
    default_dpi: int = 144
    max_dpi: int = 300
    max_model_len: int = 8192


def door_limits(config: AppConfig) -> dict[str, Limits]:
    """The limits ``config`` sets for requests, by model."""
    return {
        name: Limits(
            model=name,
            reads=engine.reads,
            tasks=engine.tasks,
            family=engine.family,
            default_mode=config.preprocess.default_mode,
            default_dpi=config.preprocess.default_dpi,
            max_dpi=config.preprocess.max_dpi,
            max_model_len=engine.max_model_len,
        )
        for name, engine in config.models.items()
    }


class Door:
    """Resolves a request's fields for the model it names (or the default model)."""

    def __init__(self, config: AppConfig) -> None:
        self.models = door_limits(config)
        self.default = config.default_model_name

    def resolve(self, fields: RequestFields) -> OCROptions:
        """The stages' options for ``fields``.

        Raises:
            ModelNotFoundError: For a model this service does not serve (404).
            TaskNotSupportedError: For a task the model cannot do (422, naming models that
                can).
            ClientError: As :func:`resolve_options`.
        """
        name = fields.model or self.default
        limits = self.models.get(name)
        if limits is None:
            raise ModelNotFoundError(
                f"the model {name!r} does not exist; this service serves: {', '.join(self.models)}",
                param="model",
            )
        return resolve_options(fields, limits, self.models)


def resolve_options(
    fields: RequestFields, limits: Limits, models: Mapping[str, Limits] | None = None
) -> OCROptions:
    """The stages' options for ``fields``, read by the model of ``limits`` (``models``: all
    served models, named in the error for a task this one cannot do).

    Raises:
        TaskNotSupportedError: For a task the model cannot do.
        InvalidInputError: Naming the first field that is wrong (unknown task or mode,
            ``max_crops`` out of range, ``text`` missing for ``locate`` or given to another
            task, a prompt too long, dpi or ``max_tokens`` over the limit).
        InvalidPageRangeError: For a malformed page selection (its range against the
            document is checked when the document is opened, before any page is rendered).
    """
    parsed = _task(fields)
    prompt = _prompt(fields, parsed)
    task: Task | None = parsed
    if fields.prompt and not fields.task:
        task = task_of_prompt(fields.prompt)  # DeepSeek-OCR's own prompt names its task
    if task not in limits.tasks:
        raise _unsupported(task, limits, models or {})
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
    if not MIN_DPI <= dpi <= limits.max_dpi:
        raise InvalidInputError(f"dpi {dpi} is outside {MIN_DPI}..{limits.max_dpi}", param="dpi")
    # The engine also clamps to what the page's prompt leaves; past the window is an error.
    if fields.max_tokens is not None and fields.max_tokens >= limits.max_model_len:
        raise InvalidInputError(
            f"max_tokens {fields.max_tokens} does not fit the context window of "
            f"{limits.max_model_len} tokens (the page's image tokens take part of it)",
            param="max_tokens",
        )
    return OCROptions(
        model=limits.model,
        reads=limits.reads,
        mode=mode,
        task=task,
        text=fields.text.strip() if task is Task.LOCATE and fields.text else None,
        prompt=prompt,
        labels_are_text=task.labels_are_text if task else False,
        pages=fields.pages,
        dpi=dpi,
        include_regions=fields.include_regions,
        include_figures=fields.include_figures,
        include_annotated=fields.include_annotated,
        include_page_image=fields.include_page_image,
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


def _unsupported(
    task: Task | None, limits: Limits, models: Mapping[str, Limits]
) -> TaskNotSupportedError:
    what = f"task {task.value!r}" if task else "a free-form prompt"
    able = [name for name, other in models.items() if task in other.tasks]
    can = ", ".join(t.value for t in Task if t in limits.tasks)
    where = f"models that can: {', '.join(able)}" if able else "no model served here can"
    return TaskNotSupportedError(
        f"the model {limits.model!r} cannot do {what} (it can: {can}); {where}",
        param="task" if task else "messages",
    )
