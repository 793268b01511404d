"""A prepared page's data (views, pixels) held in Ray's object store, and reading it back."""

from __future__ import annotations

from typing import TypeVar

import ray
from ray import ObjectRef
from ray.exceptions import ObjectLostError

from serve_app.core.tiling import EngineImage
from serve_app.documents.messages import PagePixels, PreparedPage
from serve_app.errors import PageDataLostError

T = TypeVar("T")

# A prepared page whose data stays in the object store: only its header and references travel.
StoredPage = PreparedPage[ObjectRef[EngineImage], ObjectRef[PagePixels]]


def _lost(error: ObjectLostError) -> PageDataLostError:
    return PageDataLostError(f"the page's data left the object store ({type(error).__name__})")


async def page_data(ref: ObjectRef[T]) -> T:
    """The value behind an object reference.

    Raises:
        PageDataLostError: The object is gone (its node died, or Ray's reference counting
            dropped it, which Ray 2.60 can do for references nested in a task's return value);
            the ingress prepares the page again.
    """
    try:
        return await ref
    except ObjectLostError as lost:
        raise _lost(lost) from None


def page_data_sync(ref: ObjectRef[T]) -> T:
    """:func:`page_data` for a replica method that runs in a thread."""
    try:
        return ray.get(ref)
    except ObjectLostError as lost:
        raise _lost(lost) from None
