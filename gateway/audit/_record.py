"""The audit record and its canonical encoding (the bytes hashed as a Merkle leaf).

Encoding `tongban.audit/v1`: one JSON object, keys sorted, no insignificant white space,
UTF-8 (no escapes for non-ASCII), with exactly these keys::

    v                 1 (the encoding version)
    time              RFC 3339 UTC with microseconds, e.g. "2026-11-21T08:00:00.123456Z"
    gateway, region   the gateway instance and its region (GB/T 2260)
    rpc               the full gRPC method, e.g. "/tongban.v1.DataExchange/Query" (records
                      written before it was the full name hold "DataExchange.Query"; a
                      retention prune, which no RPC makes, is "Audit.Prune")
    request_id        the caller's request id
    caller_agency, caller_operator, caller_region
    provider_region, dataset, purpose, case_id
    subject           HMAC-SHA256 (hex) of the subject id under the deployment's audit key;
                      never the raw id
    fields            the fields returned, sorted
    outcome, reason   "allowed" | "denied" | "failed", and the ErrorInfo reason or ""
    cache_hit         true | false
    latency_us        integer microseconds
    sealed_digest     hex SHA-256 of the sealed answer, or ""
    registry_version  integer
    agreement_id      the agreement the decision rested on, or ""

and, only in a record that keeps a signed request (present when not empty, so that every
record written before them keeps its bytes):

    request_digest    hex SHA-256 of the signed request as sent (a Peer.Forward's
                      signed_request, a Peer.ReportAccess batch's jws)
    request_sealed    a Peer.Forward's signed request itself, encrypted (`seal_kept_request`:
                      its payload holds the raw subject id, which no record may hold)

and, only in a record of a query under a consent (present when not empty):

    consent_id        the consent's id (its `jti`, gateway.consent), never its subject

A record decodes back from its canonical bytes (`AuditRecord.from_canonical`), so a verifier
needs nothing but the stored bytes to recompute every leaf.

Every value is bounded, in the record itself, so that no caller can make a record a weapon
(megabytes that break every answer listing it, a citizen id sent as a purpose). Each text field
has a grammar and a bound (`FIELD_GRAMMARS`); a value outside them is recorded as its length and
digest, `digest_form(value)` = ``sha256:<hex of its UTF-8>;len=<its UTF-8 bytes>``, never raw,
and never refused (the audit of a refusal must not fail on the value it refuses). A digest form
is itself within every grammar, so a record decodes to the same bytes. `fields` holds at most
`MAX_RECORD_FIELDS` names, each a registry id; more are recorded as one digest of them all
(newline-separated, sorted).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from time import perf_counter
from types import MappingProxyType
from typing import Any, Final

from registry import contains_citizen_id, is_region_code, is_registry_id

__all__ = [
    "ENCODING_VERSION",
    "FIELD_GRAMMARS",
    "MAX_RECORD_FIELDS",
    "MAX_RECORD_TEXT_CHARS",
    "AuditRecord",
    "Outcome",
    "digest_form",
    "is_case_id",
    "is_digest_form",
    "is_request_id",
    "pseudonymize",
    "recordable",
]

ENCODING_VERSION = 1
MAX_RECORD_TEXT_CHARS: Final = 128  # characters of a case id, request id, operator, gateway name
MAX_RECORD_FIELDS: Final = 64  # field names in one record
MAX_REASON_CHARS: Final = 64  # characters of an ErrorInfo reason
MAX_RPC_CHARS: Final = 96  # characters of "/package.Service/Method" (or "Service.Method")

_DIGEST_FORM: Final = re.compile(r"sha256:[0-9a-f]{64};len=[0-9]{1,20}")
_REQUEST_ID: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_RECORD_TEXT_CHARS}}}")
_REASON: Final = re.compile(rf"[A-Z][A-Z0-9_]{{0,{MAX_REASON_CHARS - 1}}}")
_RPC: Final = re.compile(
    r"/[a-z][a-z0-9_]{0,15}(?:\.[a-z][a-z0-9_]{0,15}){0,3}\.[A-Z][A-Za-z0-9]{0,31}/[A-Z][A-Za-z0-9]{0,31}"
    r"|[A-Z][A-Za-z0-9]{0,31}\.[A-Z][A-Za-z0-9]{0,31}"
)
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
# A kept request, encrypted (gateway.audit._kept): bounded like the JWS it holds.
_SEALED: Final = re.compile(r"aes256gcm:[A-Za-z0-9_-]{40,65536}")
# An Audit.Prune record holds the range it removed where others hold their agreement.
_PRUNED_RANGE: Final = re.compile(r"removed records [0-9]{1,19} to [0-9]{1,19}")
_CONSENT_ID: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")  # gateway.consent.is_consent_id


def digest_form(value: str | bytes) -> str:
    """What a record holds instead of `value`: ``sha256:<hex>;len=<n>``, the SHA-256 and the
    length in bytes of its UTF-8 (lone surrogates kept as they are, so that any str has one),
    or of the bytes themselves."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return f"sha256:{hashlib.sha256(data).hexdigest()};len={len(data)}"


