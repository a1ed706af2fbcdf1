"""The audit record and its canonical encoding (the bytes hashed as a Merkle leaf).

Encoding `tongban.audit/v1`: one JSON object, keys sorted, no insignificant white space,
UTF-8 (no escapes for non-ASCII), with exactly these keys::

    v                 1 (the encoding version)
    time              RFC 3339 UTC with microseconds, e.g. "2026-11-21T08:00:00.123456Z"
    gateway, region   the gateway instance and its region (GB/T 2260)
    rpc               the method, e.g. "DataExchange.Query"
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

A record decodes back from its canonical bytes (`AuditRecord.from_canonical`), so a verifier
needs nothing but the stored bytes to recompute every leaf.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = ["ENCODING_VERSION", "AuditRecord", "Outcome", "pseudonymize"]

ENCODING_VERSION = 1


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    FAILED = "failed"


def pseudonymize(subject_id: str, key: bytes) -> str:
    """The pseudonymous subject: hex HMAC-SHA256 of the id under the deployment's key."""
    if len(key) < 16:
        raise ValueError("the audit pseudonym key must be at least 16 bytes")
    return hmac.new(key, subject_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    canonical: bytes = field(init=False, repr=False, compare=False)
    time_text: str = field(init=False, repr=False, compare=False)  # `time` as encoded

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise ValueError("an audit time is timezone-aware")
        if self.subject and (
            len(self.subject) != 64 or any(c not in "0123456789abcdef" for c in self.subject)
        ):
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
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    @classmethod
    def from_canonical(cls, data: bytes) -> AuditRecord:
        """Decode canonical bytes; raise ValueError unless they are exactly a v1 encoding."""
        document: Any = json.loads(data)
        if not isinstance(document, dict) or document.get("v") != ENCODING_VERSION:
            raise ValueError("not a tongban.audit/v1 record")
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
        )
        if record.canonical != data:
            raise ValueError("the bytes are not in canonical form")
        return record
