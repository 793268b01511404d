"""A set of real typeset pages with their truth: published PDFs that carry text layers.

Nothing here is generated or committed: the PDFs come from two Debian packages, fetched and
unpacked at bench time into ``build/realpages/`` (``apt-get download``, no root needed):

- ``texlive-publishers-doc``: journal and conference class samples and manuals (LPPL):
  ACM ``sigconf`` and REVTeX APS/AIP two-column papers with reference lists, Elsevier 3p/5p
  articles, IEEE PES and the Elsevier class manual (margin notes), the LNCS manual;
- ``r-doc-pdf``: the R manuals (GPL), one column with code blocks.

A page's truth is its PDF text layer in content-stream order (how its typesetter wrote it:
column by column for LaTeX), one line per text line.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pymupdf

CACHE = Path("build/realpages")
TEXLIVE = "usr/share/doc/texlive-doc/latex"
R_MANUALS = "usr/share/doc/r-doc-pdf/manual"


@dataclass(frozen=True)
class Source:
    package: str
    path: str  # inside the package
    pages: tuple[int, ...]  # 0-based
    layout: str


SOURCES = (
    Source("texlive-publishers-doc", f"{TEXLIVE}/acmart/samples/sample-sigconf.pdf",
           (0, 1, 2, 3, 4, 5), "ACM sigconf paper: two columns, title block, references"),
    Source("texlive-publishers-doc", f"{TEXLIVE}/revtex4-1/sample/aps/apssamp.pdf",
           (0, 1, 4, 6), "REVTeX APS paper: two columns, abstract, tables, references"),
    Source("texlive-publishers-doc", f"{TEXLIVE}/revtex4-1/sample/aip/aipsamp.pdf",
           (0, 3, 5), "REVTeX AIP paper: two columns, references"),
    Source("texlive-publishers-doc", f"{TEXLIVE}/elsarticle/elstest-5p.pdf",
           (0, 1, 2, 3), "Elsevier 5p article: two columns, floats, references"),
    Source("texlive-publishers-doc", f"{TEXLIVE}/elsarticle/elstest-3pd.pdf",
           (1, 3), "Elsevier 3p two-column article"),
    Source("texlive-publishers-doc", f"{TEXLIVE}/ieeepes/ieeepes_doc.pdf",
           (1, 3, 5), "IEEE PES paper: two columns"),
    Source("texlive-publishers-doc", f"{TEXLIVE}/elsarticle/elsdoc.pdf",
           (1, 7), "Elsevier class manual: one column with margin notes"),
    Source("texlive-publishers-doc", f"{TEXLIVE}/llncs/llncsdoc.pdf",
           (1, 3), "Springer LNCS manual: one column"),
    Source("r-doc-pdf", f"{R_MANUALS}/R-intro.pdf", (10, 25, 60),
           "R manual: one column, code, headers"),
    Source("r-doc-pdf", f"{R_MANUALS}/R-exts.pdf", (20, 80), "R manual: one column, code"),
)  # fmt: skip


@dataclass(frozen=True)
class RealPage:
    name: str  # "<pdf stem>-p<page number, 1-based>"
    layout: str
    pixels: np.ndarray  # RGB, uint8
    truth: str  # the text layer, a line per line, in content-stream order


def fetch(cache: Path = CACHE) -> dict[str, Path]:
    """The sources' PDFs, downloaded and unpacked once into ``cache``; ``{package path: file}``."""
    wanted = {source.path: cache / Path(source.path).name for source in SOURCES}
    missing = {s.package for s in SOURCES if not wanted[s.path].exists()}
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                subprocess.run(["apt-get", "download", *sorted(missing)], cwd=tmp, check=True,
                               capture_output=True, text=True)  # fmt: skip
            except (OSError, subprocess.CalledProcessError) as exc:
                detail = getattr(exc, "stderr", "") or exc
                raise SystemExit(f"apt-get cannot download {sorted(missing)}: {detail}") from None
            for deb in Path(tmp).glob("*.deb"):
                subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/root"], check=True)
            for path, target in wanted.items():
                if (Path(tmp) / "root" / path).exists():
                    shutil.copyfile(Path(tmp) / "root" / path, target)
    absent = [path for path, target in wanted.items() if not target.exists()]
    if absent:
        raise SystemExit(f"not in the downloaded packages: {absent}")
    return wanted


def real_pages(dpi: int = 150, cache: Path = CACHE) -> Iterator[RealPage]:
    """Every selected page rendered at ``dpi`` with its text layer."""
    files = fetch(cache)
    for source in SOURCES:
        with pymupdf.open(files[source.path]) as doc:
            for index in source.pages:
                page = doc[index]
                pix = page.get_pixmap(dpi=dpi, alpha=False)
                pixels = np.frombuffer(pix.samples, np.uint8).reshape(pix.h, pix.w, pix.n)
                name = f"{Path(source.path).stem}-p{index + 1}"
                yield RealPage(name, source.layout, pixels.copy(), text_layer(page))


def text_layer(page: pymupdf.Page) -> str:
    """The page's text lines in content-stream order, ligatures expanded."""
    flags = pymupdf.TEXT_PRESERVE_WHITESPACE & ~pymupdf.TEXT_PRESERVE_LIGATURES
    lines = []
    for block in page.get_text("dict", flags=flags, sort=False)["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"]).strip()
            if text:
                lines.append(text)
    return "\n".join(lines)
