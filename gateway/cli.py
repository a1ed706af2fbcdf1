"""`tongban`: the command line for operators, security teams and developers.

Exit codes: 0 done, 1 the operation was refused or failed (the message says why), 2 the
command line itself is wrong. Nothing here prints a traceback for an expected failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import json
import logging
import mimetypes
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway._tables import whole
from gateway.config import GatewayConfig, read_passphrase, split_endpoint
from gateway.errors import GatewayError
from gateway.logs import FORMAT_ENV, LOG_FORMATS, configure_logging, relay_native_stderr
from gateway.provider._net import is_loopback
from registry import (
    AUTHORITY_PUBLIC_KEY,
    CURRENT_SNAPSHOT,
    DEMO_SOURCE,
    PROVINCES,
    Inventory,
    KeyEntry,
    KeyRecord,
    KeyState,
    KeyUsage,
    Registry,
    RegistryError,
    RegistryTrust,
    SnapshotVerifier,
    build_registry,
    init_dev_federation,
    load_authority_public_key,
    load_source,
    publish,
    registry_to_payload,
)
from registry import _pki as pki
from signer import (
    MAX_JWS_BYTES,
    FileKeyProvider,
    Indication,
    SealVerifier,
    SignatureKind,
    SignerError,
    ValidationReport,
    canonical_json,
    load_private_key,
    seal,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gateway.audit import AuditQuery, AuditRecord, AuditStore, Checkpoint, Verification

__all__ = ["main"]

DEFAULT_SOURCE = DEMO_SOURCE  # shipped in the package: the same from any folder
ALGORITHMS = ("ES256", "EdDSA", "PS256")
MAX_DURATION_DAYS = 36500  # days: any period longer than a century is a typo
MAX_DURATION_SECONDS = MAX_DURATION_DAYS * 86400
MAX_VALIDITY_DAYS = 3650  # days: no leaf certificate outlives its intermediate (5 years) anyway
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= MAX_DURATION_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a duration is more than 0 and at most {MAX_DURATION_DAYS}d"
        )
    return timedelta(seconds=seconds)


def parse_validity_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 0 < days <= MAX_VALIDITY_DAYS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: validity is a whole number of days from 1 to {MAX_VALIDITY_DAYS}"
        )
    return days


def parse_regions(text: str) -> list[str]:
    codes = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in codes if c not in PROVINCES]
    if not codes or unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or text!r}: not GB/T 2260 province-level codes (e.g. 330000,510000)"
        )
    return codes


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
        if value.tzinfo is not None:
            return value.astimezone(UTC)
    except (ValueError, OverflowError):
        pass
    raise argparse.ArgumentTypeError(
        f"{text!r} is not an ISO 8601 time with an offset, e.g. 2026-11-21T10:00:00+08:00"
    )


def _address(text: str, *, any_port: bool = False, loopback: bool = False) -> str:
    try:
        split_endpoint(text, any_port=any_port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    if loopback and not is_loopback(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a loopback address: plaintext gRPC stays on this machine "
            "(127.0.0.1, [::1], localhost)"
        )
    return text


def parse_listen(text: str) -> str:
    """HOST:PORT to listen on; port 0 picks a free one."""
    return _address(text, any_port=True)


def parse_endpoint(text: str) -> str:
    """HOST:PORT of a server to call."""
    return _address(text)


def parse_loopback_endpoint(text: str) -> str:
    """HOST:PORT of a data system: called in plaintext, so on this machine."""
    return _address(text, loopback=True)


def parse_loopback_listen(text: str) -> str:
    return _address(text, any_port=True, loopback=True)


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class Failure(Exception):
    """An expected failure of a command: printed as one message, exit code 1."""


def _passphrase_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="file holding the private-key passphrase",
    )
    group.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="environment variable holding the private-key passphrase",
    )


def _passphrase(args: argparse.Namespace) -> bytes | None:
    return read_passphrase(args.passphrase_file, args.passphrase_env)


def _now() -> datetime:
    return datetime.now(UTC)


# pki ------------------------------------------------------------------------------------------
def cmd_pki_init(args: argparse.Namespace, out: Console) -> int:
    source = load_source(args.source)
    created = init_dev_federation(
        args.out, source, args.regions, passphrase=_passphrase(args), now=_now()
    )
    agencies = [a for a in source.agencies if a.region in args.regions]
    out.print(
        f"[bold]Dev PKI created in {args.out}[/]: registry authority, {len(args.regions)} regions "
        f"({', '.join(args.regions)}), {len(agencies)} agencies, {len(created.keys)} keys."
    )
    out.print(
        f"Install this authority public key in every gateway: {created.authority_public_key_path}"
    )
    out.print(
        "Private keys are PKCS#8, mode 0600"
        + (", encrypted." if _passphrase(args) else " (unencrypted: development only).")
    )
    return 0


# registry -------------------------------------------------------------------------------------
def cmd_registry_build(args: argparse.Namespace, out: Console) -> int:
    source = load_source(args.source)
    registry = build_registry(source, args.pki, issued_at=_now())
    data = canonical_json(registry_to_payload(registry))
    if args.out is None:
        sys.stdout.write(data.decode() + "\n")
        return 0
    args.out.write_bytes(data + b"\n")
    out.print(
        f"Draft registry written to {args.out} ({len(data)} bytes): {len(registry.regions)} regions, "
        f"{len(registry.agencies)} agencies, {len(registry.datasets)} datasets, {len(registry.purposes)} "
        f"purposes, {len(registry.agreements)} agreements, {len(registry.keys)} keys. Not signed: "
        "`tongban registry publish` signs it."
    )
    return 0


def cmd_registry_publish(args: argparse.Namespace, out: Console) -> int:
    lifetime = int(args.lifetime.total_seconds()) if args.lifetime else None
    result = publish(
        args.source,
        args.pki,
        args.out,
        now=_now(),
        passphrase=_passphrase(args),
        lifetime_seconds=lifetime,
    )
    registry = result.snapshot.registry
    out.print(
        f"[bold]Published registry version {registry.version}[/] to {result.path} "
        f"(and {args.out / CURRENT_SNAPSHOT}); expires {registry.expires_at:%Y-%m-%d %H:%M:%SZ}."
    )
    for change in result.changes:
        out.print(f"  key {change}")
    return 0


def _read_snapshot(args: argparse.Namespace) -> Registry:
    if args.authority is None and args.pki is None:
        _usage(args, "give --authority PUB.pem (or --pki DIR) to check the snapshot's signature")
    authority_path = args.authority or args.pki / AUTHORITY_PUBLIC_KEY
    verifier = SnapshotVerifier(load_authority_public_key(authority_path))
    try:
        data = args.snapshot.read_bytes()
    except OSError as exc:
        raise Failure(f"{args.snapshot}: cannot be read ({exc.strerror})") from exc
    return verifier.verify(data, held_version=None, now=None).registry


def cmd_registry_show(args: argparse.Namespace, out: Console) -> int:
    registry = _read_snapshot(args)
    now = _now()
    if args.json:
        sys.stdout.write(
            json.dumps(registry_to_payload(registry), ensure_ascii=False, indent=2) + "\n"
        )
        return 0
    expired = now >= registry.expires_at
    out.print(
        f"[bold]Registry {registry.name} version {registry.version}[/] — signature verified;\n"
        f"issued {registry.issued_at:%Y-%m-%d %H:%M:%SZ}, "
        + (
            f"[red]EXPIRED {registry.expires_at:%Y-%m-%d %H:%M:%SZ}[/]"
            if expired
            else f"expires {registry.expires_at:%Y-%m-%d %H:%M:%SZ}"
        ),
        soft_wrap=True,  # a time is never cut across lines
    )
    regions = Table(title="Regions", title_justify="left")
    for column in ("code", "name", "gateway", "agencies", "datasets"):
        regions.add_column(column)
    for region in registry.regions:
        regions.add_row(
            region.code,
            region.name,
            region.endpoint,
            str(sum(1 for a in registry.agencies if a.region == region.code)),
            str(sum(1 for d in registry.datasets if d.region == region.code)),
        )
    out.print(whole(regions))
    agreements = Table(title="Agreements", title_justify="left")
    agreements.add_column("id", overflow="fold")
    for column in ("provider", "requesters", "purposes", "valid until", "quota/min"):
        agreements.add_column(column, overflow="fold")
    for a in registry.agreements:
        state = "" if a.in_force(now) else " [red](not in force)[/]"
        agreements.add_row(
            a.id,
            a.provider_region,
            ", ".join(sorted(a.requester_regions) + sorted(a.requester_agencies)),
            ", ".join(a.purposes),
            f"{a.valid_until:%Y-%m-%d}{state}",
            str(a.quota_per_minute),
        )
    out.print(whole(agreements))
    out.print(whole(_keys_table("Keys", registry.keys, now)))
    return 0


def _keys_table(title: str, keys: Sequence[KeyEntry], now: datetime) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("owner", "usage", "alg", "state", "not after", "days left"):
        table.add_column(column)
    table.add_column("kid", overflow="fold")  # ids are copied from here: never cut them
    for k in keys:
        days = (k.not_after - now).total_seconds() / 86400
        colour = "red" if days < 7 else "yellow" if days < 30 else "green"
        table.add_row(
            k.owner,
            k.usage.value,
            k.algorithm,
            k.state.value,
            f"{k.not_after:%Y-%m-%d}",
            f"[{colour}]{days:.0f}[/]",
            k.kid,
        )
    return table


# keys -----------------------------------------------------------------------------------------
def _owner_region(args: argparse.Namespace, inventory: Inventory) -> str:
    if args.owner in PROVINCES:
        return str(args.owner)
    for record in inventory.records():
        if record.owner == args.owner:
            return record.region
    agency = load_source(args.source).agencies
    for a in agency:
        if a.id == args.owner:
            return a.region
    raise Failure(f"owner {args.owner!r} is neither a region code nor an agency of {args.source}")


def _issue(args: argparse.Namespace, inventory: Inventory, state: KeyState) -> KeyRecord:
    now = _now()
    key = pki.issue_key(
        args.pki,
        region=_owner_region(args, inventory),
        owner=args.owner,
        usage=args.usage,
        algorithm=args.algorithm,
        passphrase=_passphrase(args),
        now=now,
        validity_days=args.validity_days,
    )
    record = KeyRecord.from_issued(args.pki, key, state, now)
    inventory.add(record)
    inventory.save()
    return record


def cmd_keys_generate(args: argparse.Namespace, out: Console) -> int:
    inventory = Inventory.load(args.pki)
    active = inventory.find(args.owner, KeyUsage(args.usage), KeyState.ACTIVE)
    if active:
        raise Failure(
            f"{args.owner} already has an active {args.usage} key ({active[-1].kid}): "
            "use `tongban keys rotate` so that the old key retires without breaking verification"
        )
    record = _issue(args, inventory, KeyState.ACTIVE)
    out.print(
        f"Generated {record.usage} key {record.kid} for {record.owner} ({record.algorithm}), active."
    )
    out.print(
        f"  certificate {args.pki / record.certificate}\n  private key {args.pki / record.private_key} (0600)"
    )
    out.print("Publish the registry so that every gateway learns it.")
    return 0


def cmd_keys_rotate(args: argparse.Namespace, out: Console) -> int:
    inventory = Inventory.load(args.pki)
    usage = KeyUsage(args.usage)
    active = inventory.find(args.owner, usage, KeyState.ACTIVE)
    if not active:
        raise Failure(
            f"{args.owner} has no active {args.usage} key to rotate: use `tongban keys generate`"
        )
    pending = inventory.find(args.owner, usage, KeyState.PENDING)
    if pending:
        raise Failure(
            f"a rotation of {args.owner}'s {args.usage} key is already under way (pending {pending[0].kid})"
        )
    record = _issue(args, inventory, KeyState.PENDING)
    out.print(
        f"New {record.usage} key {record.kid} for {record.owner} ({record.algorithm}), pending."
    )
    out.print(
        "Next: `tongban registry publish` publishes it as pending (every gateway learns it); the "
        f"publish after that makes it active and retires {active[-1].kid}."
    )
    return 0


def cmd_keys_revoke(args: argparse.Namespace, out: Console) -> int:
    inventory = Inventory.load(args.pki)
    at = args.at or _now()
    record = inventory.revoke(args.kid, at=at, reason=args.reason)
    inventory.save()
    out.print(
        f"Key {record.kid} ({record.owner} {record.usage}) revoked at {at:%Y-%m-%d %H:%M:%SZ}: "
        f"{record.revocation_reason}. Signatures dated from then on are refused once the registry is published."
    )
    if not inventory.find(record.owner, record.usage, KeyState.ACTIVE):
        out.print(
            f"[yellow]warning:[/] {record.owner} now has no active {record.usage} key: generate one."
        )
    return 0


def cmd_keys_expiring(args: argparse.Namespace, out: Console) -> int:
    inventory = Inventory.load(args.pki)
    now = _now()
    entries = [
        k
        for k in inventory.entries(now)
        if k.state is not KeyState.REVOKED and k.not_after - now <= args.within
    ]
    entries.sort(key=lambda k: k.not_after)
    if args.json:
        rows = [
            {
                "kid": k.kid,
                "owner": k.owner,
                "usage": k.usage.value,
                "algorithm": k.algorithm,
                "state": k.state.value,
                "not_after": f"{k.not_after:%Y-%m-%dT%H:%M:%SZ}",
                "days_left": round((k.not_after - now).total_seconds() / 86400, 1),
            }
            for k in entries
        ]
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return 0
    days = args.within.total_seconds() / 86400
    if not entries:
        out.print(f"No key or certificate expires within {days:g} days.")
        return 0
    out.print(whole(_keys_table(f"Expiring within {days:g} days", entries, now)))
    return 0


# seal and verify ------------------------------------------------------------------------------
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_HEADLINE_COLOURS = {
    Indication.TOTAL_PASSED: "green",
    Indication.TOTAL_FAILED: "red",
    Indication.INDETERMINATE: "yellow",
}


def _read_input(path: Path, what: str, limit: int | None = None) -> bytes:
    """A file named on the command line, or a one-line `Failure` that says why not."""
    try:
        with path.open("rb") as file:
            data = file.read() if limit is None else file.read(limit + 1)
    except OSError as exc:
        raise Failure(f"{path}: {what} cannot be read ({exc.strerror})") from exc
    if limit is not None and len(data) > limit:
        raise Failure(f"{path}: {what} is larger than {limit} bytes")
    return data


def cmd_seal(args: argparse.Namespace, out: Console) -> int:
    payload = _read_input(args.file, "the document")
    provider = FileKeyProvider(args.key, args.cert, _passphrase(args))
    content_type = (
        args.content_type or mimetypes.guess_type(args.file.name)[0] or DEFAULT_CONTENT_TYPE
    )
    jws = seal(payload, provider, content_type=content_type, detached=args.detached)
    if args.out is None:
        sys.stdout.write(jws + "\n")
        return 0
    args.out.write_text(jws + "\n", encoding="ascii")
    out.print(
        f"Sealed {escape(str(args.file))} ({len(payload)} bytes, {escape(content_type)}) with key "
        f"{provider.kid} ({provider.algorithm}), {'detached' if args.detached else 'attached'}: "
        f"{escape(str(args.out))}",
        soft_wrap=True,
    )
    return 0


def _report_json(report: ValidationReport, registry: Registry, stale: bool) -> dict[str, object]:
    payload = report.payload
    return {
        "indication": report.indication.value,
        "sub_indication": report.sub_indication.value if report.sub_indication else None,
        "message": report.message,
        "signer_subject": report.signer_subject,
        "signer_kid": report.signer_kid,
        "owner": report.owner,
        "owner_region": report.owner_region,
        "kind": report.kind.value if report.kind else None,
        "signing_time": (
            f"{report.signing_time:%Y-%m-%dT%H:%M:%SZ}" if report.signing_time else None
        ),
        "algorithm": report.algorithm,
        "content_type": report.content_type,
        "registry_version": report.registry_version,
        "registry_expires_at": f"{registry.expires_at:%Y-%m-%dT%H:%M:%SZ}",
        "registry_stale": stale,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in report.checks],
        "payload": base64.b64encode(payload).decode("ascii") if payload is not None else None,
    }


def _party(registry: Registry, owner: str) -> str:
    """`浙江省人力资源和社会保障厅 (zj.hrss)` for an agency, `浙江省 (330000)` for a region."""
    agency = registry.agency(owner)
    region = registry.region(owner)
    name = agency.name if agency else region.name if region else ""
    return f"{name} ({owner})" if name else owner


def _print_report(out: Console, report: ValidationReport, registry: Registry) -> None:
    indication = report.indication
    headline = Text(indication.value, style=f"bold {_HEADLINE_COLOURS[indication]}")
    if report.sub_indication is not None:
        headline.append(f" / {report.sub_indication.value}", style=_HEADLINE_COLOURS[indication])
    if report.passed:
        # "e-seal by 浙江省 (330000) made at ... is valid" reads better without "is valid" here.
        headline.append(f" — {report.message.removesuffix(' is valid')}")
    else:
        headline.append(f" — {report.message}")
    out.print(headline, soft_wrap=True)
    region = registry.region(report.owner_region)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    rows = (
        ("signer", report.signer_subject),
        ("kid", report.signer_kid),
        ("owner", _party(registry, report.owner) if report.owner else ""),
        (
            "region",
            f"{region.name} ({report.owner_region})" if region else report.owner_region,
        ),
        ("kind", f"e-{report.kind.value}" if report.kind else ""),
        (
            "signing time",
            f"{report.signing_time:%Y-%m-%d %H:%M:%SZ} (claimed)" if report.signing_time else "",
        ),
        ("algorithm", report.algorithm),
        ("content type", report.content_type),
        ("registry version", str(report.registry_version)),
    )
    for name, value in rows:
        facts.add_row(name, Text(value or "—"))
    out.print(facts)
    checks = Table(title="Checks", title_justify="left")
    checks.add_column("")
    checks.add_column("check", no_wrap=True)
    checks.add_column("detail", overflow="fold")
    for check in report.checks:
        mark = Text("✓", style="green") if check.passed else Text("✗", style="red")
        checks.add_row(mark, Text(check.name), Text(check.detail))
    out.print(checks)  # prose details wrap; the check names keep their width


def cmd_verify(args: argparse.Namespace, out: Console) -> int:
    authority_path = args.authority or args.pki / AUTHORITY_PUBLIC_KEY
    authority = load_authority_public_key(authority_path)
    snapshot = _read_input(args.snapshot, "the registry snapshot")
    # now=None: the signature and format are checked here, the expiry below, so that a stale
    # registry still verifies (with a warning) instead of refusing outright.
    registry = SnapshotVerifier(authority).verify(snapshot, held_version=None, now=None).registry
    jws = _read_input(args.file, "the JWS", limit=MAX_JWS_BYTES + 4096)
    payload = _read_input(args.payload, "the payload") if args.payload is not None else None
    now = _now()
    stale = now >= registry.expires_at
    if stale:
        Console(stderr=True, highlight=False).print(
            f"[yellow]warning:[/] registry version {registry.version} expired at "
            f"{registry.expires_at:%Y-%m-%d %H:%M:%SZ}: the registry is stale, so keys revoked "
            "since then are not known here",
            soft_wrap=True,
        )
    report = SealVerifier(RegistryTrust(registry), clock=_now).validate(
        jws,
        detached_payload=payload,
        expected_kind=SignatureKind(args.expect) if args.expect else None,
        expected_owner_region=args.region,
        validation_time=args.at,
    )
    if args.json:
        sys.stdout.write(
            json.dumps(_report_json(report, registry, stale), ensure_ascii=False, indent=2) + "\n"
        )
    else:
        _print_report(out, report, registry)
    return 0 if report.passed else 1


# token ----------------------------------------------------------------------------------------
def parse_token_lifetime(text: str) -> timedelta:
    """A token lifetime: a duration of at most 300s (5m)."""
    from gateway.tokens import MAX_TOKEN_LIFETIME_SECONDS

    lifetime = parse_duration(text)
    if lifetime.total_seconds() > MAX_TOKEN_LIFETIME_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a request token lives at most {MAX_TOKEN_LIFETIME_SECONDS}s"
        )
    return lifetime


def parse_name(text: str) -> str:
    """An id, a code or a reason given on the command line: one non-empty line."""
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a non-empty value without line breaks or control characters"
        )
    return text


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


def parse_media_type(text: str) -> str:
    if not _MEDIA_TYPE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a media type like application/pdf")
    return text


def parse_operator(text: str) -> str:
    if not text.strip() or any(c in text for c in "\r\n\x00"):
        raise argparse.ArgumentTypeError("the operator is one non-empty line")
    return text


def cmd_token_issue(args: argparse.Namespace, out: Console) -> int:
    """Play the agency's region's identity service: print a request token for an operator."""
    from gateway.tokens import issue_agency_token

    try:
        token = issue_agency_token(
            args.pki,
            args.agency,
            args.operator,
            lifetime_seconds=int(args.lifetime.total_seconds()),
            now=_now(),
            passphrase=_passphrase(args),
        )
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    sys.stdout.write(token + "\n")
    return 0


# demo -----------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace, out: Console) -> int:
    from gateway.demo import DemoError, DemoOptions, run_demo

    options = DemoOptions(
        source=args.source,
        folder=args.dir,
        redis_url=args.redis,
        postgres_dsn=args.postgres,
        serve=args.serve,
    )
    if args.log_level == "WARNING":  # the transcript says it: one replica, cache in memory
        logging.getLogger("tongban").setLevel(logging.ERROR)
    if not out.is_terminal:  # tables readable in a log file too
        out = Console(highlight=False, width=120)
    try:
        return run_demo(options, out)
    except DemoError as exc:
        raise Failure(str(exc)) from exc


# gateway --------------------------------------------------------------------------------------
def _serve_config(args: argparse.Namespace) -> GatewayConfig:
    """The gateway's configuration from the command line; read again on SIGHUP."""
    if args.config is not None:
        return GatewayConfig.from_file(args.config)
    if args.pki is not None and args.region is not None:
        return GatewayConfig.for_dev_pki(
            args.pki,
            args.region,
            listen=args.listen,
            snapshot_file=args.snapshot,
            follow=args.follow or "",
            passphrase=_passphrase(args),
            bootstrap_ca_file=args.bootstrap_ca,
            audit_db=args.audit_db,
            provider=args.provider or "",
            redis_url=_redis_url(args.redis_env),
            peers=dict(args.peer or []),
        )
    raise Failure(
        "give --config FILE, or --pki DIR with --region CODE (and --snapshot or --follow)"
    )


