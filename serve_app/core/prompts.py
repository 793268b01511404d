"""The DeepSeek-OCR tasks and their prompt texts.

Prompts follow the official ``config.py`` of DeepSeek-OCR (no trailing space). The prompt
starts with the ``<image>`` placeholder; the engine expands it to the image-token run.
"""

from __future__ import annotations

from enum import StrEnum

IMAGE_PLACEHOLDER = "<image>"
MAX_LOCATE_TEXT_CHARS = 500


class Task(StrEnum):
    """What the model is asked to do with an image."""

    DOCUMENT = "document"
    OCR = "ocr"
    FREE = "free"
    FIGURE = "figure"
    DESCRIBE = "describe"
    LOCATE = "locate"

    @property
    def labels_are_text(self) -> bool:
        """Whether a ``<|ref|>`` holds recognised text (a line, a phrase) rather than a layout
        class such as ``title`` or ``image``; such refs stay in the markdown."""
        return self in (Task.OCR, Task.DESCRIBE, Task.LOCATE)


_TASK_TEXT: dict[Task, str] = {
    Task.DOCUMENT: "<|grounding|>Convert the document to markdown.",
    Task.OCR: "<|grounding|>OCR this image.",
    Task.FREE: "Free OCR.",
    Task.FIGURE: "Parse the figure.",
    Task.DESCRIBE: "Describe this image in detail.",
}


def task_of_prompt(text: str) -> Task | None:
    """The task whose prompt ``text`` is exactly, if any: a chat client sending DeepSeek-OCR's
    own prompt asks for that task.

    >>> task_of_prompt("<|grounding|>OCR this image.")
    <Task.OCR: 'ocr'>
    >>> task_of_prompt("What is in this picture?") is None
    True
    """
    text = text.strip()
    for task, prompt in _TASK_TEXT.items():
        if text == prompt:
            return task
    return None


def parse_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive).

    Raises:
        ValueError: For an unknown task name.
    """
    try:
        return Task(name.lower())
    except ValueError:
        choices = ", ".join(t.value for t in Task)
        raise ValueError(f"unknown task {name!r}; expected one of: {choices}") from None


def build_prompt(task: Task, text: str | None = None) -> str:
    """The full prompt for ``task``, starting with the image placeholder.

    Args:
        task: The task.
        text: The phrase to find; required for ``locate`` and rejected for other tasks.

    Raises:
        ValueError: If ``text`` is missing for ``locate``, given for another task, too long,
            or contains the model's control markup (``<|`` or ``<image>``).
    """
    if task is not Task.LOCATE:
        if text is not None:
            raise ValueError(f"task {task.value!r} takes no text; only 'locate' does")
        return f"{IMAGE_PLACEHOLDER}\n{_TASK_TEXT[task]}"
    if not text or not text.strip():
        raise ValueError("task 'locate' needs the text to find")
    if len(text) > MAX_LOCATE_TEXT_CHARS:
        raise ValueError(f"locate text is {len(text)} characters; at most {MAX_LOCATE_TEXT_CHARS}")
    if "<|" in text or "|>" in text or IMAGE_PLACEHOLDER in text:
        raise ValueError("locate text must not contain model control markup such as '<|' or '|>'")
    return f"{IMAGE_PLACEHOLDER}\nLocate <|ref|>{text.strip()}<|/ref|> in the image."


MAX_CUSTOM_PROMPT_CHARS = 2000


def custom_prompt(text: str) -> str:
    """A prompt from free text (the OpenAI chat route), after the image placeholder.

    Raises:
        ValueError: If the text is empty, too long or contains the image placeholder.
    """
    text = text.strip()
    if not text:
        raise ValueError("the prompt text is empty")
    if len(text) > MAX_CUSTOM_PROMPT_CHARS:
        raise ValueError(
            f"prompt text is {len(text)} characters; at most {MAX_CUSTOM_PROMPT_CHARS}"
        )
    if IMAGE_PLACEHOLDER in text:
        raise ValueError("prompt text must not contain the <image> placeholder")
    return f"{IMAGE_PLACEHOLDER}\n{text}"
