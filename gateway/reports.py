"""Access reports: the hits a requesting gateway answered from its own cache, told to the owner.

A dataset whose owner chose `cache_scope = "requester"` may be answered by a requesting
gateway from its own cache, for the dataset's TTL, after its own full decision: one gRPC leg
instead of three. The owner then never sees that access, so the requesting gateway reports it:
each hit is queued here before the answer is released, and a background `AccessReporter` sends
the queue to each owner in signed batches (`Peer.ReportAccess`), which the owner records in its
own audit log (so that its oversight and the citizen's data tracker see every access).

Batch format `tongban.access-report/v1`: a compact JWS (RFC 7515) signed with the reporting
gateway's audit key (Ed25519, `alg` EdDSA; header `typ` REPORT_TYPE, `x5t#S256` and `kid` the
key's id in the registry), whose payload is the canonical JSON (keys sorted, no white space,
UTF-8) of::

    {"v": 1, "reporting_region": "510000", "owner_region": "330000",
     "batch_id": "<random hex>", "issued_at": "2026-11-21T08:00:00.123456Z",
     "reports": [{"request_id", "caller": {"agency_id", "region", "operator",
                  "certificate_thumbprint"}, "dataset", "purpose", "case_id",
                  "subject_pseudonym", "fields" (sorted), "accessed_at", "sealed_digest",
                  "answer_audit_id"}]}

`subject_pseudonym` is the *owner's* pseudonym of the subject, which the owner's gateway gave
with the answer (`ForwardResponse.subject_pseudonym`): regions need not share a pseudonym key.
`answer_audit_id` is the owner's audit id of that answer (`ForwardResponse.audit_id`), by which
the owner finds the answer a report rests on in one read of its log.

The outbox is the requesting gateway's own audit log: a hit is answered from the cache only
once its audit record is durable, and the record carries the hit's report for the owner
(`AuditLog.append(record, Outbound)`, one transaction). The `AccessReporter` reads the reports
the log holds for each owner past that owner's durable cursor, sends them, and moves the cursor
only once the owner acknowledged them, i.e. made them durable in its own log. Neither Redis nor
the requesting process is then part of what must survive: a gateway that dies (or a Redis that
loses everything) loses no report, and the next start on the same log sends what was waiting.
Delivery is at least once (a crash between the owner's acknowledgement and the cursor's move, or
two replicas sharing one PostgreSQL log, sends a batch twice); the owner recognises a report it
already recorded (same request, caller, digest and access time) and answers with the same audit
id, so a retry never records an access twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.audit import (
    FIELD_GRAMMARS,
    AuditLog,
    AuditUnavailable,
    Outbound,
    is_case_id,
    is_request_id,
)
from gateway.breaker import BreakerOpen
from gateway.errors import GatewayError, Refusal, error_info_of, peer_text
from gateway.peers import PeerPool, UnknownPeer
from registry import KeyState, KeyUsage, Registry, RegistryError, RegistryStore, is_registry_id
from signer import SignedJsonRefused, canonical_json, sign_json, verify_json
from tongban.v1 import common_pb2, exchange_pb2

__all__ = [
    "BATCH_VERSION",
    "FLUSH_SECONDS",
    "MAX_BACKLOG",
    "MAX_BATCH_JWS_BYTES",
    "MAX_REPORTS_PER_BATCH",
    "REPORT_TYPE",
    "AccessReport",
    "AccessReporter",
    "BatchRefused",
    "ReportFormatError",
    "ReporterCounters",
    "SignedBatch",
    "batch_payload",
    "sign_batch",
    "verify_batch",
]

log = logging.getLogger("tongban.reports")

REPORT_TYPE: Final = "tongban.access-report+jws"
BATCH_VERSION: Final = 1
MAX_REPORTS_PER_BATCH: Final = 100  # reports in one Peer.ReportAccess call
MAX_BATCH_JWS_BYTES: Final = 512 * 1024  # 100 reports take about 100 KiB
FLUSH_SECONDS: Final = 1.0  # a recorded report waits at most this long before it is sent
SEND_TIMEOUT_SECONDS: Final = 5.0  # one Peer.ReportAccess call
BACKOFF_MIN_SECONDS: Final = 0.5  # after a failed send to an owner, doubled up to the max
BACKOFF_MAX_SECONDS: Final = 30.0
CLOSE_SECONDS: Final = 5.0  # what a graceful stop spends flushing at most
# Reports waiting for one owner beyond which hits for it are no longer answered from the cache
# (they are forwarded to the owner, like misses): the outbox does not grow without bound.
MAX_BACKLOG: Final = 100_000
MAX_TEXT_CHARS: Final = 256  # any text of a report (ids, operator, case id)
MAX_FIELDS: Final = 64

_HEX64 = re.compile(r"[0-9a-f]{64}")
_REGION = re.compile(r"[0-9]{6}")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_REPORT_KEYS = frozenset(
    {
        "request_id",
        "caller",
        "dataset",
        "purpose",
        "case_id",
        "subject_pseudonym",
        "fields",
        "accessed_at",
        "sealed_digest",
        "answer_audit_id",
    }
)
_CALLER_KEYS = frozenset({"agency_id", "region", "operator", "certificate_thumbprint"})
_BATCH_KEYS = frozenset(
    {"v", "reporting_region", "owner_region", "batch_id", "issued_at", "reports"}
)


class ReportFormatError(GatewayError, ValueError):
    """A report or batch that is not in the `tongban.access-report/v1` form."""


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: object, what: str) -> datetime:
    if not isinstance(text, str):
        raise ReportFormatError(f"{what} is an RFC 3339 UTC time with microseconds")
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ReportFormatError(f"{what} is an RFC 3339 UTC time with microseconds") from exc


def _text(value: object, what: str, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise ReportFormatError(f"{what} is a string")
    if required and not value:
        raise ReportFormatError(f"{what} is required")
    if len(value) > MAX_TEXT_CHARS or not value.isprintable():
        raise ReportFormatError(f"{what} is at most {MAX_TEXT_CHARS} printable characters")
    return value


@dataclass(frozen=True, slots=True)
class AccessReport:
    """One access a requesting gateway answered from its own cache."""

    request_id: str
    caller_agency: str
    caller_region: str
    caller_operator: str
    caller_thumbprint: str
    dataset: str
    purpose: str
    case_id: str
    subject_pseudonym: str  # the owner's pseudonym of the subject (hex HMAC), never a raw id
    fields: tuple[str, ...]  # sorted, no repetition
    accessed_at: datetime  # UTC, microseconds
    sealed_digest: str  # hex SHA-256 of the sealed record's JWS
    answer_audit_id: str  # the owner's audit id of the answer served (its Peer.Forward record)

    def __post_init__(self) -> None:
        if self.accessed_at.tzinfo is None or self.accessed_at.utcoffset() is None:
            raise ReportFormatError("accessed_at is timezone-aware")
        object.__setattr__(self, "accessed_at", self.accessed_at.astimezone(UTC))
        for name in ("request_id", "caller_agency", "dataset", "purpose", "answer_audit_id"):
            _text(getattr(self, name), name)
        for name in ("caller_operator", "caller_thumbprint", "case_id"):
            _text(getattr(self, name), name, required=False)
        # The grammars of a query's arguments and of the owner's record (T16): a report's
        # values end up in the owner's log, and a retry must find its record by them.
        if not is_request_id(self.request_id):
            raise ReportFormatError(
                "request_id is 1 to 128 printable ASCII characters, no spaces, no citizen id"
            )
        for name in ("caller_agency", "dataset", "purpose"):
            if not is_registry_id(getattr(self, name)):
                raise ReportFormatError(f"{name} is a registry id")
        if self.case_id and not is_case_id(self.case_id):
            raise ReportFormatError("case_id is at most 128 printable characters, no citizen id")
        if self.caller_operator and not FIELD_GRAMMARS["caller_operator"](self.caller_operator):
            raise ReportFormatError(
                "caller.operator is at most 128 printable characters, no citizen id"
            )
        if not _REGION.fullmatch(self.caller_region):
            raise ReportFormatError("caller.region is a six-digit GB/T 2260 code")
        if not _HEX64.fullmatch(self.subject_pseudonym):
            raise ReportFormatError("subject_pseudonym is a hex HMAC-SHA256, never a raw id")
        if not _HEX64.fullmatch(self.sealed_digest):
            raise ReportFormatError("sealed_digest is a hex SHA-256")
        if not self.fields or len(self.fields) > MAX_FIELDS:
            raise ReportFormatError(f"fields names 1 to {MAX_FIELDS} fields")
        for name in self.fields:
            if not is_registry_id(_text(name, "a field name")):
                raise ReportFormatError("a field name is a registry id")
        if list(self.fields) != sorted(set(self.fields)):
            raise ReportFormatError("fields are sorted and not repeated")

    def document(self) -> dict[str, Any]:
        """The report as it is signed (part of the batch payload)."""
        return {
            "request_id": self.request_id,
            "caller": {
                "agency_id": self.caller_agency,
                "region": self.caller_region,
                "operator": self.caller_operator,
                "certificate_thumbprint": self.caller_thumbprint,
            },
            "dataset": self.dataset,
            "purpose": self.purpose,
            "case_id": self.case_id,
            "subject_pseudonym": self.subject_pseudonym,
            "fields": list(self.fields),
            "accessed_at": format_time(self.accessed_at),
            "sealed_digest": self.sealed_digest,
            "answer_audit_id": self.answer_audit_id,
        }

    @classmethod
    def from_document(cls, document: object) -> AccessReport:
        if not isinstance(document, dict) or set(document) != _REPORT_KEYS:
            raise ReportFormatError(f"a report has exactly the keys {sorted(_REPORT_KEYS)}")
        caller = document["caller"]
        if not isinstance(caller, dict) or set(caller) != _CALLER_KEYS:
            raise ReportFormatError(
                f"a report's caller has exactly the keys {sorted(_CALLER_KEYS)}"
            )
        fields = document["fields"]
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ReportFormatError("fields is a list of field names")
        return cls(
            request_id=_text(document["request_id"], "request_id"),
            caller_agency=_text(caller["agency_id"], "caller.agency_id"),
            caller_region=_text(caller["region"], "caller.region"),
            caller_operator=_text(caller["operator"], "caller.operator", required=False),
            caller_thumbprint=_text(
                caller["certificate_thumbprint"], "caller.certificate_thumbprint", required=False
            ),
            dataset=_text(document["dataset"], "dataset"),
            purpose=_text(document["purpose"], "purpose"),
            case_id=_text(document["case_id"], "case_id", required=False),
            subject_pseudonym=_text(document["subject_pseudonym"], "subject_pseudonym"),
            fields=tuple(fields),
            accessed_at=parse_time(document["accessed_at"], "accessed_at"),
            sealed_digest=_text(document["sealed_digest"], "sealed_digest"),
            answer_audit_id=_text(document["answer_audit_id"], "answer_audit_id"),
        )

    def message(self) -> exchange_pb2.AccessReport:
        stamp = Timestamp()
        stamp.FromDatetime(self.accessed_at)
        return exchange_pb2.AccessReport(
            request_id=self.request_id,
            caller=common_pb2.CallerIdentity(
                agency_id=self.caller_agency,
                region=self.caller_region,
                operator=self.caller_operator,
                certificate_thumbprint=self.caller_thumbprint,
            ),
            dataset=self.dataset,
            purpose=self.purpose,
            case_id=self.case_id,
            subject_pseudonym=self.subject_pseudonym,
            fields=list(self.fields),
            accessed_at=stamp,
            sealed_digest=self.sealed_digest,
            answer_audit_id=self.answer_audit_id,
        )

    @classmethod
    def from_message(cls, message: exchange_pb2.AccessReport) -> AccessReport:
        try:
            accessed_at = message.accessed_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise ReportFormatError("accessed_at is not a valid timestamp") from exc
        return cls(
            request_id=message.request_id,
            caller_agency=message.caller.agency_id,
            caller_region=message.caller.region,
            caller_operator=message.caller.operator,
            caller_thumbprint=message.caller.certificate_thumbprint,
            dataset=message.dataset,
            purpose=message.purpose,
            case_id=message.case_id,
            subject_pseudonym=message.subject_pseudonym,
            fields=tuple(message.fields),
            accessed_at=accessed_at,
            sealed_digest=message.sealed_digest,
            answer_audit_id=message.answer_audit_id,
        )


# -- signed batches -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A verified batch: who signed it (the registry key), and what it says."""

    kid: str
    reporting_region: str
    owner_region: str
    batch_id: str
    issued_at: datetime
    reports: tuple[AccessReport, ...]


