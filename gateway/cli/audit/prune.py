"""`tongban audit prune`: remove records past the retention period (signed, recorded, explicit)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from gateway.cli._arguments import parse_duration, parse_key
from gateway.cli._common import (
    Failure,
    Subparsers,
    passphrase,
    passphrase_options,
    usage,
    utc_now,
)
from gateway.cli.audit._keys import active_audit_key, audit_names, log_name_options, parse_line
from gateway.cli.audit._store import check_log_named, check_store_options, on_store, store_options
from signer import KeyReference, key_reference, open_signing_key

if TYPE_CHECKING:
    from gateway.audit import AuditStore

__all__ = ["register"]


def cmd_audit_prune(args: argparse.Namespace, out: Console) -> int:
    """Retention: remove records older than --older-than, after signing what remains."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gateway.audit import FIELD_GRAMMARS, MIN_RETENTION, AuditLog, is_case_id

    check_store_options(args)
    if args.region is None:
        usage(args, "give --region CODE: the region whose audit log this is")
    if args.older_than < MIN_RETENTION:
        usage(
            args,
            f"--older-than: audit records are kept at least {MIN_RETENTION.days} days (Cybersecurity Law, Art. 21)",
        )
    if not is_case_id(args.reason) or not FIELD_GRAMMARS["caller_operator"](args.operator):
        usage(
            args,
            "--operator, --reason: at most 128 printable characters each, with no citizen id "
            "(the prune's audit record holds them)",
        )
    origin, key_names = audit_names(args)
    key_path: KeyReference = (
        args.audit_key
        if args.audit_key is not None
        else key_reference(active_audit_key(args).located_private_key(), args.pki)
    )
    key = open_signing_key(key_path, passphrase(args))
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise Failure(f"{key_path}: not an Ed25519 key (audit checkpoints are signed with Ed25519)")
    now = utc_now()

    async def work(store: AuditStore) -> str:
        await check_log_named(store, origin, args.region)
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

    out.print(on_store(args, work), soft_wrap=True, markup=False)
    return 0


def _signer_options(audit_prune: argparse.ArgumentParser) -> None:
    """The audit key that signs the checkpoints around the cut, and the log it signs for."""
    signer_key = audit_prune.add_mutually_exclusive_group(required=True)
    signer_key.add_argument(
        "--audit-key",
        type=parse_key,
        metavar="KEY",
        help="the region's audit private key (Ed25519): a PKCS#8 file or a pkcs11: URI",
    )
    signer_key.add_argument(
        "--pki", type=Path, metavar="DIR", help="a dev PKI folder: use --region's active audit key"
    )
    log_name_options(audit_prune, "the log's region (GB/T 2260)")


def register(audit_verbs: Subparsers) -> None:
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
    store_options(audit_prune)
    _signer_options(audit_prune)
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
    passphrase_options(audit_prune)
    audit_prune.set_defaults(handler=cmd_audit_prune, usage_error=audit_prune.error)
