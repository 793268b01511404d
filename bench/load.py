"""A bounded load run at about twice the graph's capacity: nothing lost, no 500.

Run: ``.venv/bin/python -m bench.load`` (fake engine; about two and a half minutes with the
capacity probe and start-up). First a closed-loop probe measures the graph's capacity in
requests per second; then requests arrive open-loop at ``--overload`` times that rate for
``--seconds``, ``--rounds`` times: single images and PDFs of 2-4 pages, mixed. Every request
must end in a result or a JSON 429, 503 or 504; every admitted request must return each of
its pages (a result or an explicit per-page error). Prints answers by status, latency
percentiles of the admitted requests and each replica's memory at start and after each round
(a plateau, not growth). Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import statistics
import sys
import time
from dataclasses import dataclass

import httpx
import psutil

from serve_app.config import AppConfig
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

REFUSALS = {429: "rate_limited", 503: "overloaded", 504: "timeout"}


@dataclass
class Outcome:
    status: int
    seconds: float
    pages_sent: int
    pages_back: int
    problem: str | None = None


def inputs(seed: int) -> list[tuple[str, bytes, str, int]]:
    """(name, body, content type, pages): small images and short text PDFs."""
    rng = random.Random(seed)
    made = []
    for i in range(6):
        width, height = rng.choice([(640, 480), (800, 1100), (1200, 900)])
        made.append((f"i{i}.png", encode(noise_rgb(width, height, seed=i)), "image/png", 1))
    for pages in (2, 3, 4):
        made.append((f"d{pages}.pdf", text_pdf(pages, size=(420, 595)), "application/pdf", pages))
    return made


async def send(client: httpx.AsyncClient, item: tuple[str, bytes, str, int]) -> Outcome:
    name, body, kind, pages = item
    start = time.perf_counter()
    try:
        r = await client.post("/v1/ocr", files={"file": (name, body, kind)}, data={"mode": "tiny"})
    except httpx.HTTPError as exc:
        return Outcome(0, time.perf_counter() - start, pages, 0, f"transport: {exc!r}")
    seconds = time.perf_counter() - start
    try:
        answer = r.json()
    except ValueError:
        return Outcome(r.status_code, seconds, pages, 0, f"not JSON: {r.text[:80]!r}")
    if r.status_code == 200:
        back = len(answer.get("pages", []))
        problem = None if back == pages else f"{back} of {pages} pages came back"
        return Outcome(200, seconds, pages, back, problem)
    code = answer.get("error", {}).get("code")
    if REFUSALS.get(r.status_code) != code:
        return Outcome(r.status_code, seconds, pages, 0, f"unexpected {r.status_code} {code}")
    return Outcome(r.status_code, seconds, pages, 0)


async def probe(url: str, items: list[tuple[str, bytes, str, int]], seconds: float) -> float:
    """Requests per second the graph completes with plenty in flight (closed loop)."""
    done = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker(k: int) -> None:
            nonlocal done
            rng = random.Random(k)
            while time.perf_counter() < stop:
                if (await send(client, rng.choice(items))).status == 200:
                    done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(16)))
        return done / (time.perf_counter() - start)


async def overload(
    url: str, items: list[tuple[str, bytes, str, int]], rate: float, seconds: float
) -> list[Outcome]:
    """Open loop: a request every 1/rate seconds, whatever happened to the earlier ones."""
    rng = random.Random(7)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(send(client, rng.choice(items))))
        return list(await asyncio.gather(*tasks))


def replica_memory(app: str) -> dict[str, tuple[float, float]]:
    """MiB per replica process (by the titles Ray gives them): private (USS), and resident
    (RSS, which also counts the pages of Ray's shared object store the process touched)."""
    found: dict[str, tuple[float, float]] = {}
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or ())
        marker = f"ServeReplica:{app}:"
        if marker in title:
            name = title.split(marker, 1)[1].split()[0]
            info = proc.memory_full_info()
            found[f"{name} ({proc.pid})"] = (info.uss / 2**20, info.rss / 2**20)
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="per overload round")
    parser.add_argument("--rounds", type=int, default=2, help="memory is printed after each")
    parser.add_argument("--overload", type=float, default=2.0, help="times the capacity")
    parser.add_argument("--page-latency", type=float, default=0.25, help="fake engine s/page")
    args = parser.parse_args()

    from ray import serve

    from serve_app.testing.serve import deployed_options, start_app

    # Small queues and a short deadline, so the overload shows as refusals within the run.
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake",
                                     "fake": {"first_token_latency_s": args.page_latency}}},
         "ingress": {"max_working_requests": 16, "max_waiting_requests": 32,
                     "request_timeout_s": 20}}
    )  # fmt: skip
    url = start_app(config, name="load", options=deployed_options(config))
    items = inputs(seed=1)
    memory = [replica_memory("load")]
    capacity = asyncio.run(probe(url, items, seconds=15))
    rate = args.overload * capacity
    outcomes: list[Outcome] = []
    for _ in range(args.rounds):
        outcomes += asyncio.run(overload(url, items, rate, args.seconds))
        time.sleep(2)
        memory.append(replica_memory("load"))
    serve.shutdown()

    by_status = collections.Counter(o.status for o in outcomes)
    admitted = [o for o in outcomes if o.status == 200]
    problems = [o.problem for o in outcomes if o.problem]
    sent = sum(o.pages_sent for o in admitted)
    back = sum(o.pages_back for o in admitted)
    latencies = [o.seconds for o in admitted]
    print(f"capacity (closed loop, 16 in flight): {capacity:.1f} requests/s")
    print(f"offered: {len(outcomes)} requests at {rate:.1f}/s, {args.rounds} x "
          f"{args.seconds:.0f} s ({args.overload:.1f}x capacity)")  # fmt: skip
    print("answers: " + ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items())))
    print(f"admitted: {len(admitted)} requests, pages sent {sent}, pages back {back}")
    if latencies:
        print(f"admitted latency s: p50 {statistics.median(latencies):.2f}, "
              f"p99 {percentile(latencies, 0.99):.2f}, max {max(latencies):.2f}")  # fmt: skip
    rounds = "".join(f"{f'after {k}':>14}" for k in range(1, len(memory)))
    print(f"{'replica MiB private / resident':<36}{'start':>14}{rounds}")
    for name in sorted(set().union(*memory)):
        cells = [m.get(name, (float("nan"), float("nan"))) for m in memory]
        print(f"{name:<36}" + "".join(f"{f'{uss:.0f} / {rss:.0f}':>14}" for uss, rss in cells))
    unexpected = {s for s in by_status if s not in (200, *REFUSALS)}
    if problems or unexpected or sent != back:
        print(f"FAILED: {len(problems)} problems, e.g. {problems[:3]}; statuses {unexpected}")
        return 1
    print("ok: every request answered or refused with JSON; no page lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