class BatchRefused(Refusal):
    """A batch (or one of its reports, `index`) the owner does not accept: the ErrorInfo
    reason (its status code from the reason table), and a sentence for a person."""

    def __init__(self, reason: str, message: str, index: int | None = None) -> None:
        super().__init__(reason, message)
        self.index = index


def batch_payload(
    *,
    reporting_region: str,
    owner_region: str,
    batch_id: str,
    issued_at: datetime,
    reports: Sequence[AccessReport],
) -> bytes:
    """The canonical JSON a batch's JWS signs."""
    return canonical_json(
        {
            "v": BATCH_VERSION,
            "reporting_region": reporting_region,
            "owner_region": owner_region,
            "batch_id": batch_id,
            "issued_at": format_time(issued_at),
            "reports": [r.document() for r in reports],
        }
    )


def sign_batch(payload: bytes, key: ed25519.Ed25519PrivateKey, kid: str) -> str:
    """A compact JWS of `payload` by the reporting gateway's audit key (`kid` its registry id)."""
    return sign_json(
        payload, key, typ=REPORT_TYPE, kid=kid, algorithms=("EdDSA",), headers={"x5t#S256": kid}
    )


def _signature_invalid(message: str) -> BatchRefused:
    return BatchRefused("REPORT_SIGNATURE_INVALID", message)