def _redis_url(variable: str | None) -> str:
    if not variable:
        return ""
    url = os.environ.get(variable)
    if not url:  # else the gateway would keep its replay window in memory, unlike its replicas
        raise Failure(f"--redis-env: environment variable {variable} (the Redis URL) is not set")
    return url


_PKI_ONLY = (
    "pki", "region", "snapshot", "follow", "provider", "redis_env", "peer", "audit_db",
    "bootstrap_ca", "passphrase_file", "passphrase_env",
)  # fmt: skip


def _check_serve_options(args: argparse.Namespace) -> None:
    """A wrong combination of options: exit 2 before anything is read."""
    if args.config is not None:
        given = [name for name in _PKI_ONLY if getattr(args, name) is not None]
        if given:
            option = "--" + given[0].replace("_", "-")
            _usage(args, f"{option} goes with --pki, not with --config (the file says it)")
        return
    if args.pki is None or args.region is None:
        _usage(args, "give --config FILE, or --pki DIR with --region CODE")
    if args.snapshot is None and args.follow is None:
        _usage(
            args, "--pki needs --snapshot FILE or --follow HOST:PORT: the gateway needs a registry"
        )


def cmd_gateway_serve(args: argparse.Namespace, out: Console) -> int:
    _check_serve_options(args)
    config = _serve_config(args)
    if args.workers != 1:
        return _serve_workers(args, config, out)
    from gateway.server import Gateway, serve

    def ready(gateway: Gateway) -> None:
        status = gateway.store.status()
        held = f"registry version {status.version}" if status.version else "no registry yet"
        metrics = f", metrics on port {gateway.metrics_port}" if gateway.metrics_server else ""
        out.print(
            f"Gateway {config.region} listening on port {gateway.port} (mutual TLS){metrics}, "
            f"{held}. Ctrl-C stops it; SIGHUP reloads its seal keys.",
            soft_wrap=True,  # a port is never cut across lines
        )

    asyncio.run(serve(config, ready=ready, reload=lambda: _serve_config(args)))
    return 0