def is_digest_form(value: str) -> bool:
    return _DIGEST_FORM.fullmatch(value) is not None


def _printable(value: str) -> bool:
    """Bounded printable text (no control, format or surrogate characters), no citizen id."""
    return (
        len(value) <= MAX_RECORD_TEXT_CHARS
        and value.isprintable()
        and not contains_citizen_id(value)
    )


def is_case_id(value: str) -> bool:
    """The case-id grammar (办件编号): 1 to 128 printable characters, no control characters,
    and no citizen id in it (a case number is not a person)."""
    return bool(value) and _printable(value)


def is_request_id(value: str) -> bool:
    """The request-id grammar: 1 to 128 printable ASCII characters without spaces, and no
    citizen id in it."""
    return _REQUEST_ID.fullmatch(value) is not None and not contains_citizen_id(value)


# The grammar of each text field of a record; "" is always recordable (not given).
FIELD_GRAMMARS: Final[Mapping[str, Callable[[str], bool]]] = MappingProxyType(
    {
        "gateway": _printable,
        "region": is_region_code,
        "rpc": lambda v: _RPC.fullmatch(v) is not None,
        "request_id": is_request_id,
        "caller_agency": is_registry_id,
        "caller_operator": _printable,
        "caller_region": is_region_code,
        "provider_region": is_region_code,
        "dataset": is_registry_id,
        "purpose": is_registry_id,
        "case_id": is_case_id,
        "reason": lambda v: _REASON.fullmatch(v) is not None,
        "sealed_digest": lambda v: _HEX64.fullmatch(v) is not None,
        "agreement_id": lambda v: is_registry_id(v) or _PRUNED_RANGE.fullmatch(v) is not None,
        "request_digest": lambda v: _HEX64.fullmatch(v) is not None,
        "request_sealed": lambda v: _SEALED.fullmatch(v) is not None,
        "consent_id": lambda v: _CONSENT_ID.fullmatch(v) is not None,
    }
)


# True while stored bytes are decoded: a record written before the bounds (or by another
# version) is evidence, and decodes to exactly its bytes, whatever it holds.
_DECODING: ContextVar[bool] = ContextVar("tongban_audit_decoding", default=False)


def recordable(value: str, grammar: Callable[[str], bool]) -> str:
    """`value` if it is empty, within `grammar` or a digest form already; else its digest form."""
    if not isinstance(value, str):
        raise TypeError("an audit record holds text")
    if not value or grammar(value) or is_digest_form(value):
        return value
    return digest_form(value)


# An oversight record notes the filters it was asked with and how many records it returned in
# `fields`, as `name=value` (e.g. "caller_agency=sc.hrss", "returned=3").
_ANNOTATION: Final = re.compile(r"([a-z][a-z_]{0,31})=(.+)", re.S)


def _is_field_entry(value: str) -> bool:
    """A field name (a registry id), or an oversight record's `name=value` note whose value is
    bounded printable text without a citizen id (or a digest form)."""
    if is_registry_id(value):
        return True
    found = _ANNOTATION.fullmatch(value)
    return found is not None and (is_digest_form(found[2]) or _printable(found[2]))