def _report_key(registry: Registry, kid: object, reporting_region: str, now: datetime) -> Any:
    """The Ed25519 public key of the registry's audit key `kid` of the reporting region."""
    if not isinstance(kid, str) or not kid:
        raise _signature_invalid("the batch header names no key (x5t#S256)")
    entry = registry.key(kid)
    if entry is None:
        raise _signature_invalid(f"key {kid} is not in registry version {registry.version}")
    if entry.usage is not KeyUsage.AUDIT:
        raise _signature_invalid(f"key {kid} is a {entry.usage.value} key, not an audit key")
    if entry.owner != reporting_region:
        raise _signature_invalid(
            f"key {kid} is {entry.owner}'s, not the reporting region {reporting_region}'s"
        )
    if entry.state is KeyState.REVOKED:
        raise _signature_invalid(f"key {kid} is revoked")
    if not entry.not_before <= now <= entry.not_after:
        raise _signature_invalid(f"key {kid} is outside its certificate's validity")
    public = x509.load_der_x509_certificate(entry.certificate).public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise _signature_invalid(f"key {kid} is not an Ed25519 key")
    return public


def verify_batch(
    jws: str, *, registry: Registry, reporting_region: str, owner_region: str, now: datetime
) -> SignedBatch:
    """The batch `jws` says, or the `BatchRefused` that says why it is not accepted.

    (1) a compact JWS of bounded size, signed (no `alg: none`, no empty signature), EdDSA,
        `typ` REPORT_TYPE
    (2) its `x5t#S256` names an audit key the registry publishes for `reporting_region`, not
        revoked (pending, active or retiring: a rotation must not fail reports), whose
        certificate is valid `now`
    (3) the signature verifies with that key (never with a key carried in the message)
    (4) the payload is canonical JSON of this format, for `reporting_region` and `owner_region`
    (5) 1 to MAX_REPORTS_PER_BATCH reports, each well formed (`index` names the first that is not)
    """
    # (1)
    if len(jws) > MAX_BATCH_JWS_BYTES:
        raise BatchRefused(
            "REQUEST_TOO_LARGE",
            f"a batch is a compact JWS of at most {MAX_BATCH_JWS_BYTES} bytes",
        )
    try:
        verified = verify_json(
            jws,
            key_for=lambda header: _report_key(
                registry, header.get("x5t#S256"), reporting_region, now
            ),
            algorithms=("EdDSA",),
            typ=REPORT_TYPE,
            typ_required=True,
            max_bytes=MAX_BATCH_JWS_BYTES,
            what="the batch",
        )
    except SignedJsonRefused as exc:
        raise _signature_invalid(str(exc)) from exc
    header, payload = verified.header, verified.payload
    # (4)
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchRefused(
            "INVALID_ARGUMENT_FORMAT",
            "the batch payload is not JSON",
        ) from exc
    if (
        not isinstance(document, dict)
        or set(document) != _BATCH_KEYS
        or document.get("v") != BATCH_VERSION
        or not verified.is_canonical
    ):
        raise BatchRefused(
            "INVALID_ARGUMENT_FORMAT",
            "the batch payload is not canonical tongban.access-report/v1 JSON",
        )
    if document["reporting_region"] != reporting_region or document["owner_region"] != owner_region:
        raise BatchRefused(
            "REPORT_PAYLOAD_MISMATCH",
            f"the signed batch is from {document['reporting_region']!s:.8} to "
            f"{document['owner_region']!s:.8}, not from {reporting_region} to {owner_region}",
        )
    try:
        batch_id = _text(document["batch_id"], "batch_id")
        issued_at = parse_time(document["issued_at"], "issued_at")
    except ReportFormatError as exc:
        raise BatchRefused("INVALID_ARGUMENT_FORMAT", str(exc)) from exc
    # (5)
    reports = document["reports"]
    if not isinstance(reports, list) or not reports:
        raise BatchRefused("INVALID_ARGUMENT_FORMAT", "a batch holds reports")
    if len(reports) > MAX_REPORTS_PER_BATCH:
        raise BatchRefused(
            "REQUEST_TOO_LARGE",
            f"a batch holds at most {MAX_REPORTS_PER_BATCH} reports",
        )
    parsed = []
    for index, item in enumerate(reports):
        try:
            parsed.append(AccessReport.from_document(item))
        except ReportFormatError as exc:
            raise BatchRefused(
                "INVALID_ARGUMENT_FORMAT",
                f"report {index}: {exc}",
                index,
            ) from exc
    kid = header["x5t#S256"]
    return SignedBatch(kid, reporting_region, owner_region, batch_id, issued_at, tuple(parsed))


