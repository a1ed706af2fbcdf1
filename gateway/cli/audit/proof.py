"""`tongban audit proof`: prove a record's inclusion or the log's consistency (RFC 6962)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

from gateway.cli._common import Failure, Subparsers, usage
from gateway.cli.audit._keys import audit_names, audit_public_key, b64, key_options, verify_note
from gateway.cli.audit._store import (
    check_log_named,
    check_store_options,
    on_store,
    parse_index,
    parse_size,
    store_options,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gateway.audit import AuditLog, AuditStore

__all__ = ["register"]


@dataclass(frozen=True)
class _Prover:
    """The proof the command line asks for, of the log `origin` whose checkpoints the audit key
    signs under one of `key_names`."""

    args: argparse.Namespace
    origin: str
    key_names: tuple[str, ...]
    public_key: Ed25519PublicKey

    async def latest_signed(self, log: AuditLog) -> int:
        """The size of the latest checkpoint signed by this log's key (the default tree size,
        as GetProof's 0)."""
        from gateway.audit import CheckpointError

        sizes = []
        for stored in await log.store.checkpoints():
            try:
                sizes.append(
                    verify_note(stored.note, self.public_key, self.key_names, self.origin).size
                )
            except CheckpointError:
                continue
        if not sizes:
            raise Failure("no checkpoint of this log is signed yet: give the tree size")
        return max(sizes)

    async def signed_at(self, store: AuditStore, sizes: dict[int, bytes]) -> dict[int, str]:
        """The note of a stored checkpoint, signed by the audit key, for each of `sizes` that has
        one; a signed root that is not the recomputed one is a broken log."""
        from gateway.audit import CheckpointError

        notes: dict[int, str] = {}
        for stored in await store.checkpoints():
            if stored.size not in sizes or stored.size in notes:
                continue
            try:
                checkpoint = verify_note(stored.note, self.public_key, self.key_names, self.origin)
            except CheckpointError:
                continue  # not signed by this key: proves nothing either way
            if checkpoint.root != sizes[stored.size]:
                raise Failure(
                    f"the records do not give the root signed for size {stored.size}: run "
                    "`tongban audit verify`"
                )
            notes[stored.size] = checkpoint.note
        return notes

    async def inclusion(self, log: AuditLog, length: int) -> dict[str, object]:
        from gateway.audit import ProofError, leaf_hash, verify_inclusion

        index: int = self.args.index
        size: int = await self.latest_signed(log) if self.args.size is None else self.args.size
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
        notes = await self.signed_at(log.store, {size: root})
        return {
            "kind": "inclusion",
            "origin": self.origin,
            "index": index,
            "size": size,
            "root": b64(root),
            "leaf_hash": b64(leaf),
            "hashes": [b64(h) for h in hashes],
            "verified": True,
            "checkpoint": notes.get(size),
        }

    async def consistency(self, log: AuditLog, length: int) -> dict[str, object]:
        from gateway.audit import ProofError, verify_consistency

        first: int = self.args.consistency
        size: int = await self.latest_signed(log) if self.args.to is None else self.args.to
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
        notes = await self.signed_at(log.store, {first: first_root, size: root})
        return {
            "kind": "consistency",
            "origin": self.origin,
            "from": first,
            "size": size,
            "from_root": b64(first_root),
            "root": b64(root),
            "hashes": [b64(h) for h in hashes],
            "verified": True,
            "from_checkpoint": notes.get(first),
            "checkpoint": notes.get(size),
        }


def cmd_audit_proof(args: argparse.Namespace, out: Console) -> int:
    from gateway.audit import AuditLog, ProofError

    check_store_options(args)
    if args.size is not None and args.index is None:
        usage(args, "--size goes with --index")
    if args.to is not None and args.consistency is None:
        usage(args, "--to goes with --consistency")
    origin, key_names = audit_names(args)
    prover = _Prover(args, origin, key_names, audit_public_key(args))

    async def work(store: AuditStore) -> dict[str, object]:
        await check_log_named(store, origin, args.region)
        log = AuditLog(store, origin=origin, key_name=key_names[0], public_key=prover.public_key)
        length = (await store.head()).size
        try:
            if args.index is not None:
                return await prover.inclusion(log, length)
            return await prover.consistency(log, length)
        except ProofError as exc:  # e.g. a record below a prune cut: its hashes are gone
            raise Failure(f"no proof: {exc}") from exc

    document = on_store(args, work)
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    return 0


def register(audit_verbs: Subparsers) -> None:
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
    store_options(audit_proof)
    key_options(audit_proof)
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
