"""The CPU OCR engine (rapidocr) against tesseract on real pages, and by detector size.

Against tesseract (the default)::

    .venv/bin/python -m bench.cpu_ocr [--url http://127.0.0.1:8000] [--json out.json]

reads the real page set of :mod:`bench.realpages` (31 pages of published papers and
manuals at 150 dpi, truth from their text layers) with our engine, configured as
``RapidOCRConfig()`` and fed as a replica feeds it (every page submitted at once, the
engine's own turns decide), and with Debian's ``tesseract`` (``--psm 3``, one thread per
process, one process per core); both use the whole machine. It prints, per page and in all,
word recall, order-insensitive CER, reading-order CER (task ``free`` against the text layer
in content order) and pages/s, and ours over tesseract's. ``--url`` adds the same pages
through a running service's ``POST /v1/ocr`` (its defaults; task ``free``): pages/s with
``--service-concurrency`` requests in flight, and per page the service's own time beside the
engine's (one request at a time). ``--models``, ``--backend``, ``--threads`` and
``--pages-at-once`` override the engine's configuration.

By detector size (``sides``)::

    .venv/bin/python -m bench.cpu_ocr sides [--sides 960 1600 2400] [--repeat 2]

reads the quality harness's document set (``serve_app.testing.docset``) plus A4 pages of
small print one page at a time and prints seconds per page, the ratio against the default
``max_side`` and the CER and line recall of ``bench.scoring``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench import scoring
from bench.realpages import RealPage, real_pages
from serve_app.config import PreprocessConfig, RapidOCRConfig
from serve_app.core.grounding import Box, parse_grounded
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import PageImage
from serve_app.documents.messages import OCROptions, PageTask
from serve_app.documents.stages import Preprocessor
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.rapid import RapidOCREngine
from serve_app.engine.recognize import generate_once
from serve_app.testing.docset import (
    Case,
    PageSpec,
    TruePage,
    document_set,
    pdf_cases,
    stacked_lines,
)


def small_print_case() -> Case:
    """Two A4 pages of 7 pt text at 144 dpi (14 px lines): where a smaller detector would miss."""
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box"
    lines = [(f"{n:02d} {words}", "helv", 7.0) for n in range(40)]
    spec = PageSpec(595, 842, stacked_lines(lines, margin=48, leading=1.6))
    (case,) = pdf_cases("small_print", [spec, spec], (144,))
    return case


def pages(case: Case) -> list[tuple[np.ndarray, TruePage]]:
    """The case's pages as the service's preprocess hands them to a page reader."""
    pre = Preprocessor(PreprocessConfig())
    options = OCROptions(model="rapidocr", reads="page", dpi=int(case.fields.get("dpi", 144)))
    info = pre.inspect(case.data, options, max_pages=50)
    out = []
    for index, truth in zip(info.selected, case.pages, strict=True):
        task = PageTask("bench", index, info.kind, options)
        image = pre.prepare(case.data, task).image
        assert isinstance(image, PageImage)
        out.append((image.pixels, truth))
    return out


async def read_all(
    config: RapidOCRConfig, work: list[tuple[np.ndarray, TruePage]], repeat: int
) -> dict[str, float]:
    side = config.max_side
    engine = RapidOCREngine(config)
    await engine.start()
    seconds: list[float] = []
    errors = ref_chars = hits = lines = 0
    for round_ in range(repeat):
        for n, (pixels, truth) in enumerate(work):
            request = GenerateRequest(f"{side}-{round_}-{n}", build_prompt(Task.OCR),
                                      PageImage(pixels), task=Task.OCR)  # fmt: skip
            start = time.perf_counter()
            generation = await generate_once(engine, request)
            seconds.append(time.perf_counter() - start)
            if round_:
                continue
            regions = parse_grounded(generation.text).regions  # task ocr: labels are the lines
            found = "\n".join(region.label or "" for region in regions)
            edits, length = scoring.char_errors(truth.text, found)
            errors, ref_chars = errors + edits, ref_chars + length
            boxes = [_pixels(box, truth) for region in regions for box in region.boxes]
            match = scoring.match_lines([line.box for line in truth.lines], boxes)
            hits, lines = hits + match.hits, lines + len(truth.lines)
    await engine.shutdown()
    return {
        "s/page": sum(seconds) / len(seconds),
        "cer": errors / ref_chars,
        "recall": hits / lines,
    }


def _pixels(box: Box, truth: TruePage) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box.to_pixels(truth.width, truth.height).as_list()
    return float(x1), float(y1), float(x2), float(y2)


def sides_main(args: argparse.Namespace) -> None:
    quality = [page for case in document_set() for page in pages(case)]
    small = pages(small_print_case())
    work = quality + small
    default = RapidOCRConfig().max_side
    sides = sorted({*args.sides, default})
    rows = {
        side: asyncio.run(
            read_all(RapidOCRConfig(max_side=side, turn_lines=args.turn_lines), work, args.repeat)
        )
        for side in sides
    }
    machine = f"{platform.machine()}, {os.cpu_count()} cpus"
    print(
        f"machine: {machine}; {len(work)} pages: {len(quality)} of the quality set, "
        f"{len(small)} A4 of 7 pt; {args.repeat} rounds; turn_lines={args.turn_lines}"
    )
    print(f"{'max_side':>8}  {'s/page':>7}  {'vs default':>10}  {'CER':>6}  {'line recall':>11}")
    for side, row in rows.items():
        ratio = row["s/page"] / rows[default]["s/page"]
        mark = " (default)" if side == default else ""
        print(f"{side:>8}  {row['s/page']:>7.2f}  {ratio:>9.2f}x  {row['cer']:>6.3f}  "
              f"{row['recall']:>11.3f}{mark}")  # fmt: skip


@dataclass
class Reads:
    """One reader's texts of the page set and the wall time it took for all of them."""

    texts: list[str]
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def pages_per_s(self) -> float:
        return len(self.texts) / self.seconds


