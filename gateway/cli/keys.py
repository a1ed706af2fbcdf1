"""`tongban keys`: the key lifecycle for security teams (generate, rotate, revoke, expiring)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway._tables import whole
from gateway.cli._arguments import (
    parse_duration,
    parse_name,
    parse_pkcs11_key_uri,
    parse_time,
    whole_number,
)
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
    ModuleKey,
    add_key,
    key_to_rotate,
    load_source,
)
from signer import Pkcs11Uri, generate_pkcs11_key, open_pkcs11_key

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


def _module_key(args: argparse.Namespace, algorithm: str) -> ModuleKey | None:
    """With --pkcs11: a key pair of `algorithm` generated in the token the URI names (it never
    leaves it)."""
    uri: Pkcs11Uri | None = args.pkcs11
    if uri is None:
        return None
    if args.usage == KeyUsage.TLS.value:
        raise Failure("TLS keys stay in files (gRPC's TLS reads its key from PEM): drop --pkcs11")
    if algorithm == "SM2":
        raise Failure(
            "no SM2 mechanism is configured for PKCS#11 modules (SoftHSM2 has none): an SM2 key "
            "in a module needs a vendor mechanism or a GM/T 0018 provider (docs/security.md); "
            "drop --pkcs11 to keep the SM2 key in a file"
        )
    named = generate_pkcs11_key(uri, algorithm)
    return ModuleKey(open_pkcs11_key(named).public_key, str(named))


def cmd_keys_generate(args: argparse.Namespace, out: Console) -> int:
    inventory = Inventory.load(args.pki)
    active = inventory.find(args.owner, KeyUsage(args.usage), KeyState.ACTIVE)
    if active:
        raise Failure(
            f"{args.owner} already has an active {args.usage} key ({active[-1].kid}): "
            "use `tongban keys rotate` so that the old key retires without breaking verification"
        )
    region = _owner_region(args, inventory)
    algorithm = args.algorithm or "ES256"
    module_key = _module_key(args, algorithm)
    record = add_key(
        args.pki,
        inventory,
        region=region,
        owner=args.owner,
        usage=KeyUsage(args.usage),
        state=KeyState.ACTIVE,
        now=utc_now(),
        algorithm=algorithm,
        passphrase=passphrase(args),
        validity_days=args.validity_days,
        module_key=module_key,
    )
    out.print(
        f"Generated {record.usage} key {record.kid} for {record.owner} ({record.algorithm}), active."
    )
    out.print(f"  certificate {args.pki / record.certificate}")
    if module_key is None:
        out.print(f"  private key {args.pki / record.private_key} (0600)")
    else:
        out.print(f"  private key in the module (never exported): {escape(record.private_key)}")
    out.print("Publish the registry so that every gateway learns it.")
    return 0


def cmd_keys_rotate(args: argparse.Namespace, out: Console) -> int:
    inventory = Inventory.load(args.pki)
    usage = KeyUsage(args.usage)
    current = key_to_rotate(inventory, args.owner, usage)
    algorithm = args.algorithm or current.algorithm
    module_key = _module_key(args, algorithm)
    record = add_key(
        args.pki,
        inventory,
        region=current.region,
        owner=args.owner,
        usage=usage,
        state=KeyState.PENDING,
        now=utc_now(),
        algorithm=algorithm,
        passphrase=passphrase(args),
        validity_days=args.validity_days,
        module_key=module_key,
    )
    out.print(
        f"New {record.usage} key {record.kid} for {record.owner} ({record.algorithm}), pending."
    )
    if module_key is not None:
        out.print(f"  private key in the module (never exported): {escape(record.private_key)}")
    out.print(
        "Next: `tongban registry publish` publishes it as pending (every gateway learns it); the "
        f"publish after that makes it active and retires {current.kid}."
    )
    return 0


def cmd_keys_authority(args: argparse.Namespace, out: Console) -> int:
    if args.out.exists():
        raise Failure(f"{args.out} already exists; refusing to overwrite a public key")
    named = generate_pkcs11_key(args.pkcs11, args.algorithm)
    public = open_pkcs11_key(named).public_key
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    args.out.write_bytes(pem)
    out.print(
        f"Generated a registry authority key ({args.algorithm}) in the module: {escape(str(named))}"
    )
    out.print(
        f"  public key {args.out}: add it to the trusted root "
        f"(`tongban registry rotate-root --add-key {args.out}=HOLDER`)"
    )
    out.print(
        "Sign with `--key URI` (registry sign, sign-root) or `registry publish --authority-key URI`."
    )
    return 0


def _register_authority(key_verbs: Subparsers) -> None:
    text = "generate a registry authority key in a cryptographic module"
    p = key_verbs.add_parser(
        "authority",
        help=text,
        description="Generate the registry authority key pair inside a cryptographic module "
        "(PKCS#11) and write its public key; the private key never leaves the module.",
    )
    p.add_argument(
        "--pkcs11",
        type=parse_pkcs11_key_uri,
        required=True,
        metavar="URI",
        help="PKCS#11 URI (RFC 7512): token, object (a new label), module-path, and "
        "pin-source=file:... or x-pin-env=VARIABLE",
    )
    p.add_argument(
        "--algorithm",
        default="EdDSA",
        choices=("EdDSA", "ES256"),
        help="EdDSA (Ed25519, the default) or ES256 (P-256)",
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the public key (PEM)")
    p.set_defaults(handler=cmd_keys_authority)


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
    p.add_argument(
        "--pkcs11",
        type=parse_pkcs11_key_uri,
        metavar="URI",
        help="generate the key pair in a cryptographic module instead of a file: a PKCS#11 URI "
        "(RFC 7512) with token, object (a new label), module-path and pin-source=file:... or "
        "x-pin-env=VARIABLE; the private key never leaves the module",
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
    _register_authority(key_verbs)
    _register_revoke(key_verbs)
    _register_expiring(key_verbs)
