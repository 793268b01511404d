"""The command-line client's pure parts: which files a run reads and where their outputs go,
the state record that decides what is done, the outputs it writes, Retry-After."""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import sys
from pathlib import Path

import httpx
import pymupdf
import pytest

from dsocr.api import ApiError, _retry_after
from dsocr.inputs import find_inputs, page_count
from dsocr.outputs import document, write_outputs
from dsocr.run import Turns, submit_key
from dsocr.state import STATE_FILE, Entry, State, options_key
from serve_app.testing.synthetic import text_pdf


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_folder_is_read_recursively_and_its_tree_is_mirrored(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.pdf")
    touch(tmp_path / "in" / "sub" / "b.PNG")
    touch(tmp_path / "in" / "notes.txt")  # not a document type: a folder leaves it out
    single = touch(tmp_path / "other" / "c.jpg")
    found = find_inputs([str(tmp_path / "in"), str(single), str(tmp_path / "in" / "a.pdf")])
    assert [(i.stem.as_posix(), i.key, i.content_type) for i in found] == [
        ("a", "a.pdf", "application/pdf"),
        ("sub/b", "sub/b.png", "image/png"),
        ("c", "c.jpg", "image/jpeg"),
    ]  # a.pdf named twice is read once


def test_a_glob_and_a_named_file_of_any_type_are_read_and_nothing_matching_is_an_error(
    tmp_path: Path,
) -> None:
    touch(tmp_path / "x1.pdf")
    touch(tmp_path / "x2.pdf")
    odd = touch(tmp_path / "broken.bin")
    found = find_inputs([str(tmp_path / "x*.pdf"), str(odd)])
    assert [i.key for i in found] == ["x1.pdf", "x2.pdf", "broken.bin"]
    assert found[-1].content_type == "application/octet-stream"  # the service says why not
    with pytest.raises(FileNotFoundError, match="nothing.pdf"):
        find_inputs([str(tmp_path / "nothing.pdf")])


def test_page_count_counts_a_pdfs_pages_and_an_image_as_one() -> None:
    assert page_count(text_pdf(3), "application/pdf") == 3
    with pymupdf.open(stream=text_pdf(7), filetype="pdf") as doc:  # PDF 1.5 object streams
        packed = doc.tobytes(garbage=3, deflate=True, use_objstms=1)
    assert b"/ObjStm" in packed and page_count(packed, "application/pdf") == 7
    assert page_count(b"\x89PNG...", "image/png") == 1


def test_the_state_record_answers_only_for_the_same_content_and_options(
    tmp_path: Path,
) -> None:
    state = State(tmp_path)
    opts = options_key({"mode": "tiny"})
    state.put(Entry("a.pdf", "h1", opts, "running", job_id="job_0"))
    state.put(Entry("a.pdf", "h1", opts, "done", pages_done=3))  # the last line wins
    state.put(Entry("b.pdf", "h2", opts, "running", job_id="job_1"))
    again = State(tmp_path)  # what a rerun reads
    done = again.get("a.pdf", "h1", opts)
    assert done is not None and (done.status, done.pages_done) == ("done", 3)
    assert again.get("a.pdf", "h1-changed", opts) is None  # another content: read again
    assert again.get("a.pdf", "h1", options_key({"mode": "base"})) is None  # other options
    running = again.get("b.pdf", "h2", opts)
    assert running is not None and (running.status, running.job_id) == ("running", "job_1")
    # Read back, the journal is compacted: a line per input, no temporary file left.
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]
    assert len((tmp_path / STATE_FILE).read_text().splitlines()) == 3  # the run's id first


def test_a_state_line_torn_by_a_crash_is_skipped_and_the_next_line_lands_whole(
    tmp_path: Path,
) -> None:
    opts = options_key({})
    State(tmp_path).put(Entry("a.pdf", "h1", opts, "done", pages_done=1))
    with (tmp_path / STATE_FILE).open("ab") as journal:
        journal.write(b'{"input": "b.pdf", "sha256": "h2", "opti')  # the crash
    again = State(tmp_path)
    assert list(again.entries) == ["a.pdf"]
    again.put(Entry("c.pdf", "h3", opts, "done"))
    assert list(State(tmp_path).entries) == ["a.pdf", "c.pdf"]


