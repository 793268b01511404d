"""CPU tiling: our uint8 views versus vLLM's DeepseekOCRProcessor on the same A4 pages.

Run: ``make bench`` (or ``.venv/bin/python -m bench.tiling --pages 8 --repeat 3``).
Prints pages per second for both, their ratio, and the bytes per page each hands to the
engine (our uint8 views versus the processor's float32 tensors).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from serve_app.core.images import to_model_rgb
from serve_app.core.modes import get_mode
from serve_app.core.pdf import open_pdf
from serve_app.core.tiling import prepare_image
from serve_app.testing.synthetic import text_pdf


def a4_pages(count: int) -> list[Image.Image]:
    with open_pdf(text_pdf(count)) as doc:
        return [doc.render(i, dpi=144) for i in range(count)]


def best_rate(fn: Callable[[Image.Image], Any], pages: list[Image.Image], repeat: int) -> float:
    """Pages per second: the median over ``repeat`` passes over all pages (after a warm-up)."""
    fn(pages[0])
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        for page in pages:
            fn(page)
        rates.append(len(pages) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from vllm.multimodal.image import convert_image_mode, normalize_image
    from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

    from serve_app.checkpoint.tokenizer import build_tokenizer

    processor = DeepseekOCRProcessor(tokenizer=build_tokenizer())
    mode = get_mode("gundam")
    pages = a4_pages(args.pages)

    def ours(page: Image.Image) -> Any:
        return prepare_image(to_model_rgb(page), mode)

    def ours_normalised(page: Image.Image) -> Any:
        prepared = ours(page)
        return [
            torch.from_numpy(a).to(torch.float32).div(255).sub(0.5).div(0.5)
            for a in (prepared.global_view, prepared.tiles)
        ]

    def vllm(page: Image.Image) -> Any:
        image = convert_image_mode(normalize_image(page), "RGB")
        return processor.tokenize_with_images("<image>\nFree OCR.", [image], cropping=True)

    rate_ours = best_rate(ours, pages, args.repeat)
    rate_ours_norm = best_rate(ours_normalised, pages, args.repeat)
    rate_vllm = best_rate(vllm, pages, args.repeat)

    prepared = ours(pages[0])
    ref = vllm(pages[0])
    bytes_ours = prepared.nbytes
    bytes_vllm = ref[1].nbytes + ref[2].nbytes

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}; {args.pages} A4 pages at 144 dpi (1190x1684), "
          f"grid {prepared.grid}, {prepared.num_image_tokens} image tokens")  # fmt: skip
    print(f"{'path':<42}{'pages/s':>10}{'vs vLLM':>10}")
    for name, rate in (
        ("ours: uint8 views", rate_ours),
        ("ours: uint8 views + float32 normalise", rate_ours_norm),
        ("vLLM DeepseekOCRProcessor (float32)", rate_vllm),
    ):
        print(f"{name:<42}{rate:>10.2f}{rate / rate_vllm:>9.2f}x")
    print(
        f"bytes per page to the engine: ours {bytes_ours / 2**20:.2f} MiB (uint8), "
        f"vLLM {bytes_vllm / 2**20:.2f} MiB (float32), ratio {bytes_vllm / bytes_ours:.1f}x"
    )


if __name__ == "__main__":
    main()
