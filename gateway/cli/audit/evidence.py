"""`tongban audit evidence` and `tongban audit check-evidence`: put together the evidence bundle
of one request's audit record (gateway/evidence.py, docs/audit.md "The evidence bundle"), and
check one offline with only the registry snapshot (and the TSA anchors)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from gateway.cli._arguments import parse_region
from gateway.cli._common import Failure, Subparsers, print_error, read_input, utc_now
from gateway.cli.audit._stamps import tsa_anchors
from gateway.cli.audit._store import (
    check_log_named,
    check_store_options,
    on_store,
    parse_index,
    store_options,
)
from gateway.cli.audit.show_request import pseudonym_key_options

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gateway.audit import AuditStore, Checkpoint
    from gateway.evidence import BundleParts
    from registry import Registry

__all__ = ["register"]

ROWS_PER_READ = 1000
_STYLES = {"PASS": "green", "FAIL": "bold red", "UNCHECKED": "yellow"}


def _parse_request_id(text: str) -> str:
    from gateway.audit import is_request_id

    if not is_request_id(text):
        raise argparse.ArgumentTypeError(
            "a request id is 1 to 128 printable ASCII characters without spaces"
        )
    return text


def _snapshot(args: argparse.Namespace) -> tuple[Registry, str]:
    """The verified registry of --snapshot, and the snapshot's text (its payload is hashed)."""
    from gateway.cli.credentials import _registry
    from registry import RegistryError

    try:
        registry = _registry(args)
    except RegistryError as exc:
        raise Failure(f"{args.snapshot}: {exc}") from exc
    assert registry is not None
    text = read_input(args.snapshot, "the registry snapshot").decode("ascii", "replace")
    return registry, text


async def _find(store: AuditStore, request_id: str, index: int | None) -> tuple[int, bytes]:
    """The index and canonical bytes of the record of `request_id` (the one at `index` when
    several records carry it)."""
    from gateway.audit import AuditRecord

    marker = await store.pruned()
    start, end = (marker.before if marker else 0), (await store.head()).size
    found: list[tuple[int, bytes]] = []
    for first in range(start, end, ROWS_PER_READ):
        for offset, row in enumerate(await store.rows(first, min(first + ROWS_PER_READ, end))):
            try:
                record = AuditRecord.from_canonical(row.canonical)
            except (ValueError, KeyError, TypeError):
                continue  # not a record: `tongban audit verify` says so
            if record.request_id == request_id and (index is None or first + offset == index):
                found.append((first + offset, row.canonical))
    if not found:
        where = f" at index {index}" if index is not None else ""
        raise Failure(f"no record of request {request_id}{where} in this log")
    if len(found) > 1:
        indexes = ", ".join(str(i) for i, _ in found[:20])
        raise Failure(
            f"{len(found)} records carry request {request_id} (indexes {indexes}): give --index"
        )
    return found[0]


def _signed(
    note: str, keys: list[Ed25519PublicKey], region: str
) -> tuple[Checkpoint, Ed25519PublicKey] | None:
    """The checkpoint of `note` and the key if one of the region's audit keys signed it."""
    from gateway.audit import CheckpointError, verify_checkpoint
    from gateway.witnessing import log_origin

    origin = log_origin(region)
    for key in keys:
        for name in (origin, f"audit-{region}"):
            try:
                return verify_checkpoint(note, key, name, origin=origin), key
            except CheckpointError:
                continue
    return None


async def _checkpoint_for(
    store: AuditStore, registry: Registry, region: str, index: int
) -> tuple[Checkpoint, list[str], Ed25519PublicKey]:
    """The checkpoint to prove record `index` against: of those covering it and signed by the
    region's audit key, the smallest that is witnessed enough, time-stamped if one is."""
    from gateway.audit import witness_store_for
    from gateway.witnessing import audit_keys, cosignature_report

    now = utc_now()
    keys = audit_keys(registry, region, now)
    ranked: list[tuple[tuple[bool, bool, int], Checkpoint, list[str], Ed25519PublicKey]] = []
    for stored in await store.checkpoints():
        signed = _signed(stored.note, keys, region) if stored.size > index else None
        if signed is None:
            continue
        lines = await witness_store_for(store).cosignatures(stored.size, stored.root)
        report = cosignature_report(stored.body, lines, registry, region, now)
        kept = [line for line in lines if line.rstrip("\n").split(" ")[1] in report.witnesses]
        rank = (not report.enough, stored.time_stamp is None, stored.size)
        checkpoint = replace(signed[0], time_stamp=stored.time_stamp)
        ranked.append((rank, checkpoint, kept, signed[1]))
    if not ranked:
        raise Failure(
            f"no checkpoint signed by region {region}'s audit key covers record {index} yet "
            "(the gateway signs one every so many records or seconds)"
        )
    _, checkpoint, kept, key = min(ranked, key=lambda item: item[0])
    return checkpoint, kept, key


