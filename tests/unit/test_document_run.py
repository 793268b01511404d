"""A document run with in-process stages and no HTTP at all: the seam jobs, batch and an
in-process client build on."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from serve_app.config import AppConfig, EngineConfig, FakeEngineConfig
from serve_app.core.document import PageFailure, PageResult
from serve_app.documents.door import Door, RequestFields
from serve_app.documents.fetch import UrlNotAllowedError
from serve_app.documents.messages import PageReport
from serve_app.documents.run import Deadline, DocumentRun, DocumentRunner
from serve_app.documents.sources import UrlSource
from serve_app.documents.stages import LocalStages
from serve_app.errors import EngineTimeoutError
from serve_app.telemetry.metrics import PAGES, MemoryRecorder, ServiceMetrics
from serve_app.testing.synthetic import text_pdf


def fake_config(**fake: object) -> AppConfig:
    engine = EngineConfig(kind="fake", fake=FakeEngineConfig.model_validate(fake))
    return AppConfig(models={"deepseek-ocr": engine})


async def read(
    config: AppConfig,
    source: bytes | UrlSource,
    fields: RequestFields,
    deadline_s: float | None = None,
    metrics: ServiceMetrics | None = None,
) -> tuple[DocumentRun, list[PageReport]]:
    stages = await LocalStages.started(config)
    try:
        runner = DocumentRunner.from_config(config.ingress, stages, metrics)
        options = Door(config).resolve(fields)
        deadline = Deadline.after(deadline_s) if deadline_s else None
        run = await runner.start("doc-1", source, options, deadline)
        return run, await run.collect()
    finally:
        await stages.shutdown()


def test_a_pdf_runs_page_by_page_with_its_tally_and_metrics() -> None:
    recorder = MemoryRecorder()
    run, reports = asyncio.run(
        read(
            fake_config(fail_every=3),
            text_pdf(4),
            RequestFields(pages="1-3", mode="tiny"),
            metrics=ServiceMetrics(recorder),
        )  # fmt: skip
    )
    assert (run.info.kind, run.info.page_count, run.info.selected) == ("pdf", 4, [0, 1, 2])
    assert [r.number for r in reports] == [1, 2, 3]
    outcomes = [type(r.outcome) for r in reports]
    assert outcomes == [PageResult, PageResult, PageFailure]  # the fake fails every third page
    first = reports[0].outcome
    assert isinstance(first, PageResult) and first.markdown.startswith("# Page 1190x1684")
    assert (reports[0].mode, reports[0].grid) == ("tiny", (1, 1))
    assert (run.tally.pages, run.tally.pages_failed, run.tally.outcome) == (3, 1, "partial")
    assert set(run.tally.stage_seconds) == {"preprocess_s", "engine_s", "postprocess_s"}
    assert run.failure(reports) is None
    assert recorder.total(PAGES, model="deepseek-ocr", outcome="ok", mode="tiny") == 2
    assert recorder.total(PAGES, outcome="failed", code="generation_failed") == 1


def test_past_its_deadline_a_run_stops_with_a_timeout_as_its_outcome() -> None:
    async def go() -> str | None:
        config = fake_config(first_token_latency_s=5.0)
        stages = await LocalStages.started(config)
        runner = DocumentRunner.from_config(config.ingress, stages)
        options = Door(config).resolve(RequestFields(mode="tiny"))
        run = await runner.start("doc-2", text_pdf(1), options, Deadline.after(0.3))
        with pytest.raises(EngineTimeoutError, match="did not finish within 0 s"):
            await run.collect()
        await stages.shutdown()
        return run.tally.outcome

    assert asyncio.run(go()) == "timeout"


def test_a_url_source_is_refused_when_the_service_fetches_none() -> None:
    config = AppConfig(
        models={"deepseek-ocr": EngineConfig(kind="fake")},
        ingress={"url_fetch": {"enabled": False}},
    )
    with pytest.raises(UrlNotAllowedError, match="does not fetch URLs"):
        asyncio.run(read(config, UrlSource("https://example.org/a.pdf"), RequestFields()))


READ_WITHOUT_HTTP = textwrap.dedent("""
    import asyncio, json, sys
    from serve_app.config import AppConfig, EngineConfig
    from serve_app.documents.door import Door, RequestFields
    from serve_app.documents.run import DocumentRunner
    from serve_app.documents.stages import LocalStages
    from serve_app.testing.docset import PageSpec, pdf_bytes, text_page

    async def main():
        config = AppConfig(models={"rapidocr": EngineConfig(kind="rapidocr")})
        pdf = pdf_bytes([text_page(["Invoice 2041", "Total due 310 EUR"]),
                         text_page(["Second page", "Thank you"])])
        stages = await LocalStages.started(config)
        runner = DocumentRunner.from_config(config.ingress, stages)
        options = Door(config).resolve(RequestFields(task="free"))
        run = await runner.start("cli-1", pdf, options)
        pages = [r.outcome.markdown for r in await run.collect()]
        await stages.shutdown()
        loaded = sorted(m for m in ("fastapi", "starlette", "ray", "vllm") if m in sys.modules)
        print(json.dumps({"pages": pages, "outcome": run.tally.outcome, "loaded": loaded}))

    asyncio.run(main())
""")


def test_a_real_engine_reads_a_pdf_without_http_ray_or_vllm() -> None:
    """rapidocr reads real text through the same run the HTTP routes use, and nothing of
    FastAPI, Starlette, Ray or vLLM is imported on the way."""
    out = subprocess.run(
        [sys.executable, "-c", READ_WITHOUT_HTTP], capture_output=True, text=True, check=True,
        timeout=300,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "pages": ["Invoice 2041\nTotal due 310 EUR", "Second page\nThank you"],
        "outcome": "ok",
        "loaded": [],
    }


def test_two_runs_with_one_request_id_both_succeed() -> None:
    """A client retry reuses its id; the engine's request ids are the server's own."""

    async def go() -> list[list[PageReport]]:
        config = fake_config(first_token_latency_s=0.2)
        stages = await LocalStages.started(config)
        runner = DocumentRunner.from_config(config.ingress, stages)
        options = Door(config).resolve(RequestFields(mode="tiny"))
        runs = [await runner.start("ocr-retry-7", text_pdf(2), options) for _ in range(2)]
        reports = await asyncio.gather(*(run.collect() for run in runs))
        await stages.shutdown()
        assert [run.request_id for run in runs] == ["ocr-retry-7"] * 2
        return list(reports)

    for reports in asyncio.run(go()):
        assert [type(r.outcome) for r in reports] == [PageResult, PageResult]
