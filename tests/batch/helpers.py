"""Running ``python -m batch`` as a user would, reading what it wrote, and what the service
answers for the same documents."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from batch.output import Output
from batch.run import load_config
from serve_app.documents.door import Door, RequestFields
from serve_app.documents.run import DocumentRunner
from serve_app.documents.stages import LocalStages


def config_file(folder: Path, models: dict[str, Any]) -> Path:
    """A Serve config file serving ``models``, as ``serve_config.yaml`` is written."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    args = {"models": models}
    path.write_text(yaml.safe_dump({"applications": [{"name": "ocr", "args": args}]}))
    return path


def fake_config(folder: Path, **fake: Any) -> Path:
    return config_file(folder, {"fake": {"kind": "fake", "fake": fake}})


def batch(*args: str | Path, address: str, wait: bool = True, timeout: float = 300) -> Any:
    """``python -m batch`` as a driver of the Ray cluster at ``address`` (a run's own local
    Ray would start in ~10 s each time on two cores)."""
    command = [sys.executable, "-m", "batch", *map(str, args)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": address}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def page_rows(out: Path) -> list[dict[str, Any]]:
    """Every row the batch wrote to ``out``, in the order it wrote them."""
    return Output(out).rows()


def without_timings(page: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in page.items() if key != "timings"}


async def service_pages(config_path: Path, documents: list[bytes]) -> list[list[dict[str, Any]]]:
    """What the service's document run (the path behind ``/v1/ocr``) answers for each of
    ``documents`` in tiny mode, on one set of in-process stages."""
    from serve_app.documents.results import page_json

    config = load_config(config_path)
    stages = await LocalStages.started(config)
    try:
        options = Door(config).resolve(RequestFields(mode="tiny"))
        runner = DocumentRunner.from_config(config.ingress, stages)
        answers = []
        for n, data in enumerate(documents):
            run = await runner.start(f"ref-{n}", data, options)
            answers.append([without_timings(page_json(r, options)) for r in await run.collect()])
        return answers
    finally:
        await stages.shutdown()
