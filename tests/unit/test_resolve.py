"""Options are resolved once, at the door: every bad combination is a 4xx naming its field."""

from __future__ import annotations

import pytest

from serve_app.config import AppConfig, EngineConfig
from serve_app.core.modes import ModelFamily, get_mode
from serve_app.core.prompts import Task, build_prompt, custom_prompt
from serve_app.documents.door import Door, Limits, RequestFields, resolve_options
from serve_app.errors import ClientError

LIMITS = Limits(max_dpi=300, max_model_len=8192)

# (what the client sent, error code, the field it names, words of the message)
BAD_REQUESTS = [
    (RequestFields(task="locate"), "invalid_input", "text", "needs the text to find"),
    (RequestFields(task="locate", text="   "), "invalid_input", "text", "needs the text"),
    (RequestFields(task="locate", text="<|ref|>x"), "invalid_input", "text", "control markup"),
    (RequestFields(task="locate", text="x" * 501), "invalid_input", "text", "at most 500"),
    (RequestFields(task="document", text="total"), "invalid_input", "text", "takes no text"),
    (RequestFields(text="total"), "invalid_input", "text", "takes no text"),
    (RequestFields(prompt="Find it", text="total"), "invalid_input", "text", "free-form"),
    (RequestFields(task="summarise"), "invalid_input", "task", "unknown task"),
    (RequestFields(mode="huge"), "invalid_input", "mode", "unknown mode"),
    (RequestFields(mode="gundam", max_crops=1), "invalid_input", "mode", "between 2 and 9"),
    (RequestFields(mode="gundam", max_crops=10), "invalid_input", "mode", "between 2 and 9"),
    (RequestFields(mode="tiny", max_crops=4), "invalid_input", "mode", "only to cropping"),
    (RequestFields(pages="3-1"), "invalid_page_range", "pages", "pages count from 1"),
    (RequestFields(pages="0"), "invalid_page_range", "pages", "pages count from 1"),
    (RequestFields(pages="1-3,x"), "invalid_page_range", "pages", "invalid page selection"),
    (RequestFields(pages="1--2"), "invalid_page_range", "pages", "invalid page selection"),
    (RequestFields(dpi=301), "invalid_input", "dpi", "dpi 301 is outside 36..300"),
    (RequestFields(dpi=35), "invalid_input", "dpi", "dpi 35 is outside 36..300"),
    (RequestFields(max_tokens=8192), "invalid_input", "max_tokens", "context window"),
    (RequestFields(prompt="p" * 2001), "invalid_input", "prompt", "at most 2000"),
    (RequestFields(prompt="<image> twice"), "invalid_input", "prompt", "placeholder"),
]


@pytest.mark.parametrize(("fields", "code", "param", "words"), BAD_REQUESTS)
def test_bad_options_are_client_errors_naming_the_field(
    fields: RequestFields, code: str, param: str | None, words: str
) -> None:
    with pytest.raises(ClientError) as info:
        resolve_options(fields, LIMITS)
    error = info.value
    assert (error.status_code, error.code, error.param) == (400, code, param)
    assert words in error.message
    assert error.to_body()["error"]["param"] == param


def test_defaults_resolve_to_gundam_document_markdown() -> None:
    options = resolve_options(RequestFields(), LIMITS)
    assert options.mode == get_mode("gundam")
    assert options.prompt == build_prompt(Task.DOCUMENT)
    assert (options.dpi, options.pages, options.labels_are_text) == (144, None, False)


def test_fields_resolve_to_what_the_stages_use() -> None:
    options = resolve_options(
        RequestFields(task="locate", text=" the total ", mode="gundam", max_crops=9,
                      pages="2-", dpi=300, max_tokens=8191, temperature=0.2),
        LIMITS,
    )  # fmt: skip
    assert options.prompt == "<image>\nLocate <|ref|>the total<|/ref|> in the image."
    assert options.labels_are_text  # locate: a ref holds the text found
    assert options.mode == get_mode("gundam", max_crops=9)
    assert (options.pages, options.dpi, options.max_tokens, options.temperature) == (
        "2-", 300, 8191, 0.2,
    )  # fmt: skip