def _recordable_fields(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(names) > MAX_RECORD_FIELDS:
        return (digest_form("\n".join(sorted(names))),)
    return tuple(recordable(name, _is_field_entry) for name in names)


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    FAILED = "failed"


def pseudonymize(subject_id: str, key: bytes) -> str:
    """The pseudonymous subject: hex HMAC-SHA256 of the id under the deployment's key."""
    if len(key) < 16:
        raise ValueError("the audit pseudonym key must be at least 16 bytes")
    return hmac.new(key, subject_id.encode("utf-8"), hashlib.sha256).hexdigest()


# What each text field's last value was recorded as, and the last fields': a gateway's records
# repeat most values (its own name and region, the rpc, and a batch's agency, dataset, purpose,
# subject and fields), and `recordable` is a pure function of the value, so a value equal to
# the last one is recorded as that one was without being tested again. (Shared by every
# thread: each entry is replaced whole, and any entry read is a true pair.)
_LAST_RECORDED: dict[str, tuple[str, str]] = {}
# The encoder `json.dumps` would make for these options at each call, made once.
_CANONICAL: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_LAST_FIELDS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [((), ())]


def _time(value: datetime) -> str:
    utc = value.astimezone(UTC)
    if not 1000 <= utc.year <= 9999:  # strftime writes such a year unpadded: as it always did
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # What strftime writes for every other time, without its call (a third of its cost).
    return (
        f"{utc.year}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond:06d}Z"
    )


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: datetime
    gateway: str
    region: str
    rpc: str
    request_id: str
    caller_agency: str
    caller_operator: str
    caller_region: str
    provider_region: str
    dataset: str
    purpose: str
    case_id: str
    subject: str  # pseudonym (see `pseudonymize`), never a raw id
    fields: tuple[str, ...]
    outcome: Outcome
    reason: str
    cache_hit: bool
    latency_us: int
    sealed_digest: str
    registry_version: int
    agreement_id: str
    request_digest: str = ""  # hex SHA-256 of the signed request kept with the record
    request_sealed: str = ""  # the signed request (a Peer.Forward's), encrypted
    consent_id: str = ""  # the consent the query rested on (its jti)
    canonical: bytes = field(init=False, repr=False, compare=False)
    time_text: str = field(init=False, repr=False, compare=False)  # `time` as encoded

    def __post_init__(self) -> None:
        if not _DECODING.get():
            for name, grammar in FIELD_GRAMMARS.items():
                value = getattr(self, name)
                if value and type(value) is str:  # a str subclass: tested each time
                    last = _LAST_RECORDED.get(name)
                    if last is None or last[0] != value:
                        last = (value, recordable(value, grammar))
                        _LAST_RECORDED[name] = last
                    object.__setattr__(self, name, last[1])
                else:
                    object.__setattr__(self, name, recordable(value, grammar))
            fields = tuple(self.fields)
            last_fields = _LAST_FIELDS[0]
            if last_fields[0] != fields:
                last_fields = (fields, _recordable_fields(fields))
                _LAST_FIELDS[0] = last_fields
            object.__setattr__(self, "fields", last_fields[1])
        if self.time.tzinfo is None:
            raise ValueError("an audit time is timezone-aware")
        if self.subject and _HEX64.fullmatch(self.subject) is None:
            raise ValueError("the audit subject is a hex HMAC-SHA256 pseudonym, never a raw id")
        if self.latency_us < 0 or self.registry_version < 0:
            raise ValueError("latency and registry version are not negative")
        object.__setattr__(self, "time_text", _time(self.time))
        object.__setattr__(self, "canonical", self._encode())

    def _encode(self) -> bytes:
        document = {
            "v": ENCODING_VERSION,
            "time": self.time_text,
            "gateway": self.gateway,
            "region": self.region,
            "rpc": self.rpc,
            "request_id": self.request_id,
            "caller_agency": self.caller_agency,
            "caller_operator": self.caller_operator,
            "caller_region": self.caller_region,
            "provider_region": self.provider_region,
            "dataset": self.dataset,
            "purpose": self.purpose,
            "case_id": self.case_id,
            "subject": self.subject,
            "fields": sorted(self.fields),
            "outcome": self.outcome.value,
            "reason": self.reason,
            "cache_hit": self.cache_hit,
            "latency_us": self.latency_us,
            "sealed_digest": self.sealed_digest,
            "registry_version": self.registry_version,
            "agreement_id": self.agreement_id,
        }
        if self.request_digest:
            document["request_digest"] = self.request_digest
        if self.request_sealed:
            document["request_sealed"] = self.request_sealed
        if self.consent_id:
            document["consent_id"] = self.consent_id
        return _CANONICAL.encode(document).encode()

    @classmethod
    def of_call(
        cls,
        *,
        time: datetime,
        region: str,
        rpc: str,
        outcome: Outcome,
        reason: str = "",
        started: float | None = None,
        gateway: str = "",
        caller_agency: str = "",
        caller_operator: str = "",
        caller_region: str = "",
        provider_region: str | None = None,
        request_id: str = "",
        dataset: str = "",
        purpose: str = "",
        case_id: str = "",
        subject: str = "",
        fields: tuple[str, ...] = (),
        sealed_digest: str = "",
        registry_version: int = 0,
        request_digest: str = "",
    ) -> AuditRecord:
        """The record of a call that is not a data query (oversight, the tracker, cases, a
        credential seal, a request that could not be read): never from a cache, resting on no
        agreement. The gateway is `gateway-<region>` unless named, the provider region this
        gateway's own unless given, and the latency counted from `started` (a
        `time.perf_counter()` reading; 0 without one)."""
        latency = 0 if started is None else int((perf_counter() - started) * 1_000_000)
        return cls(
            time=time,
            gateway=gateway or f"gateway-{region}",
            region=region,
            rpc=rpc,
            request_id=request_id,
            caller_agency=caller_agency,
            caller_operator=caller_operator,
            caller_region=caller_region,
            provider_region=region if provider_region is None else provider_region,
            dataset=dataset,
            purpose=purpose,
            case_id=case_id,
            subject=subject,
            fields=fields,
            outcome=outcome,
            reason=reason,
            cache_hit=False,
            latency_us=latency,
            sealed_digest=sealed_digest,
            registry_version=registry_version,
            agreement_id="",
            request_digest=request_digest,
        )

    @classmethod
    def from_canonical(cls, data: bytes) -> AuditRecord:
        """Decode canonical bytes; raise ValueError unless they are exactly a v1 encoding. The
        bounds are not applied again: stored bytes decode to themselves (a record made before
        them still verifies), and every record made from now on was bounded when it was made."""
        document: Any = json.loads(data)
        if not isinstance(document, dict) or document.get("v") != ENCODING_VERSION:
            raise ValueError("not a tongban.audit/v1 record")
        decoding = _DECODING.set(True)
        try:
            record = cls(
                time=datetime.fromisoformat(document["time"]),
                gateway=document["gateway"],
                region=document["region"],
                rpc=document["rpc"],
                request_id=document["request_id"],
                caller_agency=document["caller_agency"],
                caller_operator=document["caller_operator"],
                caller_region=document["caller_region"],
                provider_region=document["provider_region"],
                dataset=document["dataset"],
                purpose=document["purpose"],
                case_id=document["case_id"],
                subject=document["subject"],
                fields=tuple(document["fields"]),
                outcome=Outcome(document["outcome"]),
                reason=document["reason"],
                cache_hit=bool(document["cache_hit"]),
                latency_us=int(document["latency_us"]),
                sealed_digest=document["sealed_digest"],
                registry_version=int(document["registry_version"]),
                agreement_id=document["agreement_id"],
                request_digest=document.get("request_digest", ""),
                request_sealed=document.get("request_sealed", ""),
                consent_id=document.get("consent_id", ""),
            )
        finally:
            _DECODING.reset(decoding)
        if record.canonical != data:
            raise ValueError("the bytes are not in canonical form")
        return record