async def read_with_engine(config: RapidOCRConfig, work: list[RealPage]) -> Reads:
    """Every page submitted at once to one engine (as a replica's queue would hold them)."""
    engine = RapidOCREngine(config)
    await engine.start()
    try:
        warm = GenerateRequest("warm", build_prompt(Task.FREE), PageImage(work[0].pixels),
                               task=Task.FREE)  # fmt: skip
        await generate_once(engine, warm)
        start = time.perf_counter()
        done = await asyncio.gather(*(
            generate_once(engine, GenerateRequest(page.name, build_prompt(Task.FREE),
                                                  PageImage(page.pixels), task=Task.FREE))
            for page in work
        ))  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        await engine.shutdown()
    return Reads([generation.text for generation in done], seconds)


def read_with_tesseract(work: list[RealPage], processes: int) -> Reads:
    """``tesseract --psm 3`` per page, one thread each, ``processes`` at a time."""
    if shutil.which("tesseract") is None:
        raise SystemExit("no tesseract: apt-get install tesseract-ocr tesseract-ocr-eng")
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for page in work:
            path = Path(tmp) / f"{page.name}.png"
            Image.fromarray(page.pixels).save(path, dpi=(150, 150))
            files.append(path)

        def one(path: Path) -> str:
            done = subprocess.run(["tesseract", str(path), "-", "--psm", "3"], env=env,
                                  capture_output=True, text=True, check=True)  # fmt: skip
            return done.stdout

        start = time.perf_counter()
        with ThreadPoolExecutor(processes) as pool:
            texts = list(pool.map(one, files))
        return Reads(texts, time.perf_counter() - start)


def read_with_service(url: str, model: str, work: list[RealPage], concurrency: int) -> Reads:
    """The pages as PNG uploads to ``POST /v1/ocr`` (task ``free``): one at a time first, for
    the service's time per page beside the engine's, then ``concurrency`` at once, timed."""
    pngs = []
    for page in work:
        buffer = io.BytesIO()
        Image.fromarray(page.pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())

    async def send(client: httpx.AsyncClient, png: bytes) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        response = await client.post(
            f"{url}/v1/ocr", files={"file": ("page.png", png, "image/png")},
            data={"model": model, "task": "free"},
        )  # fmt: skip
        seconds = time.perf_counter() - start
        response.raise_for_status()
        (page,) = response.json()["pages"]
        if "error" in page:
            raise SystemExit(f"the service failed a page: {page['error']}")
        return page, seconds

    async def run() -> Reads:
        async with httpx.AsyncClient(timeout=600) as client:
            overhead, engine = [], []
            for png in pngs:
                page, seconds = await send(client, png)
                engine.append(page["timings"].get("engine_s", 0.0))
                overhead.append(seconds - engine[-1])
            gate = asyncio.Semaphore(concurrency)

            async def limited(png: bytes) -> tuple[dict[str, Any], float]:
                async with gate:
                    return await send(client, png)

            start = time.perf_counter()
            done = await asyncio.gather(*(limited(png) for png in pngs))
            seconds = time.perf_counter() - start
        extra = {"engine_s/page": float(np.mean(engine)),
                 "service_overhead_s/page": float(np.mean(overhead))}  # fmt: skip
        return Reads([page["raw_text"] for page, _ in done], seconds, extra)

    return asyncio.run(run())


