"""``python -m batch INPUT... -o OUT``: documents to per-page Parquet rows and
per-document markdown and JSON, on Ray Data, with the service's stages and configuration.

The stream: documents -> :class:`~batch.plan.Planner` (a row per page; pages
already written are dropped) -> :class:`~batch.stages.Prepare` (CPU actors) ->
:class:`~batch.stages.Recognize` (engine actors, one engine each) ->
:class:`~batch.stages.Finish` (CPU actors) -> the driver, which writes finished
pages in parts as they arrive. Ray Data streams blocks between the stages with backpressure,
so memory holds a window of pages, not the corpus.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml

from batch.inputs import InputDocument, find_documents
from batch.output import Output, failures
from batch.plan import Planner
from batch.stages import Finish, Prepare, Recognize
from serve_app.config import AppConfig
from serve_app.documents.door import Door, RequestFields
from serve_app.documents.messages import OCROptions
from serve_app.errors import ClientError

logger = logging.getLogger("batch")
PAGES_PER_BLOCK = 4
PREPARE_MEMORY = 512 * 2**20  # bytes, Ray's logical memory resource
MIN_STORE = 256 * 2**20
A4_INCHES = (8.27, 11.69)


def load_config(path: Path) -> AppConfig:
    """The ``args:`` of the first application in a Serve config file (``serve_config.yaml``),
    or a file holding just those."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "applications" in data:
        data = data["applications"][0].get("args", {})
    return AppConfig.model_validate(data or {})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="files, folders, globs or URLs (s3://, gs://)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="the output folder")
    parser.add_argument(
        "--list", action="append", default=[], help="a file listing inputs, one per line"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("serve_config.yaml"),
        help="models and stage settings, as the service reads them",
    )
    for name in ("model", "task", "mode", "pages"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--dpi", type=int)
    parser.add_argument("--figures", action="store_true", help="include figure crops")
    parser.add_argument("--retry-failed", action="store_true", help="run failed pages again")
    parser.add_argument("--engines", type=int, default=1, help="engine actors")
    parser.add_argument("--engine-gpus", type=float, default=0.0, help="GPUs per engine actor")
    parser.add_argument(
        "--engine-batch", type=int, default=16, help="pages sent to an engine at once"
    )
    parser.add_argument(
        "--cpu-actors", type=int, default=1, help="preprocess and postprocess actors, each"
    )
    parser.add_argument("--max-pages", type=int, default=100_000, help="pages per document")
    parser.add_argument("--flush-every", type=int, default=64, help="pages per Parquet part")
    parser.add_argument(
        "--store-mb",
        type=int,
        help="object store MiB the pages queued between stages may hold (default: three engine "
        "batches of A4 pages for each engine, at least 256; 0: Ray Data's own, half the "
        "cluster's object store)",
    )
    parser.add_argument(
        "--address", help="a Ray cluster to join (default: RAY_ADDRESS or a local one)"
    )
    return parser.parse_args(argv)  # fmt: skip


def options_of(config: AppConfig, args: argparse.Namespace) -> OCROptions:
    fields = RequestFields(model=args.model, task=args.task, mode=args.mode, pages=args.pages,
                           dpi=args.dpi, include_figures=args.figures)  # fmt: skip
    return Door(config).resolve(fields)


def store_budget(engines: int, engine_batch: int, options: OCROptions) -> int:
    """Object store bytes the queued pages may hold by default: three engine batches of
    prepared A4 pages for each engine (one running, one waiting, one being finished), enough
    to keep every engine fed. Ray Data's own cap is half the cluster's store, which a slow
    engine lets the preparing actors fill whatever its size; Ray Data takes the smaller."""
    width, height = (round(inches * options.dpi) for inches in A4_INCHES)
    page = width * height * 3 * (2 if options.reads == "views" else 1)  # RGB, and the views
    return max(MIN_STORE, engines * engine_batch * 3 * page)


def say(line: str, file: Any = None) -> None:
    (file or sys.stdout).write(line + "\n")


@dataclass(frozen=True)
class Summary:
    documents: int
    pages_run: int
    pages_failed_now: int
    skipped: int
    seconds: float
    first_page_s: float  # until the first page came out: the actors' start, mostly
    documents_written: int
    documents_incomplete: int
    failures: list[tuple[str, int, str]]

    @property
    def pages_per_s(self) -> float:
        return self.pages_run / max(self.seconds, 1e-9)

    @property
    def steady_pages_per_s(self) -> float:
        """The rate once every stage runs (after the first page), as a long run sees it."""
        if self.pages_run < 2:
            return self.pages_per_s
        return (self.pages_run - 1) / max(self.seconds - self.first_page_s, 1e-9)


@dataclass(frozen=True)
class Batch:
    """What a batch's arguments name, read and checked before Ray starts."""

    config: AppConfig
    options: OCROptions
    documents: list[InputDocument]

    @classmethod
    def of(cls, args: argparse.Namespace) -> Batch:
        """Read the configuration, resolve the options and find the documents.

        Raises:
            OSError: For a configuration file or input that cannot be read.
            ValueError, yaml.YAMLError: For a bad configuration, or two inputs sharing an
                output name.
            ClientError: For options the configuration cannot serve (model, task, mode, pages).
        """
        config = load_config(args.config)
        return cls(config, options_of(config, args), find_documents(args.inputs, args.list))


def run(args: argparse.Namespace, batch: Batch | None = None) -> Summary:
    """The batch ``args`` describe, to its end: every planned page written (or its error)."""
    batch = batch or Batch.of(args)
    config, options, documents = batch.config, batch.options, batch.documents
    output = Output(args.output)
    skip = output.done(args.retry_failed)
    engine = config.models[options.model]
    if not ray.is_initialized():
        # A local cluster declares at least a CPU per actor (and one for Ray Data's tasks):
        # on a small machine they share the cores rather than wait for each other.
        needed = 2 * args.cpu_actors + args.engines + 1
        joining = args.address or os.environ.get("RAY_ADDRESS")
        cpus = None if joining else max(os.cpu_count() or 1, needed)
        ray.init(address=args.address, num_cpus=cpus, log_to_driver=False)
    if args.store_mb != 0:  # 0: Ray Data's own limit
        store = (store_budget(args.engines, args.engine_batch, options) if args.store_mb is None
                 else args.store_mb * 2**20)  # fmt: skip
        context = ray.data.DataContext.get_current()
        limits = context.execution_options.resource_limits
        context.execution_options.resource_limits = limits.copy(object_store_memory=store)
        logger.info("the pages queued between stages may hold %d MiB of object store", store >> 20)
    start = time.perf_counter()
    items: list[dict[str, Any]] = [{"uri": d.uri, "name": d.name} for d in documents]
    pool = ray.data.ActorPoolStrategy
    # Ray's annotations take functions; callable classes (actors) are what it runs here.
    dataset = (
        ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200)))
        # A document a call. Its pages would leave as one block, and a block goes to one actor:
        # small blocks spread a long document's pages over every actor downstream. Tasks, not
        # actors: Ray Data fuses the split into the planning task (no second set of workers).
        .map_batches(Planner(config.preprocess, options, args.max_pages, skip), batch_size=1,
                     batch_format="pyarrow", zero_copy_batch=True)
        .repartition(target_num_rows_per_block=PAGES_PER_BLOCK)
        # The memory a preparing actor may hold (kept documents, a rendered page and its
        # views), declared: unlike the planning tasks, which Ray Data would otherwise fuse into
        # these actors (a fusion needs equal remote arguments), and a document's pages would
        # stay on one actor again.
        .map(Prepare, fn_constructor_args=(config.preprocess, options),  # type: ignore[arg-type]
             compute=pool(size=args.cpu_actors), memory=PREPARE_MEMORY)
        .map_batches(Recognize, fn_constructor_args=(engine, options), batch_size=args.engine_batch,
                     compute=pool(size=args.engines), num_gpus=args.engine_gpus or None)
        .map(Finish, fn_constructor_args=(config.postprocess, options),  # type: ignore[arg-type]
             compute=pool(size=args.cpu_actors))
    )  # fmt: skip
    pending: list[dict[str, Any]] = []
    ran = failed = 0
    first_page_s = 0.0
    for row in dataset.iter_rows():
        first_page_s = first_page_s or time.perf_counter() - start
        pending.append(row)
        ran += 1
        failed += row["status"] == "failed"
        if len(pending) >= args.flush_every:
            output.write(pending)
            pending = []
    output.write(pending)
    seconds = time.perf_counter() - start
    written, incomplete = output.write_documents(options.model)
    return Summary(len(documents), ran, failed, len(skip), seconds, first_page_s, written,
                   incomplete, failures(output.rows()))  # fmt: skip


def report(summary: Summary, output: Path) -> None:
    say(f"{summary.documents} documents; {summary.pages_run} pages run now "
        f"({summary.pages_failed_now} failed) in {summary.seconds:.1f} s "
        f"({summary.pages_per_s:.2f} pages/s; {summary.steady_pages_per_s:.2f} after the first "
        f"page at {summary.first_page_s:.1f} s); {summary.skipped} skipped as done before; "
        f"{summary.documents_written} documents written to {output / 'docs'}, "
        f"{summary.documents_incomplete} incomplete")  # fmt: skip
    for name, page, error in summary.failures:
        where = "the document" if page == 0 else f"page {page}"
        say(f"  FAILED {name}, {where}: {error}")
    if summary.failures:
        say("rerun with --retry-failed to run the failed pages again")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if not args.inputs and not args.list:
        say("no inputs: name files, folders, globs or URLs, or --list FILE", sys.stderr)
        return 2
    try:
        batch = Batch.of(args)
    except (OSError, ValueError, yaml.YAMLError, ClientError) as exc:
        say(f"error: {exc}", sys.stderr)
        return 2
    summary = run(args, batch)
    report(summary, args.output)
    return 1 if summary.failures else 0
