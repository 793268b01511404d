"""Reading a prepared page's data (views, pixels) from Ray's object store."""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import ObjectLostError

from serve_app.errors import PageDataLostError


def _lost(error: ObjectLostError) -> PageDataLostError:
    return PageDataLostError(f"the page's data left the object store ({type(error).__name__})")


async def page_data(value: object) -> Any:
    """The value behind an object reference (or the value itself, when inline).

    Raises:
        PageDataLostError: The object is gone (its node died, or Ray's reference counting
            dropped it, which Ray 2.60 can do for references nested in a task's return value);
            the ingress prepares the page again.
    """
    if not isinstance(value, ray.ObjectRef):
        return value
    try:
        return await value
    except ObjectLostError as lost:
        raise _lost(lost) from None


def page_data_sync(value: object) -> Any:
    """:func:`page_data` for a replica method that runs in a thread."""
    if not isinstance(value, ray.ObjectRef):
        return value
    try:
        return ray.get(value)
    except ObjectLostError as lost:
        raise _lost(lost) from None
