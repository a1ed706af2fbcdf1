"""`tongban keys`: the key lifecycle for security teams (generate, rotate, revoke, expiring)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gateway._tables import whole
from gateway.cli._arguments import parse_duration, parse_name, parse_time, whole_number
from gateway.cli._common import (
    Failure,
    Handler,
    Parser,
    Subparsers,
    passphrase,
    passphrase_options,
    source_option,
    utc_now,
)
from registry import (
    PROVINCES,
    Inventory,
    KeyEntry,
    KeyState,
    KeyUsage,
    add_key,
    key_to_rotate,
    load_source,
)

__all__ = ["keys_table", "register"]

ALGORITHMS = ("ES256", "EdDSA", "PS256", "SM2")


def parse_algorithm(text: str) -> str:
    """An algorithm name as `--algorithm` takes it; SM2 in either case (``sm2`` is how GM/T
    documents and OpenSSL spell it)."""
    return "SM2" if text.upper() == "SM2" else text


MAX_VALIDITY_DAYS = 3650  # days: no leaf certificate outlives its intermediate (5 years) anyway


def parse_validity_days(text: str) -> int:
    return whole_number(text, "validity is a whole number of days", 1, MAX_VALIDITY_DAYS)


def keys_table(title: str, keys: Sequence[KeyEntry], now: datetime) -> Table:
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


def cmd_keys_generate(args: argparse.Namespace, out: Console) -> int:
    inventory = Inventory.load(args.pki)
    active = inventory.find(args.owner, KeyUsage(args.usage), KeyState.ACTIVE)
    if active:
        raise Failure(
            f"{args.owner} already has an active {args.usage} key ({active[-1].kid}): "
            "use `tongban keys rotate` so that the old key retires without breaking verification"
        )
    record = add_key(
        args.pki,
        inventory,
        region=_owner_region(args, inventory),
        owner=args.owner,
        usage=KeyUsage(args.usage),
        state=KeyState.ACTIVE,
        now=utc_now(),
        algorithm=args.algorithm or "ES256",
        passphrase=passphrase(args),
        validity_days=args.validity_days,
    )
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
    current = key_to_rotate(inventory, args.owner, usage)
    record = add_key(
        args.pki,
        inventory,
        region=current.region,
        owner=args.owner,
        usage=usage,
        state=KeyState.PENDING,
        now=utc_now(),
        algorithm=args.algorithm or current.algorithm,
        passphrase=passphrase(args),
        validity_days=args.validity_days,
    )
    out.print(
        f"New {record.usage} key {record.kid} for {record.owner} ({record.algorithm}), pending."
    )
    out.print(
        "Next: `tongban registry publish` publishes it as pending (every gateway learns it); the "
        f"publish after that makes it active and retires {current.kid}."
    )
    return 0


def cmd_keys_revoke(args: argparse.Namespace, out: Console) -> int:
    inventory = Inventory.load(args.pki)
    at = args.at or utc_now()
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
    now = utc_now()
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
    out.print(whole(keys_table(f"Expiring within {days:g} days", entries, now)))
    return 0


def _register_issue(key_verbs: Subparsers, verb: str, handler: Handler, text: str) -> None:
    """`keys generate` and `keys rotate`: the same options, a different lifecycle step."""
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
        "--alg",
        type=parse_algorithm,
        choices=ALGORITHMS,
        help="signature algorithm (default: ES256 for a first key, the current key's for a "
        "rotation; TLS keys are always ES256; SM2 is for a region's seal keys and comes with "
        "the region's SESeal)",
    )
    p.add_argument(
        "--validity-days",
        type=parse_validity_days,
        help=f"certificate lifetime in days, 1 to {MAX_VALIDITY_DAYS} (default 365)",
    )
    source_option(p, "registry source, to find an agency's region")
    passphrase_options(p)
    p.set_defaults(handler=handler)


def _register_revoke(key_verbs: Subparsers) -> None:
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


def _register_expiring(key_verbs: Subparsers) -> None:
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


def register(commands: Subparsers) -> None:
    keys = commands.add_parser(
        "keys",
        help="key lifecycle for security teams",
        description="Generate, rotate, revoke and watch the expiry of keys and certificates.",
    )
    key_verbs = keys.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    _register_issue(
        key_verbs,
        "generate",
        cmd_keys_generate,
        "issue a first key for an owner and usage (active at once)",
    )
    _register_issue(
        key_verbs,
        "rotate",
        cmd_keys_rotate,
        "issue a successor key (pending; active one publish later)",
    )
    _register_revoke(key_verbs)
    _register_expiring(key_verbs)
