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

_Config = type[
    _config.GatewayConfig
    | _config.AuditConfig
    | _config.ExchangeConfig
    | _config.RevocationConfig
    | _config.TimestampConfig
    | _config.CasesConfig
]


@dataclass(frozen=True)
class Section:
    """A TOML section as an operator writes it."""

    name: str  # "gateway", "seal.keys" (an array of tables), ...
    header: str  # how it is written: "[gateway]", "[[seal.keys]]"
    required: str  # "yes", "no", or when
    doc: str = ""  # used when the docstring's example has no comment on the header


@dataclass(frozen=True)
class Key:
    """A TOML key the loader accepts, and the dataclass field it sets (if one alone)."""

    section: str
    name: str
    required: str  # "yes", "no", or when
    field: tuple[_Config, str] | None = None  # type and default come from here
    kind: str = ""  # the TOML type when no field gives it
    doc: str = ""  # used instead of the comment in the docstring's example
    dev: bool = False  # also accepted next to `[gateway] dev_pki`


_GW = _config.GatewayConfig
_AU = _config.AuditConfig
_EX = _config.ExchangeConfig
_RV = _config.RevocationConfig
_TS = _config.TimestampConfig
_CS = _config.CasesConfig
_ENV = "string (variable name)"
_TRUST = "one of trusted_root, authority_public_key (not with dev_pki)"
_ROOT_DOC = "the trusted root (root.json): the authority keys, and how many must sign a snapshot"
_KEY_DOC = "one registry authority public key (PEM): the 1-of-1 root of older installations"

SECTIONS: tuple[Section, ...] = (
    Section("gateway", "[gateway]", "yes", "The region this gateway serves and how it listens."),
    Section("tls", "[tls]", "yes (refused with dev_pki)", "The gateway's mutual-TLS key."),
    Section("registry", "[registry]", "yes", "Where the signed registry comes from."),
    Section("seal.keys", "[[seal.keys]]", "no (refused with dev_pki)"),
    Section("audit", "[audit]", "no"),
    Section("exchange", "[exchange]", "no"),
    Section("peers", "[peers]", "no"),
    Section("revocation", "[revocation]", "no"),
    Section("timestamp", "[timestamp]", "no"),
    Section("cases", "[cases]", "no"),
)

