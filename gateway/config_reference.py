"""The gateway configuration reference, in Markdown, generated from `gateway.config`.

    python -m gateway.config_reference                  print the reference
    python -m gateway.config_reference --write FILE     replace FILE's reference block
    python -m gateway.config_reference --check FILE     exit 1 if FILE's block is out of date

The block is the text between `BEGIN_MARKER` and `END_MARKER` (docs/operators.md has one).

Where each column comes from:

- the keys: the table `KEYS` below. The loader in `gateway.config` has no list of the keys it
  accepts (each section records the keys it reads, and refuses the others), and TOML keys are
  not dataclass fields one to one (`passphrase_file` and `passphrase_env` both give
  `GatewayConfig.tls_passphrase`). A test runs the real loader and checks that `KEYS` names
  exactly the keys it reads, so the table cannot drift from the code unnoticed;
- type and default: the dataclass field a key maps to (`dataclasses.fields`, type hints), or
  the table for a key that maps to none;
- description: the commented TOML example in the docstring of `gateway.config`
  (`key = value   # comment`), unless the table has one: for a key the example leaves out, or
  whose comment says too little out of context.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway import config as _config
from gateway._config_docstring import docstring_comments
from gateway._config_keys import KEYS, SECTIONS, Key, Section
from gateway._config_keys import Config as _Config
from gateway._errors import GatewayError
from signer import Pkcs11Uri

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "KEYS",
    "SECTIONS",
    "BlockError",
    "Entry",
    "Key",
    "Section",
    "docstring_comments",
    "entries",
    "main",
    "render",
]

BEGIN_MARKER = "<!-- config-reference:begin -->"
END_MARKER = "<!-- config-reference:end -->"
_COMMAND = "python -m gateway.config_reference --write docs/operators.md"


@dataclass(frozen=True)
class Entry:
    """One row of the reference."""

    section: str
    key: str
    type: str
    default: str
    required: str
    description: str
    dev: bool


# Types and defaults from the dataclasses ----------------------------------------------------


_TOML_TYPES: dict[type, str] = {
    str: "string",
    Path: "path",
    float: "number",
    int: "integer",
    bool: "boolean",
    Pkcs11Uri: "pkcs11: URI",
}


def _type_name(hint: object) -> str:
    """The TOML type an operator writes for a field of this Python type."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        names = [_type_name(arg) for arg in typing.get_args(hint) if arg is not type(None)]
        return " or ".join(names)
    if isinstance(hint, type) and hint in _TOML_TYPES:
        return _TOML_TYPES[hint]
    if typing.get_origin(hint) is Mapping:
        return "table"
    raise TypeError(f"no TOML type for the field type {hint!r}")


def _default(value: object) -> str:
    if value is dataclasses.MISSING:
        return "—"
    if value is None or value == "":
        return "unset"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"  # as TOML writes it
    return f"`{value}`"


def _from_field(cls: _Config, name: str) -> tuple[str, str]:
    """(type, default) of a dataclass field."""
    hints = typing.get_type_hints(cls, vars(_config))
    for field in dataclasses.fields(cls):
        if field.name == name:
            if field.default_factory is not dataclasses.MISSING:
                raise TypeError(f"{cls.__name__}.{name}: a default factory is not shown")
            return _type_name(hints[name]), _default(field.default)
    raise LookupError(f"{cls.__name__} has no field {name!r}")


# The reference -------------------------------------------------------------------------------


def _module_doc(doc: str | None) -> str:
    return (_config.__doc__ or "") if doc is None else doc


def entries(doc: str | None = None) -> list[Entry]:
    """Every key of `KEYS`, resolved; `doc` defaults to the docstring of `gateway.config`."""
    comments = docstring_comments(_module_doc(doc))
    out: list[Entry] = []
    for key in KEYS:
        if key.field is not None:
            kind, default = _from_field(*key.field)
        else:
            kind, default = key.kind, "unset"
        if key.required.startswith("yes"):
            default = "—"
        description = key.doc or _plain(comments.get((key.section, key.name), ""))
        if not description:
            raise LookupError(f"{key.section}.{key.name}: no description in gateway.config or KEYS")
        out.append(Entry(key.section, key.name, kind, default, key.required, description, key.dev))
    return out