def cmd_audit_evidence(args: argparse.Namespace, out: Console) -> int:
    from gateway.audit import AuditLog
    from gateway.evidence import BundleParts, make_bundle, registry_part
    from gateway.witnessing import log_origin

    check_store_options(args)
    registry, snapshot_text = _snapshot(args)
    if registry.region(args.region) is None:
        raise Failure(f"region {args.region} is not in registry version {registry.version}")

    async def work(store: AuditStore) -> BundleParts:
        await check_log_named(store, log_origin(args.region), args.region)
        index, canonical = await _find(store, args.request_id, args.index)
        checkpoint, lines, key = await _checkpoint_for(store, registry, args.region, index)
        log = AuditLog(
            store, origin=checkpoint.origin, key_name=checkpoint.key_name, public_key=key
        )
        hashes, size, root, _ = await log.inclusion_proof(index, checkpoint.size)
        if root != checkpoint.root:
            raise Failure("the records do not give the signed root: run `tongban audit verify`")
        return BundleParts(canonical, index, size, hashes, checkpoint, lines, None)

    parts = on_store(args, work)
    if len(parts.cosignature_lines) < registry.witness_threshold:
        print_error(
            f"warning: no checkpoint covering record {parts.index} holds the registry's "
            f"witness_threshold of {registry.witness_threshold} valid cosignature(s) yet (the "
            f"one used has {len(parts.cosignature_lines)}): check-evidence fails its cosignatures"
        )
    data = make_bundle(parts, registry_part(registry, snapshot_text, args.region))
    _write(args.out, data)
    out.print(
        f"Evidence of record {parts.index} (request {args.request_id}) written to {args.out}: "
        f"checkpoint size {parts.tree_size}, {len(parts.cosignature_lines)} cosignature(s), "
        f"{1 if parts.checkpoint.time_stamp else 0} time-stamp(s).",
        soft_wrap=True,
        markup=False,
    )
    return 0


def _write(path: Path, data: bytes) -> None:
    """Write the bundle whole or not at all."""
    from gateway.cli._common import save_text

    try:
        save_text(path, data.decode("utf-8"))
    except OSError as exc:
        raise Failure(f"{path}: the bundle cannot be written ({exc.strerror})") from exc


def cmd_audit_check_evidence(args: argparse.Namespace, out: Console) -> int:
    from gateway.cli.audit.show_request import read_pseudonym_key
    from gateway.evidence import MAX_BUNDLE_BYTES, check_bundle

    try:  # what cannot be used to check anything: exit code 2, not a verdict on the bundle
        registry, snapshot_text = _snapshot(args)
        anchors = tsa_anchors(args.tsa_ca or [])
        key = read_pseudonym_key(args)
        data = read_input(args.file, "the evidence bundle", limit=MAX_BUNDLE_BYTES)
    except Failure as exc:
        print_error(str(exc))
        return 2
    results = check_bundle(data, registry, snapshot_text, anchors, now=utc_now(), pseudonym_key=key)
    for result in results:
        line = Text(f"{result.status:<9} {result.part:<17}", style=_STYLES[result.status])
        line.append(f" {result.detail}")
        out.print(line, soft_wrap=True)
    failed = [r.part for r in results if r.status != "PASS"]
    if failed:
        print_error(f"the evidence does not hold: {', '.join(failed)}")
        return 1
    return 0


def _trust_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--snapshot",
        type=Path,
        required=True,
        metavar="JWS",
        help="the registry snapshot (current.jws): the audit and witness keys come from it",
    )
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument(
        "--authority",
        type=Path,
        metavar="ROOT",
        help="the registry's trusted root (root.json, or one authority key's PEM)",
    )
    trust.add_argument("--pki", type=Path, metavar="DIR", help="a dev PKI folder: its trusted root")


def register(audit_verbs: Subparsers) -> None:
    evidence = audit_verbs.add_parser(
        "evidence",
        help="write the evidence bundle of one request's audit record",
        description="Put together, in one file (tongban.evidence/v1, canonical JSON), the audit "
        "record of a request, its inclusion proof, the signed checkpoint it is proved against "
        "(the smallest covering it that is witnessed, time-stamped if one is), the witnesses' "
        "cosignatures, the checkpoint's time-stamps, the digest of the sealed answer and the "
        "registry snapshot it is checked with. Check it with `tongban audit check-evidence`.",
        epilog="Example: tongban audit evidence --sqlite audit-510000.db --region 510000 "
        "--snapshot current.jws --authority root.json --request-id r-42 --out r-42.evidence.json",
    )
    store_options(evidence)
    evidence.add_argument(
        "--region", type=parse_region, required=True, metavar="CODE", help="the log's region"
    )
    _trust_options(evidence)
    evidence.add_argument(
        "--request-id", type=_parse_request_id, required=True, metavar="ID",
        help="the request whose record to prove",
    )  # fmt: skip
    evidence.add_argument(
        "--index", type=parse_index, metavar="I",
        help="the record's index, when several records carry the request id",
    )  # fmt: skip
    evidence.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="where to write the bundle"
    )
    evidence.set_defaults(handler=cmd_audit_evidence, usage_error=evidence.error)

    check = audit_verbs.add_parser(
        "check-evidence",
        help="check an evidence bundle offline",
        description="Check every part of an evidence bundle with only the registry snapshot "
        "(and the TSA anchors): the record's leaf hash, its inclusion proof to the checkpoint's "
        "root, the checkpoint's signature by the region's audit key, the cosignatures against "
        "the registry's witnesses and witness_threshold, the time-stamps, the answer digest, "
        "and, with the pseudonym key, the signed request a Peer.Forward record keeps sealed. "
        "One line per part, PASS, FAIL with the reason, or UNCHECKED (time-stamps without "
        "--tsa-ca, a kept request without the pseudonym key). Exit code 0 all pass, 1 any fails "
        "or is unchecked, 2 the snapshot, the anchors, the key or the file cannot be used.",
        epilog="Example: tongban audit check-evidence r-42.evidence.json --snapshot current.jws "
        "--authority root.json --tsa-ca tsa-root.pem --pseudonym-key-file audit-pseudonym.key",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="the evidence bundle")
    _trust_options(check)
    check.add_argument(
        "--tsa-ca", type=Path, action="append", metavar="PEM",
        help="TSA trust anchors (PEM roots) for the checkpoint's time-stamps",
    )  # fmt: skip
    pseudonym_key_options(
        check, required=False, why="to open and verify the signed request a record keeps sealed"
    )
    check.set_defaults(handler=cmd_audit_check_evidence, usage_error=check.error)
