"""`tongban`: the command line for operators, security teams and developers.

Exit codes: 0 done, 1 the operation was refused or failed (the message says why), 2 the
command line itself is wrong. Nothing here prints a traceback for an expected failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import mimetypes
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.config import GatewayConfig, read_passphrase
from gateway.errors import GatewayError
from registry import (
    AUTHORITY_PUBLIC_KEY,
    CURRENT_SNAPSHOT,
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
    canonical_json,
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
    seal,
)

__all__ = ["main"]

DEFAULT_SOURCE = Path("conf/registry")
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
    regions = [pki.RegionSpec(code, PROVINCES[code]) for code in args.regions]
    names = {r.code: r.name for r in source.regions}
    regions = [pki.RegionSpec(r.code, names.get(r.code, r.name)) for r in regions]
    agencies = [
        pki.AgencySpec(a.id, a.name, a.region, a.uscc)
        for a in source.agencies
        if a.region in args.regions
    ]
    now = _now()
    created = pki.init_dev_pki(args.out, regions, agencies, passphrase=_passphrase(args), now=now)
    Inventory.for_new_pki(created, now).save()
    out.print(
        f"[bold]Dev PKI created in {args.out}[/]: registry authority, {len(regions)} regions "
        f"({', '.join(r.code for r in regions)}), {len(agencies)} agencies, {len(created.keys)} keys."
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
        raise Failure("give --authority PUB.pem (or --pki DIR) to check the snapshot's signature")
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
        f"[bold]Registry {registry.name} version {registry.version}[/] — signature verified; issued "
        f"{registry.issued_at:%Y-%m-%d %H:%M:%SZ}, "
        + (
            f"[red]EXPIRED {registry.expires_at:%Y-%m-%d %H:%M:%SZ}[/]"
            if expired
            else f"expires {registry.expires_at:%Y-%m-%d %H:%M:%SZ}"
        )
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
    out.print(regions)
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
    out.print(agreements)
    out.print(_keys_table("Keys", registry.keys, now))
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
    out.print(_keys_table(f"Expiring within {days:g} days", entries, now))
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
    checks.add_column("check")
    checks.add_column("detail", overflow="fold")
    for check in report.checks:
        mark = Text("✓", style="green") if check.passed else Text("✗", style="red")
        checks.add_row(mark, Text(check.name), Text(check.detail))
    out.print(checks)


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


# gateway --------------------------------------------------------------------------------------
def cmd_gateway_serve(args: argparse.Namespace, out: Console) -> int:
    from gateway.server import Gateway, serve

    if args.config is not None:
        config = GatewayConfig.from_file(args.config)
    elif args.pki is not None and args.region is not None:
        config = GatewayConfig.for_dev_pki(
            args.pki,
            args.region,
            listen=args.listen,
            snapshot_file=args.snapshot,
            follow=args.follow or "",
            passphrase=_passphrase(args),
            bootstrap_ca_file=args.bootstrap_ca,
        )
    else:
        raise Failure(
            "give --config FILE, or --pki DIR with --region CODE (and --snapshot or --follow)"
        )

    def ready(gateway: Gateway) -> None:
        status = gateway.store.status()
        held = f"registry version {status.version}" if status.version else "no registry yet"
        out.print(
            f"Gateway {config.region} listening on port {gateway.port} (mutual TLS), {held}. Ctrl-C stops it."
        )

    asyncio.run(serve(config, ready=ready))
    return 0


# parser ---------------------------------------------------------------------------------------
Handler = Callable[[argparse.Namespace, Console], int]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tongban",
        description="Tongban (通办): a gateway for cross-region government data sharing.",
        epilog="Run `tongban COMMAND --help` for each command. Exit codes: 0 done, 1 refused or failed, 2 bad command line.",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log verbosity (default WARNING)",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

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
    show.add_argument("--json", action="store_true", help="print the verified payload as JSON")
    show.set_defaults(handler=cmd_registry_show)

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
        p.add_argument("--owner", required=True, help="region code (gateway keys) or agency id")
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
    revoke.add_argument("kid", help="the key id (x5t#S256) to revoke")
    revoke.add_argument("--pki", type=Path, required=True, help="PKI folder")
    revoke.add_argument(
        "--reason", required=True, help="why, e.g. keyCompromise, superseded, cessationOfOperation"
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
    expiring.add_argument("--json", action="store_true", help="print JSON")
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
    serve.add_argument("--pki", type=Path, help="dev PKI folder (instead of --config)")
    serve.add_argument(
        "--region", type=lambda s: parse_regions(s)[0], help="region code, with --pki"
    )
    serve.add_argument(
        "--snapshot", type=Path, help="registry snapshot file to load and watch, with --pki"
    )
    serve.add_argument(
        "--follow", metavar="HOST:PORT", help="a peer gateway whose registry to follow, with --pki"
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
        default="127.0.0.1:0",
        help="host:port to listen on, with --pki (default 127.0.0.1:0, a free port)",
    )
    _passphrase_options(serve)
    serve.set_defaults(handler=cmd_gateway_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    out = Console(highlight=False)
    handler: Handler = args.handler
    try:
        return handler(args, out)
    except (Failure, RegistryError, GatewayError, SignerError, OSError) as exc:
        # An OSError here is a folder or file named on the command line that cannot be written.
        message = (
            f"{exc.filename}: {exc.strerror}"
            if isinstance(exc, OSError) and exc.filename and exc.strerror
            else str(exc)
        )
        # soft_wrap: never hard-wrap at the console width (it would cut paths and kids in two).
        Console(stderr=True, highlight=False).print(
            f"tongban: {message}", markup=False, soft_wrap=True
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