def _serve_workers(args: argparse.Namespace, config: GatewayConfig, out: Console) -> int:
    """--workers N: N processes on one port; nothing here may create a gRPC object first."""
    from gateway.workers import check_replica_safe, serve_workers

    check_replica_safe(config, args.workers)
    if TYPE_CHECKING:
        from gateway.server import Gateway

    def ready(number: int, gateway: Gateway) -> None:
        out.print(
            f"Gateway {config.region} worker {number}/{args.workers} (pid {os.getpid()}) "
            f"listening on port {gateway.port} (mutual TLS).",
            soft_wrap=True,
        )

    out.print(
        f"Gateway {config.region}: starting {args.workers} workers on {config.listen}. "
        "Ctrl-C stops them; SIGHUP reloads their seal keys.",
        soft_wrap=True,
    )
    return serve_workers(config, args.workers, ready=ready, reload=lambda: _serve_config(args))


def parse_workers(text: str) -> int:
    from gateway.workers import MAX_WORKERS

    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if not 1 <= workers <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the number of workers is a whole number from 1 to {MAX_WORKERS}"
        )
    return workers


def parse_redis_url(text: str) -> str:
    if not text:
        return text
    if not text.startswith(("redis://", "rediss://", "unix://")) or not text.isprintable():
        # Not echoed: a Redis URL may hold a password.
        raise argparse.ArgumentTypeError("not a redis://, rediss:// or unix:// URL")
    return text


def parse_postgres_dsn(text: str) -> str:
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    if not text:
        return text
    try:
        conninfo_to_dict(text)
    except Error:
        # Not echoed, nor psycopg's message (it may quote it): a DSN may hold a password.
        raise argparse.ArgumentTypeError("not a PostgreSQL DSN") from None
    return text


def parse_peer(text: str) -> tuple[str, str]:
    """CODE=HOST:PORT"""
    region, sep, endpoint = text.partition("=")
    if not sep or region not in PROVINCES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not CODE=HOST:PORT, e.g. 510000=localhost:7510"
        )
    return region, parse_endpoint(endpoint)


def cmd_provider_serve(args: argparse.Namespace, out: Console) -> int:
    """A demo provincial data system (synthetic data) until Ctrl-C."""
    from gateway._ports import check_listen_address_free
    from gateway.provider import create_provider

    # A held port: one line, not gRPC's log.
    check_listen_address_free("--listen", args.listen, who="another data system")

    async def run() -> None:
        try:
            server, port = create_provider(args.region, args.listen)
        except ValueError as exc:
            raise Failure(str(exc)) from exc
        await server.start()
        out.print(
            f"Demo data system of region {args.region} (synthetic data) on port {port}. Ctrl-C stops it."
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(run())
    return 0


# audit ----------------------------------------------------------------------------------------
DEFAULT_AUDIT_SCHEMA = "tongban_audit"
DEFAULT_QUERY_LIMIT = 50
MAX_QUERY_LIMIT = 10_000
MAX_CERTIFICATE_BYTES = 1 << 20
MAX_CHECKPOINT_BYTES = 64 * 1024
MAX_PSEUDONYM_KEY_BYTES = 4096
AUDIT_OUTCOMES = ("allowed", "denied", "failed")  # gateway.audit.Outcome (imported lazily)
_AUDIT_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PSEUDONYM = re.compile(r"[0-9a-f]{64}")
_OUTCOME_STYLES = {"allowed": "green", "denied": "yellow", "failed": "red"}
T = TypeVar("T")


def parse_schema_name(text: str) -> str:
    if not _AUDIT_SCHEMA_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain lower-case schema name (a-z, 0-9 and _, at most 63)"
        )
    return text


def parse_limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 0 < limit <= MAX_QUERY_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the limit is a whole number from 1 to {MAX_QUERY_LIMIT}"
        )
    return limit


def _parse_count(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r}: {what} is a whole number from {least} up")
    return value


def parse_index(text: str) -> int:
    return _parse_count(text, 0, "a record index")


def parse_size(text: str) -> int:
    return _parse_count(text, 1, "a tree size")


def parse_pseudonym(text: str) -> str:
    if not _PSEUDONYM.fullmatch(text.lower()):
        raise argparse.ArgumentTypeError(
            "a subject pseudonym is 64 hex digits (HMAC-SHA256); for a raw id use "
            "--subject-id with --pseudonym-key-file"
        )
    return text.lower()


def parse_line(text: str) -> str:
    if not text or "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError("a log origin is one non-empty line")
    return text


def parse_key_name(text: str) -> str:
    if not text or any(c.isspace() or c == "+" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a key name has no spaces and no '+'")
    return text


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    """A wrong combination of options, found after parsing: one line, exit code 2."""
    args.usage_error(message)
    raise AssertionError("unreachable")  # pragma: no cover


def _check_store_options(args: argparse.Namespace) -> None:
    if args.sqlite is not None and args.schema is not None:
        _usage(args, "--schema is for --postgres-env (an SQLite file has no schemas)")


def _audit_names(args: argparse.Namespace) -> tuple[str, tuple[str, ...]]:
    """(origin, key names) of the log: as given, else derived from --region. The key is named
    after the origin (C2SP); checkpoints signed before were named audit-<region>, which is
    accepted too when no --key-name is given."""
    if args.pki is not None and args.region is None:
        _usage(args, "--pki needs --region CODE (the region whose active audit certificate to use)")
    origin = args.origin or (f"audit.tongban/{args.region}" if args.region else None)
    if origin is None:
        _usage(args, "give --origin NAME (or --region CODE for audit.tongban/CODE)")
    if args.key_name:
        return origin, (args.key_name,)
    if any(c.isspace() or c == "+" for c in origin):
        _usage(
            args, "the origin has white space or '+', so it cannot name the key: give --key-name"
        )
    return origin, (origin, *((f"audit-{args.region}",) if args.region else ()))


def _verify_note(
    note: str, public_key: Ed25519PublicKey, key_names: tuple[str, ...], origin: str
) -> Checkpoint:
    """The checkpoint in `note`, signed by the audit key under one of `key_names`."""
    from gateway.audit import CheckpointError, verify_checkpoint

    problem: CheckpointError | None = None
    for name in key_names:
        try:
            return verify_checkpoint(note, public_key, name, origin=origin)
        except CheckpointError as exc:
            problem = problem or exc
    assert problem is not None
    raise problem


def _audit_public_key(args: argparse.Namespace) -> Ed25519PublicKey:
    """The public key of the region's audit key: from --audit-cert, or the dev PKI's active one."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if args.audit_cert is not None:
        path: Path = args.audit_cert
    else:
        active = Inventory.load(args.pki).find(args.region, KeyUsage.AUDIT, KeyState.ACTIVE)
        if not active:
            raise Failure(
                f"{args.pki}: region {args.region} has no active audit key in the inventory"
            )
        path = args.pki / active[-1].certificate
    data = _read_input(path, "the audit certificate", limit=MAX_CERTIFICATE_BYTES)
    try:
        certificate = x509.load_pem_x509_certificates(data)[0]
    except ValueError as exc:
        raise Failure(f"{path}: not a PEM certificate") from exc
    key = certificate.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise Failure(
            f"{path}: the certificate's key is not Ed25519 (audit checkpoints are signed with Ed25519)"
        )
    return key


def _check_sqlite(path: Path) -> None:
    """Refuse a path that is not an existing Tongban audit database before the store opens it
    (opening creates and migrates a database: never what someone reading a log means)."""
    if not path.exists():
        raise Failure(f"{path}: no such file (an audit database is never created here)")
    if not path.is_file():
        raise Failure(f"{path}: not a file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise Failure(f"{path}: cannot be read as an SQLite database ({exc})") from exc
    if found is None:
        raise Failure(f"{path}: not a Tongban audit database (it has no schema_version table)")


def _check_postgres(dsn: str, variable: str, schema: str) -> None:
    """Refuse a schema that does not hold an audit log of this version before the store opens it
    (opening creates or migrates the schema: never what someone reading a log means)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    from gateway.audit._postgres import SCHEMA_VERSION

    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:  # its message may quote the DSN, password and all
        raise Failure(f"environment variable {variable}: not a PostgreSQL DSN") from exc
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            (exists,) = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}".schema_version']
            ).fetchone() or (False,)
            if not exists:
                raise Failure(
                    f"schema {schema} holds no audit log (or this role cannot see it): give --schema"
                )
            (version,) = conn.execute(
                sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(
                    sql.Identifier(schema)
                )
            ).fetchone() or (0,)
    except psycopg.Error as exc:
        raise Failure(f"the audit database is not available: {exc}".strip()) from exc
    if version != SCHEMA_VERSION:
        raise Failure(
            f"the audit schema {schema} is at version {version}, this tongban reads version "
            f"{SCHEMA_VERSION}: use the tongban of the gateways that write it"
        )