def quality(work: list[RealPage], reads: Reads) -> dict[str, Any]:
    """Per page and pooled over the set (sums of counts, not means of rates)."""
    per_page = []
    totals = np.zeros(6, dtype=np.int64)
    for page, text in zip(work, reads.texts, strict=True):
        counts = np.array([*scoring.word_recall(page.truth, text),
                           *scoring.unordered_char_errors(page.truth, text),
                           *scoring.char_errors(page.truth, text)])  # fmt: skip
        totals += counts
        per_page.append(_rates(counts) | {"page": page.name})
    return {"pages": per_page, **_rates(totals), "pages_per_s": reads.pages_per_s, **reads.extra}


def _rates(counts: np.ndarray) -> dict[str, float]:
    found, words, unordered, chars, ordered, chars2 = (int(c) for c in counts)
    return {"word_recall": found / max(words, 1), "unordered_cer": unordered / max(chars, 1),
            "order_cer": ordered / max(chars2, 1)}  # fmt: skip


def tesseract_main(args: argparse.Namespace) -> None:
    work = list(real_pages(dpi=args.dpi))
    settings = {"backend": args.backend, "threads": args.threads,
                "pages_at_once": args.pages_at_once, "models": args.models}  # fmt: skip
    overrides = {key: value for key, value in settings.items() if value}
    config = RapidOCRConfig(**overrides)
    cpus = os.cpu_count() or 1
    rows = {"tesseract": quality(work, read_with_tesseract(work, cpus))}
    rows["ours"] = quality(work, asyncio.run(read_with_engine(config, work)))
    if args.url:
        reads = read_with_service(args.url.rstrip("/"), args.model, work, args.service_concurrency)
        rows["ours via /v1/ocr"] = quality(work, reads)
    capability = _cpu_capability()
    print(f"machine: {platform.machine()}, {cpus} cpus, {capability}; {len(work)} pages at "
          f"{args.dpi} dpi (bench.realpages); ours: {config.model_dump()}")  # fmt: skip
    print(f"{'page':<24}" + "".join(f"{name:>26}" for name in rows))
    print(f"{'':<24}" + f"{'recall  ucer  ocer':>26}" * len(rows))
    for n, page in enumerate(work):
        cells = "".join(
            f"{row['pages'][n]['word_recall']:>14.3f}{row['pages'][n]['unordered_cer']:>6.3f}"
            f"{row['pages'][n]['order_cer']:>6.3f}" for row in rows.values()
        )  # fmt: skip
        print(f"{page.name:<24}{cells}")
    print()
    print(f"{'':<18}{'word recall':>12}{'unordered CER':>15}{'order CER':>11}{'pages/s':>9}")
    for name, row in rows.items():
        print(f"{name:<18}{row['word_recall']:>12.3f}{row['unordered_cer']:>15.3f}"
              f"{row['order_cer']:>11.3f}{row['pages_per_s']:>9.2f}")  # fmt: skip
    ours, tess = rows["ours"], rows["tesseract"]
    print(f"{'ours / tesseract':<18}{ours['word_recall'] / tess['word_recall']:>11.2f}x"
          f"{ours['unordered_cer'] / tess['unordered_cer']:>14.2f}x"
          f"{ours['order_cer'] / tess['order_cer']:>10.2f}x"
          f"{ours['pages_per_s'] / tess['pages_per_s']:>8.2f}x")  # fmt: skip
    if "ours via /v1/ocr" in rows:
        via = rows["ours via /v1/ocr"]
        print(f"service: {via['pages_per_s']:.2f} pages/s with {args.service_concurrency} in "
              f"flight ({via['pages_per_s'] / ours['pages_per_s']:.2f}x the engine alone); one "
              f"at a time: engine {via['engine_s/page']:.2f} s/page, service's own "
              f"{via['service_overhead_s/page']:.3f} s/page")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _cpu_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    vs = sub.add_parser("tesseract", help="against tesseract on real pages (the default)")
    sweep = sub.add_parser("sides", help="by detector size on generated pages")
    for p in (parser, vs):
        p.add_argument("--dpi", type=int, default=150)
        p.add_argument("--url", help="also through this running service's /v1/ocr")
        p.add_argument("--model", default="rapidocr", help="the service's model name")
        p.add_argument("--service-concurrency", type=int, default=2)
        p.add_argument("--backend", choices=["onnxruntime", "openvino"], default=None)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--pages-at-once", type=int, default=None)
        p.add_argument("--models", choices=["tiny", "small"], default=None)
        p.add_argument("--json", help="write the figures here")
    sweep.add_argument("--sides", type=int, nargs="+", default=[960, 1600, 2400])
    sweep.add_argument("--repeat", type=int, default=2, help="timed rounds (quality: first)")
    sweep.add_argument("--turn-lines", action="store_true", help="RapidOCRConfig.turn_lines")
    args = parser.parse_args()
    if args.command == "sides":
        sides_main(args)
    else:
        tesseract_main(args)


if __name__ == "__main__":
    main()
