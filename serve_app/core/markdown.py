"""Markdown from parsed model output, per page and for a whole document.

Follows the official DeepSeek-OCR scripts: layout tags are removed, each ``image`` region
becomes a link to its figure crop, ``\\coloneqq``/``\\eqqcolon`` are rewritten, and runs of
blank lines collapse. Two of the scripts' bugs are fixed: figures are numbered per box (one
ref may carry several boxes), and a page is never dropped for ending without EOS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from serve_app.core.grounding import Block, Box, Grounded

FIGURE_LABEL = "image"
PAGE_SPLIT = "<--- Page Split --->"

_CONTROL_TOKEN_RE = re.compile(r"<\|/?[A-Za-z_]+\|>|<｜[^｜]{1,40}｜>")
_BLANK_RUN_RE = re.compile(r"\n{3,}")
_LATEX_FIXES = (("\\coloneqq", ":="), ("\\eqqcolon", "=:"))


def figure_boxes(grounded: Grounded, *, labels_are_text: bool = False) -> list[Box]:
    """The 0..999 boxes of figure regions, in the order their links appear in the markdown.

    Args:
        grounded: The parsed page.
        labels_are_text: True for tasks whose refs hold text (OCR lines, phrases): such
            output has no figures.
    """
    if labels_are_text:
        return []
    return [box for b in grounded.blocks if b.label == FIGURE_LABEL for box in b.boxes]


def figure_name(page_number: int, index: int) -> str:
    """Relative path of a figure crop: ``images/<page>_<k>.jpg``, both counted from 1."""
    return f"images/{page_number}_{index + 1}.jpg"


def page_markdown(
    grounded: Grounded, *, page_number: int = 1, labels_are_text: bool = False
) -> str:
    """The markdown of one page.

    Args:
        grounded: The parsed page.
        page_number: 1-based page number, used in figure link names.
        labels_are_text: Keep ref labels as text (OCR lines, grounded phrases) instead of
            treating them as layout classes.
    """
    parts: list[str] = []
    figures = 0
    for block in grounded.blocks:
        if labels_are_text:
            parts.append((block.label or "") + block.text)
        elif block.label == FIGURE_LABEL:
            parts.extend(
                f"![]({figure_name(page_number, figures + k)})\n" for k in range(len(block.boxes))
            )
            figures += len(block.boxes)
            parts.append(block.text)
        else:
            parts.append(block.text)
    return clean_text("".join(parts))


def clean_text(text: str) -> str:
    """Remove leftover control tokens, apply the LaTeX fixes, collapse blank-line runs."""
    text = _CONTROL_TOKEN_RE.sub("", text)
    for old, new in _LATEX_FIXES:
        text = text.replace(old, new)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUN_RE.sub("\n\n", text).strip("\n")


def join_pages(pages: Sequence[str]) -> str:
    """Join page markdowns with the official page-split marker between pages."""
    return f"\n\n{PAGE_SPLIT}\n\n".join(pages)


def error_page_markdown(page_number: int, message: str) -> str:
    """What stands in the document for a page that produced no result."""
    note = " ".join(message.split()).replace("--", "-")
    return f"<!-- page {page_number} failed: {note} -->"


def block_text(block: Block) -> str:
    """A block's content, cleaned for display (used for per-region text in API answers)."""
    return clean_text(block.text)