# -- the reporter -------------------------------------------------------------------------------
@dataclass
class ReporterCounters:
    """Totals since start (for logs and tests; no metric carries them yet)."""

    queued: int = 0  # reports recorded by hits (their records durable)
    batches: int = 0  # batches the owners accepted
    accepted: int = 0  # reports the owners accepted
    refused: int = 0  # reports an owner refused for good (recorded there as denied)
    failures: int = 0  # sends that failed and will be retried
    last_error: str = ""


def _failure(exc: grpc.aio.AioRpcError) -> str:
    """A failed send, for the log and `counters.last_error`: the code, the owner's reason (one
    of the contract's), and its message bounded and escaped."""
    reason, _ = _status_details(exc)
    return f"{exc.code().name} {reason or '-'}: {peer_text(exc.details() or '')}"


def _status_details(exc: grpc.aio.AioRpcError) -> tuple[str, Mapping[str, str]]:
    """(ErrorInfo reason, metadata) of a peer's rich status, if it sent one."""
    info, _ = error_info_of(exc)
    return (info.reason, dict(info.metadata)) if info is not None else ("", {})


# A refusal of one report (ErrorInfo metadata "index") with one of these codes is final: the
# owner decided, and recorded the refusal; retrying the same report cannot change it.
_FINAL_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    }
)


