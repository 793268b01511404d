"""The request pipeline without Ray: ordering, bounded fan-out, per-page failures."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.config import AppConfig, EngineConfig, FakeEngineConfig
from serve_app.core.document import PageFailure, PageResult
from serve_app.core.modes import get_mode
from serve_app.core.prompts import Task, build_prompt
from serve_app.documents.faults import FaultPolicy
from serve_app.documents.messages import (
    DocumentInfo,
    OCROptions,
    PageReport,
    PageTask,
    PreparedPage,
)
from serve_app.documents.pipeline import OCRPipeline
from serve_app.documents.results import document_failure, document_json
from serve_app.documents.stages import LocalStages, Postprocessor, Preprocessor, Recognizer
from serve_app.engine.fake import FakeEngine
from serve_app.engine.recognize import PageGeneration
from serve_app.errors import (
    CorruptDocumentError,
    EngineCrashedError,
    InvalidPageRangeError,
    OverloadedError,
    PageDataLostError,
    TooManyPagesError,
)
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

TINY = get_mode("tiny")


def stages(fake: FakeEngineConfig | None = None, max_pages: int = 500) -> LocalStages:
    config = AppConfig(
        models={"deepseek-ocr": EngineConfig(kind="fake", fake=fake or FakeEngineConfig())}
    )
    engine = FakeEngine(config.default_engine.fake, config.default_engine.sampling)
    asyncio.run(engine.start())
    return LocalStages(
        Preprocessor(config.preprocess),
        Recognizer(engine, config.default_engine),
        Postprocessor(config.postprocess),
        max_pages=max_pages,
    )


def pipeline(fake: FakeEngineConfig | None = None, window: int = 3) -> OCRPipeline:
    return OCRPipeline(stages(fake), pages_in_flight=window)


def run(p: OCRPipeline, source: bytes, options: OCROptions) -> list[PageReport]:
    async def go() -> list[PageReport]:
        _, pages = await p.run(source, options, "req")
        return [r async for r in pages]

    return asyncio.run(go())


def test_pdf_pages_come_back_in_order_with_results() -> None:
    reports = run(pipeline(), text_pdf(7), OCROptions(pages="2-7", include_figures=True))
    assert [r.number for r in reports] == [2, 3, 4, 5, 6, 7]
    first = reports[0].outcome
    assert isinstance(first, PageResult)
    assert first.markdown.startswith("# Page 1190x1684, grid 2x3")
    assert len(first.figures) == 1 and first.figures[0].name == "images/2_1.jpg"


def test_failed_pages_stay_in_place_as_errors() -> None:
    reports = run(pipeline(FakeEngineConfig(fail_every=2)), text_pdf(4), OCROptions())
    assert [type(r.outcome) for r in reports] == [PageResult, PageFailure, PageResult, PageFailure]
    failure = reports[1].outcome
    assert isinstance(failure, PageFailure) and failure.code == "generation_failed"
    body = document_json("req", "m", _info(4), reports, OCROptions())
    assert body["pages_failed"] == 2 and "page 2 failed" in body["markdown"]


def test_image_input_and_task_options() -> None:
    reports = run(
        pipeline(),
        encode(noise_rgb(800, 600, seed=1)),
        OCROptions(mode=TINY, prompt=build_prompt(Task.FREE)),
    )
    assert len(reports) == 1 and reports[0].mode == "tiny"
    assert isinstance(reports[0].outcome, PageResult)
    assert reports[0].outcome.markdown.startswith("Page 800x600")


@pytest.mark.parametrize(
    ("options", "source", "error"),
    [
        (OCROptions(pages="9"), text_pdf(3), InvalidPageRangeError),
        (OCROptions(pages="2"), encode(noise_rgb(10, 10, seed=0)), InvalidPageRangeError),
    ],
)
def test_selection_errors_raise_before_any_page(
    options: OCROptions, source: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        run(pipeline(), source, options)


def test_image_whose_pixels_do_not_decode_is_a_request_error() -> None:
    png = encode(noise_rgb(300, 200, seed=2))
    broken = png[: len(png) // 2]  # the header is fine, the pixel data ends early
    with pytest.raises(CorruptDocumentError):
        run(pipeline(), broken, OCROptions())


def test_inspecting_an_image_reads_only_its_header() -> None:
    png = encode(noise_rgb(300, 200, seed=2))
    info = asyncio.run(stages().inspect(png[: len(png) // 2], OCROptions()))
    assert (info.kind, info.selected) == ("image", [0])  # decoding would have raised


class DecodeCounter(LocalStages):
    """Counts how often each page is decoded (prepared) and inspected."""

    def __init__(self, base: LocalStages) -> None:
        super().__init__(base._pre, base._rec, base._post, max_pages=500)  # noqa: SLF001
        self.prepared: list[int] = []

    async def prepare(self, source: object, task: PageTask) -> PreparedPage:
        self.prepared.append(task.number)
        return await super().prepare(source, task)


@pytest.mark.parametrize(("source", "pages"), [(encode(noise_rgb(400, 300, seed=3)), [1]),
                                               (text_pdf(3), [1, 2, 3])])  # fmt: skip
def test_each_page_is_decoded_once(source: bytes, pages: list[int]) -> None:
    counter = DecodeCounter(stages())
    reports = run(OCRPipeline(counter, pages_in_flight=2), source, OCROptions(mode=TINY))
    assert [r.number for r in reports] == pages
    assert all(isinstance(r.outcome, PageResult) for r in reports)
    assert sorted(counter.prepared) == pages


class FullFromPage3(LocalStages):
    """Page 1 takes long; page 3 is refused as if the engine's queue were full."""

    cancelled: list[int] = []

    async def recognize(self, page: PreparedPage, task: PageTask) -> PageGeneration:
        if task.number == 3:
            raise OverloadedError("the service is at capacity; retry shortly")
        try:
            await asyncio.sleep(5 if task.number == 1 else 0)
        except asyncio.CancelledError:
            type(self).cancelled.append(task.number)
            raise
        return await super().recognize(page, task)


