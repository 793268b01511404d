"""How a handle call's Ray errors reach the pipeline: a replica that died with the page is a
crash named by its actor id; one Ray could not reach is not a crash."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from deployments.handles import HandleStages
from serve_app.documents.messages import OCROptions, PageTask
from serve_app.errors import EngineCrashedError, EngineUnavailableError

TASK = PageTask("req", 0, "image", OCROptions())


def stages_whose_engine_raises(error: BaseException) -> HandleStages:
    async def answer() -> Any:
        raise error

    engine = SimpleNamespace(recognize=SimpleNamespace(remote=lambda page, task: answer()))
    return HandleStages(None, {"deepseek-ocr": engine}, None, max_pages=10)  # type: ignore[arg-type]


def recognize(error: BaseException) -> BaseException:
    stages = stages_whose_engine_raises(error)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is the assertion
        asyncio.run(stages.recognize(None, TASK))  # type: ignore[arg-type]
    return caught.value


def test_a_replica_that_died_is_a_crash_named_by_its_actor_id() -> None:
    died = RayActorError(actor_id="a1b2c3", error_msg="the actor died unexpectedly")
    error = recognize(died)
    assert isinstance(error, EngineCrashedError) and error.replica == "a1b2c3"
    unnamed = recognize(ActorDiedError())
    assert isinstance(unnamed, EngineCrashedError) and unnamed.replica is None


def test_an_unreachable_replica_is_not_a_crash() -> None:
    error = recognize(ActorUnavailableError("the connection was lost", None))
    assert isinstance(error, EngineUnavailableError) and not isinstance(error, EngineCrashedError)
    assert (error.status_code, error.code) == (503, "engine_unavailable")
