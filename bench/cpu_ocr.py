"""The CPU OCR engine (rapidocr) by detector size: seconds per page and quality, in one run.

Run: ``.venv/bin/python -m bench.cpu_ocr [--sides 960 1600 2400] [--repeat 2]``.

Each setting reads the quality harness's document set (``serve_app.testing.docset``) plus A4
pages of small print, in this process (no Serve), one page at a time as a replica does, and
prints seconds per page, the ratio against the configured default (``RapidOCRConfig``) and
the character error rate and line recall of ``bench.scoring``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

import numpy as np

from bench import scoring
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[960, 1600, 2400])
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds (quality: first)")
    parser.add_argument("--turn-lines", action="store_true", help="RapidOCRConfig.turn_lines")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
