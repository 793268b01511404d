"""The quality harness without a server: page scoring, the report, the runners over a fake
transport, and DeepSeek-OCR's eval-script cleanup."""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.quality import (
    BenchPage,
    BenchRun,
    CaseResult,
    PageScore,
    clean_formula,
    format_report,
    main,
    official_markdown,
    omnidocbench_pages,
    page_hypothesis,
    run_cases,
    run_omnidocbench,
    score_answer,
    score_page,
)
from serve_app.core.grounding import EOS_TEXT
from serve_app.testing.docset import (
    Case,
    TrueLine,
    TruePage,
    TrueWord,
    pdf_cases,
    text_page,
    text_page_png,
)

HELLO = TrueLine(
    "Hello world",
    (10, 10, 110, 30),
    (
        TrueWord("Hello", (10, 10, 50, 30), ink=(11, 14, 49, 26)),
        TrueWord("world", (60, 10, 110, 30), ink=(61, 14, 109, 26)),
    ),
)
BYE = TrueLine("Bye", (10, 40, 40, 60), (TrueWord("Bye", (10, 40, 40, 60), ink=(11, 44, 39, 56)),))
TRUTH = TruePage(200, 100, (HELLO, BYE))


def answer_page(number: int, truth: TruePage) -> dict[str, Any]:
    """What a perfect ``task=ocr`` page answer looks like: one region per line, the text in
    its label, boxes rounded outwards to pixels."""
    return {
        "page": number,
        "width": truth.width,
        "height": truth.height,
        "regions": [
            {
                "label": line.text,
                "boxes": [[*map(math.floor, line.box[:2]), *map(math.ceil, line.box[2:])]],
                "text": "",
            }
            for line in truth.lines
        ],
    }


def form_fields(request: httpx.Request) -> dict[str, str]:
    """The plain (non-file) fields of a multipart body."""
    found = re.findall(rb'name="([^"]+)"\r\n\r\n([^\r]*)\r\n', request.content)
    return {k.decode(): v.decode() for k, v in found}


def test_a_hand_made_answer_scores_as_worked_out() -> None:
    page = {
        "page": 1,
        "width": 200,
        "height": 100,
        "regions": [
            {"label": "Hello word", "boxes": [[10, 10, 110, 30]], "text": ""},
            {"label": "text", "boxes": [[10, 40, 25, 60]], "text": "Bye"},
        ],
    }
    text, boxes = page_hypothesis(page, labels_are_text=True)
    assert (text, boxes) == ("Hello word\nBye", [[10, 10, 110, 30], [10, 40, 25, 60]])
    assert score_page(page, TRUTH) == PageScore(
        ref_chars=15,  # "Hello world Bye"
        char_edits=1,
        ref_words=3,
        word_edits=1,
        line_ious=(1.0, 0.5),
        line_hits=2,
        true_words=3,
        words_contained=2,  # "Bye" is wider than its region
        size=None,
    )
    # With layout labels (task=document) a label is never text.
    assert score_page(page, TRUTH, labels_are_text=False).char_edits == 12


def test_containment_is_of_the_ink_within_the_tolerance() -> None:
    tight = {"regions": [{"label": "Hello world", "boxes": [[12, 15, 108, 25]], "text": ""}]}
    assert score_page(tight, TRUTH, tolerance=1).words_contained == 2
    assert score_page(tight, TRUTH, tolerance=0.5).words_contained == 0
    assert score_page(tight, TRUTH).line_ious == (0.48, 0.0)


def test_html_tables_markdown_fallback_failed_pages_and_size_mismatch() -> None:
    html = "<table><tr><td>Hello</td><td>world</td></tr></table>"
    table = {"regions": [{"label": "table", "boxes": [], "text": html}]}
    assert page_hypothesis(table, labels_are_text=False)[0].split() == ["Hello", "world"]
    markdown = {"markdown": "Hello world\n\nBye"}
    assert page_hypothesis(markdown, labels_are_text=True) == ("Hello world\n\nBye", [])
    failed = score_page({"page": 1, "error": {"code": "engine_error", "message": "boom"}}, TRUTH)
    counts = (failed.char_edits, failed.word_edits, failed.line_hits, failed.words_contained)
    assert counts == (15, 3, 0, 0)
    assert failed.error == "engine_error: boom" and failed.size is None
    wrong_size = score_page({"width": 100, "height": 200, "markdown": "Hello world Bye"}, TRUTH)
    assert wrong_size.size == (100, 200) and wrong_size.char_edits == 0


