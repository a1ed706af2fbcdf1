"""A record's inclusion proof, checked here step by step for the person looking at it.

The hashing is the audit log's own (`gateway.audit.node_hash`, `verify_inclusion`,
`verify_checkpoint`); this module only keeps each step so that the page can show it:

(0) the record's leaf hash, as the log listed it, equals the proof's;
(1..n) each sibling hash and the node hash it makes with the running hash (RFC 9162 2.1.3.2);
(n+1) the root reached equals the proof's root (and `verify_inclusion` agrees);
(n+2) the signed checkpoint verifies with an audit key of the region in the registry;
(n+3) the checkpoint's root and size are the proof's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.audit import (
    CheckpointError,
    ProofError,
    node_hash,
    verify_checkpoint,
    verify_inclusion,
)
from gateway.witnessing import audit_keys, log_origin
from registry import Registry
from tongban.v1 import oversight_pb2

__all__ = ["InclusionCheck", "ProofStep", "check_inclusion"]


@dataclass(frozen=True)
class ProofStep:
    sibling: str  # hex
    side: str  # "left" or "right": where the sibling stands
    made: str  # hex: the node hash it makes with the running hash


@dataclass
class InclusionCheck:
    index: int
    tree_size: int
    leaf: str
    record_leaf: str
    steps: list[ProofStep] = field(default_factory=list)
    reached: str = ""
    root: str = ""
    proof_holds: bool = False
    proof_problem: str = ""
    checkpoint_origin: str = ""
    checkpoint_size: int = 0
    checkpoint_root: str = ""
    checkpoint_signed: bool = False
    checkpoint_problem: str = ""

    @property
    def leaf_matches(self) -> bool:
        return bool(self.leaf) and self.leaf == self.record_leaf

    @property
    def checkpoint_matches(self) -> bool:
        return (
            self.checkpoint_signed
            and self.checkpoint_root == self.root
            and self.checkpoint_size == self.tree_size
        )

    @property
    def verified(self) -> bool:
        return (
            self.leaf_matches
            and self.proof_holds
            and self.reached == self.root
            and self.checkpoint_matches
        )


def _walk(leaf: bytes, index: int, size: int, proof: list[bytes]) -> tuple[list[ProofStep], bytes]:
    """RFC 9162 section 2.1.3.2, each step kept (the same walk as `verify_inclusion`)."""
    steps: list[ProofStep] = []
    fn, sn, running = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            break
        if fn & 1 or fn == sn:
            running = node_hash(sibling, running)
            steps.append(ProofStep(sibling.hex(), "left", running.hex()))
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            running = node_hash(running, sibling)
            steps.append(ProofStep(sibling.hex(), "right", running.hex()))
        fn >>= 1
        sn >>= 1
    return steps, running


def check_inclusion(
    record_leaf: bytes,
    *,
    index: int,
    answer: oversight_pb2.GetProofResponse,
    registry: Registry,
    region: str,
    now: datetime,
) -> InclusionCheck:
    """Every step of checking `answer` (GetProof for record `index`) against the record's
    leaf hash and the region's signed checkpoint."""
    proof = list(answer.hashes)
    check = InclusionCheck(
        index=index,
        tree_size=answer.tree_size,
        leaf=answer.leaf_hash.hex(),
        record_leaf=record_leaf.hex(),
        root=answer.root_hash.hex(),
    )
    # (0) to (n+1): the leaf, each sibling, the root reached
    if 0 <= index < answer.tree_size and len(answer.leaf_hash) == 32:
        check.steps, reached = _walk(answer.leaf_hash, index, answer.tree_size, proof)
        check.reached = reached.hex()
    try:
        verify_inclusion(answer.leaf_hash, index, answer.tree_size, proof, answer.root_hash)
        check.proof_holds = True
    except ProofError as exc:
        check.proof_problem = str(exc)
    # (n+2), (n+3): the checkpoint, signed by the region's audit key, and its root
    note = answer.checkpoint.note
    origin = log_origin(region)
    check.checkpoint_problem = "no signed checkpoint came with the proof"
    for key in audit_keys(registry, region, now) if note else []:
        for name in (origin, f"audit-{region}"):
            try:
                checkpoint = verify_checkpoint(note, key, name, origin=origin)
            except CheckpointError as exc:
                check.checkpoint_problem = str(exc)
                continue
            check.checkpoint_signed, check.checkpoint_problem = True, ""
            check.checkpoint_origin = checkpoint.origin
            check.checkpoint_size = checkpoint.size
            check.checkpoint_root = checkpoint.root.hex()
            return check
    return check
