"""`tongban registry`: build, publish and show the signed, versioned trust registry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gateway._tables import whole
from gateway.cli._arguments import parse_duration, parse_key
from gateway.cli._common import (
    Failure,
    Parser,
    Subparsers,
    passphrase,
    passphrase_options,
    source_option,
    usage,
    utc_now,
)
from gateway.cli._registry_import import register_import
from gateway.cli._registry_root import register_ceremony, trusted_root_of
from gateway.cli.keys import keys_table
from registry import (
    CURRENT_SNAPSHOT,
    Registry,
    SnapshotVerifier,
    build_registry,
    load_source,
    publish,
    registry_to_payload,
)
from signer import canonical_json

__all__ = ["register"]


def cmd_registry_build(args: argparse.Namespace, out: Console) -> int:
    source = load_source(args.source)
    registry = build_registry(source, args.pki, issued_at=utc_now())
    data = canonical_json(registry_to_payload(registry))
    if args.out is None:
        sys.stdout.write(data.decode() + "\n")
        return 0
    args.out.write_bytes(data + b"\n")
    out.print(
        f"Draft registry written to {args.out} ({len(data)} bytes): {len(registry.regions)} regions, "
        f"{len(registry.agencies)} agencies, {len(registry.datasets)} datasets, {len(registry.purposes)} "
        f"purposes, {len(registry.agreements)} agreements, {len(registry.matters)} matters, "
        f"{len(registry.keys)} keys. Not signed: "
        "`tongban registry publish` signs it."
    )
    return 0


def cmd_registry_publish(args: argparse.Namespace, out: Console) -> int:
    lifetime = int(args.lifetime.total_seconds()) if args.lifetime else None
    result = publish(
        args.source,
        args.pki,
        args.out,
        now=utc_now(),
        passphrase=passphrase(args),
        lifetime_seconds=lifetime,
        authority_keys=[] if args.unsigned else (args.authority_key or None),
        trusted_root=args.root,
    )
    registry, tally = result.registry, result.tally
    if result.installed:
        out.print(
            f"[bold]Published registry version {registry.version}[/] to {result.path} "
            f"(and {args.out / CURRENT_SNAPSHOT}); expires {registry.expires_at:%Y-%m-%d %H:%M:%SZ}; "
            f"signed by {len(tally.valid)} of {tally.keys} authority keys ({tally.threshold} needed)."
        )
    else:
        out.print(
            f"[bold]Prepared registry version {registry.version}[/] in {result.path}: "
            f"{len(tally.valid)} of {tally.threshold} needed signatures. Each other holder adds "
            f"theirs with `tongban registry sign {result.path} --key KEY --pki DIR`; the "
            "snapshot becomes current.jws when the threshold is met."
        )
    for change in result.changes:
        out.print(f"  key {change}")
    return 0


def _read_snapshot(args: argparse.Namespace) -> tuple[Registry, str]:
    if args.authority is None and args.pki is None:
        usage(args, "give --authority root.json (or --pki DIR) to check the snapshot's signatures")
    args.root = args.authority
    verifier = SnapshotVerifier(trusted_root_of(args))
    try:
        data = args.snapshot.read_bytes()
    except OSError as exc:
        raise Failure(f"{args.snapshot}: cannot be read ({exc.strerror})") from exc
    snapshot = verifier.verify(data, held_version=None, now=None)
    root, tally = verifier.tally(data)
    signed = (
        f"signature verified;\nsigned by {len(tally.valid)} of {len(root.keys)} authority keys "
        f"({root.threshold} needed, root version {root.version});"
    )
    return snapshot.registry, signed


def cmd_registry_show(args: argparse.Namespace, out: Console) -> int:
    registry, signed = _read_snapshot(args)
    now = utc_now()
    if args.json:
        sys.stdout.write(
            json.dumps(registry_to_payload(registry), ensure_ascii=False, indent=2) + "\n"
        )
        return 0
    expired = now >= registry.expires_at
    out.print(
        f"[bold]Registry {registry.name} version {registry.version}[/] — {signed}\n"
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
    out.print(whole(_matters_table(registry)))
    out.print(whole(keys_table("Keys", registry.keys, now)))
    return 0


def _matters_table(registry: Registry) -> Table:
    """The matter catalogue: each matter's parts in the order they complete, its time limit."""
    matters = Table(title=f"Matters ({len(registry.matters)})", title_justify="left")
    for column in ("code", "name", "parts", "days"):
        matters.add_column(column, overflow="fold")
    for m in registry.matters:
        parts = " → ".join(f"{p.region} {p.role.value}" for p in m.parts)
        matters.add_row(m.code, m.name, parts, str(m.time_limit_days))
    return matters