def test_score_answer_pairs_pages_by_number_and_flags_missing_ones() -> None:
    case = Case("two", b"", "two.pdf", "application/pdf", (TRUTH, TRUTH))
    scores = score_answer({"pages": [answer_page(2, TRUTH)]}, case)
    assert scores[0].error == "missing: the answer has no such page"
    assert scores[1].char_edits == 0 and scores[1].line_ious == (1.0, 1.0)


def test_the_report_weights_cer_by_characters_and_iou_by_line() -> None:
    perfect = score_page(answer_page(1, TRUTH), TRUTH)
    failed = score_page({"error": {"code": "timeout", "message": "too slow"}}, TRUTH)
    report = format_report(
        [CaseResult("good", (perfect,), 1.25), CaseResult("bad", (failed,), 3.0, "HTTP 504: late")]
    )
    assert report.split("\n") == [
        "case        pages       CER       WER  line IoU     R@0.5  words in   seconds",
        "good            1     0.000     0.000     1.000     1.000     1.000       1.2",
        "bad             1     1.000     1.000     0.000     0.000     0.000       3.0",
        "overall         2     0.500     0.500     0.500     0.500     0.500       4.2",
        "bad: request failed: HTTP 504: late",
        "bad page 1: timeout: too slow",
    ]


def test_run_cases_sends_each_case_with_its_fields_and_scores_the_answers() -> None:
    cases = [text_page_png(["Hello there", "Line two"], dpi=72)]
    cases += pdf_cases("doc", [text_page(["Page one"]), text_page(["Page two"])], [72, 144])
    seen: list[tuple[str, dict[str, str], str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fields = form_fields(request)
        seen.append((request.url.path, fields, request.headers.get("authorization")))
        if fields.get("dpi") == "144":
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        case = next(c for c in cases if c.fields.get("dpi") == fields.get("dpi"))
        pages = [answer_page(n, t) for n, t in enumerate(case.pages, start=1)]
        return httpx.Response(200, json={"object": "ocr.result", "pages": pages})

    transport = httpx.MockTransport(handler)
    headers = {"Authorization": "Bearer k"}
    with httpx.Client(transport=transport, base_url="http://ocr", headers=headers) as client:
        results = run_cases(client, cases, task="ocr")
    assert seen == [
        ("/v1/ocr", {"task": "ocr"}, "Bearer k"),
        ("/v1/ocr", {"dpi": "72", "task": "ocr"}, "Bearer k"),
        ("/v1/ocr", {"dpi": "144", "task": "ocr"}, "Bearer k"),
    ]
    assert [r.name for r in results] == ["text_page", "doc_72dpi", "doc_144dpi"]
    for good in results[:2]:
        assert good.error is None
        assert all(p.char_edits == 0 and p.words_contained == p.true_words for p in good.pages)
        assert all(p.line_hits == len(p.line_ious) for p in good.pages)
    assert results[2].error == 'HTTP 503: {"error":{"message":"overloaded"}}'
    assert [p.char_edits for p in results[2].pages] == [8, 8]


def test_the_model_field_is_sent_only_when_given() -> None:
    sent: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(form_fields(request))
        return httpx.Response(200, json={"pages": []})

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://ocr") as client:
        run_cases(client, [text_page_png(["x"], dpi=72)], task="document", model="m1")
    assert sent == [{"task": "document", "model": "m1"}]


def test_the_cli_reports_an_unreachable_service_and_hides_the_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--url", "http://127.0.0.1:9", "--api-key", "s3cret"]) == 1
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert out.startswith("python -m bench.quality --url http://127.0.0.1:9 --api-key '***'\n")
    assert "/v1/models: unreachable (ConnectError)" in out
    assert "fonts: request failed: ConnectError" in out


# --- OmniDocBench ---------------------------------------------------------------------------


def test_grounding_matches_are_removed_as_the_official_eval_does() -> None:
    assert official_markdown("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nHello") == "\nHello"
    image_then_title = (
        "<|ref|>image<|/ref|><|det|>[[10, 20, 300, 400], [5, 6, 7, 8]]<|/det|>\n\n\n\n"
        "<|ref|>title<|/ref|><|det|>[[1, 1, 9, 9]]<|/det|>\n# Title <center>x</center>"
    )
    assert official_markdown(image_then_title) == "\n\n# Title x"
    # Without a match the replaces never run (the official loop runs once per match).
    assert official_markdown("a\n\n\n\nb<center>c</center>") == "a\n\n\n\nb<center>c</center>"
    assert official_markdown("Hello" + EOS_TEXT) == "Hello"


def test_clean_formula_drops_equation_numbers_in_one_line_display_math() -> None:
    assert clean_formula(r"\[ x = 1 \quad (3) \] and \[y\]") == r"\[x = 1\] and \[y\]"
    assert clean_formula("\\[a\n\\quad (1)\\]") == "\\[a\n\\quad (1)\\]"


def test_omnidocbench_pages_read_the_index_without_repeats(tmp_path: Path) -> None:
    entries = [{"page_info": {"image_path": n, "page_no": i, "width": 10, "height": 10}}
               for i, n in enumerate(["a.jpg", "b.png", "a.jpg"])]  # fmt: skip
    (tmp_path / "OmniDocBench.json").write_text(json.dumps(entries))
    assert omnidocbench_pages(tmp_path, tmp_path / "out") == [
        BenchPage(tmp_path / "images" / "a.jpg", tmp_path / "out" / "a.md"),
        BenchPage(tmp_path / "images" / "b.png", tmp_path / "out" / "b.md"),
    ]


def test_the_omnidocbench_runner_writes_cleaned_pages_skips_done_ones_and_resumes(
    tmp_path: Path,
) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    names = ["done.jpg", "good.png", "broken.jpg", "refused.jpg"]
    for name in names:
        (images / name).write_bytes(b"image " + name.encode())
    entries = [{"page_info": {"image_path": n, "page_no": i}} for i, n in enumerate(names)]
    (tmp_path / "OmniDocBench.json").write_text(json.dumps(entries))
    out.mkdir()
    (out / "done.md").write_text("from an earlier run")
    raw = "<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n# Title" + EOS_TEXT
    requests: list[tuple[str, dict[str, str], str]] = []
    healthy = False

    def handler(request: httpx.Request) -> httpx.Response:
        name = re.search(rb'filename="([^"]+)"', request.content)[1].decode()  # type: ignore[index]
        kind = re.search(rb"Content-Type: (\S+)", request.content)[1].decode()  # type: ignore[index]
        requests.append((name, form_fields(request), kind))
        if name == "refused.jpg" and not healthy:
            return httpx.Response(500, text="engine down")
        if name == "broken.jpg" and not healthy:
            page = {"page": 1, "error": {"code": "engine_error", "message": "boom"}}
            return httpx.Response(200, json={"pages": [page]})
        return httpx.Response(200, json={"pages": [{"page": 1, "raw_text": raw}]})

    def run(log: list[str]) -> BenchRun:
        async def go() -> BenchRun:
            transport = httpx.MockTransport(handler)
            async with httpx.AsyncClient(transport=transport, base_url="http://ocr") as client:
                pages = omnidocbench_pages(tmp_path, out)
                return await run_omnidocbench(client, pages, concurrency=2, log=log.append)

        return asyncio.run(go())

    log: list[str] = []
    first = run(log)
    assert first.written == 1 and first.skipped == 1
    assert sorted(first.failed) == [
        "broken.jpg: {'code': 'engine_error', 'message': 'boom'}",
        "refused.jpg: HTTP 500: engine down",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["done.md", "good.md"]
    assert (out / "done.md").read_text() == "from an earlier run"
    assert (out / "good.md").read_text() == "\n# Title"
    assert sorted(n for n, _, _ in requests) == ["broken.jpg", "good.png", "refused.jpg"]
    fields = {"task": "document", "include_regions": "false", "mode": "gundam"}
    assert all(f == fields for _, f, _ in requests)
    assert {n: k for n, _, k in requests}["good.png"] == "image/png"
    assert log[0] == "4 pages, 1 already written, 3 to run"
    assert len(log) == 5 and log[-1].startswith("1 written, 2 failed; ")

    healthy, requests[:] = True, []
    second = run([])
    assert second == BenchRun(written=2, skipped=2, failed=())
    assert sorted(n for n, _, _ in requests) == ["broken.jpg", "refused.jpg"]
    written = sorted(p.name for p in out.iterdir())
    assert written == ["broken.md", "done.md", "good.md", "refused.md"]


def test_the_omnidocbench_cli_fails_when_pages_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "p.jpg").write_bytes(b"x")
    index = [{"page_info": {"image_path": "p.jpg"}}]
    (tmp_path / "OmniDocBench.json").write_text(json.dumps(index))
    out = tmp_path / "o"
    assert (
        main(
            [
                "omnidocbench",
                "--url",
                "http://127.0.0.1:9",
                "--data",
                str(tmp_path),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "failed: p.jpg: ConnectError" in capsys.readouterr().out
    assert not (out / "p.md").exists()
