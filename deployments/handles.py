"""A document run's stages as calls to the other deployments (Ray Serve handles).

Only headers and references pass through here: the upload is put in the object store once,
preprocess leaves a page's views and pixels there, and the engine and postprocess read them
from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import ray
from ray import ObjectRef
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.page_data import StoredPage
from serve_app.core.document import PageResult
from serve_app.documents.messages import DocumentInfo, OCROptions, PageTask
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import (
    EngineCrashedError,
    EngineUnavailableError,
    OverloadedError,
    as_ocr_error,
)


class HandleStages:
    """:class:`serve_app.documents.stages.Stages` over deployment handles: the upload and
    page data held in Ray's object store."""

    def __init__(
        self,
        pre: DeploymentHandle,
        engines: Mapping[str, DeploymentHandle],
        post: DeploymentHandle,
        max_pages: int,
    ) -> None:
        """``engines``: each served model's engine deployment, by model id."""
        self._pre, self._engines, self._post = pre, dict(engines), post
        self._max_pages = max_pages

    def store(self, data: bytes) -> ObjectRef[bytes]:
        return ray.put(data)

    async def inspect(self, source: ObjectRef[bytes], options: OCROptions) -> DocumentInfo:
        return await _overload_safe(self._pre.inspect.remote(source, options, self._max_pages))

    async def prepare(self, source: ObjectRef[bytes], task: PageTask) -> StoredPage:
        return await _overload_safe(self._pre.prepare.remote(source, task))

    async def recognize(self, page: StoredPage, task: PageTask) -> PageGeneration:
        engine = self._engines[task.options.model]
        try:
            return await _overload_safe(engine.recognize.remote(page, task))
        except ActorUnavailableError:  # unreachable for now: the page may not have run
            raise EngineUnavailableError("the engine replica could not be reached") from None
        except RayActorError as died:  # the replica's process died with the page in flight
            message = f"the engine replica died with the page in flight ({type(died).__name__})"
            raise EngineCrashedError(message, replica=died.actor_id) from None

    async def postprocess(
        self, page: StoredPage, generation: PageGeneration, task: PageTask
    ) -> PageResult:
        return await _overload_safe(self._post.page.remote(page, generation.text, task))


async def _overload_safe(response: Any) -> Any:
    """Await a handle call. A full queue downstream becomes a 503 with Retry-After; a
    service error raised downstream is re-raised as itself (not wrapped in Ray's task error);
    if the caller is cancelled (deadline, client gone) the downstream request is cancelled
    too, which aborts its engine work (Serve does not do that for an awaited response)."""
    try:
        return await response
    except BackPressureError:
        raise OverloadedError("the service is at capacity; retry shortly") from None
    except asyncio.CancelledError:
        response.cancel()
        raise
    except Exception as exc:
        error = as_ocr_error(exc)
        if error is exc or error.code == "internal_error":
            raise
        raise error from None