def _audit_store(args: argparse.Namespace) -> AuditStore:
    from gateway.audit import PostgresAuditStore, SqliteAuditStore

    if args.sqlite is not None:
        _check_sqlite(args.sqlite)
        return SqliteAuditStore(args.sqlite)
    dsn = os.environ.get(args.postgres_env)
    if not dsn:
        raise Failure(
            f"environment variable {args.postgres_env} (the audit database DSN) is not set"
        )
    schema = args.schema or DEFAULT_AUDIT_SCHEMA
    _check_postgres(dsn, args.postgres_env, schema)
    return PostgresAuditStore(dsn, schema=schema)


class _WrongLog(Exception):
    """The store holds another log than the command line names: a usage error, not a verdict."""


async def _check_log_named(store: AuditStore, origin: str, region: str | None) -> None:
    """Raise _WrongLog unless the store holds the log `origin` (of `region`): the origins of its
    checkpoints, or while none is signed the region of its first record, name another log.
    Neither is trusted here; a log that is really this one is then checked in full."""
    from gateway.audit import AuditRecord

    held = {stored.note.split("\n", 1)[0] for stored in await store.checkpoints()}
    if held and origin not in held:
        names = ", ".join(n if n.isprintable() else repr(n) for n in sorted(held))
        raise _WrongLog(
            f"this store holds the audit log {names}, not {origin}: check --region (and --origin)"
        )
    if held or region is None:
        return
    marker = await store.pruned()
    rows = await store.rows(marker.before if marker else 0, (marker.before if marker else 0) + 1)
    if not rows:
        return
    try:
        found = AuditRecord.from_canonical(rows[0].canonical).region
    except (ValueError, KeyError, TypeError):
        return  # not a record: the verification says so
    if found != region:
        raise _WrongLog(
            f"the records in this store are region {found}'s, not {region}'s: check --region"
        )


def _on_store(args: argparse.Namespace, work: Callable[[AuditStore], Coroutine[Any, Any, T]]) -> T:
    """Open the store named on the command line, run `work` on it, close it."""
    from gateway.audit import AuditError

    store = _audit_store(args)

    async def run() -> T:
        try:
            await store.open()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except AuditError as exc:
        raise Failure(str(exc)) from exc
    except _WrongLog as exc:
        _usage(args, str(exc))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read_trusted_checkpoint(
    path: Path, public_key: Ed25519PublicKey, key_names: tuple[str, ...], origin: str
) -> Checkpoint:
    from gateway.audit import CheckpointError

    data = _read_input(path, "the checkpoint", limit=MAX_CHECKPOINT_BYTES)
    try:
        return _verify_note(data.decode("utf-8"), public_key, key_names, origin)
    except UnicodeDecodeError as exc:
        raise Failure(f"{path}: not a checkpoint (not UTF-8 text)") from exc
    except CheckpointError as exc:
        raise Failure(f"{path}: {exc}") from exc


def _save_text(path: Path, text: str) -> None:
    """Replace `path` whole or not at all (it holds what an auditor relies on next time)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def cmd_audit_verify(args: argparse.Namespace, out: Console) -> int:
    from gateway.audit import AuditLog

    _check_store_options(args)
    origin, key_names = _audit_names(args)
    public_key = _audit_public_key(args)
    trusted = (
        _read_trusted_checkpoint(args.checkpoint, public_key, key_names, origin)
        if args.checkpoint is not None
        else None
    )

    async def work(store: AuditStore) -> Verification:
        await _check_log_named(store, origin, args.region)
        log = AuditLog(
            store,
            origin=origin,
            key_name=key_names[0],
            former_key_names=key_names[1:],
            public_key=public_key,
        )
        return await log.verify(trusted)

    result = _on_store(args, work)
    latest = result.latest
    if args.json:
        document = {
            "intact": result.intact,
            "records_checked": result.records_checked,
            "checkpoints_checked": result.checkpoints_checked,
            "first_bad_index": result.first_bad_index,
            "problem": result.problem,
            "latest_checkpoint": (
                {"size": latest.size, "root": _b64(latest.root), "note": latest.note}
                if latest is not None
                else None
            ),
        }
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    elif result.intact:
        signed = f"latest checkpoint size {latest.size}" if latest else "no checkpoint signed yet"
        headline = Text("INTACT", style="bold green")
        headline.append(
            f" — {result.records_checked} records, {result.checkpoints_checked} checkpoints "
            f"checked, {signed}",
            style="green",
        )
        out.print(headline, soft_wrap=True)
        if trusted is not None:
            out.print(
                Text(
                    f"The kept checkpoint {args.checkpoint} (size {trusted.size}) agrees with the log."
                ),
                soft_wrap=True,
            )
        unsigned = latest.size if latest else 0
        if unsigned < result.records_checked:
            last = result.records_checked - 1
            span = f"record {last} is" if unsigned == last else f"records {unsigned} to {last} are"
            out.print(
                Text(
                    f"note: {span} not covered by a signed checkpoint yet (the gateway signs one "
                    "every so many records or seconds, and when it stops)",
                    style="yellow",
                ),
                soft_wrap=True,
            )
    else:
        where = f" at record {result.first_bad_index}" if result.first_bad_index >= 0 else ""
        headline = Text(f"BROKEN{where}", style="bold red")
        headline.append(f" — {result.problem}", style="red")
        out.print(headline, soft_wrap=True)
    if args.save_checkpoint is not None:
        # The largest verified checkpoint: the latest stored one, or the kept one if it is larger
        # (stored checkpoints were lost), so a saved checkpoint never moves backwards.
        if not result.intact:
            _error(f"the log is broken: no checkpoint saved to {args.save_checkpoint}")
        elif latest is None:  # the log is intact (exit 0, as printed); only nothing to keep yet
            _error(
                f"warning: no checkpoint has been signed yet: nothing saved to {args.save_checkpoint}"
            )
        else:
            _save_text(args.save_checkpoint, latest.note)
            (Console(stderr=True, highlight=False) if args.json else out).print(
                Text(
                    f"Checkpoint of size {latest.size} saved to {args.save_checkpoint}: give it "
                    "as --checkpoint next time."
                ),
                soft_wrap=True,
            )
    return 0 if result.intact else 1


def _error(message: str) -> None:
    Console(stderr=True, highlight=False).print(f"tongban: {message}", markup=False, soft_wrap=True)


def _subject_pseudonym(args: argparse.Namespace) -> str | None:
    from gateway.audit import pseudonymize

    if args.subject_id is None:
        if args.pseudonym_key_file is not None:
            _usage(args, "--pseudonym-key-file goes with --subject-id")
        pseudonym: str | None = args.subject
        return pseudonym
    if args.pseudonym_key_file is None:
        _usage(args, "--subject-id needs --pseudonym-key-file FILE (the id is only ever hashed)")
    if not args.subject_id:
        _usage(args, "--subject-id is empty")
    path: Path = args.pseudonym_key_file
    key = _read_input(path, "the pseudonym key", limit=MAX_PSEUDONYM_KEY_BYTES).rstrip(b"\r\n")
    try:
        return pseudonymize(args.subject_id, key)
    except ValueError as exc:  # the key is too short; the message never holds the id
        raise Failure(f"{path}: {exc}") from exc


def _record_row(index: int, record: AuditRecord) -> list[Text]:
    outcome = record.outcome.value
    shown = f"{outcome}: {record.reason}" if record.reason else outcome
    return [
        Text(str(index)),
        Text(record.time_text),
        Text(record.caller_agency),
        Text(record.caller_region),
        Text(record.provider_region),
        Text(record.dataset),
        Text(record.purpose),
        Text(record.case_id),
        Text(shown, style=_OUTCOME_STYLES.get(outcome, "")),
        Text(", ".join(record.fields)),
        Text("yes" if record.cache_hit else "no"),
    ]


def cmd_audit_query(args: argparse.Namespace, out: Console) -> int:
    from gateway.audit import AuditQuery, Outcome

    _check_store_options(args)
    if args.since is not None and args.until is not None and args.since >= args.until:
        _usage(args, "--since is before --until")
    query = AuditQuery(
        subject=_subject_pseudonym(args),
        caller_agency=args.agency,
        provider_region=args.provider_region,
        purpose=args.purpose,
        dataset=args.dataset,
        outcome=Outcome(args.outcome) if args.outcome else None,
        since=args.since,
        until=args.until,
        after_index=-1 if args.after is None else args.after,
        limit=args.limit,
    )

    if args.all:
        return _audit_query_all(args, out, query)

    async def work(store: AuditStore) -> list[tuple[int, AuditRecord]]:
        return await store.query(query)

    found = _on_store(args, work)
    more = (
        f"More records may match: add --after {found[-1][0]} for the next page, or --all."
        if len(found) >= args.limit
        else ""
    )
    if args.json:
        for index, record in found:
            document = {"index": index, **json.loads(record.canonical)}
            sys.stdout.write(json.dumps(document, ensure_ascii=False, sort_keys=False) + "\n")
        if more:
            Console(stderr=True, highlight=False).print(more, markup=False, soft_wrap=True)
        return 0
    if not found:
        out.print("No audit record matches.")
        return 0
    table = Table(title=f"Audit records ({len(found)})", title_justify="left")
    _record_columns(table)
    for index, record in found:
        table.add_row(*_record_row(index, record))
    out.print(whole(table))
    if more:
        out.print(more, markup=False, soft_wrap=True)
    return 0


def _audit_query_all(args: argparse.Namespace, out: Console, first: AuditQuery) -> int:
    """Every matching record, a page of --limit at a time, each page printed as it is read;
    the listing ends at the log's size when it began (records appended meanwhile are not in it)."""
    import dataclasses

    async def work(store: AuditStore) -> int:
        end = (await store.head()).size
        query, shown = first, 0
        while True:
            page = [(i, r) for i, r in await store.query(query) if i < end]
            if not page:
                break
            if args.json:
                for index, record in page:
                    document = {"index": index, **json.loads(record.canonical)}
                    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                table = Table(
                    title=f"Audit records {shown + 1} to {shown + len(page)}", title_justify="left"
                )
                _record_columns(table)
                for index, record in page:
                    table.add_row(*_record_row(index, record))
                out.print(table)
            shown += len(page)
            if len(page) < query.limit:
                break
            query = dataclasses.replace(query, after_index=page[-1][0])
        return shown

    shown = _on_store(args, work)
    if not shown and not args.json:
        out.print("No audit record matches.")
    return 0


