"""``dsocr``: the command line.

    dsocr ocr scans/ report.pdf -o out/            # markdown and JSON under out/
    dsocr jobs list | status ID | wait ID | result ID | cancel ID

The server and key come from ``--server`` / ``--api-key`` or ``$DSOCR_SERVER`` /
``$DSOCR_API_KEY``. Named ``dsocr``: short, and it says whose OCR it is (``ocr`` alone would
clash with other tools' commands).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dsocr.api import Api, ApiError
from dsocr.inputs import find_inputs
from dsocr.progress import BarReporter, LineReporter, describe
from dsocr.run import Outcome, RunOptions, run_batch

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstrings' wrapped lines join into paragraphs
    help="Read images and PDFs into markdown and JSON with a DeepSeek-OCR service.",
)
jobs_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Jobs submitted by this client or elsewhere.",
)
app.add_typer(jobs_app, name="jobs")

Server = Annotated[
    str, typer.Option("--server", envvar="DSOCR_SERVER", help="The service's base URL.")
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="DSOCR_API_KEY", help="Bearer key.")
]


class LogFormat(str, Enum):  # noqa: UP042 (StrEnum is 3.11; the client runs on 3.10)
    auto = "auto"  # bars in a terminal, plain lines otherwise
    plain = "plain"
    json = "json"


@app.command()
def ocr(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or globs.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")],
    server: Server = "http://localhost:8000",
    api_key: ApiKey = None,
    model: Annotated[str | None, typer.Option(help="See /v1/models.")] = None,
    task: Annotated[str | None, typer.Option(help="document, ocr, free, figure...")] = None,
    mode: Annotated[str | None, typer.Option(help="tiny, small, base, large, gundam")] = None,
    pages: Annotated[str | None, typer.Option(help="PDF pages, e.g. 1-3,7")] = None,
    dpi: Annotated[int | None, typer.Option(help="PDF render resolution")] = None,
    figures: Annotated[bool, typer.Option(help="Write figure crops")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Documents at once.")] = 4,
    job_threshold: Annotated[
        int, typer.Option(min=1, help="Documents of this many pages or more run as jobs.")
    ] = 20,
    retry_failed: Annotated[bool, typer.Option(help="Read failed documents again.")] = False,
    log_format: Annotated[LogFormat, typer.Option(help="auto, plain or json")] = LogFormat.auto,
) -> None:
    """Read documents into OUT: STEM.md and STEM.json beside each other, mirroring the
    input folders. A rerun does only what is not done (see OUT/.dsocr-state.jsonl)."""
    try:
        inputs = find_inputs(paths)
    except FileNotFoundError as missing:
        raise typer.BadParameter(str(missing)) from None
    params = {k: str(v) for k, v in {"model": model, "task": task, "mode": mode, "pages": pages,
              "dpi": dpi}.items() if v is not None}  # fmt: skip
    if figures:
        params["include_figures"] = "true"
    options = RunOptions(params, concurrency, job_threshold, retry_failed)
    console = Console(stderr=True)
    bars = log_format is LogFormat.auto and console.is_terminal

    stopping = asyncio.Event()

    async def go() -> list[Outcome]:
        # Ctrl-C: stop starting documents and cancel those at work (the journal keeps what is
        # done and the running jobs' ids). A handler of our own, not asyncio.run's: an HTTP
        # library that turns the cancellation into an error of its own must not end the run
        # as if it had finished.
        main = asyncio.current_task()
        assert main is not None

        def interrupted() -> None:
            stopping.set()
            main.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupted)
        api = Api(server, api_key)
        try:
            if bars:
                with BarReporter(console) as reporter:
                    return await run_batch(api, inputs, out, options, reporter, stopping)
            lines = LineReporter(as_json=log_format is LogFormat.json)
            return await run_batch(api, inputs, out, options, lines, stopping)
        finally:
            await api.close()

    try:
        outcomes = asyncio.run(go())
    except (KeyboardInterrupt, asyncio.CancelledError):
        stopping.set()
    if stopping.is_set():
        console.print("interrupted: run the same command again to continue where this stopped")
        raise typer.Exit(130)
    failed = [o for o in outcomes if o.status in ("failed", "kept")]
    done = sum(o.pages for o in outcomes if o.status in ("done", "skipped"))
    console.print(f"{len(outcomes) - len(failed)} of {len(outcomes)} documents done "
                  f"({done} pages); {len(failed)} failed", highlight=False)  # fmt: skip
    for outcome in failed:
        console.print("  " + describe(outcome), highlight=False)
    if failed:
        raise typer.Exit(1)


def _call(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ApiError as error:
        Console(stderr=True).print(f"error: {error}", highlight=False)
        raise typer.Exit(1) from None


def _print(body: Any) -> None:
    sys.stdout.write(json.dumps(body, indent=1) + "\n")


@jobs_app.command("list")
def jobs_list(
    server: Server = "http://localhost:8000", api_key: ApiKey = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded...")] = None,
    limit: int = 20,
) -> None:  # fmt: skip
    """Your jobs, newest first."""

    async def go() -> dict[str, Any]:
        api = Api(server, api_key)
        try:
            return await api.jobs(status, limit)
        finally:
            await api.close()

    for job in _call(go())["data"]:
        pages = job["pages"]
        sys.stdout.write(f"{job['id']}  {job['status']:<9}  {pages['done']}/{pages['total']} "
                         f"pages\n")  # fmt: skip


@jobs_app.command("status")
def jobs_status(job_id: str, server: Server = "http://localhost:8000", api_key: ApiKey = None
                ) -> None:  # fmt: skip
    """The job as the service reports it."""
    _print(_call(_one(server, api_key, lambda api: api.job(job_id))))


@jobs_app.command("wait")
def jobs_wait(job_id: str, server: Server = "http://localhost:8000", api_key: ApiKey = None
              ) -> None:  # fmt: skip
    """Wait for the job to end; exit 1 unless it succeeded."""

    async def until_done(api: Api) -> dict[str, Any]:
        while True:
            job = await api.job(job_id, wait=30)
            if job["status"] not in ("queued", "running"):
                return job

    job = _call(_one(server, api_key, until_done))
    _print(job)
    if job["status"] != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("result")
def jobs_result(
    job_id: str, server: Server = "http://localhost:8000", api_key: ApiKey = None,
    markdown: Annotated[bool, typer.Option(help="The markdown, not the JSON.")] = False,
) -> None:  # fmt: skip
    """The job's result so far."""
    if markdown:
        sys.stdout.write(_call(_one(server, api_key, lambda api: api.result_markdown(job_id))))
    else:
        _print(_call(_one(server, api_key, lambda api: api.result(job_id))))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, server: Server = "http://localhost:8000", api_key: ApiKey = None
                ) -> None:  # fmt: skip
    """Stop the job; the pages done are kept."""
    _print(_call(_one(server, api_key, lambda api: api.cancel(job_id))))


async def _one(server: str, api_key: str | None, call: Any) -> Any:
    api = Api(server, api_key)
    try:
        return await call(api)
    finally:
        await api.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