def _plain(comment: str) -> str:
    """A docstring comment without the "optional" the required column already says."""
    for prefix in ("optional: ", "optional, "):
        if comment.startswith(prefix):
            return comment[len(prefix) :]
    return comment


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: no column break, no HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def render(doc: str | None = None) -> str:
    """The Markdown reference: one table per section, then what a dev_pki file may hold."""
    comments = docstring_comments(_module_doc(doc))
    rows = entries(doc)
    lines = [
        "<!-- Generated from gateway/config.py by python -m gateway.config_reference. -->",
        "",
        "Relative paths are relative to the configuration file. Secrets (the key passphrase, the",
        "pseudonym and cache keys, the database DSN, the Redis URL) are never written in the file",
        "itself: the file names a file or an environment variable that holds them. An unknown",
        "section or key is an error that names the file and the key.",
    ]
    for section in SECTIONS:
        about = _plain(comments.get((section.name, ""), "")) or section.doc
        lines += ["", f"### `{section.header}`", ""]
        lines.append(f"Required: {section.required}. {_cell(_sentence(about))}".strip())
        lines += [
            "",
            "| key | type | default | required | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            if row.section == section.name:
                lines.append(
                    f"| `{row.key}` | {row.type} | {row.default} | {_cell(row.required)} "
                    f"| {_cell(row.description)} |"
                )
    lines += [
        "",
        "### Development files (`dev_pki`)",
        "",
        "With `[gateway] dev_pki`, the dev PKI provides the TLS key, the seal keys, the registry",
        "authority's public key, the audit keys and the cache key, so `[tls]` and `[[seal.keys]]`",
        "are refused and only these keys are accepted (`conf/demo/` has examples). The audit log is",
        "SQLite at `[audit] path`, or in memory without it; an unset `redis_url_env` variable",
        "keeps the cache, replay window and quotas in memory instead of failing.",
        "",
    ]
    for section in SECTIONS:
        names = [f"`{row.key}`" for row in rows if row.section == section.name and row.dev]
        if names:
            lines.append(f"- `{section.header}`: {', '.join(names)}")
    return "\n".join(lines) + "\n"


# The generated block in a Markdown file ------------------------------------------------------


class BlockError(GatewayError):
    """The file has no well-formed reference block."""


def _block(text: str, where: str) -> tuple[int, int]:
    """(start, end) offsets of the text between the markers."""
    if text.count(BEGIN_MARKER) != 1 or text.count(END_MARKER) != 1:
        raise BlockError(f"{where}: needs exactly one {BEGIN_MARKER} and one {END_MARKER}")
    start = text.index(BEGIN_MARKER) + len(BEGIN_MARKER)
    end = text.index(END_MARKER)
    if end < start:
        raise BlockError(f"{where}: {END_MARKER} comes before {BEGIN_MARKER}")
    return start, end


def _wrapped(reference: str) -> str:
    return "\n" + reference + "\n"


def _check(path: Path) -> int:
    text = path.read_text(encoding="utf-8")
    start, end = _block(text, str(path))
    expected = _wrapped(render())
    if text[start:end] == expected:
        return 0
    diff = difflib.unified_diff(
        text[start:end].splitlines(keepends=True),
        expected.splitlines(keepends=True),
        f"{path} (committed)",
        "render() (gateway/config.py now)",
    )
    sys.stderr.write("".join(diff))
    sys.stderr.write(f"{path}: the configuration reference is out of date; run `{_COMMAND}`\n")
    return 1


def _write(path: Path) -> int:
    text = path.read_text(encoding="utf-8")
    start, end = _block(text, str(path))
    path.write_text(text[:start] + _wrapped(render()) + text[end:], encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.config_reference",
        description="Print the gateway configuration reference (Markdown), or check or "
        f"rewrite the block between {BEGIN_MARKER} and {END_MARKER} in a file.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's block differs")
    action.add_argument("--write", type=Path, metavar="FILE", help="replace FILE's block")
    args = parser.parse_args(argv)
    try:
        if args.check is not None:
            return _check(args.check)
        if args.write is not None:
            return _write(args.write)
    except (BlockError, OSError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
