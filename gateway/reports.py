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

The queue (`ReportQueue`) is the outbox: a hit is answered from the cache only once its report
is queued (and its own audit record is durable); a report leaves the queue only once the owner
acknowledged it. `RedisReportQueue` keeps it in the region's Redis (one stream per owner, read
through a consumer group, so any replica delivers what a stopped or crashed one queued);
`MemoryReportQueue` in the process, for a single replica without Redis (lost if the process
dies; flushed on a graceful stop). Both are bounded: a full queue refuses, and the hit is then
forwarded to the owner like a miss. Delivery is at least once; the owner recognises a report it
already recorded (same request, caller, digest and access time) and answers with the same
audit id, so a retry never records an access twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.audit import FIELD_GRAMMARS, is_case_id, is_request_id
from gateway.cache import AnswerCache, BreakerOpen, CircuitBreaker
from gateway.errors import error_info_of, peer_text
from gateway.peers import PeerPool, UnknownPeer
from gateway.replay import redis_call
from registry import KeyState, KeyUsage, Registry, RegistryError, RegistryStore, is_registry_id
from tongban.v1 import common_pb2, exchange_pb2

__all__ = [
    "BATCH_VERSION",
    "FLUSH_SECONDS",
    "MAX_BATCH_JWS_BYTES",
    "MAX_REPORTS_PER_BATCH",
    "REPORT_TYPE",
    "AccessReport",
    "AccessReporter",
    "BatchRefused",
    "MemoryReportQueue",
    "Queued",
    "RedisReportQueue",
    "ReportFormatError",
    "ReportQueue",
    "ReportQueueUnavailable",
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
FLUSH_SECONDS: Final = 1.0  # a queued report waits at most this long before it is sent
SEND_TIMEOUT_SECONDS: Final = 5.0  # one Peer.ReportAccess call
BACKOFF_MIN_SECONDS: Final = 0.5  # after a failed send to an owner, doubled up to the max
BACKOFF_MAX_SECONDS: Final = 30.0
CLOSE_SECONDS: Final = 5.0  # what a graceful stop spends flushing at most
CLAIM_IDLE_SECONDS: Final = 30.0  # a report another replica took this long ago is taken over
MEMORY_BACKLOG: Final = 10_000  # reports held per owner in memory at most
REDIS_BACKLOG: Final = 100_000  # reports queued per owner in Redis at most
QUEUE_TIMEOUT_SECONDS: Final = 0.25  # one Redis operation on the answer path
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


class ReportFormatError(ValueError):
    """A report or batch that is not in the `tongban.access-report/v1` form."""


class ReportQueueUnavailable(Exception):
    """A report could not be queued (the queue is full, or its store did not answer): the hit
    must not be answered from the requester's cache."""


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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


class BatchRefused(Exception):
    """A batch (or one of its reports, `index`) the owner does not accept: the status code,
    the ErrorInfo reason, and a sentence for a person."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, index: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
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
    return jwt.PyJWS().encode(
        payload, key, algorithm="EdDSA", headers={"typ": REPORT_TYPE, "kid": kid, "x5t#S256": kid}
    )


def _signature_invalid(message: str) -> BatchRefused:
    return BatchRefused(grpc.StatusCode.UNAUTHENTICATED, "REPORT_SIGNATURE_INVALID", message)


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
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_TOO_LARGE",
            f"a batch is a compact JWS of at most {MAX_BATCH_JWS_BYTES} bytes",
        )
    parts = jws.split(".")
    if len(parts) != 3 or not parts[2]:
        raise _signature_invalid("the batch is not a signed compact JWS")
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.PyJWTError as exc:
        raise _signature_invalid(f"the batch header cannot be read: {exc}") from exc
    if header.get("alg") != "EdDSA":
        raise _signature_invalid("a batch is signed with EdDSA (the region's Ed25519 audit key)")
    if header.get("typ") != REPORT_TYPE:
        raise _signature_invalid(f"the batch's typ is not {REPORT_TYPE}")
    # (2)
    public = _report_key(registry, header.get("x5t#S256"), reporting_region, now)
    # (3)
    try:
        payload = jwt.PyJWS().decode(jws, key=public, algorithms=["EdDSA"])
    except jwt.InvalidSignatureError as exc:
        raise _signature_invalid(
            "the batch signature does not verify with the key it names"
        ) from exc
    except jwt.PyJWTError as exc:
        raise _signature_invalid(f"the batch cannot be decoded: {exc}") from exc
    # (4)
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT_FORMAT",
            "the batch payload is not JSON",
        ) from exc
    if (
        not isinstance(document, dict)
        or set(document) != _BATCH_KEYS
        or document.get("v") != BATCH_VERSION
        or canonical_json(document) != payload
    ):
        raise BatchRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT_FORMAT",
            "the batch payload is not canonical tongban.access-report/v1 JSON",
        )
    if document["reporting_region"] != reporting_region or document["owner_region"] != owner_region:
        raise BatchRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "REPORT_PAYLOAD_MISMATCH",
            f"the signed batch is from {document['reporting_region']!s:.8} to "
            f"{document['owner_region']!s:.8}, not from {reporting_region} to {owner_region}",
        )
    try:
        batch_id = _text(document["batch_id"], "batch_id")
        issued_at = parse_time(document["issued_at"], "issued_at")
    except ReportFormatError as exc:
        raise BatchRefused(
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT_FORMAT", str(exc)
        ) from exc
    # (5)
    reports = document["reports"]
    if not isinstance(reports, list) or not reports:
        raise BatchRefused(
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT_FORMAT", "a batch holds reports"
        )
    if len(reports) > MAX_REPORTS_PER_BATCH:
        raise BatchRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_TOO_LARGE",
            f"a batch holds at most {MAX_REPORTS_PER_BATCH} reports",
        )
    parsed = []
    for index, item in enumerate(reports):
        try:
            parsed.append(AccessReport.from_document(item))
        except ReportFormatError as exc:
            raise BatchRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_ARGUMENT_FORMAT",
                f"report {index}: {exc}",
                index,
            ) from exc
    kid = header["x5t#S256"]
    return SignedBatch(kid, reporting_region, owner_region, batch_id, issued_at, tuple(parsed))


# -- the queue ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Queued:
    entry_id: str
    report: AccessReport


class ReportQueue(Protocol):
    """Reports waiting for their owner's acknowledgement, per owner region."""

    @property
    def durable(self) -> bool:
        """Whether what is queued outlives this process."""
        ...

    async def put(self, owner: str, report: AccessReport) -> str:
        """Queue a report; its entry id. Raises ReportQueueUnavailable (full, or down)."""
        ...

    async def drop(self, owner: str, entry_id: str) -> None:
        """Forget a report that must not be sent after all (its access was not released)."""
        ...

    async def owners(self) -> tuple[str, ...]:
        """Owner regions that may have reports queued."""
        ...

    async def take(self, owner: str, limit: int) -> list[Queued]:
        """Up to `limit` reports to send to `owner`, oldest first, those taken before and not
        acknowledged first; they stay queued until `done`."""
        ...

    async def done(self, owner: str, entry_ids: Sequence[str]) -> None:
        """The owner acknowledged (or definitively refused) these: remove them."""
        ...

    async def backlog(self, owner: str) -> int:
        """Reports queued for `owner`."""
        ...

    async def tidy(self) -> None:
        """Forget the owners nothing is queued for (at a graceful stop)."""
        ...


class MemoryReportQueue:
    """The queue in this process: for one replica without Redis. Lost if the process dies."""

    durable = False

    def __init__(self, max_per_owner: int = MEMORY_BACKLOG) -> None:
        self._max = max_per_owner
        self._entries: dict[str, OrderedDict[str, AccessReport]] = {}
        self._next = 0

    async def put(self, owner: str, report: AccessReport) -> str:
        entries = self._entries.setdefault(owner, OrderedDict())
        if len(entries) >= self._max:
            raise ReportQueueUnavailable(
                f"{len(entries)} reports for region {owner} are waiting: the queue is full"
            )
        self._next += 1
        entry_id = str(self._next)
        entries[entry_id] = report
        return entry_id

    async def drop(self, owner: str, entry_id: str) -> None:
        await self.done(owner, [entry_id])

    async def owners(self) -> tuple[str, ...]:
        return tuple(sorted(owner for owner, entries in self._entries.items() if entries))

    async def take(self, owner: str, limit: int) -> list[Queued]:
        entries = self._entries.get(owner, OrderedDict())
        out: list[Queued] = []
        for entry_id, report in entries.items():
            if len(out) >= limit:
                break
            out.append(Queued(entry_id, report))
        return out

    async def done(self, owner: str, entry_ids: Sequence[str]) -> None:
        entries = self._entries.get(owner, OrderedDict())
        for entry_id in entry_ids:
            entries.pop(entry_id, None)
        if not entries:
            self._entries.pop(owner, None)  # an empty backlog per owner is not kept

    async def backlog(self, owner: str) -> int:
        return len(self._entries.get(owner, ()))

    async def tidy(self) -> None:
        for owner in [o for o, entries in self._entries.items() if not entries]:
            del self._entries[owner]


def _text_of(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_entries(response: object) -> list[tuple[str, dict[Any, Any] | None]]:
    """(id, fields) of an XREADGROUP reply for one stream: RESP2 `[[stream, entries]]` or
    RESP3 `{stream: [entries]}`; an entry deleted while pending has no fields."""
    if not response:
        return []
    lists: list[Any]
    if isinstance(response, dict):
        lists = [entries for value in response.values() for entries in value]
    elif isinstance(response, list):
        lists = [item[1] for item in response]
    else:
        return []
    out: list[tuple[str, dict[Any, Any] | None]] = []
    for entries in lists:
        for entry in entries or ():
            if not entry or entry[0] is None:
                continue
            fields = entry[1] if len(entry) > 1 else None
            out.append((_text_of(entry[0]), fields if isinstance(fields, dict) else None))
    return out


class RedisReportQueue:
    """The queue in the region's Redis, shared by its replicas: one stream per owner region,
    `tb:rep:<region>:<key id>:<owner>`, read through the consumer group "reporters"; the owners
    with a stream in the set `tb:rep:<region>:<key id>:owners`. Each entry is the report's
    canonical JSON, encrypted under the answer cache's key (it holds a case id and a
    pseudonym), whose id is part of the names: drain the queue before rotating that key. A
    report taken by a replica that then stopped is taken over by another after
    `claim_idle_seconds`.

    Durable as far as Redis is: run it with `appendonly yes` (`appendfsync everysec` risks the
    last second of reports if Redis itself crashes; `always` none)."""

    durable = True
    GROUP: Final = "reporters"

    def __init__(
        self,
        client: Redis,
        *,
        region: str,
        crypto: AnswerCache,
        consumer: str | None = None,
        claim_idle_seconds: float = CLAIM_IDLE_SECONDS,
        max_per_owner: int = REDIS_BACKLOG,
        timeout: float = QUEUE_TIMEOUT_SECONDS,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._client = client
        self._breaker = breaker  # the gateway's Redis breaker: `put` fails at once while open
        self._prefix = f"tb:rep:{region}:{crypto.key_id}:"
        self._owners = f"{self._prefix}owners"
        self._crypto = crypto
        self.consumer = consumer or f"gateway-{region}-{secrets.token_hex(6)}"
        self.claim_idle_seconds = claim_idle_seconds
        self._max = max_per_owner
        self._timeout = timeout
        self._grouped: set[str] = set()

    def stream(self, owner: str) -> str:
        return self._prefix + owner

    async def put(self, owner: str, report: AccessReport) -> str:
        stream = self.stream(owner)
        value = self._crypto.encrypt_value(stream.encode(), canonical_json(report.document()))

        async def send() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xlen(stream)
                pipe.xadd(stream, {"r": value})
                pipe.sadd(self._owners, owner)
                return await pipe.execute()

        try:
            length, entry_id, _ = await redis_call(self._breaker, send, self._timeout)
        except BreakerOpen as exc:
            raise ReportQueueUnavailable(f"the report queue (Redis) is not called: {exc}") from exc
        except Exception as exc:  # redis, timeout, connection: the hit is not served locally
            raise ReportQueueUnavailable(
                f"the report queue (Redis) did not answer ({type(exc).__name__})"
            ) from exc
        entry = _text_of(entry_id)
        if int(length) >= self._max:
            await self.drop(owner, entry)
            raise ReportQueueUnavailable(
                f"{length} reports for region {owner} are waiting: the queue is full"
            )
        return entry

    async def drop(self, owner: str, entry_id: str) -> None:
        async with asyncio.timeout(self._timeout):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xack(self.stream(owner), self.GROUP, entry_id)
                pipe.xdel(self.stream(owner), entry_id)
                await pipe.execute()

    async def owners(self) -> tuple[str, ...]:
        members = await self._client.smembers(self._owners)
        return tuple(sorted(_text_of(m) for m in members))

    async def _group(self, stream: str) -> None:
        if stream in self._grouped:
            return
        try:
            await self._client.xgroup_create(stream, self.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(stream)

    async def take(self, owner: str, limit: int) -> list[Queued]:
        stream = self.stream(owner)
        await self._group(stream)
        try:
            return await self._take(stream, owner, limit)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._grouped.discard(stream)  # the stream was removed and made again: regroup
            await self._group(stream)
            return await self._take(stream, owner, limit)

    async def _take(self, stream: str, owner: str, limit: int) -> list[Queued]:
        found: list[tuple[str, dict[Any, Any] | None]] = []
        # (1) taken by this consumer before and not acknowledged (a send that failed)
        found += _stream_entries(
            await self._client.xreadgroup(self.GROUP, self.consumer, {stream: "0"}, count=limit)
        )
        # (2) taken by a replica that has not acknowledged them for a while (stopped, crashed)
        if len(found) < limit:
            claimed = await self._client.xautoclaim(
                stream,
                self.GROUP,
                self.consumer,
                int(self.claim_idle_seconds * 1000),
                start_id="0-0",
                count=limit - len(found),
            )
            entries = claimed[1] if isinstance(claimed, list | tuple) and len(claimed) > 1 else []
            found += [
                (_text_of(e[0]), e[1] if isinstance(e[1], dict) else None)
                for e in entries
                if e and e[0] is not None
            ]
        # (3) new ones
        if len(found) < limit:
            found += _stream_entries(
                await self._client.xreadgroup(
                    self.GROUP, self.consumer, {stream: ">"}, count=limit - len(found)
                )
            )
        out: list[Queued] = []
        unreadable: list[str] = []
        deleted: list[str] = []
        seen: set[str] = set()
        for entry_id, fields in found:
            if entry_id in seen:
                continue
            seen.add(entry_id)
            if fields is None:  # taken back (`drop`) after a reporter had read it
                deleted.append(entry_id)
                continue
            raw = fields.get(b"r", fields.get("r"))
            plain = (
                self._crypto.decrypt_value(stream.encode(), raw) if isinstance(raw, bytes) else None
            )
            try:
                report = AccessReport.from_document(json.loads(plain)) if plain else None
            except (ValueError, TypeError):
                report = None
            if report is None:
                unreadable.append(entry_id)
                continue
            out.append(Queued(entry_id, report))
        if deleted:
            await self._client.xack(stream, self.GROUP, *deleted)
        if unreadable:
            # Encrypted under a cache key this gateway does not hold (or damaged): kept aside
            # (never silently dropped) for an operator, out of the way of the rest.
            log.error(
                "access reports: %d queued reports for region %s cannot be read (cache key "
                "rotated?); moved to %s:unreadable",
                len(unreadable),
                owner,
                stream,
            )
            async with self._client.pipeline(transaction=False) as pipe:
                kept = dict(reversed(found))  # each entry once
                for entry_id in unreadable:
                    if kept.get(entry_id):
                        pipe.xadd(f"{stream}:unreadable", kept[entry_id] or {})
                pipe.xack(stream, self.GROUP, *unreadable)
                pipe.xdel(stream, *unreadable)
                await pipe.execute()
        return out

    async def done(self, owner: str, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        stream = self.stream(owner)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.xack(stream, self.GROUP, *entry_ids)
            pipe.xdel(stream, *entry_ids)
            await pipe.execute()

    async def backlog(self, owner: str) -> int:
        return int(await self._client.xlen(self.stream(owner)))

    # Atomic: an XADD lands either before (the stream is kept) or after (it makes the stream
    # again, and its SADD the owner; the reporter then makes the group again: NOGROUP).
    _REMOVE_IF_EMPTY: Final = """
        if redis.call('XLEN', KEYS[1]) == 0 then
            redis.call('DEL', KEYS[1])
            redis.call('SREM', KEYS[2], ARGV[1])
            return 1
        end
        return 0
    """

    async def tidy(self) -> None:
        """Remove the streams (and their consumer group) of owners nothing is queued for, so
        that a stopped deployment leaves no empty keys behind."""
        for owner in await self.owners():
            stream = self.stream(owner)
            removed = await self._client.eval(self._REMOVE_IF_EMPTY, 2, stream, self._owners, owner)
            if removed:
                self._grouped.discard(stream)


# -- the reporter -------------------------------------------------------------------------------
@dataclass
class ReporterCounters:
    """Totals since start (for logs and tests; no metric carries them yet)."""

    queued: int = 0  # reports queued by hits
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
    """Sends the queued reports of requester-side cache hits to their owners, in signed
    batches: as soon as `batch_size` are waiting, else every `flush_seconds`; with retries and
    a growing pause per owner (`backoff_min`..`backoff_max` seconds) while one cannot be
    reached or refuses a whole batch; `close()` flushes what is left on a graceful stop.

    The batches are signed with the gateway's audit key (`key`, Ed25519); its registry id is
    the audit key of this region the current registry publishes with the same public key.
    """

    def __init__(
        self,
        *,
        region: str,
        registry: RegistryStore,
        peers: PeerPool,
        queue: ReportQueue,
        key: ed25519.Ed25519PrivateKey,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        flush_seconds: float = FLUSH_SECONDS,
        batch_size: int = MAX_REPORTS_PER_BATCH,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        backoff_min: float = BACKOFF_MIN_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        if not 1 <= batch_size <= MAX_REPORTS_PER_BATCH:
            raise ValueError(f"batch_size is 1 to {MAX_REPORTS_PER_BATCH}")
        self.region = region
        self._registry = registry
        self._peers = peers
        self.queue = queue
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
        self.counters = ReporterCounters()
        self._waiting: dict[str, int] = {}  # reports queued by this process since its last send
        self._retry_at: dict[str, tuple[float, float]] = {}  # owner -> (monotonic, pause)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._kid: tuple[int, str | None] = (-1, None)
        self._closed = False

    # -- the answer path ---------------------------------------------------------------------
    async def queue_report(self, owner: str, report: AccessReport) -> str:
        """Queue one report; its entry id. Raises ReportQueueUnavailable (then the hit must be
        forwarded to the owner instead)."""
        if self._closed:
            raise ReportQueueUnavailable("the gateway is stopping: reports are no longer queued")
        entry_id = await self.queue.put(owner, report)
        self.counters.queued += 1
        waiting = self._waiting[owner] = self._waiting.get(owner, 0) + 1
        if waiting >= self.batch_size:
            self._wake.set()
        return entry_id

    async def unqueue(self, owner: str, entry_id: str) -> None:
        """Best effort: take back a report whose access was not released after all."""
        try:
            await self.queue.drop(owner, entry_id)
        except Exception as exc:  # the owner will then record one access too many: the safe side
            log.warning(
                "access reports: a report for region %s whose answer was not released could not "
                "be taken back (%s): the owner will record it",
                owner,
                type(exc).__name__,
            )

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
            except Exception as exc:  # the queue's store is down: the reports wait in it
                log.warning("access reports: flush failed (%s); retrying", type(exc).__name__)

    async def flush(self, *, final: bool = False, deadline: float | None = None) -> int:
        """Send every queued report whose owner is not in its retry pause (`final`: whatever
        the pause); returns how many the owners accepted."""
        async with self._lock:
            accepted = 0
            owners = await self.queue.owners()
            # Nothing is kept per owner that has nothing queued (its reports were delivered by
            # another replica, or taken back): owners come and go with the registry's regions.
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
        if not await self.queue.backlog(owner):  # one cheap call when there is nothing to send
            self._waiting[owner] = 0
            return 0
        while deadline is None or time.monotonic() < deadline:
            batch = await self.queue.take(owner, self.batch_size)
            if not batch:
                self._waiting[owner] = 0
                break
            sent, more = await self._send(owner, batch, deadline)
            accepted += sent
            if not more:
                break
        return accepted

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
        self, owner: str, batch: list[Queued], deadline: float | None
    ) -> tuple[int, bool]:
        """(reports accepted, whether to go on draining this owner)."""
        try:
            registry = self._registry.current()
        except RegistryError as exc:
            self._failed(owner, f"no registry in force: {exc}")
            return 0, False
        kid = self._signing_kid(registry)
        if kid is None:
            self._failed(
                owner,
                f"the registry publishes no audit key of region {self.region} matching this "
                "gateway's audit key: batches cannot be signed",
            )
            return 0, False
        reports = [q.report for q in batch]
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
            return 0, False
        except grpc.aio.AioRpcError as exc:
            reason, metadata = _status_details(exc)
            index = metadata.get("index", "")
            if exc.code() in _FINAL_CODES and index.isdigit() and int(index) < len(batch):
                refused = batch[int(index)]
                log.error(  # noqa: TRY400 - the owner's decision, not a traceback
                    "access reports: region %s refused a report of %s's access to %s (%s); it "
                    "recorded the refusal, and the report is not sent again",
                    owner,
                    refused.report.caller_agency,
                    refused.report.dataset,
                    reason or exc.code().name,
                )
                await self.queue.done(owner, [refused.entry_id])
                self.counters.refused += 1
                return 0, True  # the rest of the batch goes again at once
            self._failed(owner, _failure(exc))
            return 0, False
        if response.accepted != len(batch) or len(response.audit_ids) != len(batch):
            self._failed(
                owner,
                f"the owner acknowledged {response.accepted} of {len(batch)} reports",
            )
            return 0, False
        await self.queue.done(owner, [q.entry_id for q in batch])
        self._retry_at.pop(owner, None)
        self.counters.batches += 1
        self.counters.accepted += len(batch)
        return len(batch), len(batch) >= self.batch_size

    async def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """A graceful stop: no more reports are queued; what is queued is sent (within
        `timeout`). What is left stays in a durable queue for the next reporter; from a memory
        queue it is lost, and said so in the log."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout + 1):
                await self.flush(final=True, deadline=deadline)
        except Exception:
            log.warning("access reports: the final flush failed", exc_info=True)
        try:
            await self.queue.tidy()
            left = {owner: await self.queue.backlog(owner) for owner in await self.queue.owners()}
        except Exception:
            return
        left = {owner: n for owner, n in left.items() if n}
        if not left:
            return
        if self.queue.durable:
            log.warning(
                "access reports: %s still queued at stop; the next reporter of region %s sends them",
                ", ".join(f"{n} for {owner}" for owner, n in sorted(left.items())),
                self.region,
            )
        else:
            log.error(
                "access reports: %s could not be delivered before the stop and are lost "
                "(the queue was in memory); this gateway's audit log still records each hit",
                ", ".join(f"{n} for {owner}" for owner, n in sorted(left.items())),
            )
