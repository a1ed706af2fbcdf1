"""The audit records of the case book: one per call, allowed or refused, and one per event
received.

What a case record says (`gateway.audit.AuditRecord`):

    rpc             "/tongban.v1.Cases/<Method>"; a receipt "/tongban.v1.Peer/DeliverCaseEvents"
    request_id      the call's request id (Submit, Act)
    caller_*        the agency, its operator and region (a receipt: the sending region only)
    provider_region this gateway's region (where the case record is kept)
    dataset         "" (a case is no data query)
    purpose         "matter.<matter code>": the matter the case is of, in the registry-id
                    grammar audit records keep purposes in (a national code starts with a digit)
    case_id         the case
    subject         this gateway's pseudonym of the applicant (never the id)
    fields          the material ids the event involves (submitted, asked for, supplemented,
                    "result")
    sealed_digest   hex SHA-256 of the event's compact JWS (the event kept sealed in the case
                    store, in the same transaction)
    outcome, reason allowed, or denied / failed with the refusal's reason
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.audit import AuditLog, AuditRecord, AuditUnavailable, Outcome, audit_id
from gateway.errors import Refusal

__all__ = ["CaseTrail", "Note", "matter_purpose"]

log = logging.getLogger("tongban.cases")


def matter_purpose(matter_code: str) -> str:
    return f"matter.{matter_code}" if matter_code else ""


@dataclass(slots=True)
class Note:
    """What a call's record will say, filled in as the call learns it."""

    rpc: str
    caller_region: str = ""
    caller_agency: str = ""
    caller_operator: str = ""
    request_id: str = ""
    case_id: str = ""
    subject: str = ""
    matter_code: str = ""
    fields: tuple[str, ...] = ()
    jws: str = ""
    registry_version: int = 0
    started: float = field(default_factory=time.perf_counter)


class CaseTrail:
    def __init__(
        self, audit: AuditLog, *, gateway_name: str, region: str, clock: Callable[[], datetime]
    ) -> None:
        self.log = audit
        self.gateway_name = gateway_name
        self.region = region
        self.clock = clock

    def record(self, note: Note, outcome: Outcome, reason: str = "") -> AuditRecord:
        return AuditRecord.of_call(
            time=self.clock(),
            gateway=self.gateway_name,
            region=self.region,
            rpc=note.rpc,
            outcome=outcome,
            reason=reason,
            started=note.started,
            request_id=note.request_id,
            caller_agency=note.caller_agency,
            caller_operator=note.caller_operator,
            caller_region=note.caller_region,
            purpose=matter_purpose(note.matter_code),
            case_id=note.case_id,
            subject=note.subject,
            fields=tuple(sorted(set(note.fields))),
            sealed_digest=hashlib.sha256(note.jws.encode("ascii")).hexdigest() if note.jws else "",
            registry_version=note.registry_version,
        )

    def audit_id(self, index: int) -> str:
        return audit_id(self.log.origin, index)

    async def allowed(self, note: Note) -> str:
        """Append the record of an allowed call that changes nothing (durably: fail closed)."""
        try:
            appended = await self.log.append(self.record(note, Outcome.ALLOWED))
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE", f"the case was not shown: {exc}", audited=True
            ) from exc
        return self.audit_id(appended.index)

    async def refused(self, note: Note, refused: Refusal | AuditUnavailable) -> Refusal:
        """Audit a refusal with a plain record (best effort: it releases nothing). The store
        failing on the way (a read, the case lock) is the refusal AUDIT_UNAVAILABLE."""
        refusal = (
            refused
            if isinstance(refused, Refusal)
            else Refusal("AUDIT_UNAVAILABLE", f"the case store did not answer: {refused}")
        )
        if not refusal.audited:
            outcome = Outcome.FAILED if refusal.failed else Outcome.DENIED
            try:
                await self.log.append(self.record(note, outcome, refusal.reason))
            except AuditUnavailable:
                log.warning(
                    "a refused case call (%s) could not be audited: the audit store is unavailable",
                    refusal.reason,
                )
            refusal.audited = True
        return refusal
