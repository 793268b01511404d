"""What the Serve graph costs: requests/s and added latency versus calling the engine directly.

Run: ``.venv/bin/python -m bench.serve --requests 60 --concurrency 8 --latency 0.2``
(``--page noise`` for a 6 MB incompressible upload instead of a text page). The graph runs
twice: with tracing off (the default) and with every span exported over OTLP.
The engine is the fake one with a fixed per-page latency, so the difference between the rows
is the price of HTTP, the ingress and three deployment hops (preprocess, engine, postprocess).
All rows run in the same process and the same run, on the same image.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psutil

from serve_app.config import AppConfig
from serve_app.core.images import decode_image, to_model_rgb
from serve_app.core.modes import get_mode
from serve_app.core.pdf import open_pdf
from serve_app.core.prompts import Task, build_prompt
from serve_app.core.tiling import prepare_image
from serve_app.documents.messages import OCROptions
from serve_app.documents.run import DocumentRunner
from serve_app.documents.stages import LocalStages, Postprocessor, Preprocessor, Recognizer
from serve_app.engine.fake import FakeEngine
from serve_app.engine.protocol import GenerateRequest
from serve_app.engine.recognize import generate_once
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent working (every process: client, proxy, replicas)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


async def measure(
    call: Callable[[int], Awaitable[None]], requests: int, concurrency: int
) -> tuple[float, list[float], float]:
    """Requests per second, per-request latencies and the machine's CPU seconds per request,
    ``concurrency`` requests at a time."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            start = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - start)

    cpu, start = busy_cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    rate = requests / (time.perf_counter() - start)
    return rate, latencies, (busy_cpu_seconds() - cpu) / requests


GRAPH = "Serve graph over HTTP"
TRACED = "  ... traces exported"


