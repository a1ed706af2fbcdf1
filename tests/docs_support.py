"""The shell commands the README and the docs show (importable as `docs_support`).

A command is a line of a fenced ```sh, ```bash, ```shell or ```console block (in a console
block, only the lines after a `$ ` prompt), with its continuation lines (a trailing `\\`) and its
here-document joined to it, and its trailing `# comment` taken off."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "bench" / "README.md",
    REPO / "bench" / "RESULTS.md",
]
SHELL = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(```+|~~~+)\s*([\w-]*)")
HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")


@dataclass(frozen=True)
class Command:
    file: Path
    line: int  # 1-based line of the command's first line
    heading: str  # the section it is in
    text: str  # as a reader would type it, comment off, continuations joined with one space

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def strip_comment(line: str) -> str:
    """`cmd --x  # why` -> `cmd --x`, leaving a `#` inside quotes alone."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _block_commands(
    path: Path, start: int, heading: str, lang: str, body: list[str]
) -> list[Command]:
    found: list[Command] = []
    i = 0
    while i < len(body):
        raw, number = body[i], start + i + 1
        i += 1
        if lang == "console":
            if not raw.startswith("$ "):
                continue
            raw = raw[2:]
        line = strip_comment(raw)
        if not line.strip():
            continue
        parts = [line.strip()]
        while parts[-1].endswith("\\") and i < len(body):
            parts[-1] = parts[-1][:-1].rstrip()
            parts.append(strip_comment(body[i]).strip())
            i += 1
        text = " ".join(parts)
        if match := HEREDOC.search(text):
            end = match.group(1)
            document = []
            while i < len(body) and body[i].strip() != end:
                document.append(body[i])
                i += 1
            i += 1  # the terminator
            text = "\n".join([text, *document, end])
        found.append(Command(path, number, heading, text))
    return found


def commands(path: Path) -> list[Command]:
    found: list[Command] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    heading = ""
    i = 0
    while i < len(lines):
        if lines[i].startswith("#") and not lines[i].startswith("#!"):
            heading = lines[i].lstrip("#").strip()
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        marker, lang = fence.group(1), fence.group(2).lower()
        start = i + 1
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(marker):
            body.append(lines[i])
            i += 1
        i += 1
        if lang in SHELL:
            found.extend(_block_commands(path, start, heading, lang, body))
    return found


def all_commands() -> list[Command]:
    return [command for path in DOCS for command in commands(path)]


def section_commands(path: Path, heading: str) -> list[str]:
    return [c.text for c in commands(path) if c.heading == heading]


@dataclass(frozen=True)
class Selection:
    """The commands one test of tests/docs/test_docs_walkthrough.py runs: those of
    `pages` (under `heading` only, when given; never under `skip_headings`) that match `only`
    (if any) and no `skip`."""

    pages: tuple[str, ...]
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    heading: str = ""
    skip_headings: tuple[str, ...] = ()

    def commands(self) -> list[str]:
        found = []
        for page in self.pages:
            for command in commands(REPO / page):
                text = command.text
                if self.heading and command.heading != self.heading:
                    continue
                if command.heading in self.skip_headings:
                    continue
                if self.only and not any(re.search(p, text) for p in self.only):
                    continue
                if any(re.search(p, text) for p in self.skip):
                    continue
                found.append(text)
        return found


WALKTHROUGH = {
    # The signing ceremony and root rotation run as written in a unit test
    # (tests/unit/gateway/test_registry_ceremony_cli.py): their commands use `pki`, not `out/pki`.
    "test_docs_registry_md_commands": Selection(
        ("docs/registry.md",), skip=(r"--pki pki\b", r"(?<![\w/])pki/")
    ),
    # The PKCS#11 commands need a SoftHSM2 token: tests/integration/test_pkcs11.py runs them.
    # The region-CA import commands need OpenSSL-made files: a unit test runs them as written
    # (tests/unit/gateway/test_registry_import_cli.py). A region made with OpenSSL, from its CA to
    # its gateway: tests/integration/test_openssl_region.py runs that section.
    "test_docs_operators_md_key_commands": Selection(
        ("docs/operators.md",),
        skip=("--postgres-env", "pkcs11", "softhsm2-util", "registry import-"),
        skip_headings=("A region from scratch with OpenSSL",),
    ),
    "test_docs_security_md_commands": Selection(
        ("docs/security.md",), skip=(r"gateway serve", r"^kill -HUP")
    ),
    "test_docs_monitoring_md_key_commands": Selection(
        ("docs/monitoring.md",), skip=("audit verify", "promtool", "pytest")
    ),
    "test_docs_monitoring_md_audit_verify": Selection(
        ("docs/monitoring.md",), only=("audit verify",)
    ),
    # `audit checkpoint --gateway` asks a running gateway: test_oversight_service runs it, and
    # `tracker trail --gateway` test_tracker's CLI test. The
    # outsider's OpenSSL checks of an evidence bundle need its parts cut out first:
    # tests/unit/gateway/test_evidence.py does both.
    "test_docs_audit_and_oversight_commands": Selection(
        ("docs/audit.md", "docs/oversight.md"),
        skip=(
            "audit checkpoint --gateway",
            "tracker trail --gateway",
            r"^openssl (x509|pkeyutl|ts) ",
        ),
    ),
    "test_docs_integrating_md_commands": Selection(("docs/integrating.md",)),
    "test_readme_three_regions_by_hand": Selection(("README.md",), heading="Three regions by hand"),
}