KEYS: tuple[Key, ...] = (
    Key("gateway", "region", "yes", (_GW, "region"), dev=True),
    Key("gateway", "listen", "yes", (_GW, "listen"), dev=True),
    Key("gateway", "grace_seconds", "no", (_GW, "grace_seconds"), dev=True),
    Key(
        "gateway",
        "metrics_listen",
        "no",
        (_GW, "metrics_listen"),
        doc="host:port of the plain-HTTP `/metrics`, `/healthz` and `/readyz` endpoint "
        "(no TLS, no authentication: bind it to an internal interface); unset: none",
        dev=True,
    ),
    Key(
        "gateway",
        "dev_pki",
        "no",
        kind="path",
        doc="development only: a dev PKI folder (`tongban pki init`) that provides every key, "
        "certificate and secret; see below for what may stand next to it",
        dev=True,
    ),
    Key(
        "tls",
        "certificate",
        "yes",
        (_GW, "tls_certificate"),
        doc="the gateway's TLS certificate chain (PEM): leaf, then intermediate",
    ),
    Key(
        "tls",
        "private_key",
        "yes",
        (_GW, "tls_private_key"),
        doc="its private key (PKCS#8 PEM, encrypted when a passphrase is given)",
    ),
    Key("tls", "passphrase_file", "no", kind="path"),
    Key(
        "tls",
        "passphrase_env",
        "no",
        kind=_ENV,
        doc="environment variable holding the key passphrase, instead of passphrase_file",
    ),
    Key("registry", "trusted_root", _TRUST, (_GW, "trusted_root"), doc=_ROOT_DOC),
    Key("registry", "authority_public_key", _TRUST, (_GW, "authority_public_key"), doc=_KEY_DOC),
    Key(
        "registry",
        "snapshot_file",
        "snapshot_file, follow or both",
        (_GW, "snapshot_file"),
        doc="the published snapshot (current.jws) to load and watch: a newer valid version "
        "is applied within poll_seconds",
        dev=True,
    ),
    Key("registry", "follow", "snapshot_file, follow or both", (_GW, "follow"), dev=True),
    Key(
        "registry",
        "bootstrap_ca_file",
        "when follow is given without snapshot_file",
        (_GW, "bootstrap_ca_file"),
        dev=True,
    ),
    Key(
        "registry",
        "poll_seconds",
        "no",
        (_GW, "poll_seconds"),
        doc="how often the snapshot file is checked for a new version, in seconds",
        dev=True,
    ),
    Key(
        "seal.keys",
        "certificate",
        "yes, in each entry",
        kind="path",
        doc="an e-seal certificate chain of the region (PEM): leaf, then intermediate",
    ),
    Key(
        "seal.keys",
        "private_key",
        "yes, in each entry",
        kind="path or pkcs11: URI",
        doc="its private key: a file the [tls] passphrase opens (an SM2 key, recognised by its "
        "certificate's curve, is an unencrypted PKCS#8 file), or the PKCS#11 URI of a key in a "
        "cryptographic module (see Keys in a cryptographic module)",
    ),
    Key(
        "seal.keys",
        "eseal",
        "no",
        kind="path",
        doc="for an SM2 key: the region's GB/T 38540 SESeal (DER) that lists it; default "
        "<certificate>.esl, where `tongban keys` writes it",
    ),
    Key("audit", "store", "yes, with [audit]", (_AU, "store")),
    Key("audit", "path", 'when store = "sqlite"', (_AU, "path"), dev=True),
    Key("audit", "dsn_env", 'when store = "postgres"', kind=_ENV),
    Key("audit", "owner_dsn_env", "no", kind=_ENV),
    Key("audit", "schema", "no", (_AU, "schema")),
    Key("audit", "key", "yes, with [audit]", (_AU, "key")),
    Key(
        "audit",
        "pseudonym_key_file",
        "one of pseudonym_key_file, pseudonym_key_env",
        kind="path",
        doc="file holding the key that turns subject ids into pseudonyms in the log (at least "
        "16 bytes); keep a copy: oversight needs it to find a citizen's records",
    ),
    Key(
        "audit",
        "pseudonym_key_env",
        "one of pseudonym_key_file, pseudonym_key_env",
        kind=_ENV,
        doc="environment variable holding the pseudonym key (at least 16 bytes), "
        "instead of pseudonym_key_file",
    ),
    Key("audit", "origin", "no", (_AU, "origin")),
    Key(
        "audit",
        "checkpoint_every_records",
        "no",
        (_AU, "checkpoint_every_records"),
        doc="sign a checkpoint at least every this many records",
    ),
    Key(
        "audit",
        "checkpoint_every_seconds",
        "no",
        (_AU, "checkpoint_every_seconds"),
        doc="sign a checkpoint at least this often, in seconds (and at every stop)",
    ),
    Key(
        "audit",
        "append_timeout_seconds",
        "no",
        (_AU, "append_timeout_seconds"),
        doc="bound on one append, in seconds: a record not durable by then is refused "
        "(UNAVAILABLE, AUDIT_UNAVAILABLE) and counts against the audit store's breaker",
    ),
    Key(
        "exchange",
        "provider",
        "no",
        (_EX, "provider"),
        doc="host:port of the province's data system (DataProvider.Fetch); reached in "
        "plaintext, so only a loopback address is accepted (the gateway refuses to start "
        "otherwise)",
        dev=True,
    ),
    Key("exchange", "redis_url_env", "no", kind=_ENV, dev=True),
    Key(
        "exchange",
        "cache_key_file",
        "one of cache_key_file, cache_key_env",
        kind="path",
        doc="file holding the AES-256 key of the answer cache, 64 hex digits",
    ),
    Key(
        "exchange",
        "cache_key_env",
        "one of cache_key_file, cache_key_env",
        kind=_ENV,
        doc="environment variable holding the AES-256 cache key (64 hex digits), "
        "instead of cache_key_file",
    ),
    Key(
        "exchange",
        "redis_timeout_seconds",
        "no",
        (_EX, "redis_timeout_seconds"),
        doc="bound on one Redis call, in seconds (replay window, quota, cache); "
        "one breaker guards Redis for all of them",
    ),
    Key(
        "exchange",
        "provider_timeout_seconds",
        "no",
        (_EX, "provider_timeout_seconds"),
        doc="bound on one call to the data system, in seconds, its retry included",
    ),
    Key(
        "exchange",
        "peer_timeout_seconds",
        "no",
        (_EX, "peer_timeout_seconds"),
        doc="bound on one call to a peer gateway, in seconds (the caller's deadline, if "
        "shorter, bounds it too); keep it above provider_timeout_seconds + "
        "[audit] append_timeout_seconds, what the peer may take itself",
    ),
    Key(
        "exchange",
        "breaker_failures",
        "no",
        (_EX, "breaker_failures"),
        doc="failures or timeouts of one dependency (Redis, the audit store, a peer region, "
        "the data system) that open its circuit breaker",
    ),
    Key(
        "exchange",
        "breaker_window_seconds",
        "no",
        (_EX, "breaker_window_seconds"),
        doc="the failures count when they fall within this many seconds with no success "
        "between them",
    ),
    Key(
        "exchange",
        "breaker_open_seconds",
        "no",
        (_EX, "breaker_open_seconds"),
        doc="an open breaker refuses at once (PEER_UNAVAILABLE, AUDIT_UNAVAILABLE, "
        "PROVIDER_UNAVAILABLE) or falls back (Redis) this long, then lets one trial call "
        "decide",
    ),
    Key(
        "exchange",
        "consent_status_seconds",
        "no",
        (_EX, "consent_status_seconds"),
        doc="how long another region's answer on whether a consent is revoked is kept: the "
        "bound on how late a revocation is seen here (home unreachable: CONSENT_STATUS_UNAVAILABLE)",
    ),
    Key(
        "peers",
        '"<region code>"',
        "no",
        kind='string, "host:port"',
        doc="the gateway of that region (a GB/T 2260 code), instead of the endpoint the "
        "registry names; any number of them",
        dev=True,
    ),
    Key("revocation", "online", "no", (_RV, "online")),
    Key("revocation", "timeout_seconds", "no", (_RV, "timeout_seconds")),
    Key("revocation", "unreachable", "no", (_RV, "unreachable")),
    Key("timestamp", "url", "no", (_TS, "url")),
    Key("timestamp", "tsa_certificates", "yes, with [timestamp]", (_TS, "tsa_certificates")),
    Key("timestamp", "timeout_seconds", "no", (_TS, "timeout_seconds")),
    Key(
        "cases",
        "bind_queries",
        "no",
        (_CS, "bind_queries"),
        doc="a query for a conditional (有条件共享) dataset must name an open case held here, "
        "with a part the asking agency handles and the subject as its applicant, whose matter "
        "allows the dataset, purpose and fields (CASE_NOT_OPEN, CASE_QUERY_NOT_ALLOWED); the "
        "data owner's gateway decides it again on its own copy of the case. false: any case id "
        "will do, as before cases (test federations only)",
        dev=True,
    ),
    Key(
        "cases",
        "max_material_bytes",
        "no",
        (_CS, "max_material_bytes"),
        doc="bound on one material (or result) of a case, in bytes: a larger one is refused "
        "(MATERIAL_TOO_LARGE); at most 12582912 (12 MiB)",
        dev=True,
    ),
)


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