def a4_png(kind: str) -> bytes:
    """An A4-sized page at 144 dpi as PNG: rendered text, or incompressible noise."""
    if kind == "noise":
        return encode(noise_rgb(1190, 1684, seed=0))
    with open_pdf(text_pdf(1)) as doc:
        page = doc.render(0, dpi=144)
    buf = io.BytesIO()
    page.save(buf, format="PNG")  # compressed, as a scanner or renderer would write it
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2, help="fake engine s per page")
    parser.add_argument("--preprocess-replicas", type=int, default=1)
    parser.add_argument(
        "--page", choices=["text", "noise"], default="text",
        help="an A4 text page at 144 dpi (a typical upload) or A4 noise (a 6 MB worst case)",
    )  # fmt: skip
    args = parser.parse_args()

    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake", "fake": {"first_token_latency_s": args.latency,
                                             "tokens_per_update": 1000}}}}
    )  # fmt: skip
    png = a4_png(args.page)
    options = OCROptions(mode=get_mode("gundam"))
    rows: dict[str, tuple[float, list[float], float]] = {}

    async def baselines() -> None:
        engine = FakeEngine(config.default_engine.fake, config.default_engine.sampling)
        await engine.start()
        image = prepare_image(to_model_rgb(decode_image(png)), get_mode("gundam"))
        prompt = build_prompt(Task.DOCUMENT)

        async def direct(i: int) -> None:
            await generate_once(engine, GenerateRequest(f"d{i}", prompt, image))

        rows["engine called directly"] = await measure(direct, args.requests, args.concurrency)
        stages = LocalStages(
            Preprocessor(config.preprocess),
            Recognizer(engine, config.default_engine),
            Postprocessor(config.postprocess),
            max_pages=10,
        )
        runner = DocumentRunner(stages, pages_in_flight=8)

        async def in_process(i: int) -> None:
            run = await runner.start(f"p{i}", png, options)
            await run.collect()

        rows["pipeline in one process"] = await measure(in_process, args.requests, args.concurrency)

    asyncio.run(baselines())

    from ray import serve

    from serve_app.testing.otlp import Collector
    from serve_app.testing.serve import deployed_options, start_app, with_env

    # As serve_config.yaml deploys it (Serve's default of 5 requests per replica would queue
    # this run's requests in the proxy), with fixed replica counts.
    deployments = deployed_options(config, {"PreprocessDeployment": args.preprocess_replicas})

    async def over_http(url: str, row: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:

            async def post(i: int) -> None:
                r = await client.post("/v1/ocr", files={"file": ("p.png", png, "image/png")})
                r.raise_for_status()

            await post(-1)  # warm-up
            rows[row] = await measure(post, args.requests, args.concurrency)

    asyncio.run(over_http(start_app(config, name="bench", options=deployments), GRAPH))
    sent, received, inline = ingress_bytes_per_page(png, options)
    serve.shutdown()
    # The same graph with every span exported over OTLP/HTTP to a collector in this process.
    with Collector(keep=False) as collector:
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
        url = start_app(config, name="bench", options=with_env(env, config, deployments))
        asyncio.run(over_http(url, TRACED))
        serve.shutdown()
        exported = collector.bytes_received

    base_rate, base_lat, _ = rows["engine called directly"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus; {args.requests} requests of one "
        f"A4 {args.page} PNG ({len(png) / 1e6:.2f} MB), {args.concurrency} at a time; "
        f"fake engine {args.latency:.2f} s per page; "
        f"{args.preprocess_replicas} preprocess replica(s)"
    )
    print(
        f"{'path':<28}{'req/s':>8}{'vs engine':>11}{'mean s':>9}{'p95 s':>8}{'added s':>9}"
        f"{'cpu ms/req':>12}"
    )
    for name, (rate, lat, cpu) in rows.items():
        mean = statistics.mean(lat)
        p95 = sorted(lat)[int(0.95 * (len(lat) - 1))]
        added = mean - statistics.mean(base_lat)
        print(
            f"{name:<28}{rate:>8.2f}{rate / base_rate:>10.2f}x{mean:>9.3f}{p95:>8.3f}{added:>9.3f}"
            f"{1000 * cpu:>12.0f}"
        )
    graph = rows[GRAPH][0] / rows["pipeline in one process"][0]
    print(f"Serve graph over HTTP / pipeline in one process: {graph:.2f}x requests per second")
    cost = rows[GRAPH][2] / rows["pipeline in one process"][2]
    print(
        f"  and {cost:.2f}x the machine's CPU time per request (the pipeline runs its stages on "
        "one event loop; the graph's preprocess replica works on several pages at once)"
    )
    traced = rows[TRACED][0] / rows[GRAPH][0]
    print(
        f"traces exported / traces off: {traced:.2f}x requests per second "
        f"({exported / (args.requests + 1) / 1e3:.1f} KB of OTLP per request)"
    )
    print(
        f"bytes the ingress serializes per A4 page: {sent:,} sent + {received:,} received "
        f"= {sent + received:,} (the page's views and pixels inline would be {inline:,})"
    )


def ingress_bytes_per_page(png: bytes, options: OCROptions) -> tuple[int, int, int]:
    """What the ingress pickles to and from the stages for one page, as its handles do, and
    what the page's data weighs inline. Uses the running app's deployments."""
    import ray
    from ray import cloudpickle, serve

    from serve_app.documents.messages import PageTask

    def handle(name: str) -> Any:
        return serve.get_deployment_handle(name, app_name="bench")

    source = ray.put(png)
    task = PageTask("bench-bytes", 0, "image", options)
    page = handle("PreprocessDeployment").prepare.remote(source, task).result()
    generation = handle("EngineDeployment-deepseek-ocr").recognize.remote(page, task).result()
    result = handle("PostprocessDeployment").page.remote(page, generation.text, task).result()
    sent = [(source, task), (page, task), (page, generation.text, task)]
    received = [page, generation, result]
    size = [len(cloudpickle.dumps(x)) for x in (*sent, *received)]
    image = ray.get(page.image)
    pixels = ray.get(page.pixels) if page.pixels is not None else None
    inline = len(cloudpickle.dumps((image, pixels)))
    return sum(size[:3]), sum(size[3:]), inline


if __name__ == "__main__":
    main()
