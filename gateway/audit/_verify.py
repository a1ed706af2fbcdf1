"""`AuditLog.verify`: the log recomputed from its stored records and compared with every
signed checkpoint (kept apart from the log's appends and proofs: `_log`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.audit._checkpoint import Checkpoint, CheckpointError
from gateway.audit._integrity import Verification, recompute, resume_point
from gateway.audit._store import StoredRow

if TYPE_CHECKING:
    from gateway.audit._log import AuditLog

__all__ = ["checked_checkpoints", "verify_log"]

RowReader = Callable[[int, int], Awaitable[list[StoredRow]]]  # stored rows [start, end)


async def checked_checkpoints(
    log: AuditLog, trusted: Checkpoint | None
) -> list[Checkpoint] | Verification:
    """Every stored and trusted checkpoint, each signed by this log's audit key, by size;
    or the failed verification naming the first that is not."""
    checkpoints: list[Checkpoint] = []
    for stored in [*await log.read(log.store.checkpoints), *([trusted] if trusted else [])]:
        try:
            checkpoints.append(log.verify_note(stored))
        except CheckpointError as exc:
            return Verification(
                False,
                0,
                len(checkpoints),
                0 if stored.size else -1,
                f"checkpoint of size {stored.size}: {exc}",
                None,
            )
    checkpoints.sort(key=lambda c: c.size)
    return checkpoints


async def verify_log(
    log: AuditLog, rows: RowReader, trusted: Checkpoint | None = None
) -> Verification:
    """Recompute the log from its stored records and compare with every checkpoint.

    (1) every stored and trusted checkpoint is signed by this log's audit key
    (2) records are contiguous from index 0 (or from a retention prune, whose marker a
        checkpoint signed before the removal vouches for), each in canonical form, each leaf
        hash and each stored root what the records before it give
    (3) every checkpoint's size is covered and its root is the recomputed root at that size
    (4) the columns the store queries by say what the records say
    """
    checkpoints = await checked_checkpoints(log, trusted)  # (1)
    if isinstance(checkpoints, Verification):
        return checkpoints
    marker = await log.read(log.store.pruned)
    first = marker.before if marker else 0
    compact = resume_point(marker, checkpoints)
    if isinstance(compact, str):
        latest = checkpoints[-1] if checkpoints else None
        return Verification(False, 0, len(checkpoints), first, compact, latest)
    checkpoints = [c for c in checkpoints if c.size >= first]  # older ones covered removed records
    wanted = {c.size for c in checkpoints}
    head = await log.read(log.store.head)
    span = max([head.size, *wanted])
    index, problem, roots = await recompute(rows, compact, span, wanted)  # (2)
    latest = checkpoints[-1] if checkpoints else None
    if problem:
        return Verification(False, index - first, len(checkpoints), index, problem, latest)
    covered = first  # records up to here agree with a signed checkpoint
    for checkpoint in checkpoints:  # (3)
        if roots.get(checkpoint.size) != checkpoint.root:
            return Verification(
                False,
                index,
                len(checkpoints),
                covered,
                f"the records from {covered} on do not give the root signed for size {checkpoint.size}",
                latest,
            )
        covered = checkpoint.size
    mismatch = await log.store.column_mismatches()  # (4)
    if mismatch is not None:
        return Verification(
            False,
            index,
            len(checkpoints),
            mismatch,
            f"record {mismatch}'s query columns were edited: oversight queries would not find it by what it records",
            latest,
        )
    if compact.root() != head.root or compact.size != head.size:
        return Verification(
            False,
            index,
            len(checkpoints),
            compact.size,
            "the stored tree head does not match the records",
            latest,
        )
    return Verification(True, index - first, len(checkpoints), -1, "", latest)
