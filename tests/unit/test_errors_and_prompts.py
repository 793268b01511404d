"""The error hierarchy and the task prompts."""

from __future__ import annotations

import pickle

import pytest

from serve_app import errors
from serve_app.core.prompts import Task, build_prompt, parse_task

ALL_ERRORS = [
    cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.OCRError)
]  # fmt: skip


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_errors_pickle_and_have_sane_status(cls: type[errors.OCRError]) -> None:
    err = cls("something went wrong")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is cls and clone.message == "something went wrong"
    if issubclass(cls, errors.ClientError):
        assert 400 <= cls.status_code < 500
        assert cls.error_type == "invalid_request_error"
    else:
        assert 500 <= cls.status_code < 600
    body = err.to_body()["error"]
    assert body == {"message": "something went wrong", "type": cls.error_type,
                    "code": cls.code, "param": None}  # fmt: skip


def test_error_codes_are_unique() -> None:
    codes = [cls.code for cls in ALL_ERRORS if cls is not errors.OCRError]
    assert len(codes) == len(set(codes))


def test_retryable_errors_say_when() -> None:
    for cls in (errors.RateLimitedError, errors.OverloadedError, errors.NotReadyError):
        assert cls.retry_after_s is not None and cls.retry_after_s > 0


@pytest.mark.parametrize(
    ("task", "prompt"),
    [
        (Task.DOCUMENT, "<image>\n<|grounding|>Convert the document to markdown."),
        (Task.OCR, "<image>\n<|grounding|>OCR this image."),
        (Task.FREE, "<image>\nFree OCR."),
        (Task.FIGURE, "<image>\nParse the figure."),
        (Task.DESCRIBE, "<image>\nDescribe this image in detail."),
    ],
)
def test_prompts(task: Task, prompt: str) -> None:
    assert build_prompt(task) == prompt


def test_locate_prompt() -> None:
    assert build_prompt(Task.LOCATE, " total due ") == (
        "<image>\nLocate <|ref|>total due<|/ref|> in the image."
    )
    for bad in (None, "  ", "x<|/ref|>", "a" * 501):
        with pytest.raises(ValueError):  # noqa: PT011
            build_prompt(Task.LOCATE, bad)
    with pytest.raises(ValueError, match="takes no text"):
        build_prompt(Task.FREE, "x")


def test_parse_task() -> None:
    assert parse_task("Document") is Task.DOCUMENT
    with pytest.raises(ValueError, match="unknown task"):
        parse_task("summarise")
