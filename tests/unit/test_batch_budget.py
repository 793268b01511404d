"""The object store a batch's queued pages may hold by default: three engine batches of
prepared A4 pages per engine, twice a page for a model that reads views, never under 256 MiB
(a cap of Ray Data's half-store would let a slow engine's queue grow to gigabytes)."""

from __future__ import annotations

from batch.run import MIN_STORE, store_budget
from serve_app.config import AppConfig
from serve_app.documents.door import Door, RequestFields

CONFIG = AppConfig.model_validate(
    {"models": {"deepseek-ocr": {"kind": "fake"}, "rapidocr": {"kind": "rapidocr"}}}
)
A4_RGB_144_DPI = 1191 * 1683 * 3  # 6.0 MB: 8.27 x 11.69 in at 144 dpi


def test_three_engine_batches_of_a4_pages_per_engine() -> None:
    page_reader = Door(CONFIG).resolve(RequestFields(model="rapidocr"))
    views_reader = Door(CONFIG).resolve(RequestFields(model="deepseek-ocr", mode="gundam"))
    assert (page_reader.reads, views_reader.reads) == ("page", "views")
    assert store_budget(1, 16, page_reader) == 48 * A4_RGB_144_DPI  # 275 MiB
    assert store_budget(1, 16, views_reader) == 2 * 48 * A4_RGB_144_DPI
    assert store_budget(4, 16, views_reader) == 4 * 2 * 48 * A4_RGB_144_DPI
    at_300_dpi = Door(CONFIG).resolve(RequestFields(model="rapidocr", dpi=300))
    assert store_budget(1, 16, at_300_dpi) == 48 * 2481 * 3507 * 3  # 1.2 GiB


def test_a_small_engine_batch_still_gets_256_mib() -> None:
    options = Door(CONFIG).resolve(RequestFields(model="rapidocr"))
    assert store_budget(1, 1, options) == MIN_STORE == 256 * 2**20