def test_a_documents_answer_is_rebuilt_from_its_stream_in_page_order() -> None:
    pages = [
        {"object": "ocr.page", "page": 2, "markdown": "two"},
        {"object": "ocr.page", "page": 1, "error": {"code": "x", "message": "bad --  page"}},
    ]
    summary = {"object": "ocr.result", "pages_processed": 2, "pages_failed": 1}
    answer = document(summary, pages)
    assert [p["page"] for p in answer["pages"]] == [1, 2]
    assert answer["markdown"] == (
        "<!-- page 1 failed: bad - page -->\n\n<--- Page Split --->\n\ntwo"
    )


def test_outputs_go_beside_each_other_and_figures_to_files(tmp_path: Path) -> None:
    jpeg = b"\xff\xd8fake"
    page = {"page": 1, "markdown": "![](images/0_0.jpg)",
            "figures": [{"name": "images/0_0.jpg", "image_base64": base64.b64encode(jpeg).decode()}]}  # fmt: skip
    written = write_outputs(tmp_path, Path("sub/doc"), {"markdown": "# hi", "pages": [page]})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "sub/doc.json", "sub/doc.md", "sub/doc_figures/0_0.jpg"]  # fmt: skip
    assert (tmp_path / "sub" / "doc_figures" / "0_0.jpg").read_bytes() == jpeg
    saved = json.loads((tmp_path / "sub" / "doc.json").read_text())
    assert saved["pages"][0]["figures"] == [
        {"name": "images/0_0.jpg", "file": "sub/doc_figures/0_0.jpg"}]  # fmt: skip


def test_retry_after_is_the_servers_capped_at_a_minute_else_growing() -> None:
    def answer(**headers: str) -> httpx.Response:
        return httpx.Response(429, headers=headers)

    assert _retry_after(answer(**{"retry-after": "3"}), 0) == 3
    assert _retry_after(answer(**{"retry-after": "7200"}), 0) == 60
    assert [_retry_after(answer(), n) for n in (0, 1, 2)] == [1, 2, 4]


def test_an_error_answer_reads_as_the_services_code_and_message() -> None:
    body = json.dumps({"error": {"code": "invalid_input", "message": "not a PDF"}}).encode()
    error = ApiError.of(httpx.Response(400), body)
    assert (error.status, error.code, error.message) == (400, "invalid_input", "not a PDF")
    plain = ApiError.of(httpx.Response(502), b"Bad Gateway")
    assert (plain.code, plain.message) == ("http_error", "Bad Gateway")


def test_a_jobs_idempotency_key_is_the_same_for_a_rerun_and_another_for_a_fresh_folder(
    tmp_path: Path,
) -> None:
    entry = Entry("c.pdf", "h1", options_key({}), "running")
    first = State(tmp_path / "out")
    key = submit_key(first.run_id, entry)
    assert key == submit_key(State(tmp_path / "out").run_id, entry)  # the rerun
    assert key != submit_key(State(tmp_path / "elsewhere").run_id, entry)
    (tmp_path / "out" / STATE_FILE).unlink()  # the folder emptied: a new run
    assert key != submit_key(State(tmp_path / "out").run_id, entry)
    assert key != submit_key(first.run_id, Entry("c.pdf", "h2", options_key({}), "running"))
    assert key.startswith("dsocr-") and len(key) <= 64


def test_documents_start_in_the_inputs_order_whichever_file_is_read_first() -> None:
    async def run(concurrency: int) -> tuple[list[int], int]:
        turns, started, busy, most = Turns(concurrency), [], 0, 0

        async def one(index: int, read_s: float, skipped: bool) -> None:
            nonlocal busy, most
            try:
                await asyncio.sleep(read_s)  # the later inputs are read first
                if skipped:  # done before: it never asks for a turn
                    return
                async with turns.take(index):
                    started.append(index)
                    busy += 1
                    most = max(most, busy)
                    await asyncio.sleep(0.01)
                    busy -= 1
            finally:
                turns.pass_over(index)

        await asyncio.gather(*(one(i, 0.05 - i * 0.01, i == 2) for i in range(5)))
        return started, most

    assert asyncio.run(run(1)) == ([0, 1, 3, 4], 1)
    assert asyncio.run(run(2)) == ([0, 1, 3, 4], 2)


def test_the_client_imports_only_the_standard_library_httpx_typer_and_rich() -> None:
    allowed = {"httpx", "typer", "rich", "dsocr"}
    root = Path(__file__).parents[2] / "client" / "dsocr"
    imported: set[str] = set()
    for source in root.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert imported, "no imports read"
    outside = imported - allowed - sys.stdlib_module_names
    assert not outside, f"the client would need {outside} installed"
    assert {"httpx", "typer", "rich"} <= imported
