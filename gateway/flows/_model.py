"""The query path's domain values: what a flow takes, what it decides once, what it returns.

Frozen, and free of gRPC and protobuf: the service edge (`gateway.services.exchange`) makes
them from the wire messages and turns them back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.identity import Caller
from gateway.policy import DataRequest, Decision
from gateway.sealing import SealFormat, seal_text
from registry import Agency, Dataset, ShareClass

__all__ = [
    "NO_REQUEST",
    "Answer",
    "AuditContext",
    "ForwardCall",
    "Forwarded",
    "Grant",
    "IntakeCall",
    "QueryCall",
    "SealedAnswer",
    "TimeRemaining",
]

# Seconds left before the call's deadline (None: the caller set none), asked when needed.
TimeRemaining = Callable[[], float | None]

# What a refusal that read no request value records for it.
NO_REQUEST = DataRequest(
    provider_region="", dataset="", purpose="", subject_id="", fields=(), case_id="", request_id=""
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SealedAnswer:
    """A data system's answer sealed by its region (the wire's SealedRecord). `sealed_at` is
    kept as sent, (seconds, nanos) since the epoch, so that it is passed on unchanged."""

    jws: str
    payload: bytes
    content_type: str
    sealer_kid: str
    sealer_region: str
    sealed_at: tuple[int, int] | None  # None: not given
    format: SealFormat = SealFormat.JADES
    ses_signature: bytes = b""  # DER GB/T 38540 SES_Signature over payload, when GBT38540

    @property
    def seal(self) -> str:
        """The seal as text, whatever its format (`seal_text`): what the audit record's digest
        and the memo of passed seals stand for."""
        return seal_text(self.format, self.jws, self.ses_signature, self.payload)

    @staticmethod
    def wire_time(at: datetime) -> tuple[int, int]:
        """(seconds, nanos) since the epoch of a timezone-aware `at`, as `sealed_at` holds it."""
        since = at - _EPOCH
        return since // timedelta(seconds=1), at.microsecond * 1000

    def sealed_at_time(self) -> datetime | None:
        """`sealed_at` as a time; ValueError (or OverflowError) when it is not one."""
        if self.sealed_at is None:
            return None
        seconds, nanos = self.sealed_at
        if not 0 <= nanos < 1_000_000_000:
            raise ValueError("sealed_at nanos out of range")
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The owner gateway's answer to a forwarded query (the wire's ForwardResponse)."""

    record: SealedAnswer
    audit_id: str
    fields: tuple[str, ...]
    registry_version: int
    cache_hit: bool
    agreement_id: str
    subject_pseudonym: str  # the owner's, for reports of requester-side hits; "" otherwise


@dataclass(frozen=True, slots=True)
class Answer:
    """What the requesting gateway releases to its agency (the wire's QueryResponse)."""

    record: SealedAnswer
    cache_hit: bool
    audit_id: str
    fields: tuple[str, ...]
    registry_version: int
    agreement_id: str


@dataclass(frozen=True, slots=True)
class Grant:
    """The one decision a gateway makes about a request, with what the later steps need: the
    agency asking, the dataset, the agreement's id and quota, the fields to return (sorted)."""

    decision: Decision
    agency: Agency
    dataset: Dataset

    @property
    def agreement_id(self) -> str:
        return self.decision.agreement_id

    @property
    def quota_per_minute(self) -> int:
        return self.decision.quota_per_minute

    @property
    def allowed_fields(self) -> frozenset[str]:
        return self.decision.fields

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(sorted(self.decision.fields))

    @property
    def needs_case(self) -> bool:
        """A conditional (有条件共享) dataset: the query is bound to the open case it names
        (`gateway.cases.CaseBinding`, where cases bind queries)."""
        return self.dataset.share_class is ShareClass.CONDITIONAL


@dataclass(frozen=True, slots=True)
class AuditContext:
    """What a call's audit record says besides its outcome, filled in as the call goes on.

    `subject` (a pseudonym already) and `sealed_digest` stand for what `request` and the sealed
    answer would give, `at` for the time now: a reported access is recorded as reported."""

    rpc: str
    caller_agency: str
    caller_operator: str
    caller_region: str
    request: DataRequest
    started: float  # time.perf_counter() when the call began
    registry_version: int = 0
    agreement_id: str = ""
    subject: str | None = None
    sealed_digest: str | None = None
    at: datetime | None = None
    # The signed request the record keeps: a Peer.Forward's JWS (kept encrypted, with its
    # digest), or only the digest of a Peer.ReportAccess batch's JWS (`request_digest`).
    kept_request: str = ""
    request_digest: str = ""
    consent_id: str = ""  # the consent the query rests on (gateway.consent), once read


@dataclass(frozen=True, slots=True)
class QueryCall:
    """An agency's query to the requesting gateway (DataExchange.Query, BatchQuery's items,
    Credentials.Fetch)."""

    caller: Caller | None
    request: DataRequest
    token: str
    rpc: str
    time_remaining: TimeRemaining
    credential_type: str = ""  # Credentials.Fetch: the credential asked for; "" for a query


@dataclass(frozen=True, slots=True)
class ForwardCall:
    """A query forwarded by the requesting region's gateway (Peer.Forward)."""

    caller: Caller | None
    requesting_region: str
    agency_id: str  # the agency the requesting gateway forwards for
    operator: str
    request: DataRequest
    time_remaining: TimeRemaining
    credential_type: str = ""  # a credential fetch: answered as an e-licence (SM2 regions)
    # The requesting gateway's signed request (`gateway.forward_signing`), authoritative over
    # the plain values above; "" from a gateway that does not sign (refused).
    signed_request: str = ""


@dataclass(frozen=True, slots=True)
class IntakeCall:
    """A batch of access reports (Peer.ReportAccess): the signed batch, and the reports sent
    beside it (`sent`: `AccessReport.document()` of each as parsed, so each checked; empty when
    they do not parse) and how many. A signed report equal to its sent document is not checked
    a second time."""

    caller: Caller | None
    reporting_region: str
    jws: str
    sent_count: int
    sent: tuple[Mapping[str, Any], ...] = field(default=())