class AccessReporter:
    """Sends the access reports of requester-side cache hits to their owners, from this
    gateway's own audit log (the outbox): in signed batches, as soon as `batch_size` are waiting
    for an owner, else every `flush_seconds`; with a growing pause per owner (`backoff_min`..
    `backoff_max` seconds) while it cannot be reached or refuses a whole batch. An owner's
    cursor moves only past what it acknowledged, i.e. made durable in its own log; `close()`
    sends what it can on a graceful stop, and whatever is left is sent by the next start.

    The batches are signed with the gateway's audit key (`key`, Ed25519); its registry id is
    the audit key of this region the current registry publishes with the same public key.
    """

    def __init__(
        self,
        *,
        region: str,
        registry: RegistryStore,
        peers: PeerPool,
        audit: AuditLog,
        key: ed25519.Ed25519PrivateKey,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        flush_seconds: float = FLUSH_SECONDS,
        batch_size: int = MAX_REPORTS_PER_BATCH,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        backoff_min: float = BACKOFF_MIN_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        if not 1 <= batch_size <= MAX_REPORTS_PER_BATCH:
            raise ValueError(f"batch_size is 1 to {MAX_REPORTS_PER_BATCH}")
        self.region = region
        self._registry = registry
        self._peers = peers
        self.audit = audit
        self._key = key
        self._public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._clock = clock
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.send_timeout = send_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.max_backlog = max_backlog
        self.counters = ReporterCounters()
        self.backlog: dict[str, int] = {}  # reports waiting per owner, as of the last look
        self._waiting: dict[str, int] = {}  # reports recorded by this process since its last send
        self._retry_at: dict[str, tuple[float, float]] = {}  # owner -> (monotonic, pause)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._kid: tuple[int, str | None] = (-1, None)
        self._closed = False

    # -- the answer path ---------------------------------------------------------------------
    def accepting(self, owner: str) -> bool:
        """Whether a hit for `owner` may be answered from the cache: not while this gateway is
        stopping, nor while `max_backlog` reports already wait for that owner (it is then asked
        instead, like on a miss, so that the outbox does not grow without bound)."""
        return not self._closed and self.backlog.get(owner, 0) < self.max_backlog

    def outbound(self, owner: str, report: AccessReport) -> Outbound:
        """The report as its audit record carries it to the outbox."""
        return Outbound(owner, canonical_json(report.document()))

    def recorded(self, owner: str) -> None:
        """A hit's record (and so its report) is durable: send soon, at once if a batch is full."""
        self.counters.queued += 1
        self.backlog[owner] = self.backlog.get(owner, 0) + 1
        waiting = self._waiting[owner] = self._waiting.get(owner, 0) + 1
        if waiting >= self.batch_size:
            self._wake.set()

    # -- sending -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: flush whenever a batch is full, and every `flush_seconds`."""
        while True:
            try:
                async with asyncio.timeout(self.flush_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except AuditUnavailable as exc:  # the reports wait in the log
                log.warning("access reports: the audit log cannot be read (%s); retrying", exc)

    async def flush(self, *, final: bool = False, deadline: float | None = None) -> int:
        """Send every waiting report whose owner is not in its retry pause (`final`: whatever
        the pause); returns how many the owners accepted. Raises AuditUnavailable."""
        async with self._lock:
            accepted = 0
            self.backlog = await self.audit.outbox_backlog()
            owners = sorted(self.backlog)
            # Nothing is kept per owner that has nothing waiting (delivered by another replica
            # sharing the log, or withdrawn): owners come and go with the registry's regions.
            for gone in (self._retry_at.keys() | self._waiting.keys()) - set(owners):
                self._retry_at.pop(gone, None)
                self._waiting.pop(gone, None)
            for owner in owners:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                retry = self._retry_at.get(owner)
                if not final and retry is not None and time.monotonic() < retry[0]:
                    continue
                accepted += await self._drain(owner, deadline)
            return accepted

    async def _drain(self, owner: str, deadline: float | None) -> int:
        accepted = 0
        limit = self.batch_size
        self._waiting[owner] = 0
        while deadline is None or time.monotonic() < deadline:
            pending = await self.audit.outbox(owner, limit)
            if not pending:
                break
            batch: list[tuple[int, AccessReport]] = []
            for item in pending:
                try:
                    report = AccessReport.from_document(json.loads(item.payload))
                except (ValueError, ReportFormatError) as exc:
                    if not batch:  # the oldest: it can never be sent, and must not block the rest
                        await self._set_aside(owner, item.index, exc)
                    break  # the ones before it go first
                batch.append((item.index, report))
            if not batch:
                continue
            sent, more, limit = await self._send(owner, batch, deadline)
            accepted += sent
            if not more:
                break
        return accepted

    async def _set_aside(self, owner: str, index: int, exc: Exception) -> None:
        """A stored report that does not read back (a row edited by hand, or a bug): said
        loudly, and acknowledged unsent; its audit record still says what was accessed."""
        log.error(
            "access reports: the report of audit record %d for region %s cannot be read back "
            "(%s); it is not sent: tell the owner from that record",
            index,
            owner,
            type(exc).__name__,
        )
        await self.audit.acknowledge(owner, index)
        self.counters.refused += 1
        self.backlog[owner] = max(self.backlog.get(owner, 0) - 1, 0)

    def _signing_kid(self, registry: Registry) -> str | None:
        version, kid = self._kid
        if version == registry.version:
            return kid
        kid = None
        for entry in registry.keys_of(self.region, KeyUsage.AUDIT):
            if entry.state is KeyState.REVOKED:
                continue
            public = x509.load_der_x509_certificate(entry.certificate).public_key()
            if isinstance(public, ed25519.Ed25519PublicKey) and (
                public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                == self._public
            ):
                kid = entry.kid
                break
        self._kid = (registry.version, kid)
        return kid

    def _failed(self, owner: str, why: str) -> None:
        _, pause = self._retry_at.get(owner, (0.0, 0.0))
        pause = min(max(pause * 2, self.backoff_min), self.backoff_max)
        self._retry_at[owner] = (time.monotonic() + pause, pause)
        self.counters.failures += 1
        self.counters.last_error = why
        log.warning(
            "access reports for region %s not delivered (%s); next try in %.1fs", owner, why, pause
        )

    async def _send(
        self, owner: str, batch: list[tuple[int, AccessReport]], deadline: float | None
    ) -> tuple[int, bool, int]:
        """(reports accepted, whether to go on draining this owner, how many to take next)."""
        try:
            registry = self._registry.current()
        except RegistryError as exc:
            self._failed(owner, f"no registry in force: {exc}")
            return 0, False, self.batch_size
        kid = self._signing_kid(registry)
        if kid is None:
            self._failed(
                owner,
                f"the registry publishes no audit key of region {self.region} matching this "
                "gateway's audit key: batches cannot be signed",
            )
            return 0, False, self.batch_size
        reports = [report for _, report in batch]
        payload = batch_payload(
            reporting_region=self.region,
            owner_region=owner,
            batch_id=secrets.token_hex(16),
            issued_at=self._clock(),
            reports=reports,
        )
        request = exchange_pb2.ReportAccessRequest(
            jws=sign_batch(payload, self._key, kid),
            reports=[r.message() for r in reports],
            reporting_region=self.region,
        )
        timeout = self.send_timeout
        if deadline is not None:
            timeout = max(min(timeout, deadline - time.monotonic()), 0.05)
        try:
            response = await self._peers.call(
                owner,
                lambda stub: stub.ReportAccess(request, timeout=timeout),
                timeout_seconds=timeout,
            )
        except (UnknownPeer, BreakerOpen, TimeoutError) as exc:
            self._failed(owner, str(exc) or type(exc).__name__)
            return 0, False, self.batch_size
        except grpc.aio.AioRpcError as exc:
            reason, metadata = _status_details(exc)
            index = metadata.get("index", "")
            if exc.code() in _FINAL_CODES and index.isdigit() and int(index) < len(batch):
                return await self._refused(owner, batch, int(index), reason or exc.code().name)
            self._failed(owner, _failure(exc))
            return 0, False, self.batch_size
        if response.accepted != len(batch) or len(response.audit_ids) != len(batch):
            self._failed(
                owner,
                f"the owner acknowledged {response.accepted} of {len(batch)} reports",
            )
            return 0, False, self.batch_size
        # The owner made them durable: only now does its cursor move past them.
        await self.audit.acknowledge(owner, batch[-1][0])
        self._retry_at.pop(owner, None)
        self.counters.batches += 1
        self.counters.accepted += len(batch)
        self.backlog[owner] = max(self.backlog.get(owner, 0) - len(batch), 0)
        return len(batch), True, self.batch_size  # until the outbox reads empty

    async def _refused(
        self, owner: str, batch: list[tuple[int, AccessReport]], at: int, reason: str
    ) -> tuple[int, bool, int]:
        """The owner refused report `at` of the batch for good (and recorded the refusal). The
        cursor passes it only once it is the oldest waiting: the ones before it go first, alone."""
        if at > 0:
            return 0, True, at
        index, refused = batch[0]
        log.error(
            "access reports: region %s refused a report of %s's access to %s (%s); it recorded "
            "the refusal, and the report (audit record %d) is not sent again",
            owner,
            refused.caller_agency,
            refused.dataset,
            reason,
            index,
        )
        await self.audit.acknowledge(owner, index)
        self.counters.refused += 1
        self.backlog[owner] = max(self.backlog.get(owner, 0) - 1, 0)
        return 0, True, self.batch_size

    async def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """A graceful stop: no more hits are answered from the cache; what waits is sent
        (within `timeout`). What is left waits in the audit log for the next start; from an
        in-memory log it is lost with the log itself, and said so."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout + 1):
                await self.flush(final=True, deadline=deadline)
            left = await self.audit.outbox_backlog()
        except (AuditUnavailable, TimeoutError) as exc:
            log.warning("access reports: the final flush did not finish (%s)", exc)
            return
        if not left:
            return
        waiting = ", ".join(f"{n} for {owner}" for owner, n in sorted(left.items()))
        if self.audit.durable:
            log.warning(
                "access reports: %s still waiting at stop; they are sent when region %s's "
                "gateway starts again on this audit log",
                waiting,
                self.region,
            )
        else:
            log.error(
                "access reports: %s could not be delivered before the stop and are lost with "
                "the in-memory audit log",
                waiting,
            )