def _register_build(reg_verbs: Subparsers) -> None:
    build = reg_verbs.add_parser(
        "build",
        help="validate the source and write the unsigned draft",
        description="Validate the registry source and combine it with the PKI's certificates into the canonical (unsigned) registry JSON, for review.",
    )
    source_option(build)
    build.add_argument("--pki", type=Path, required=True, help="PKI folder (CAs and key inventory)")
    build.add_argument("--out", type=Path, help="write the draft here instead of standard output")
    build.set_defaults(handler=cmd_registry_build)


def _register_publish(reg_verbs: Subparsers) -> None:
    pub = reg_verbs.add_parser(
        "publish",
        help="sign the next registry version",
        description="Build the registry, apply the key lifecycle moves (pending keys published before "
        "become active, the keys they replace retire), sign it with the registry authority key and "
        "write registry-<version>.jws and current.jws. Versions only grow.",
    )
    source_option(pub)
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
    pub.add_argument(
        "--root",
        type=Path,
        metavar="FILE",
        help="the trusted root the snapshot must satisfy, with the later roots beside it "
        "(root-<N>.json), or one authority key's PEM (default: the PKI folder's "
        "authority/root.json)",
    )
    keys = pub.add_mutually_exclusive_group()
    keys.add_argument(
        "--authority-key",
        type=parse_key,
        action="append",
        metavar="KEY",
        help="an authority key to sign with, repeatable: a key file or a pkcs11: URI of a key in "
        "a cryptographic module (default: every key file in the PKI folder's authority/)",
    )
    keys.add_argument(
        "--unsigned",
        action="store_true",
        help="sign with no key: prepare the snapshot for a signing ceremony (`registry sign`)",
    )
    passphrase_options(pub)
    pub.set_defaults(handler=cmd_registry_publish)


def _register_show(reg_verbs: Subparsers) -> None:
    show = reg_verbs.add_parser(
        "show",
        help="verify a snapshot and print a summary",
        description="Verify a published snapshot's signature and print its regions, agreements and keys with their state and days to expiry.",
    )
    show.add_argument("snapshot", type=Path, help="a .jws snapshot, e.g. out/published/current.jws")
    trust = show.add_mutually_exclusive_group()
    trust.add_argument(
        "--authority", type=Path, help="the trusted root (root.json), or one authority key's PEM"
    )
    trust.add_argument("--pki", type=Path, help="a PKI folder, to use its authority/root.json")
    show.add_argument(
        "--json",
        action="store_true",
        help="print the verified payload as one JSON document (the registry's own field names: "
        "format, name, version, issued_at, expires_at, refresh_seconds, regions, agencies, datasets, "
        "purposes, agreements, keys)",
    )
    show.set_defaults(handler=cmd_registry_show, usage_error=show.error)


def register(commands: Subparsers) -> None:
    reg = commands.add_parser(
        "registry",
        help="build, publish and show the signed registry",
        description="The signed, versioned trust registry.",
    )
    reg_verbs = reg.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    _register_build(reg_verbs)
    _register_publish(reg_verbs)
    _register_show(reg_verbs)
    register_import(reg_verbs)
    register_ceremony(reg_verbs)