def test_a_full_service_fails_the_request_at_once_and_cancels_its_pages() -> None:
    base = stages()
    full = FullFromPage3(base._pre, base._rec, base._post, max_pages=500)  # noqa: SLF001
    start = time.monotonic()
    with pytest.raises(OverloadedError):
        run(OCRPipeline(full, pages_in_flight=4), text_pdf(6), OCROptions(mode=TINY))
    assert time.monotonic() - start < 2  # not after page 1's 5 s
    assert 1 in FullFromPage3.cancelled


def test_page_limit() -> None:
    with pytest.raises(TooManyPagesError):
        run(OCRPipeline(stages(max_pages=2), pages_in_flight=2), text_pdf(3), OCROptions())


class CountingStages(LocalStages):
    """Records how many pages are between prepare and postprocess at once."""

    active = 0
    peak = 0

    async def prepare(self, source: object, task: PageTask) -> PreparedPage:
        type(self).active += 1
        type(self).peak = max(type(self).peak, type(self).active)
        await asyncio.sleep(0.01)
        return await super().prepare(source, task)

    async def postprocess(
        self, page: PreparedPage, generation: PageGeneration, task: PageTask
    ) -> PageResult:
        type(self).active -= 1
        return await super().postprocess(page, generation, task)


def test_pages_in_flight_are_bounded() -> None:
    base = stages()
    counting = CountingStages(base._pre, base._rec, base._post, max_pages=500)  # noqa: SLF001
    reports = run(OCRPipeline(counting, pages_in_flight=3), text_pdf(12), OCROptions())
    assert [r.number for r in reports] == list(range(1, 13))
    assert CountingStages.peak == 3


def _info(n: int) -> DocumentInfo:
    return DocumentInfo("pdf", n, list(range(n)))


def pdf_with_sizes(*sizes: tuple[float, float]) -> bytes:
    import pymupdf

    doc = pymupdf.open()
    for number, (width, height) in enumerate(sizes, start=1):
        doc.new_page(width=width, height=height).insert_text((20, 40), f"Page {number}")
    return bytes(doc.tobytes())


POISON = pdf_with_sizes((595, 842), (300, 400), (595, 842))  # page 2: 600 px wide at 144 dpi