def _record_columns(table: Table) -> None:
    for column in ("index", "time (UTC)", "caller agency", "caller region", "provider region"):
        table.add_column(column)
    for column in ("dataset", "purpose", "case id", "outcome", "fields", "cache hit"):
        table.add_column(column, overflow="fold")


async def _signed_at(
    store: AuditStore,
    sizes: dict[int, bytes],
    public_key: Ed25519PublicKey,
    key_names: tuple[str, ...],
    origin: str,
) -> dict[int, str]:
    """The note of a stored checkpoint, signed by the audit key, for each of `sizes` that has
    one; a signed root that is not the recomputed one is a broken log."""
    from gateway.audit import CheckpointError

    notes: dict[int, str] = {}
    for stored in await store.checkpoints():
        if stored.size not in sizes or stored.size in notes:
            continue
        try:
            checkpoint = _verify_note(stored.note, public_key, key_names, origin)
        except CheckpointError:
            continue  # not signed by this key: proves nothing either way
        if checkpoint.root != sizes[stored.size]:
            raise Failure(
                f"the records do not give the root signed for size {stored.size}: run "
                "`tongban audit verify`"
            )
        notes[stored.size] = checkpoint.note
    return notes


def cmd_audit_proof(args: argparse.Namespace, out: Console) -> int:
    from gateway.audit import AuditLog, ProofError, leaf_hash, verify_consistency, verify_inclusion

    _check_store_options(args)
    if args.size is not None and args.index is None:
        _usage(args, "--size goes with --index")
    if args.to is not None and args.consistency is None:
        _usage(args, "--to goes with --consistency")
    origin, key_names = _audit_names(args)
    public_key = _audit_public_key(args)

    async def latest_signed(log: AuditLog) -> int:
        """The size of the latest checkpoint signed by this log's key (the default tree size,
        as GetProof's 0)."""
        from gateway.audit import CheckpointError

        sizes = []
        for stored in await log.store.checkpoints():
            try:
                sizes.append(_verify_note(stored.note, public_key, key_names, origin).size)
            except CheckpointError:
                continue
        if not sizes:
            raise Failure("no checkpoint of this log is signed yet: give the tree size")
        return max(sizes)

    async def inclusion(log: AuditLog, length: int) -> dict[str, object]:
        index: int = args.index
        size: int = await latest_signed(log) if args.size is None else args.size
        if size > length:
            raise Failure(f"the log holds {length} records: there is no tree of size {size}")
        if index >= size:
            raise Failure(f"record {index} is not in a tree of size {size}")
        hashes, size, root, leaf = await log.inclusion_proof(index, size)
        rows = await log.store.rows(index, index + 1)
        if len(rows) != 1 or leaf_hash(rows[0].canonical) != leaf:
            raise Failure(
                f"record {index} is not what its leaf hash says: run `tongban audit verify`"
            )
        try:
            verify_inclusion(leaf, index, size, hashes, root)
        except ProofError as exc:
            raise Failure(f"the inclusion proof does not verify: {exc}") from exc
        notes = await _signed_at(log.store, {size: root}, public_key, key_names, origin)
        return {
            "kind": "inclusion",
            "origin": origin,
            "index": index,
            "size": size,
            "root": _b64(root),
            "leaf_hash": _b64(leaf),
            "hashes": [_b64(h) for h in hashes],
            "verified": True,
            "checkpoint": notes.get(size),
        }

    async def consistency(log: AuditLog, length: int) -> dict[str, object]:
        first: int = args.consistency
        size: int = await latest_signed(log) if args.to is None else args.to
        if size > length:
            raise Failure(f"the log holds {length} records: there is no tree of size {size}")
        if first > size:
            raise Failure(f"no consistency proof from size {first} to the smaller size {size}")
        hashes, size, root = await log.consistency_proof(first, size)
        first_root = (await log.inclusion_proof(first - 1, first))[2]
        try:
            verify_consistency(first, size, hashes, first_root, root)
        except ProofError as exc:
            raise Failure(f"the consistency proof does not verify: {exc}") from exc
        notes = await _signed_at(
            log.store, {first: first_root, size: root}, public_key, key_names, origin
        )
        return {
            "kind": "consistency",
            "origin": origin,
            "from": first,
            "size": size,
            "from_root": _b64(first_root),
            "root": _b64(root),
            "hashes": [_b64(h) for h in hashes],
            "verified": True,
            "from_checkpoint": notes.get(first),
            "checkpoint": notes.get(size),
        }

    async def work(store: AuditStore) -> dict[str, object]:
        await _check_log_named(store, origin, args.region)
        log = AuditLog(store, origin=origin, key_name=key_names[0], public_key=public_key)
        length = (await store.head()).size
        try:
            return await (inclusion if args.index is not None else consistency)(log, length)
        except ProofError as exc:  # e.g. a record below a prune cut: its hashes are gone
            raise Failure(f"no proof: {exc}") from exc

    document = _on_store(args, work)
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    return 0


def _rpc_failure(exc: Exception) -> Failure:
    """A failed call as one line: its ErrorInfo reason, message and any RetryInfo delay."""
    import grpc
    from google.rpc import error_details_pb2, status_pb2

    from gateway.errors import error_info_of

    assert isinstance(exc, grpc.aio.AioRpcError)
    info, message = error_info_of(exc)
    reason = f" {info.reason}" if info is not None else ""
    retry = ""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                delay = error_details_pb2.RetryInfo()
                if detail.Unpack(delay):
                    seconds = delay.retry_delay.ToTimedelta().total_seconds()
                    retry = f" (retry in {seconds:.0f} s)"
    return Failure(f"the gateway refused: {exc.code().name}{reason}: {message}{retry}")


def cmd_audit_checkpoint(args: argparse.Namespace, out: Console) -> int:
    """Ask a gateway (Oversight.SignCheckpoint) to sign a checkpoint of its audit log now."""
    import grpc

    from gateway.audit import CheckpointError, verify_checkpoint
    from tongban.v1 import oversight_pb2, oversight_pb2_grpc

    if args.pki is not None:
        if args.agency is None:
            _usage(args, "--pki needs --agency ID (the oversight agency whose TLS key to use)")
        tls = Inventory.load(args.pki).find(args.agency, KeyUsage.TLS, KeyState.ACTIVE)
        if not tls:
            raise Failure(f"{args.pki}: {args.agency} has no active TLS key in the inventory")
        args.region = tls[-1].region  # the gateway and its audit key are this region's
        cert, key = args.pki / tls[-1].certificate, args.pki / tls[-1].private_key
        ca = args.ca or args.pki / "regions" / args.region / "ca" / "root.pem"
    else:
        if args.ca is None or args.cert is None or args.key is None:
            _usage(args, "give --pki DIR --agency ID, or --ca, --cert and --key")
        cert, key, ca = args.cert, args.key, args.ca
    credentials = grpc.ssl_channel_credentials(
        _read_input(ca, "the CA certificate", limit=MAX_CERTIFICATE_BYTES),
        _read_input(key, "the TLS key", limit=MAX_CERTIFICATE_BYTES),
        _read_input(cert, "the TLS certificate chain", limit=MAX_CERTIFICATE_BYTES),
    )

    async def ask() -> oversight_pb2.SignCheckpointResponse:
        async with grpc.aio.secure_channel(args.gateway, credentials) as channel:
            stub = oversight_pb2_grpc.OversightStub(channel)
            try:
                answer: oversight_pb2.SignCheckpointResponse = await stub.SignCheckpoint(
                    oversight_pb2.SignCheckpointRequest(), timeout=args.timeout
                )
            except grpc.aio.AioRpcError as exc:
                raise _rpc_failure(exc) from exc
            return answer

    answer = asyncio.run(ask())
    checkpoint = answer.checkpoint
    verified = False
    if args.audit_cert is not None or args.pki is not None:
        try:
            verify_checkpoint(
                checkpoint.note,
                _audit_public_key(args),
                checkpoint.key_name,
                origin=checkpoint.origin,
            )
        except CheckpointError as exc:
            raise Failure(f"the gateway's checkpoint does not verify: {exc}") from exc
        verified = True
    if args.out is not None:
        _save_text(args.out, checkpoint.note)
    signed_at = checkpoint.signed_at.ToDatetime(tzinfo=UTC).isoformat()
    if args.json:
        document = {
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "root": _b64(checkpoint.root_hash),
            "key_name": checkpoint.key_name,
            "signed_at": signed_at,
            "signed_now": answer.signed_now,
            "verified": verified,
            "note": checkpoint.note,
        }
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return 0
    state = "signed now" if answer.signed_now else "already covered the whole log"
    out.print(
        f"Checkpoint of {checkpoint.origin}, size {checkpoint.size}, signed at {signed_at} "
        f"by {checkpoint.key_name} ({state}"
        f"{'; signature verified' if verified else ''})."
        + (
            f" Saved to {args.out}: keep it, and give it as --checkpoint next time."
            if args.out
            else ""
        ),
        markup=False,
        soft_wrap=True,
    )
    if args.out is None:
        sys.stdout.write(checkpoint.note)
    return 0


