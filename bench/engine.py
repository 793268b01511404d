"""Generation throughput: our plugin path versus plain vLLM on the same pages, same run.

Run: ``.venv/bin/python -m bench.engine --pages 4 --max-tokens 32`` (``make bench-engine``).
Each engine is started, timed, given the same A4 pages concurrently (from PIL page to
finished text, so our CPU tiling counts against us as vLLM's own processing counts against
it), then shut down before the other starts, so they never share the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from PIL import Image

from serve_app.config import EngineConfig
from serve_app.core.images import to_model_rgb
from serve_app.core.modes import get_mode
from serve_app.core.pdf import open_pdf
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import prepare_image
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.recognize import generate_once
from serve_app.engine.vllm_engine import VLLMEngine, prepare_engine

PROMPT = build_prompt(Task.DOCUMENT)


def pages(count: int) -> list[Image.Image]:
    from serve_app.testing.synthetic import text_pdf

    with open_pdf(text_pdf(count)) as doc:
        return [doc.render(i) for i in range(count)]


async def bench_plugin(
    config: EngineConfig, images: list[Image.Image], max_tokens: int
) -> dict[str, float]:
    engine = VLLMEngine(config)
    start = time.perf_counter()
    await engine.start()
    started = time.perf_counter() - start

    async def one(i: int, image: Image.Image) -> int:
        prepared = prepare_image(to_model_rgb(image), get_mode("gundam"))
        req = GenerateRequest(f"plugin-{i}", PROMPT, prepared, max_tokens=max_tokens)
        return (await generate_once(engine, req)).completion_tokens

    await one(-1, images[0])  # warm-up
    t0 = time.perf_counter()
    tokens = await asyncio.gather(*(one(i, im) for i, im in enumerate(images)))
    elapsed = time.perf_counter() - t0
    await engine.shutdown()
    return {"start_s": started, "elapsed_s": elapsed, "tokens": float(sum(tokens))}


async def bench_builtin(
    config: EngineConfig, images: list[Image.Image], max_tokens: int
) -> dict[str, float]:
    from vllm.v1.engine.async_llm import AsyncLLM

    args, _ = prepare_engine(config)
    args = dataclasses.replace(args, hf_overrides={}, enable_mm_embeds=False)
    start = time.perf_counter()
    llm = AsyncLLM.from_engine_args(args)
    started = time.perf_counter() - start
    # Same sampling as the plugin engine (greedy, n-gram guard), built the same way.
    params_source = VLLMEngine(config)
    params_source._llm = llm  # noqa: SLF001 - borrow its tokenizer-aware sampling params
    probe = prepare_image(images[0], get_mode("gundam"))
    params = params_source.sampling_params(
        GenerateRequest("p", PROMPT, probe, max_tokens=max_tokens)
    )

    async def one(i: int, image: Image.Image) -> int:
        n = 0
        prompt: Any = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
        async for out in llm.generate(prompt, params, request_id=f"builtin-{i}"):
            n += len(out.outputs[0].token_ids)
        return n

    await one(-1, images[0])
    t0 = time.perf_counter()
    tokens = await asyncio.gather(*(one(i, im) for i, im in enumerate(images)))
    elapsed = time.perf_counter() - t0
    llm.shutdown()
    return {"start_s": started, "elapsed_s": elapsed, "tokens": float(sum(tokens))}


def run_path(path: str, pages_count: int, max_tokens: int) -> dict[str, float]:
    config = EngineConfig(model="tiny", max_model_len=4096, sampling={"max_tokens": 4096})
    images = pages(pages_count)
    bench = bench_plugin if path == "plugin" else bench_builtin
    return asyncio.run(bench(config, images, max_tokens))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--path", choices=["plugin", "builtin"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.path:  # one engine per process, so the two never share CPUs or state
        print(json.dumps(run_path(args.path, args.pages, args.max_tokens)))
        return

    results = {}
    for path in ("plugin", "builtin"):
        cmd = [sys.executable, "-m", "bench.engine", "--path", path,
               "--pages", str(args.pages), "--max-tokens", str(args.max_tokens)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus; tiny checkpoint (real SAM+CLIP "
        f"encoders, 2-layer MoE LM); {args.pages} A4 pages at 144 dpi sent concurrently, "
        f"{args.max_tokens} tokens each, greedy"
    )
    print(f"{'path':<30}{'start s':>9}{'pages/s':>9}{'tok/s':>8}{'vs vLLM':>9}")
    base_rate = args.pages / results["builtin"]["elapsed_s"]
    for name, key in (
        ("ours: CPU tiling + plugin", "plugin"),
        ("plain vLLM (PIL, built-in)", "builtin"),
    ):
        r = results[key]
        rate = args.pages / r["elapsed_s"]
        tok_rate = r["tokens"] / r["elapsed_s"]
        print(
            f"{name:<30}{r['start_s']:>9.1f}{rate:>9.3f}{tok_rate:>8.2f}{rate / base_rate:>8.2f}x"
        )


if __name__ == "__main__":
    main()
