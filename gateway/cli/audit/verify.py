"""`tongban audit verify`: check every record against the signed checkpoints, the RFC 3161
time-stamps stored beside them (`[timestamp]`) against the TSA anchors of `--tsa-ca`, and (with
the registry, `--snapshot`) that a checkpoint holds the cosignatures the registry requires."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from gateway.cli._common import (
    Failure,
    Subparsers,
    print_error,
    read_input,
    save_text,
    usage,
    utc_now,
)
from gateway.cli.audit._keys import audit_names, audit_public_key, b64, key_options, verify_note
from gateway.cli.audit._stamps import (
    StampCheck,
    check_stamps,
    print_stamps,
    stamps_json,
    tsa_anchors,
)
from gateway.cli.audit._store import check_log_named, check_store_options, on_store, store_options

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gateway.audit import AuditStore, Checkpoint, Verification
    from gateway.witnessing import Witnessed
    from registry import Registry

__all__ = ["register"]

MAX_CHECKPOINT_BYTES = 64 * 1024


def _read_trusted_checkpoint(
    path: Path, public_key: Ed25519PublicKey, key_names: tuple[str, ...], origin: str
) -> Checkpoint:
    from gateway.audit import CheckpointError

    data = read_input(path, "the checkpoint", limit=MAX_CHECKPOINT_BYTES)
    try:
        return verify_note(data.decode("utf-8"), public_key, key_names, origin)
    except UnicodeDecodeError as exc:
        raise Failure(f"{path}: not a checkpoint (not UTF-8 text)") from exc
    except CheckpointError as exc:
        raise Failure(f"{path}: {exc}") from exc


def _witness_registry(args: argparse.Namespace) -> Registry | None:
    """The verified registry of --snapshot (None without it): whose witnesses count, how many."""
    from gateway.cli.credentials import _registry
    from registry import RegistryError

    if args.snapshot is None:
        if args.authority is not None:
            usage(args, "--authority checks a registry snapshot: give --snapshot too")
        return None
    if args.authority is None and args.pki is None:
        usage(args, "--snapshot needs --authority or --pki, to check the snapshot's signature")
    if args.region is None:
        usage(args, "--snapshot needs --region: the region whose log the witnesses cosign")
    try:
        return _registry(args)
    except RegistryError as exc:
        raise Failure(f"{args.snapshot}: {exc}") from exc


def cmd_audit_verify(args: argparse.Namespace, out: Console) -> int:
    from gateway.audit import AuditLog, witness_store_for
    from gateway.witnessing import witnessed

    check_store_options(args)
    origin, key_names = audit_names(args)
    registry = _witness_registry(args)
    public_key = audit_public_key(args)
    anchors = tsa_anchors(args.tsa_ca or [])
    trusted = (
        _read_trusted_checkpoint(args.checkpoint, public_key, key_names, origin)
        if args.checkpoint is not None
        else None
    )

    async def work(store: AuditStore) -> tuple[Verification, Witnessed | None, StampCheck]:
        await check_log_named(store, origin, args.region)
        log = AuditLog(
            store,
            origin=origin,
            key_name=key_names[0],
            former_key_names=key_names[1:],
            public_key=public_key,
        )
        result = await log.verify(trusted)
        checkpoints = await store.checkpoints()
        stamps = check_stamps(checkpoints, anchors)
        if registry is None:
            return result, None, stamps
        seen = await witnessed(
            checkpoints, witness_store_for(store), registry, args.region, utc_now()
        )
        return result, seen, stamps

    result, seen, stamps = on_store(args, work)
    witnessed_ok = _report_witnessing(out, registry, seen, args.json) if result.intact else True
    if args.json:
        _print_json(result, stamps, registry, seen)
    elif result.intact:
        _print_intact(out, result, args.checkpoint, trusted)
        print_stamps(out, stamps)
    else:
        where = f" at record {result.first_bad_index}" if result.first_bad_index >= 0 else ""
        headline = Text(f"BROKEN{where}", style="bold red")
        headline.append(f" — {result.problem}", style="red")
        out.print(headline, soft_wrap=True)
    if args.save_checkpoint is not None:
        _save_checkpoint(args, out, result)
    return 0 if result.intact and witnessed_ok and not stamps.problems else 1


def _report_witnessing(
    out: Console, registry: Registry | None, seen: Witnessed | None, quiet: bool
) -> bool:
    """Print whether a checkpoint holds the cosignatures the registry requires; False if not."""
    if registry is None or seen is None:
        return True
    need = registry.witness_threshold
    latest = seen.latest.witnesses if seen.latest else ()
    if seen.checkpoint is not None and seen.report is not None:
        line = Text("WITNESSED", style="bold green")
        line.append(
            f" — checkpoint size {seen.checkpoint.size} cosigned by "
            f"{', '.join(seen.report.witnesses) or 'no witness'} ({need} required)",
            style="green",
        )
        ok = True
    elif need == 0:
        line = Text("WITNESSING NOT REQUIRED", style="yellow")
        line.append(" — the registry's witness_threshold is 0", style="yellow")
        ok = True
    else:
        line = Text("NOT WITNESSED", style="bold red")
        line.append(
            f" — no checkpoint holds {need} valid cosignature(s) from the registry's witnesses "
            f"(the latest has {len(latest)}): it is not accepted",
            style="red",
        )
        ok = False
    if not quiet:
        out.print(line, soft_wrap=True)
    return ok


def _print_json(
    result: Verification,
    stamps: StampCheck,
    registry: Registry | None = None,
    seen: Witnessed | None = None,
) -> None:
    latest = result.latest
    document = {
        "intact": result.intact,
        "records_checked": result.records_checked,
        "checkpoints_checked": result.checkpoints_checked,
        "first_bad_index": result.first_bad_index,
        "problem": result.problem,
        "latest_checkpoint": (
            {"size": latest.size, "root": b64(latest.root), "note": latest.note}
            if latest is not None
            else None
        ),
        "time_stamps": stamps_json(stamps),
    }
    if registry is not None and seen is not None:
        document["witnessing"] = {
            "threshold": registry.witness_threshold,
            "latest_cosigners": list(seen.latest.witnesses) if seen.latest else [],
            "witnessed": seen.checkpoint is not None or registry.witness_threshold == 0,
            "witnessed_checkpoint": (
                {"size": seen.checkpoint.size, "note": seen.cosigned_note}
                if seen.checkpoint is not None
                else None
            ),
        }
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")


def _print_intact(
    out: Console, result: Verification, kept: Path | None, trusted: Checkpoint | None
) -> None:
    latest = result.latest
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
            Text(f"The kept checkpoint {kept} (size {trusted.size}) agrees with the log."),
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


def _save_checkpoint(args: argparse.Namespace, out: Console, result: Verification) -> None:
    """The largest verified checkpoint: the latest stored one, or the kept one if it is larger
    (stored checkpoints were lost), so a saved checkpoint never moves backwards."""
    latest = result.latest
    if not result.intact:
        print_error(f"the log is broken: no checkpoint saved to {args.save_checkpoint}")
    elif latest is None:  # the log is intact (exit 0, as printed); only nothing to keep yet
        print_error(
            f"warning: no checkpoint has been signed yet: nothing saved to {args.save_checkpoint}"
        )
    else:
        save_text(args.save_checkpoint, latest.note)
        (Console(stderr=True, highlight=False) if args.json else out).print(
            Text(
                f"Checkpoint of size {latest.size} saved to {args.save_checkpoint}: give it "
                "as --checkpoint next time."
            ),
            soft_wrap=True,
        )


def register(audit_verbs: Subparsers) -> None:
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
    store_options(audit_verify)
    key_options(audit_verify)
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
        "--snapshot",
        type=Path,
        metavar="JWS",
        help="the registry snapshot (with --authority or --pki): check that a checkpoint holds "
        "the registry's witness_threshold of valid cosignatures by other regions' witnesses",
    )
    audit_verify.add_argument(
        "--authority",
        type=Path,
        metavar="PUB",
        help="the registry authority public key (PEM), to check --snapshot's signature",
    )
    audit_verify.add_argument(
        "--tsa-ca",
        type=Path,
        action="append",
        metavar="PEM",
        help="TSA trust anchors (PEM roots): check the checkpoints' RFC 3161 time-stamps with "
        "them (any that proves nothing: exit 1); without, their times are shown unchecked",
    )
    audit_verify.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object: intact, records_checked, "
        "checkpoints_checked, first_bad_index, problem, latest_checkpoint (size, root, note)",
    )
    audit_verify.set_defaults(handler=cmd_audit_verify, usage_error=audit_verify.error)