def test_a_poison_page_is_quarantined_and_its_document_still_answered() -> None:
    fake = FakeEngineConfig(
        crash_on_width=600
    )  # raises EngineCrashedError, a new replica each time
    p = OCRPipeline(stages(fake), pages_in_flight=3, faults=FaultPolicy(backoff_s=0.01))
    engine = p._stages._rec  # type: ignore[attr-defined]

    async def go(upload_id: str) -> list[PageReport]:
        _, pages = await p.run(POISON, OCROptions(), "req", upload_id)
        return [r async for r in pages]

    reports = asyncio.run(go("upload-1"))
    assert [type(r.outcome) for r in reports] == [PageResult, PageFailure, PageResult]
    failure = reports[1].outcome
    assert isinstance(failure, PageFailure) and failure.code == "page_quarantined"
    assert [r.engine_crashes for r in reports] == [0, 3, 0]  # once with others, twice alone
    assert engine.pages_recognized == 5  # pages 1 and 3, and page 2 three times

    again = asyncio.run(go("upload-1"))  # the same bytes again: page 2 never reaches an engine
    assert [type(r.outcome) for r in again] == [PageResult, PageFailure, PageResult]
    assert isinstance(again[1].outcome, PageFailure)
    assert again[1].outcome.code == "page_quarantined" and again[1].engine_crashes == 0
    assert engine.pages_recognized == 7


def test_a_page_whose_engine_died_once_is_sent_again() -> None:
    class DiesOnce(LocalStages):
        crashed = False

        async def recognize(self, page: PreparedPage, task: PageTask) -> PageGeneration:
            if not self.crashed:
                self.crashed = True
                raise EngineCrashedError("replica died", replica="r1")
            return await super().recognize(page, task)

    base = stages()
    dies = DiesOnce(base._pre, base._rec, base._post, max_pages=10)  # type: ignore[attr-defined]
    p = OCRPipeline(dies, pages_in_flight=1, faults=FaultPolicy(backoff_s=0.01))
    reports = run(p, text_pdf(2), OCROptions(mode=TINY))
    assert [type(r.outcome) for r in reports] == [PageResult, PageResult]
    assert [r.engine_crashes for r in reports] == [1, 0]
    page = document_json("req", "m", _info(2), reports, OCROptions())["pages"][0]
    assert page["engine_crashes"] == 1 and "error" not in page


def test_a_document_none_of_whose_pages_succeeded_is_an_error() -> None:
    failed = [PageReport(n, PageFailure(n, "timeout", "slow")) for n in (1, 2)]
    error = document_failure(failed)
    assert error is not None and (error.status_code, error.code) == (504, "timeout")
    mixed = [failed[0], PageReport(2, PageFailure(2, "page_quarantined", "poison"))]
    assert (error := document_failure(mixed)) is not None and error.status_code == 500
    quarantined = [PageReport(1, PageFailure(1, "page_quarantined", "poison"))]
    assert (error := document_failure(quarantined)) is not None and error.status_code == 422
    assert document_failure([*failed, PageReport(3, object())]) is None  # type: ignore[arg-type]


def test_a_page_whose_data_left_the_object_store_is_prepared_again_not_read_again() -> None:
    class LosesOnce(LocalStages):
        lost = False
        prepared = 0

        async def prepare(self, source: object, task: PageTask) -> PreparedPage:
            self.prepared += 1
            return await super().prepare(source, task)

        async def postprocess(
            self, page: PreparedPage, generation: PageGeneration, task: PageTask
        ) -> PageResult:
            if not self.lost:
                self.lost = True
                raise PageDataLostError("gone (ReferenceCountingAssertionError)")
            return await super().postprocess(page, generation, task)

    base = stages()
    loses = LosesOnce(base._pre, base._rec, base._post, max_pages=10)  # type: ignore[attr-defined]
    reports = run(OCRPipeline(loses, pages_in_flight=1), text_pdf(2), OCROptions(mode=TINY))
    assert [type(r.outcome) for r in reports] == [PageResult, PageResult]
    assert loses.prepared == 3  # page 1 twice
    assert base._rec.pages_recognized == 2  # type: ignore[attr-defined]  # read once each
