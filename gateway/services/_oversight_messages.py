"""Audit records and checkpoints as the Oversight service sends them (protobuf messages)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.audit import AuditRecord, Checkpoint, Outcome, audit_id
from tongban.v1 import common_pb2, oversight_pb2

__all__ = [
    "MAX_SHOWN_CHARS",
    "MAX_SHOWN_FIELDS_BYTES",
    "OUTCOME_FROM_PB",
    "OUTCOME_TO_PB",
    "Shown",
    "checkpoint_message",
    "record_message",
    "time_of",
    "timestamp",
]

MAX_SHOWN_CHARS: Final = 4096  # characters of one value sent as is; longer ones as a digest
MAX_SHOWN_FIELDS_BYTES: Final = 64 * 1024  # bytes of a record's field names sent as is

OUTCOME_TO_PB: Final = {
    Outcome.ALLOWED: common_pb2.OUTCOME_ALLOWED,
    Outcome.DENIED: common_pb2.OUTCOME_DENIED,
    Outcome.FAILED: common_pb2.OUTCOME_FAILED,
}
OUTCOME_FROM_PB: Final = {v: k for k, v in OUTCOME_TO_PB.items()}


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class Shown:
    """Values as they may be sent: a value too long to send is replaced by its digest."""

    abridged: bool = False

    def text(self, value: str) -> str:
        if len(value) <= MAX_SHOWN_CHARS:
            return value
        self.abridged = True
        return _digest(value)

    def fields(self, fields: tuple[str, ...]) -> list[str]:
        shown = [self.text(f) for f in fields]
        if sum(len(f.encode("utf-8")) for f in shown) <= MAX_SHOWN_FIELDS_BYTES:
            return shown
        self.abridged = True
        return [_digest(json.dumps(sorted(fields), ensure_ascii=False, separators=(",", ":")))]


def record_message(
    origin: str, index: int, record: AuditRecord, leaf: bytes = b""
) -> oversight_pb2.AuditRecord:
    """The record as QueryAudit sends it; a value too long to send is abridged (see `Shown`)."""
    shown = Shown()
    message = oversight_pb2.AuditRecord(
        index=index,
        audit_id=audit_id(origin, index),
        time=timestamp(record.time),
        gateway=shown.text(record.gateway),
        region=shown.text(record.region),
        request_id=shown.text(record.request_id),
        caller_agency=shown.text(record.caller_agency),
        caller_operator=shown.text(record.caller_operator),
        caller_region=shown.text(record.caller_region),
        provider_region=shown.text(record.provider_region),
        dataset=shown.text(record.dataset),
        purpose=shown.text(record.purpose),
        case_id=shown.text(record.case_id),
        subject_pseudonym=record.subject,
        fields=shown.fields(record.fields),
        outcome=OUTCOME_TO_PB[record.outcome],
        reason=shown.text(record.reason),
        cache_hit=record.cache_hit,
        latency_micros=min(record.latency_us, 2**32 - 1),
        sealed_digest=shown.text(record.sealed_digest),
        registry_version=record.registry_version,
        agreement_id=shown.text(record.agreement_id),
        rpc=shown.text(record.rpc),
        leaf_hash=leaf,
        request_digest=record.request_digest,
        request_sealed=shown.text(record.request_sealed),
        consent_id=record.consent_id,
    )
    # The canonical encoding holds the latency unclamped: a clamped one cannot rebuild the leaf.
    message.abridged = shown.abridged or record.latency_us > 2**32 - 1
    return message


def checkpoint_message(checkpoint: Checkpoint | None) -> oversight_pb2.Checkpoint | None:
    if checkpoint is None:
        return None
    message = oversight_pb2.Checkpoint(
        origin=checkpoint.origin,
        size=checkpoint.size,
        root_hash=checkpoint.root,
        note=checkpoint.note,
        key_name=checkpoint.key_name,
    )
    if checkpoint.signed_at is not None:
        message.signed_at.CopyFrom(timestamp(checkpoint.signed_at))
    return message


def time_of(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None
