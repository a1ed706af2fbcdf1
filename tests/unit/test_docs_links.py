"""Every link between the repository's Markdown pages reaches a file that exists and, when it
names one, a heading of that page (issue 13: integrating.md sent readers to a README section
that did not exist). Anchors follow GitHub's rule: the heading's text, lower-cased, without
punctuation, spaces as hyphens, and -1, -2 for repeats."""

from __future__ import annotations

import itertools
import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(
    REPO / name
    for name in subprocess.run(
        ["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
)
MD = MarkdownIt("commonmark").enable("table")


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _text(inline: Token) -> str:
    return "".join(c.content for c in inline.children or [] if c.type in {"text", "code_inline"})


@cache
def anchors(page: Path) -> frozenset[str]:
    tokens = MD.parse(page.read_text(encoding="utf-8"))
    found: set[str] = set()
    for opening, inline in itertools.pairwise(tokens):
        if opening.type != "heading_open":
            continue
        base = anchor = github_anchor(_text(inline))
        n = 0
        while anchor in found:
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return frozenset(found)


def links(page: Path) -> list[str]:
    found = []
    for token in MD.parse(page.read_text(encoding="utf-8")):
        for child in token.children or []:
            href = child.attrGet("href") if child.type == "link_open" else None
            if isinstance(href, str):
                found.append(href)
    return found


def problems(page: Path, root: Path = REPO) -> list[str]:
    wrong = []
    for href in links(page):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:
            continue  # the web: not this test's business
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not target.exists():
            wrong.append(f"{href}: no such file")
        elif not target.resolve().is_relative_to(root):
            wrong.append(f"{href}: outside the repository")
        elif parts.fragment:
            if target.suffix != ".md":
                wrong.append(f"{href}: an anchor in a file that is not Markdown")
            elif unquote(parts.fragment) not in anchors(target):
                wrong.append(f"{href}: {target.relative_to(root)} has no heading for it")
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_reaches_its_file_and_heading(page: Path) -> None:
    assert not problems(page)


def test_the_pages_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in PAGES}
    assert {"README.md", "docs/integrating.md", "bench/README.md"} <= names


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Three regions by hand", "three-regions-by-hand"),
        ("`query_path.py`: the gateway path against the gRPC ceiling", None),
        (
            "T1 Forged caller — a token (JWT) for someone else",
            "t1-forged-caller--a-token-jwt-for-someone-else",
        ),
        ("Quick start", "quick-start"),
    ],
)
def test_anchors_follow_githubs_rule(heading: str, anchor: str | None) -> None:
    if anchor is None:  # the code span's text counts, its backticks do not
        anchor = "query_pathpy-the-gateway-path-against-the-grpc-ceiling"
    assert github_anchor(heading) == anchor


def test_a_missing_heading_and_file_are_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Title\n\n[ok](#title-1) [self](#title) [gone](#nowhere) "
        "[file](missing.md) [`code`](page.md#title) [web](https://example.org/#x)\n",
        encoding="utf-8",
    )
    assert [p.split(":")[0] for p in problems(page, root=tmp_path)] == ["#nowhere", "missing.md"]
    (tmp_path / "missing.md").write_text("# Here\n", encoding="utf-8")
    page.write_text("[there](missing.md#here) [not there](missing.md#gone)\n", encoding="utf-8")
    assert [p.split(":")[0] for p in problems(page, root=tmp_path)] == ["missing.md#gone"]
