"""The ``dsocr`` client against a plain concurrent HTTP loop, in one run: the same small
documents, the same number at once, pages/s for each.

Run: ``.venv/bin/python -m bench.client`` (fake engine at a fixed cost per page; the graph as
``serve_config.yaml`` deploys it). The loop posts each document to ``/v1/ocr`` and keeps
nothing; the client is the real command (a process of its own, started each round) writing
markdown, JSON and its state record. Target (issue 22): the client at least 0.95x the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serve_app.config import AppConfig
from serve_app.testing.synthetic import encode, noise_rgb, text_pdf

APP = "bench-client"
DSOCR = str(Path(sys.executable).parent / "dsocr")
CONTENT_TYPES = {".pdf": "application/pdf", ".png": "image/png"}


def make_folder(root: Path, documents: int) -> list[Path]:
    """``documents`` one-page documents: half PDFs, half PNG scans."""
    paths = []
    for number in range(documents):
        if number % 2:
            path = root / f"scan_{number:04d}.png"
            path.write_bytes(encode(noise_rgb(480, 640, seed=number)))
        else:
            path = root / f"page_{number:04d}.pdf"
            path.write_bytes(text_pdf(1))
        paths.append(path)
    return paths


async def plain_loop(url: str, paths: list[Path], concurrency: int) -> float:
    """Pages/s of ``concurrency`` POSTs to /v1/ocr at a time, one per document."""
    turns = asyncio.Semaphore(concurrency)
    pages = 0

    async def one(client: httpx.AsyncClient, path: Path) -> None:
        nonlocal pages
        async with turns:
            kind = {"content-type": CONTENT_TYPES[path.suffix]}
            answer = await client.post("/v1/ocr", content=path.read_bytes(), headers=kind)
            answer.raise_for_status()
            pages += int(answer.json()["pages_processed"])

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(one(client, path) for path in paths))
    seconds = time.perf_counter() - start
    assert pages == len(paths), pages
    return pages / seconds


def client_run(url: str, folder: Path, out: Path, concurrency: int) -> float:
    """Pages/s of one ``dsocr ocr`` run over ``folder``, process start to exit."""
    command = [DSOCR, "ocr", str(folder), "-o", str(out), "--server", url,
               "--concurrency", str(concurrency), "--log-format", "json"]  # fmt: skip
    # As an installed command starts: its bytecode cached (these machines set
    # PYTHONDONTWRITEBYTECODE, which makes every start compile httpx, rich and typer again).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                          env=env)  # fmt: skip
    seconds = time.perf_counter() - start
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and all(line["status"] == "done" for line in lines), done.stderr
    return sum(line["pages"] for line in lines) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200, help="one page each")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--page-latency", type=float, default=0.1, help="fake engine s/page")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from ray import serve

    from serve_app.testing.serve import deployed_options, start_app

    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    folder = work / "in"
    folder.mkdir()
    paths = make_folder(folder, args.documents)
    config = AppConfig.model_validate(
        {"models": {"deepseek-ocr": {"kind": "fake",
                                     "fake": {"first_token_latency_s": args.page_latency}}}}
    )  # fmt: skip
    url = start_app(config, name=APP, options=deployed_options(config))
    print(f"{args.documents} one-page documents (PDFs and PNGs), {args.concurrency} at once; "
          f"fake engine {args.page_latency} s/page; {os.cpu_count()} CPUs")  # fmt: skip
    asyncio.run(plain_loop(url, paths[:16], args.concurrency))  # warm-up
    client_run(url, folder, work / "warm-up", args.concurrency)  # and the client's bytecode

    loops, clients = [], []
    for round_ in range(args.rounds):  # each goes first in turn
        if round_ % 2:
            clients.append(client_run(url, folder, work / f"out{round_}", args.concurrency))
        loops.append(asyncio.run(plain_loop(url, paths, args.concurrency)))
        if not round_ % 2:
            clients.append(client_run(url, folder, work / f"out{round_}", args.concurrency))
    serve.shutdown()
    loop, client = statistics.median(loops), statistics.median(clients)
    print(f"pages/s: plain httpx loop {loop:.2f}, dsocr {client:.2f} ({client / loop:.2f}x; "
          f"rounds {', '.join(f'{r:.2f}' for r in loops)} / "
          f"{', '.join(f'{r:.2f}' for r in clients)})")  # fmt: skip


if __name__ == "__main__":
    main()
