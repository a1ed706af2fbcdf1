"""The steps of `AuditLog.verify()` and `AuditLog.prune()` that recompute the log from its
stored rows and check it against what was signed; the log keeps the numbered plans."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.audit._checkpoint import Checkpoint
from gateway.audit._merkle import CompactRange, ProofError, leaf_hash
from gateway.audit._record import FIELD_GRAMMARS, AuditRecord, Outcome, is_case_id
from gateway.audit._store import AuditStore, PruneMarker, StoredRow
from gateway.audit.errors import AuditIntegrityError

__all__ = [
    "MIN_RETENTION",
    "VERIFY_CHUNK",
    "Verification",
    "check_prune_request",
    "compact_at_cut",
    "prune_record",
    "recompute",
    "resume_point",
]

VERIFY_CHUNK = 10_000  # rows read at a time while verifying
MIN_RETENTION = timedelta(days=180)  # network logs are kept at least six months (CSL Art. 21)


@dataclass(frozen=True, slots=True)
class Verification:
    intact: bool
    records_checked: int
    checkpoints_checked: int
    first_bad_index: int  # -1 when intact
    problem: str  # "" when intact
    latest: Checkpoint | None


def resume_point(
    marker: PruneMarker | None, checkpoints: Sequence[Checkpoint]
) -> CompactRange | str:
    """The compact range verification starts from (empty, or a prune's marker vouched for by a
    signed checkpoint of its size), or what is wrong with the marker."""
    first = marker.before if marker else 0
    try:
        compact = CompactRange.from_bytes(first, marker.compact) if marker else CompactRange()
    except ProofError:
        return f"the prune marker at {first} is malformed"
    if marker is not None and not any(
        c.size == first and c.root == compact.root() for c in checkpoints
    ):
        return (
            f"the log was pruned below {first} but no signed checkpoint vouches for what remained"
        )
    return compact


async def recompute(
    rows: Callable[[int, int], Awaitable[list[StoredRow]]],
    compact: CompactRange,
    span: int,
    wanted: set[int],
) -> tuple[int, str, dict[int, bytes]]:
    """Extend `compact` with the stored rows up to `span`: (the next index, the first problem
    or "", the recomputed root at each size in `wanted`)."""
    roots: dict[int, bytes] = {}
    first = index = compact.size
    if first in wanted:
        roots[first] = compact.root()
    problem = ""
    for start in range(first, span, VERIFY_CHUNK):
        for row in await rows(start, min(span, start + VERIFY_CHUNK)):
            if row.index != index:
                problem = f"record {index} is missing (the next stored record is {row.index})"
                break
            try:
                AuditRecord.from_canonical(row.canonical)
            except (ValueError, KeyError, TypeError):
                problem = f"record {index} is not a canonical audit record"
                break
            leaf = leaf_hash(row.canonical)
            if leaf != row.leaf_hash:
                problem = f"record {index} was changed after it was written (its leaf hash differs)"
                break
            compact.append(leaf)
            if compact.root() != row.root:
                problem = (
                    f"record {index} does not follow the records before it (the log root differs)"
                )
                break
            if compact.size in wanted:
                roots[compact.size] = compact.root()
            index += 1
        if problem or index < min(span, start + VERIFY_CHUNK):
            break
    if not problem and index < span:
        problem = f"record {index} is missing: the log ends at {index} but {span} records were signed or counted"
    return index, problem, roots


def check_prune_request(older_than: timedelta, operator: str, reason: str) -> None:
    """Refuse a prune below the legal retention, or one that does not say who and why."""
    if older_than < MIN_RETENTION:
        raise ValueError(
            f"audit records are kept at least {MIN_RETENTION.days} days (Cybersecurity Law, Art. 21)"
        )
    if not operator.strip() or not reason.strip():
        raise ValueError("a prune names the operator who ordered it and the reason")
    if not is_case_id(reason) or not FIELD_GRAMMARS["caller_operator"](operator):
        # recorded raw, not as a digest: the prune's record must say who and why
        raise ValueError(
            "a prune's operator and reason are at most 128 printable characters each, "
            "with no citizen id"
        )


async def compact_at_cut(store: AuditStore, marker: PruneMarker | None, cut: int) -> CompactRange:
    """The compact range at `cut`, recomputed from the stored rows since the last prune (a
    broken log is not pruned: verify and investigate first)."""
    first = marker.before if marker else 0
    compact = CompactRange.from_bytes(first, marker.compact) if marker else CompactRange()
    for start in range(first, cut, VERIFY_CHUNK):
        for row in await store.rows(start, min(cut, start + VERIFY_CHUNK)):
            if row.index != compact.size or leaf_hash(row.canonical) != row.leaf_hash:
                raise AuditIntegrityError(
                    f"record {compact.size} does not verify: the log is not pruned"
                )
            compact.append(row.leaf_hash)
            if compact.root() != row.root:
                raise AuditIntegrityError(
                    f"record {row.index} does not verify: the log is not pruned"
                )
    if compact.size != cut:
        raise AuditIntegrityError(f"record {compact.size} is missing: the log is not pruned")
    return compact


def prune_record(
    when: datetime, *, gateway: str, region: str, operator: str, reason: str, first: int, cut: int
) -> AuditRecord:
    """The record of a prune, appended to the log before the records go."""
    return AuditRecord(
        time=when,
        gateway=gateway,
        region=region,
        rpc="Audit.Prune",
        request_id="",
        caller_agency="",
        caller_operator=operator,
        caller_region=region,
        provider_region=region,
        dataset="",
        purpose="",
        case_id=reason,
        subject="",
        fields=(),
        outcome=Outcome.ALLOWED,
        reason="",
        cache_hit=False,
        latency_us=0,
        sealed_digest="",
        registry_version=0,
        agreement_id=f"removed records {first} to {cut - 1}",
    )
