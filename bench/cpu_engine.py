"""Engine seconds per page by mode on this CPU: the dtype ``auto`` picks versus the other one.

Run: ``.venv/bin/python -m bench.cpu_engine`` (``make bench-cpu``; several minutes).
Each dtype gets its own process and engine (tiny checkpoint: the real SAM + CLIP encoders and
a 2-layer language model), started and timed, then given one A4 page at 144 dpi in every mode,
one page at a time after a warm-up page, ``--max-tokens`` tokens each. A page slower than
``--page-timeout`` ends that dtype's run (reported as ``>``), as bfloat16 does on CPUs
without native bf16.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from PIL import Image

from serve_app.config import EngineConfig
from serve_app.core.modes import get_mode
from serve_app.core.pdf import open_pdf
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import prepare_image
from serve_app.engine.hardware import choose_dtype, probe_hardware
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.recognize import generate_once
from serve_app.engine.vllm_engine import VLLMEngine
from serve_app.testing.synthetic import text_pdf

MODES = ("tiny", "small", "base", "large", "gundam")
PROMPT = build_prompt(Task.DOCUMENT)


async def measure(dtype: str, max_tokens: int, page_timeout: float) -> dict[str, Any]:
    with open_pdf(text_pdf(1)) as doc:
        page = doc.render(0, dpi=144)
    config = EngineConfig(model="tiny", dtype=dtype, max_model_len=4096,
                          sampling={"max_tokens": 4096})  # type: ignore[arg-type]  # fmt: skip
    engine = VLLMEngine(config)
    t0 = time.perf_counter()
    await engine.start()
    started = time.perf_counter() - t0
    pages: dict[str, dict[str, float | None]] = {}
    try:
        await run_page(engine, page, "tiny", max_tokens, page_timeout)  # warm-up
        for name in MODES:
            seconds, prompt_tokens = await run_page(engine, page, name, max_tokens, page_timeout)
            pages[name] = {"seconds": seconds, "prompt_tokens": prompt_tokens}
            if seconds is None:
                break
    finally:
        await engine.shutdown()
    return {"start_s": started, "pages": pages}


async def run_page(
    engine: VLLMEngine, page: Image.Image, mode: str, max_tokens: int, timeout: float
) -> tuple[float | None, float | None]:
    """Seconds and prompt tokens of one page; ``None`` past ``timeout``."""
    prepared = prepare_image(page, get_mode(mode))
    req = GenerateRequest(f"{mode}-{time.monotonic_ns()}", PROMPT, prepared, max_tokens=max_tokens)
    t0 = time.perf_counter()
    try:
        out = await asyncio.wait_for(generate_once(engine, req), timeout)
    except TimeoutError:
        return None, None
    return time.perf_counter() - t0, float(out.prompt_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--page-timeout", type=float, default=400.0)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dtype:  # one engine per process, so the two never share CPUs
        print(json.dumps(asyncio.run(measure(args.dtype, args.max_tokens, args.page_timeout))))
        return

    hardware = probe_hardware("cpu")
    auto = choose_dtype("auto", hardware)
    other = "float32" if auto.dtype == "bfloat16" else "bfloat16"
    results = {}
    for dtype in (auto.dtype, other):
        cmd = [sys.executable, "-m", "bench.cpu_engine", "--dtype", dtype, "--max-tokens",
               str(args.max_tokens), "--page-timeout", str(args.page_timeout)]  # fmt: skip
        # A page past the timeout leaves the engine busy; the process is ended with it.
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[dtype] = json.loads(out.strip().splitlines()[-1])

    print(f"machine: {hardware.name}, native bf16: {hardware.native_bf16}; auto -> {auto.dtype}")
    print(f"A4 page (1190x1684), {args.max_tokens} tokens, one page at a time, seconds per page")
    header = f"{'dtype':<18}{'start s':>9}" + "".join(f"{m:>9}" for m in MODES)
    print(header)
    for dtype in (auto.dtype, other):
        r = results[dtype]
        pages = r["pages"]
        cells = []
        for m in MODES:
            seconds = pages.get(m, {}).get("seconds")
            if m not in pages:
                cells.append("-")
            elif seconds is None:
                cells.append(f">{args.page_timeout:.0f}")
            else:
                cells.append(f"{seconds:.1f}")
        label = f"{dtype}{' (auto)' if dtype == auto.dtype else ''}"
        print(f"{label:<18}{r['start_s']:>9.1f}" + "".join(f"{c:>9}" for c in cells))
    a, b = results[auto.dtype]["pages"], results[other]["pages"]
    for m in MODES:
        sa, sb = a.get(m, {}).get("seconds"), b.get(m, {}).get("seconds")
        if sa and sb:
            print(f"{m}: {other} / {auto.dtype} = {sb / sa:.2f}x")


if __name__ == "__main__":
    main()