def test_a_chat_prompt_is_the_prompt_unless_a_task_is_named() -> None:
    free = resolve_options(RequestFields(prompt="Free OCR."), LIMITS)
    assert free.prompt == custom_prompt("Free OCR.")
    named = resolve_options(RequestFields(prompt="ignored", task="ocr"), LIMITS)
    assert named.prompt == build_prompt(Task.OCR) and named.labels_are_text


def test_the_model_family_decides_the_modes() -> None:
    ocr2 = Limits(family=ModelFamily.OCR2)
    assert resolve_options(RequestFields(), ocr2).mode.tile_size == 768
    with pytest.raises(ClientError, match="does not support mode 'tiny'"):
        resolve_options(RequestFields(mode="tiny"), ocr2)


TWO_MODELS = AppConfig(models={
    "rapidocr": EngineConfig(kind="rapidocr"),
    "deepseek-ocr": EngineConfig(kind="fake"),
})  # fmt: skip


def test_the_door_picks_the_named_model_or_the_first() -> None:
    door = Door(TWO_MODELS)

    default = door.resolve(RequestFields())
    named = door.resolve(RequestFields(model="deepseek-ocr", mode="tiny"))

    assert (default.model, default.reads, default.mode_label) == ("rapidocr", "page", "page")
    assert (named.model, named.reads, named.mode_label) == ("deepseek-ocr", "views", "tiny")
    assert (
        Door(TWO_MODELS.model_copy(update={"default_model": "deepseek-ocr"}))
        .resolve(RequestFields())
        .model
        == "deepseek-ocr"
    )


def test_an_unknown_model_is_a_404_naming_the_served_ones() -> None:
    with pytest.raises(ClientError) as caught:
        Door(TWO_MODELS).resolve(RequestFields(model="gpt-4o"))
    error = caught.value
    assert (error.status_code, error.code, error.param) == (404, "model_not_found", "model")
    assert (
        error.message
        == "the model 'gpt-4o' does not exist; this service serves: rapidocr, deepseek-ocr"
    )


@pytest.mark.parametrize(
    ("fields", "param", "what"),
    [
        (RequestFields(task="describe"), "task", "task 'describe'"),
        (RequestFields(task="figure"), "task", "task 'figure'"),
        (RequestFields(prompt="What does the sign say?"), "messages", "a free-form prompt"),
    ],
)
def test_a_task_the_model_cannot_do_is_a_422_naming_who_can(
    fields: RequestFields, param: str, what: str
) -> None:
    with pytest.raises(ClientError) as caught:
        Door(TWO_MODELS).resolve(fields)
    error = caught.value
    assert (error.status_code, error.code, error.param) == (422, "task_not_supported", param)
    assert error.message == (
        f"the model 'rapidocr' cannot do {what} (it can: document, ocr, free, locate); "
        "models that can: deepseek-ocr"
    )


def test_deepseek_ocrs_own_prompt_names_its_task() -> None:
    door = Door(TWO_MODELS)
    options = door.resolve(RequestFields(prompt="<|grounding|>OCR this image."))
    assert (options.task, options.labels_are_text) == (Task.OCR, True)
    assert options.prompt == build_prompt(Task.OCR)
    # To a model that reads prompts the text is still a prompt, its task known.
    free = door.resolve(RequestFields(model="deepseek-ocr", prompt="Free OCR."))
    assert (free.task, free.prompt) == (Task.FREE, build_prompt(Task.FREE))
    custom = door.resolve(RequestFields(model="deepseek-ocr", prompt="Read the sign."))
    assert (custom.task, custom.prompt) == (None, custom_prompt("Read the sign."))


def test_locate_carries_its_phrase_to_the_engine() -> None:
    options = Door(TWO_MODELS).resolve(RequestFields(task="locate", text="  Total due "))
    assert (options.task, options.text) == (Task.LOCATE, "Total due")