def cmd_audit_prune(args: argparse.Namespace, out: Console) -> int:
    """Retention: remove records older than --older-than, after signing what remains."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gateway.audit import FIELD_GRAMMARS, MIN_RETENTION, AuditLog, is_case_id

    _check_store_options(args)
    if args.region is None:
        _usage(args, "give --region CODE: the region whose audit log this is")
    if args.older_than < MIN_RETENTION:
        _usage(
            args,
            f"--older-than: audit records are kept at least {MIN_RETENTION.days} days (Cybersecurity Law, Art. 21)",
        )
    if not is_case_id(args.reason) or not FIELD_GRAMMARS["caller_operator"](args.operator):
        _usage(
            args,
            "--operator, --reason: at most 128 printable characters each, with no citizen id "
            "(the prune's audit record holds them)",
        )
    origin, key_names = _audit_names(args)
    if args.audit_key is not None:
        key_path: Path = args.audit_key
    else:
        active = Inventory.load(args.pki).find(args.region, KeyUsage.AUDIT, KeyState.ACTIVE)
        if not active:
            raise Failure(
                f"{args.pki}: region {args.region} has no active audit key in the inventory"
            )
        key_path = args.pki / active[-1].private_key
    key = load_private_key(key_path, _passphrase(args))
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise Failure(f"{key_path}: not an Ed25519 key (audit checkpoints are signed with Ed25519)")
    now = _now()

    async def work(store: AuditStore) -> str:
        await _check_log_named(store, origin, args.region)
        log = AuditLog(
            store, origin=origin, key=key, key_name=key_names[0], former_key_names=key_names[1:]
        )
        cut = await store.first_index_at_or_after(now - args.older_than)
        marker = await store.pruned()
        first = marker.before if marker else 0
        if cut <= first:
            return f"Nothing is older than {args.older_than.days} days: nothing to remove."
        if not args.yes:
            return (
                f"Would remove records {first} to {cut - 1} (older than {now - args.older_than:%Y-%m-%d}). "
                "Nothing was changed: add --yes to prune."
            )
        pruned = await log.prune(
            older_than=args.older_than,
            operator=args.operator,
            reason=args.reason,
            gateway=f"cli:{args.operator}",
            region=args.region,
            now=now,
        )
        assert pruned is not None
        return (
            f"Removed records {pruned.first} to {pruned.cut - 1}. Checkpoint of size {pruned.cut} "
            f"vouches for what remains; the prune itself is record {pruned.at_head.size - 1}, "
            f"in checkpoint size {pruned.at_head.size}."
        )

    out.print(_on_store(args, work), soft_wrap=True, markup=False)
    return 0


def _audit_store_options(parser: argparse.ArgumentParser) -> None:
    store = parser.add_mutually_exclusive_group(required=True)
    store.add_argument("--sqlite", type=Path, metavar="PATH", help="the SQLite audit database")
    store.add_argument(
        "--postgres-env",
        metavar="VAR",
        help="environment variable holding the PostgreSQL DSN (never on the command line: "
        "it may hold a password)",
    )
    parser.add_argument(
        "--schema",
        type=parse_schema_name,
        metavar="NAME",
        help=f"PostgreSQL schema of the audit log (default {DEFAULT_AUDIT_SCHEMA})",
    )


def _audit_key_options(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--audit-cert",
        type=Path,
        metavar="PEM",
        help="the region's audit certificate (Ed25519), whose key signs the checkpoints",
    )
    key.add_argument(
        "--pki",
        type=Path,
        metavar="DIR",
        help="a dev PKI folder: use --region's active audit certificate",
    )
    parser.add_argument(
        "--region",
        type=lambda s: parse_regions(s)[0],
        metavar="CODE",
        help="the log's region (GB/T 2260): the defaults below, and the key with --pki",
    )
    parser.add_argument(
        "--origin",
        type=parse_line,
        metavar="NAME",
        help="the log's name in its checkpoints (default audit.tongban/<region>)",
    )
    parser.add_argument(
        "--key-name",
        type=parse_key_name,
        metavar="NAME",
        help="the checkpoint signer's key name (default: the origin, and audit-<region> for "
        "checkpoints signed before the key was named after its log)",
    )


# parser ---------------------------------------------------------------------------------------
Handler = Callable[[argparse.Namespace, Console], int]


def _package_version() -> str:
    try:
        return importlib.metadata.version("tongban")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
        return "(version unknown: the package is not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tongban",
        description="Tongban (通办): a gateway for cross-region government data sharing.",
        epilog="Run `tongban COMMAND --help` for each command. Exit codes: 0 done, 1 refused or failed, 2 bad command line.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"tongban {_package_version()}",
        help="print the version and exit",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log verbosity (default WARNING)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help=f"json (one object per line) or console; default: ${FORMAT_ENV}, else console "
        "on a terminal and json otherwise (docs/logging.md)",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    # demo
    demo = commands.add_parser(
        "demo",
        help="three regions on loopback, scripted scenarios",
        description="Build a dev PKI and a signed registry, start the gateways and demo data "
        "systems of 330000 浙江, 510000 四川 and 500000 重庆 on free loopback ports, and play "
        "scripted scenarios: a 川渝通办 query, a cache hit, an e-credential verified across "
        "regions, a denied over-broad query, a multi-region batch, a seal-key rotation under "
        "traffic, a citizen's audit trail and an audit verification against a signed checkpoint. "
        "Exit code 0 only if every scenario behaved as expected.",
        epilog="Example: tongban demo --serve   (then run the client command it prints)",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        help="a new or empty folder for the PKI, registry and audit logs (default: a temporary "
        "folder, removed at the end)",
    )
    demo.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help=f"registry source folder (default {DEFAULT_SOURCE})",
    )
    demo.add_argument(
        "--redis",
        type=parse_redis_url,
        metavar="URL",
        default="",
        help="Redis for the answer cache, replay window and quotas (default: in memory)",
    )
    demo.add_argument(
        "--postgres",
        type=parse_postgres_dsn,
        metavar="DSN",
        default="",
        help="PostgreSQL for the audit logs, one schema per region, dropped at the end "
        "(default: SQLite files in the demo folder)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the scenarios, keep the gateways running until Ctrl-C",
    )
    demo.set_defaults(handler=cmd_demo, serves=True)

    # pki
    pki_parser = commands.add_parser(
        "pki",
        help="development PKI",
        description="Development PKI: CAs, keys and certificates for test federations.",
    )
    pki_verbs = pki_parser.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=_Parser
    )
    init = pki_verbs.add_parser(
        "init",
        help="create a dev PKI for some regions",
        description="Create the registry authority key and, per region, a root and intermediate CA, the "
        "gateway TLS certificate, the region e-seal, token and audit keys and a natural-person "
        "e-signature certificate; per agency of those regions (from the registry source) a TLS client "
        "certificate and an agency e-seal. Private keys are PKCS#8 files with mode 0600.",
        epilog="Example: tongban pki init --out out/pki --regions 330000,510000,500000",
    )
    init.add_argument(
        "--out", type=Path, required=True, help="folder to create the PKI in (must not hold one)"
    )
    init.add_argument(
        "--regions",
        type=parse_regions,
        required=True,
        help="comma-separated GB/T 2260 codes, e.g. 330000,510000,500000",
    )
    init.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help=f"registry source naming the agencies (default {DEFAULT_SOURCE})",
    )
    _passphrase_options(init)
    init.set_defaults(handler=cmd_pki_init)

    # registry
    reg = commands.add_parser(
        "registry",
        help="build, publish and show the signed registry",
        description="The signed, versioned trust registry.",
    )
    reg_verbs = reg.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_Parser)
    build = reg_verbs.add_parser(
        "build",
        help="validate the source and write the unsigned draft",
        description="Validate the registry source and combine it with the PKI's certificates into the canonical (unsigned) registry JSON, for review.",
    )
    build.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help=f"registry source folder (default {DEFAULT_SOURCE})",
    )
    build.add_argument("--pki", type=Path, required=True, help="PKI folder (CAs and key inventory)")
    build.add_argument("--out", type=Path, help="write the draft here instead of standard output")
    build.set_defaults(handler=cmd_registry_build)
    pub = reg_verbs.add_parser(
        "publish",
        help="sign the next registry version",
        description="Build the registry, apply the key lifecycle moves (pending keys published before "
        "become active, the keys they replace retire), sign it with the registry authority key and "
        "write registry-<version>.jws and current.jws. Versions only grow.",
    )
    pub.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help=f"registry source folder (default {DEFAULT_SOURCE})",
    )
    pub.add_argument(
        "--pki", type=Path, required=True, help="PKI folder holding the authority key and inventory"
    )
    pub.add_argument(
        "--out",
        type=Path,
        required=True,
        help="publish folder that gateways read (or serve to peers)",
    )
    pub.add_argument(
        "--lifetime",
        type=parse_duration,
        help="how long the snapshot stays valid (default: the source's snapshot_lifetime_seconds)",
    )
    _passphrase_options(pub)
    pub.set_defaults(handler=cmd_registry_publish)
    show = reg_verbs.add_parser(
        "show",
        help="verify a snapshot and print a summary",
        description="Verify a published snapshot's signature and print its regions, agreements and keys with their state and days to expiry.",
    )
    show.add_argument("snapshot", type=Path, help="a .jws snapshot, e.g. out/published/current.jws")
    trust = show.add_mutually_exclusive_group()
    trust.add_argument("--authority", type=Path, help="the registry authority public key (PEM)")
    trust.add_argument("--pki", type=Path, help="a PKI folder, to use its authority public key")
    show.add_argument(
        "--json",
        action="store_true",
        help="print the verified payload as one JSON document (the registry's own field names: "
        "format, name, version, issued_at, expires_at, refresh_seconds, regions, agencies, datasets, "
        "purposes, agreements, keys)",
    )
    show.set_defaults(handler=cmd_registry_show, usage_error=show.error)

    # keys
    keys = commands.add_parser(
        "keys",
        help="key lifecycle for security teams",
        description="Generate, rotate, revoke and watch the expiry of keys and certificates.",
    )
    key_verbs = keys.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=_Parser
    )
    for verb, handler, text in (
        (
            "generate",
            cmd_keys_generate,
            "issue a first key for an owner and usage (active at once)",
        ),
        ("rotate", cmd_keys_rotate, "issue a successor key (pending; active one publish later)"),
    ):
        p = key_verbs.add_parser(verb, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--pki", type=Path, required=True, help="PKI folder")
        p.add_argument(
            "--owner",
            type=parse_name,
            required=True,
            help="region code (gateway keys) or agency id",
        )
        p.add_argument(
            "--usage",
            required=True,
            choices=[u.value for u in KeyUsage],
            help="what the key is for",
        )
        p.add_argument(
            "--algorithm",
            default="ES256",
            choices=ALGORITHMS,
            help="signature algorithm (default ES256; TLS keys are always ES256)",
        )
        p.add_argument(
            "--validity-days",
            type=parse_validity_days,
            help=f"certificate lifetime in days, 1 to {MAX_VALIDITY_DAYS} (default 365)",
        )
        p.add_argument(
            "--source",
            type=Path,
            default=DEFAULT_SOURCE,
            help=f"registry source, to find an agency's region (default {DEFAULT_SOURCE})",
        )
        _passphrase_options(p)
        p.set_defaults(handler=handler)
    revoke = key_verbs.add_parser(
        "revoke",
        help="revoke a key from a given time",
        description="Mark a key revoked with a time and a reason; signatures dated from then on are refused after the next publish.",
    )
    revoke.add_argument(
        "kid",
        type=parse_name,
        help="the key id (x5t#S256) to revoke; one that starts with '-' goes last, after '--'",
    )
    revoke.add_argument("--pki", type=Path, required=True, help="PKI folder")
    revoke.add_argument(
        "--reason",
        type=parse_name,
        required=True,
        help="why, e.g. keyCompromise, superseded, cessationOfOperation",
    )
    revoke.add_argument(
        "--at", type=parse_time, help="revocation time, ISO 8601 with offset (default now)"
    )
    revoke.set_defaults(handler=cmd_keys_revoke)
    expiring = key_verbs.add_parser(
        "expiring",
        help="list keys whose certificates expire soon",
        description="List unrevoked keys whose certificates expire within a period, soonest first.",
    )
    expiring.add_argument("--pki", type=Path, required=True, help="PKI folder")
    expiring.add_argument(
        "--within",
        type=parse_duration,
        default=timedelta(days=30),
        help="period, e.g. 30d (default), 12h",
    )
    expiring.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array, soonest first, each key an object with kid, owner, usage, "
        "algorithm, state, not_after (ISO 8601, UTC) and days_left",
    )
    expiring.set_defaults(handler=cmd_keys_expiring)

    # seal
    seal_parser = commands.add_parser(
        "seal",
        help="seal or sign a document with a key file (JAdES compact JWS)",
        description="Seal (or sign) a file with a key and its certificate chain: a JAdES "
        "baseline-B compact JWS whose header names the certificate (x5t#S256, x5c) and the "
        "signing time. An e-seal with a seal certificate, an e-signature with a signature "
        "certificate. Writes the JWS to standard output unless --out is given.",
        epilog="Example: tongban seal licence.pdf --key out/pki/regions/330000/keys/seal-ab12cd34.key "
        "--cert out/pki/regions/330000/keys/seal-ab12cd34.pem --detached --out licence.pdf.jws",
    )
    seal_parser.add_argument("file", type=Path, help="the document to seal (its exact bytes)")
    seal_parser.add_argument(
        "--key", type=Path, required=True, metavar="KEY.pem", help="private key (PKCS#8)"
    )
    seal_parser.add_argument(
        "--cert",
        type=Path,
        required=True,
        metavar="CHAIN.pem",
        help="certificate chain of the key, leaf first",
    )
    seal_parser.add_argument(
        "--detached",
        action="store_true",
        help="leave the document out of the JWS (its SHA-256 is signed, in sigD)",
    )
    seal_parser.add_argument(
        "--content-type",
        type=parse_media_type,
        metavar="TYPE",
        help=f"media type of the document (default: guessed from its name, else {DEFAULT_CONTENT_TYPE})",
    )
    seal_parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the JWS here instead of standard output"
    )
    _passphrase_options(seal_parser)
    seal_parser.set_defaults(handler=cmd_seal)

    # verify
    verify = commands.add_parser(
        "verify",
        help="verify an e-seal or e-signature against a registry snapshot",
        description="Verify a compact JWS e-seal or e-signature against a signed registry snapshot "
        "(its keys, CAs and revocation lists) and print an ETSI EN 319 102-1 style report: "
        "TOTAL_PASSED, TOTAL_FAILED or INDETERMINATE with the reason, the signer, and every "
        "check. Exit code 0 only for TOTAL_PASSED, 1 otherwise.",
        epilog="Example: tongban verify licence.pdf.jws --payload licence.pdf "
        "--snapshot out/published/current.jws --pki out/pki",
    )
    verify.add_argument("file", type=Path, help="the compact JWS to verify")
    verify.add_argument(
        "--payload", type=Path, metavar="FILE", help="the document, for a detached JWS"
    )
    verify.add_argument(
        "--snapshot",
        type=Path,
        required=True,
        metavar="JWS",
        help="registry snapshot, e.g. out/published/current.jws",
    )
    verify_trust = verify.add_mutually_exclusive_group(required=True)
    verify_trust.add_argument(
        "--authority",
        type=Path,
        metavar="PUB",
        help="the registry authority public key (PEM), to check the snapshot's signature",
    )
    verify_trust.add_argument(
        "--pki", type=Path, metavar="DIR", help="a PKI folder, to use its authority public key"
    )
    verify.add_argument(
        "--expect",
        choices=[k.value for k in SignatureKind],
        help="require an e-seal (legal person) or an e-signature (natural person)",
    )
    verify.add_argument(
        "--region",
        type=lambda s: parse_regions(s)[0],
        metavar="CODE",
        help="require a key of this region (GB/T 2260 code)",
    )
    verify.add_argument(
        "--at",
        type=parse_time,
        metavar="ISO-TIME",
        help="validate as of this time, ISO 8601 with offset (default now)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=cmd_verify)

    # token
    token = commands.add_parser(
        "token",
        help="request tokens for agency operators (dev identity service)",
        description="Request tokens: short-lived JWTs that agency systems send in the "
        "`authorization` metadata, signed with their region's token key and bound to the "
        "agency's TLS client certificate.",
    )
    token_verbs = token.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=_Parser
    )
    token_issue = token_verbs.add_parser(
        "issue",
        help="issue a request token for an operator of an agency",
        description="Play the identity service of the agency's region: sign a request token "
        "(JWT, at most 5 minutes) for an operator of the agency with the region's active token "
        "key, bound (cnf x5t#S256) to the agency's active TLS certificate, for the gateway of "
        "the agency's region. Prints the token on one line.",
        epilog='Example: tongban token issue --pki out/pki --agency zj.hrss --operator "张三" --lifetime 120s',
    )
    token_issue.add_argument("--pki", type=Path, required=True, metavar="DIR", help="PKI folder")
    token_issue.add_argument(
        "--agency",
        type=parse_name,
        required=True,
        metavar="ID",
        help="the calling agency, e.g. zj.hrss",
    )
    token_issue.add_argument(
        "--operator",
        type=parse_operator,
        required=True,
        metavar="NAME",
        help="the operator (sub) acting for the agency",
    )
    token_issue.add_argument(
        "--lifetime",
        type=parse_token_lifetime,
        default=timedelta(seconds=300),
        metavar="DURATION",
        help="how long the token lives, at most 300s (default 300s)",
    )
    _passphrase_options(token_issue)
    token_issue.set_defaults(handler=cmd_token_issue)

    # gateway
    gw = commands.add_parser(
        "gateway", help="run a region's gateway", description="Run a region's gateway."
    )
    gw_verbs = gw.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_Parser)
    serve = gw_verbs.add_parser(
        "serve",
        help="serve gRPC over mutual TLS until Ctrl-C",
        description="Serve the registry (GetSnapshot, Watch), credentials (Verify for every caller, "
        "Seal for the region's agencies with the region's seal key), gRPC health and reflection over "
        "mutual TLS. Client certificates must chain to a region CA of the current registry.",
        epilog="Example: tongban gateway serve --pki out/pki --region 330000 --snapshot out/published/current.jws",
    )
    serve.add_argument("--config", type=Path, help="gateway configuration (TOML)")
    serve.add_argument(
        "--workers",
        type=parse_workers,
        default=1,
        metavar="N",
        help="processes sharing the port (default 1); more than one needs the audit log in "
        "PostgreSQL and Redis for the cache, replay window and quotas, as replicas do",
    )
    serve.add_argument("--pki", type=Path, help="dev PKI folder (instead of --config)")
    serve.add_argument(
        "--region", type=lambda s: parse_regions(s)[0], help="region code, with --pki"
    )
    serve.add_argument(
        "--snapshot", type=Path, help="registry snapshot file to load and watch, with --pki"
    )
    serve.add_argument(
        "--follow",
        type=parse_endpoint,
        metavar="HOST:PORT",
        help="a peer gateway whose registry to follow, with --pki",
    )
    serve.add_argument(
        "--provider",
        type=parse_loopback_endpoint,
        metavar="HOST:PORT",
        help="the region's data system (DataProvider.Fetch) on this machine (it is called "
        "without TLS), with --pki: serves the query path",
    )
    serve.add_argument(
        "--redis-env",
        metavar="VAR",
        help="environment variable holding the Redis URL for the cache, replay window and "
        "quotas, with --pki (default: in memory, one replica)",
    )
    serve.add_argument(
        "--peer",
        type=parse_peer,
        action="append",
        metavar="CODE=HOST:PORT",
        help="a peer gateway's endpoint instead of the registry's, with --pki (repeatable)",
    )
    serve.add_argument(
        "--audit-db",
        type=Path,
        metavar="FILE",
        help="SQLite audit log, with --pki (default: kept in memory, lost at exit)",
    )
    serve.add_argument(
        "--bootstrap-ca",
        type=Path,
        metavar="FILE",
        help="CA bundle trusted to reach the --follow peer before a registry is held "
        "(default: the dev PKI's roots.pem)",
    )
    serve.add_argument(
        "--listen",
        type=parse_listen,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="host:port to listen on, IPv6 in brackets, with --pki (default 127.0.0.1:0, a free "
        "port)",
    )
    _passphrase_options(serve)
    serve.set_defaults(handler=cmd_gateway_serve, serves=True, usage_error=serve.error)

    # provider
    provider = commands.add_parser(
        "provider",
        help="run a demo provincial data system",
        description="Demo provincial data systems (synthetic citizens and businesses) for tests "
        "and demos: what a province's own system does behind DataProvider.Fetch.",
    )
    provider_verbs = provider.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=_Parser
    )
    provider_serve = provider_verbs.add_parser(
        "serve",
        help="serve one region's synthetic data until Ctrl-C",
        description="Serve DataProvider.Fetch with one region's synthetic data (valid GB 11643 "
        "citizen ids, GB 32100 credit codes), in plaintext on loopback only.",
        epilog="Example: tongban provider serve --region 330000 --listen 127.0.0.1:9330",
    )
    provider_serve.add_argument(
        "--region",
        type=lambda s: parse_regions(s)[0],
        required=True,
        help="the region whose data to serve (330000, 510000 or 500000)",
    )
    provider_serve.add_argument(
        "--listen",
        type=parse_loopback_listen,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="host:port on loopback (default a free port)",
    )
    provider_serve.set_defaults(handler=cmd_provider_serve, serves=True)

    # audit
    audit = commands.add_parser(
        "audit",
        help="query, verify and prove the audit log (oversight)",
        description="Read a region's audit log straight from its store (an SQLite file or a "
        "PostgreSQL schema), for oversight staff: query who accessed what, verify that nothing "
        "was altered, reordered or removed, and prove a record's inclusion or the log's "
        "consistency. Nothing here writes to the log.",
        epilog="Example: tongban audit verify --sqlite audit-510000.db --pki out/pki --region 510000",
    )
    audit_verbs = audit.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=_Parser
    )
    audit_verify = audit_verbs.add_parser(
        "verify",
        help="check every record against the signed checkpoints",
        description="Recompute the log from its stored records and check every stored checkpoint "
        "(and a checkpoint you kept, with --checkpoint) against it: prints INTACT, or BROKEN "
        "with the first record where the log stops being what was signed. A truncated log "
        "whose checkpoints were deleted too agrees with itself: only a checkpoint kept from an "
        "earlier run (--save-checkpoint) catches that. Exit code 0 intact, 1 broken.",
        epilog="Example: tongban audit verify --sqlite audit-510000.db --pki out/pki --region 510000 "
        "--checkpoint kept.checkpoint --save-checkpoint kept.checkpoint",
    )
    _audit_store_options(audit_verify)
    _audit_key_options(audit_verify)
    audit_verify.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="a signed checkpoint note kept from an earlier run: the log must still contain it",
    )
    audit_verify.add_argument(
        "--save-checkpoint",
        type=Path,
        metavar="FILE",
        help="if the log is intact, write its latest checkpoint here (keep it for next time)",
    )
    audit_verify.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object: intact, records_checked, "
        "checkpoints_checked, first_bad_index, problem, latest_checkpoint (size, root, note)",
    )
    audit_verify.set_defaults(handler=cmd_audit_verify, usage_error=audit_verify.error)

    audit_query = audit_verbs.add_parser(
        "query",
        help="list audit records by subject, agency, purpose, outcome, time",
        description="List the audit records that match every filter given, oldest first, a page "
        "at a time. Subjects are recorded as pseudonyms (HMAC-SHA256 under the deployment's "
        "pseudonym key): give the pseudonym, or the raw id with the key file; a raw id is only "
        "hashed, never printed or stored.",
        epilog="Example: tongban audit query --sqlite audit-510000.db --subject-id 110105194912310021 "
        "--pseudonym-key-file secrets/audit-pseudonym.key --since 2026-11-01T00:00:00+08:00",
    )
    _audit_store_options(audit_query)
    subject = audit_query.add_mutually_exclusive_group()
    subject.add_argument(
        "--subject-id", metavar="ID", help="the data subject's id (hashed with the pseudonym key)"
    )
    subject.add_argument(
        "--subject", type=parse_pseudonym, metavar="PSEUDONYM", help="the subject's pseudonym"
    )
    audit_query.add_argument(
        "--pseudonym-key-file",
        type=Path,
        metavar="FILE",
        help="file holding the deployment's pseudonym key (at least 16 bytes), for --subject-id",
    )
    audit_query.add_argument(
        "--agency", type=parse_name, metavar="ID", help="the calling agency, e.g. sc.hrss"
    )
    audit_query.add_argument(
        "--provider-region",
        type=lambda s: parse_regions(s)[0],
        metavar="CODE",
        help="the region that provided the data (GB/T 2260)",
    )
    audit_query.add_argument(
        "--purpose", type=parse_name, metavar="CODE", help="the purpose, e.g. SI-TRANSFER"
    )
    audit_query.add_argument(
        "--dataset", type=parse_name, metavar="ID", help="the dataset, e.g. si.participation"
    )
    audit_query.add_argument("--outcome", choices=AUDIT_OUTCOMES, help="the decision")
    audit_query.add_argument(
        "--since",
        type=parse_time,
        metavar="ISO-TIME",
        help="records at or after this time, ISO 8601 with offset",
    )
    audit_query.add_argument(
        "--until",
        type=parse_time,
        metavar="ISO-TIME",
        help="records before this time, ISO 8601 with offset",
    )
    audit_query.add_argument(
        "--limit",
        type=parse_limit,
        default=DEFAULT_QUERY_LIMIT,
        metavar="N",
        help=f"records per page, 1 to {MAX_QUERY_LIMIT} (default {DEFAULT_QUERY_LIMIT})",
    )
    audit_query.add_argument(
        "--after",
        type=parse_index,
        metavar="INDEX",
        help="the next page: records after this index (the last one shown)",
    )
    audit_query.add_argument(
        "--all",
        action="store_true",
        help="follow the pages (of --limit records) to the end of the log as it was when the "
        "listing began",
    )
    audit_query.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per record (JSON lines, so that pages concatenate): index "
        "and the record's own fields (time, gateway, region, caller_agency, provider_region, "
        "dataset, purpose, case_id, subject, fields, outcome, reason, cache_hit, ...)",
    )
    audit_query.set_defaults(handler=cmd_audit_query, usage_error=audit_query.error)

    audit_proof = audit_verbs.add_parser(
        "proof",
        help="prove a record's inclusion or the log's consistency",
        description="Compute an RFC 6962 inclusion proof of one record in the tree of a given "
        "size, or a consistency proof that the tree of one size is a prefix of a larger one, "
        "from the stored leaf hashes; check it here with an independent verifier; print it as "
        "JSON (hashes in base64) with the signed checkpoint of that size, if one is stored.",
        epilog="Example: tongban audit proof --sqlite audit-510000.db --pki out/pki --region 510000 "
        "--index 41 --size 1000",
    )
    _audit_store_options(audit_proof)
    _audit_key_options(audit_proof)
    which = audit_proof.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--index", type=parse_index, metavar="I", help="prove that record I is in the log"
    )
    which.add_argument(
        "--consistency",
        type=parse_size,
        metavar="FROM",
        help="prove that the tree of size FROM is a prefix of the log",
    )
    audit_proof.add_argument(
        "--size",
        type=parse_size,
        metavar="N",
        help="with --index: the tree size to prove against (default: the latest signed "
        "checkpoint's, as GetProof's tree_size 0)",
    )
    audit_proof.add_argument(
        "--to",
        type=parse_size,
        metavar="N",
        help="with --consistency: the larger tree size (default: the latest signed "
        "checkpoint's, as GetProof's second_size 0)",
    )
    audit_proof.set_defaults(handler=cmd_audit_proof, usage_error=audit_proof.error)

    audit_prune = audit_verbs.add_parser(
        "prune",
        help="remove records past the retention period (signed, recorded, explicit)",
        description="Retention: remove the records older than --older-than (at least 180 days, "
        "the minimum for network logs under the Cybersecurity Law, Art. 21). First the log is "
        "checked up to the cut, a checkpoint of exactly what remains is signed, and the prune "
        "itself is appended as a record (operator, reason) under a new signed checkpoint; only "
        "then are the records removed. Without --yes it only says what it would remove.",
        epilog="Example: tongban audit prune --sqlite audit-510000.db --pki out/pki --region 510000 "
        '--older-than 365d --operator "数据局 运维" --reason "retention ticket 42" --yes',
    )
    _audit_store_options(audit_prune)
    signer_key = audit_prune.add_mutually_exclusive_group(required=True)
    signer_key.add_argument(
        "--audit-key",
        type=Path,
        metavar="KEY",
        help="the region's audit private key (Ed25519, PKCS#8)",
    )
    signer_key.add_argument(
        "--pki", type=Path, metavar="DIR", help="a dev PKI folder: use --region's active audit key"
    )
    audit_prune.add_argument(
        "--region",
        type=lambda s: parse_regions(s)[0],
        metavar="CODE",
        help="the log's region (GB/T 2260)",
    )
    audit_prune.add_argument(
        "--origin",
        type=parse_line,
        metavar="NAME",
        help="the log's name in its checkpoints (default audit.tongban/<region>)",
    )
    audit_prune.add_argument(
        "--key-name",
        type=parse_key_name,
        metavar="NAME",
        help="the checkpoint signer's key name (default: the origin, and audit-<region> for "
        "checkpoints signed before the key was named after its log)",
    )
    audit_prune.add_argument(
        "--older-than",
        type=parse_duration,
        default=timedelta(days=180),
        metavar="AGE",
        help="remove records older than this, e.g. 365d (default and minimum 180d)",
    )
    audit_prune.add_argument(
        "--operator",
        type=parse_line,
        required=True,
        help="who orders the prune (recorded in the log)",
    )
    audit_prune.add_argument(
        "--reason",
        type=parse_line,
        required=True,
        help="why, e.g. the retention ticket (recorded in the log)",
    )
    audit_prune.add_argument(
        "--yes", action="store_true", help="really remove (otherwise only report what would go)"
    )
    _passphrase_options(audit_prune)
    audit_prune.set_defaults(handler=cmd_audit_prune, usage_error=audit_prune.error)

    audit_checkpoint = audit_verbs.add_parser(
        "checkpoint",
        help="ask a gateway to sign a checkpoint of its audit log now (Oversight.SignCheckpoint)",
        description="Ask a running gateway, as an oversight agency over mutual TLS, to sign a "
        "C2SP checkpoint of its audit log now (if the log grew since its latest one) and print "
        "it: a note an auditor keeps and later gives to `tongban audit verify --checkpoint`. "
        "The call is itself audited, and allowed once a minute per agency.",
        epilog="Example: tongban audit checkpoint --gateway localhost:7443 --pki out/pki "
        "--agency cq.data --out cq-checkpoint.txt",
    )
    audit_checkpoint.add_argument(
        "--gateway", required=True, metavar="HOST:PORT", help="the gateway to ask"
    )
    audit_checkpoint.add_argument(
        "--pki",
        type=Path,
        metavar="DIR",
        help="a dev PKI folder: use --agency's TLS key, its region's root CA and audit certificate",
    )
    audit_checkpoint.add_argument(
        "--agency", metavar="ID", help="with --pki: the oversight agency, e.g. cq.data"
    )
    audit_checkpoint.add_argument(
        "--ca", type=Path, metavar="PEM", help="the gateway region's root CA certificate"
    )
    audit_checkpoint.add_argument(
        "--cert", type=Path, metavar="PEM", help="the agency's TLS certificate chain"
    )
    audit_checkpoint.add_argument("--key", type=Path, metavar="PEM", help="the agency's TLS key")
    audit_checkpoint.add_argument(
        "--audit-cert",
        type=Path,
        metavar="PEM",
        help="the region's audit certificate: check the checkpoint's signature with its key",
    )
    audit_checkpoint.add_argument(
        "--out", type=Path, metavar="FILE", help="save the signed note to FILE"
    )
    audit_checkpoint.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the gateway (default 30)",
    )
    audit_checkpoint.add_argument("--json", action="store_true", help="print the result as JSON")
    audit_checkpoint.set_defaults(
        handler=cmd_audit_checkpoint, usage_error=audit_checkpoint.error, region=None
    )
    return parser


# A kid (the base64url SHA-256 of a certificate, 43 characters) begins with "-" once in 64, and
# argparse would take it for an option ("the following arguments are required: kid").
_DASHED_KID = re.compile(r"-[A-Za-z0-9_-]{42}")


def operands_last(argv: Sequence[str]) -> list[str]:
    """`argv` with every kid that begins with "-" moved after a "--", where it can only be an
    operand (kids are positional arguments, never option values)."""
    if "--" in argv:
        return list(argv)
    kids = [a for a in argv if _DASHED_KID.fullmatch(a)]
    if not kids:
        return list(argv)
    return [*(a for a in argv if not _DASHED_KID.fullmatch(a)), "--", *kids]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(operands_last(sys.argv[1:] if argv is None else argv))
    try:
        log_format = configure_logging(args.log_level, args.log_format)
    except ValueError as exc:  # a wrong TONGBAN_LOG_FORMAT
        parser.error(str(exc))
    out = Console(highlight=False)
    handler: Handler = args.handler
    # A serving process: gRPC core's own lines on fd 2 become JSON events too (gateway/logs.py).
    relaying = log_format == "json" and getattr(args, "serves", False)
    relay: contextlib.AbstractContextManager[None] = (
        relay_native_stderr() if relaying else contextlib.nullcontext()
    )
    with relay:
        return _run(handler, args, out, failures_logged=relaying)


def _run(handler: Handler, args: argparse.Namespace, out: Console, *, failures_logged: bool) -> int:
    """The command; a failure it reports is one line on stderr, a log event when stderr is the
    JSON log of a serving process."""
    try:
        return handler(args, out)
    except (Failure, RegistryError, GatewayError, SignerError, OSError) as exc:
        # An OSError here is a folder or file named on the command line that cannot be written.
        message = (
            f"{exc.filename}: {exc.strerror}"
            if isinstance(exc, OSError) and exc.filename and exc.strerror
            else str(exc)
        )
        if failures_logged:
            logging.getLogger("tongban.cli").error("tongban: %s", message)  # noqa: TRY400 - a message, not a traceback
            return 1
        # soft_wrap: never hard-wrap at the console width (it would cut paths and kids in two).
        Console(stderr=True, highlight=False).print(
            f"tongban: {message}", markup=False, soft_wrap=True
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
