"""What the offline batch reads: folders, globs and list files, each document once, under an
output name no other document shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.inputs import find_documents
from batch.run import main


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def names(documents: list) -> list[str]:  # type: ignore[type-arg]
    return [document.name for document in documents]


def test_a_folder_is_searched_recursively_for_documents_only(tmp_path: Path) -> None:
    touch(tmp_path, "b.pdf", "a/scan.PNG", "a/deep/c.tiff", "notes.txt", "a/.hidden/readme.md")

    assert names(find_documents([str(tmp_path)])) == ["a/deep/c", "a/scan", "b"]


def test_globs_list_files_and_repeats_name_each_document_once(tmp_path: Path) -> None:
    touch(tmp_path, "in/x.pdf", "in/y.pdf", "in/z.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path}/in/z.png\n\n{tmp_path}/in/x.pdf\n")

    documents = find_documents([f"{tmp_path}/in/*.pdf", str(tmp_path / "in")], [str(listing)])

    assert names(documents) == ["x", "y", "z"]
    assert documents[0].uri == f"{tmp_path}/in/x.pdf"


def test_documents_sharing_a_stem_keep_their_suffixes(tmp_path: Path) -> None:
    touch(tmp_path, "a.pdf", "a.png", "b.pdf")

    assert names(find_documents([str(tmp_path)])) == ["a.pdf", "a.png", "b"]


def test_two_inputs_that_would_overwrite_each_others_output_are_refused(tmp_path: Path) -> None:
    touch(tmp_path, "one/report.pdf", "two/report.pdf")

    with pytest.raises(ValueError, match="would both be written as 'report.pdf'"):
        find_documents([str(tmp_path / "one"), str(tmp_path / "two")])


def test_a_missing_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gone.pdf"):
        find_documents([str(tmp_path / "gone.pdf")])
    with pytest.raises(FileNotFoundError, match=r"no document matches .*\*.tif"):
        find_documents([f"{tmp_path}/*.tif"])


def test_the_command_says_what_is_wrong_before_starting_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    touch(tmp_path, "in/a.pdf")
    config = tmp_path / "config.yaml"
    config.write_text("models: {fake: {kind: fake}}\n")
    out = ["-o", str(tmp_path / "out"), "--config", str(config)]

    def refused(*args: str) -> str:
        assert main([*args, *out]) == 2
        return capsys.readouterr().err

    assert "no such input" in refused(str(tmp_path / "nothing"))
    assert "unknown mode 'huge'" in refused(str(tmp_path / "in"), "--mode", "huge")
    assert "the model 'x' does not exist" in refused(str(tmp_path / "in"), "--model", "x")
    assert not (tmp_path / "out").exists()
