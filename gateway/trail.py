"""One subject's trail in one region's audit log, and the sealed answer that carries it to
another region's gateway (format `tongban.subject-trail/v1`, docs/oversight.md "The citizen's
data tracker").

A gateway serving `Tracker.Trail` reads its own log and asks every other region's gateway
(`Peer.SubjectTrail`); each answers from its own log only, with a compact JWS (RFC 7515, `alg`
EdDSA, header `typ` TRAIL_TYPE, `x5t#S256` and `kid` the registry id of its audit key: the key
it already signs forwarded requests, report batches and checkpoints with) whose payload is the
canonical JSON of::

    {"v": 1, "region": "510000", "home_region": "330000",
     "request_digest": "<hex SHA-256 of the request, see `request_digest`>",
     "answered_at": "2026-12-07T08:00:00.123456Z", "truncated": false,
     "entries": [{"time", "audit_index", "audit_id", "requester_agency", "requester_region",
                  "dataset", "purpose", "case_id", "cache_hit", "outcome", "reason", "rpc",
                  "consent_id"}, ...]}

The request digest holds the subject id, the window, the calling gateway's nonce and the digest
of the token, never a pseudonym (each region has its own pseudonym key): an answer sealed for one
call does not verify for any other (`verify_trail` (4)), and one older than TRAIL_CLOCK_SKEW is
refused (5), so a trail answer can be neither forged nor replayed (docs/threats.md T32).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway._errors import GatewayError
from gateway.audit import AuditLog, AuditQuery, AuditRecord, Outcome, audit_id
from gateway.forward_signing import audit_public_key
from registry import KeyRefused, Registry
from signer import SignedJsonRefused, canonical_json, sign_json, verify_json

__all__ = [
    "MAX_ENTRY_TEXT_CHARS",
    "MAX_TRAIL_ENTRIES",
    "MAX_TRAIL_JWS_BYTES",
    "TRAIL_CLOCK_SKEW",
    "TRAIL_TYPE",
    "TRAIL_VERSION",
    "SealedTrail",
    "TrailEntry",
    "TrailSealInvalid",
    "read_trail",
    "request_digest",
    "seal_trail",
    "verify_trail",
]

TRAIL_TYPE: Final = "tongban.subject-trail+jws"
TRAIL_VERSION: Final = 1
MAX_TRAIL_ENTRIES: Final = 500  # entries in one region's answer (the oldest; then `truncated`)
MAX_ENTRY_TEXT_CHARS: Final = 256  # characters of an entry's value sent as is; longer: a digest
MAX_TRAIL_JWS_BYTES: Final = 8 * 1024 * 1024  # bytes of one sealed answer, at most
TRAIL_CLOCK_SKEW: Final = timedelta(minutes=5)  # |answered_at - the asking gateway's now|

_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_KEYS: Final = frozenset(
    {"v", "region", "home_region", "request_digest", "answered_at", "truncated", "entries"}
)
_TEXTS: Final = (
    "audit_id",
    "requester_agency",
    "requester_region",
    "dataset",
    "purpose",
    "case_id",
    "reason",
    "rpc",
    "consent_id",
)
_ENTRY_KEYS: Final = frozenset({"time", "audit_index", "cache_hit", "outcome", *_TEXTS})


class TrailSealInvalid(GatewayError):
    """A region's sealed trail that is not accepted: its entries are not shown (the region is
    marked "bad seal"). The message says why, for this gateway's log."""


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError("a time is a string")
    return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)


def _shown(value: str) -> str:
    """A value as an entry carries it: as is, or its digest when it is longer than a trail
    needs (an audit record may hold a long value; the trail names, it does not reproduce)."""
    if len(value) <= MAX_ENTRY_TEXT_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class TrailEntry:
    """One access to the subject's data, as one region's log records it."""

    region: str  # whose log holds the record
    audit_index: int
    audit_id: str
    time: datetime
    requester_agency: str
    requester_region: str
    dataset: str
    purpose: str
    case_id: str
    cache_hit: bool
    outcome: Outcome
    reason: str
    rpc: str
    consent_id: str = ""

    @classmethod
    def from_record(cls, region: str, origin: str, index: int, record: AuditRecord) -> TrailEntry:
        return cls(
            region=region,
            audit_index=index,
            audit_id=audit_id(origin, index),
            time=record.time,
            requester_agency=_shown(record.caller_agency),
            requester_region=_shown(record.caller_region),
            dataset=_shown(record.dataset),
            purpose=_shown(record.purpose),
            case_id=_shown(record.case_id),
            cache_hit=record.cache_hit,
            outcome=record.outcome,
            reason=_shown(record.reason),
            rpc=_shown(record.rpc),
            # the consent an access was made under: AuditRecord.consent_id once the consent
            # part of issue 21 records it; empty until then
            consent_id=_shown(str(getattr(record, "consent_id", "") or "")),
        )

    def document(self) -> dict[str, Any]:
        return {
            "time": _time(self.time),
            "audit_index": self.audit_index,
            "audit_id": self.audit_id,
            "requester_agency": self.requester_agency,
            "requester_region": self.requester_region,
            "dataset": self.dataset,
            "purpose": self.purpose,
            "case_id": self.case_id,
            "cache_hit": self.cache_hit,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "rpc": self.rpc,
            "consent_id": self.consent_id,
        }

    @classmethod
    def from_document(cls, region: str, document: object) -> TrailEntry:
        """The entry a sealed answer of `region` holds; ValueError if it is not one."""
        if not isinstance(document, dict) or set(document) != _ENTRY_KEYS:
            raise ValueError(f"an entry has exactly the keys {sorted(_ENTRY_KEYS)}")
        texts = [document[k] for k in _TEXTS]
        if not all(isinstance(t, str) and len(t) <= MAX_ENTRY_TEXT_CHARS for t in texts):
            raise ValueError("an entry's texts are strings, each within its bound")
        index, cache_hit = document["audit_index"], document["cache_hit"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**63:
            raise ValueError("audit_index is a whole number")
        if not isinstance(cache_hit, bool):
            raise TypeError("cache_hit is true or false")
        return cls(
            region=region,
            audit_index=index,
            audit_id=document["audit_id"],
            time=_parse_time(document["time"]),
            requester_agency=document["requester_agency"],
            requester_region=document["requester_region"],
            dataset=document["dataset"],
            purpose=document["purpose"],
            case_id=document["case_id"],
            cache_hit=cache_hit,
            outcome=Outcome(document["outcome"]),
            reason=document["reason"],
            rpc=document["rpc"],
            consent_id=document["consent_id"],
        )


def request_digest(
    *,
    home_region: str,
    region: str,
    subject_id: str,
    since: datetime | None,
    until: datetime | None,
    nonce: str,
    token: str,
) -> str:
    """Hex SHA-256 of what one `Peer.SubjectTrail` call asks, as both gateways compute it: the
    sealed answer names it, so that it answers that call and no other. No pseudonym in it."""
    document = {
        "v": TRAIL_VERSION,
        "home_region": home_region,
        "region": region,
        "subject_id": subject_id,
        "since": _time(since) if since else "",
        "until": _time(until) if until else "",
        "nonce": nonce,
        "token_sha256": hashlib.sha256(token.encode("utf-8")).hexdigest(),
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()


async def read_trail(
    audit: AuditLog,
    *,
    region: str,
    subject: str,
    since: datetime | None,
    until: datetime | None,
    limit: int = MAX_TRAIL_ENTRIES,
) -> tuple[list[TrailEntry], bool]:
    """(the oldest `limit` records of this log about the pseudonym `subject` in the window, as
    entries; whether there were more). Bounded through the audit store's breaker, as
    Oversight's reads are; raises AuditUnavailable. ValueError for an empty pseudonym: the
    records about no subject are no one's trail."""
    if not subject:
        raise ValueError("a trail is read for one subject's pseudonym")
    query = AuditQuery(subject=subject, since=since, until=until, limit=limit + 1)
    found = await audit.read(lambda: audit.store.query(query))
    entries = [
        TrailEntry.from_record(region, audit.origin, index, record)
        for index, record in found[:limit]
    ]
    return entries, len(found) > limit


def seal_trail(
    entries: Sequence[TrailEntry],
    *,
    region: str,
    home_region: str,
    digest: str,
    truncated: bool,
    answered_at: datetime,
    key: ed25519.Ed25519PrivateKey,
    kid: str,
) -> str:
    """The compact JWS of a region's answer, by its audit key `key` (registry id `kid`)."""
    document = {
        "v": TRAIL_VERSION,
        "region": region,
        "home_region": home_region,
        "request_digest": digest,
        "answered_at": _time(answered_at),
        "truncated": truncated,
        "entries": [entry.document() for entry in entries],
    }
    return sign_json(
        canonical_json(document),
        key,
        typ=TRAIL_TYPE,
        kid=kid,
        algorithms=("EdDSA",),
        headers={"x5t#S256": kid},
    )


@dataclass(frozen=True, slots=True)
class SealedTrail:
    """A verified answer: its entries, whether the region held more, and the key that sealed."""

    entries: tuple[TrailEntry, ...]
    truncated: bool
    kid: str


def verify_trail(
    jws: str,
    *,
    registry: Registry,
    region: str,
    home_region: str,
    digest: str,
    now: datetime,
) -> SealedTrail:
    """The trail `jws` seals, or TrailSealInvalid.

    (1) present, a compact JWS of at most MAX_TRAIL_JWS_BYTES, EdDSA, `typ` TRAIL_TYPE
    (2) its `x5t#S256` names an audit key the registry publishes for `region` (the region
        asked), not revoked and valid now
    (3) the signature verifies with that key (never with a key carried in the message)
    (4) the payload is this format's canonical JSON, from `region`, for `home_region`, naming
        `digest` (the call it answers)
    (5) answered within TRAIL_CLOCK_SKEW of `now`
    (6) every entry is one of this format, at most MAX_TRAIL_ENTRIES
    """
    # (1)
    if not jws:
        raise TrailSealInvalid("the answer is not sealed")
    if len(jws) > MAX_TRAIL_JWS_BYTES:
        raise TrailSealInvalid(f"the sealed answer is larger than {MAX_TRAIL_JWS_BYTES} bytes")
    kids: list[str] = []

    def key_for(header: Any) -> ed25519.Ed25519PublicKey:
        kid = header.get("x5t#S256")
        try:  # (2)
            public = audit_public_key(registry, kid, region, now)
        except KeyRefused as exc:
            raise TrailSealInvalid(f"the sealing key: {exc}") from exc
        kids.append(kid)
        return public

    try:  # (2), (3)
        verified = verify_json(
            jws,
            key_for=key_for,
            algorithms=("EdDSA",),
            typ=TRAIL_TYPE,
            typ_required=True,
            max_bytes=MAX_TRAIL_JWS_BYTES,
            what="the sealed trail",
        )
    except SignedJsonRefused as exc:
        raise TrailSealInvalid(str(exc)) from exc
    # (4)
    try:
        document = json.loads(verified.payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrailSealInvalid("the sealed payload is not JSON") from exc
    if not verified.is_canonical or not isinstance(document, dict) or set(document) != _KEYS:
        raise TrailSealInvalid("the sealed payload is not a canonical trail answer")
    if document["v"] != TRAIL_VERSION:
        raise TrailSealInvalid("the sealed trail is of another version")
    if (document["region"], document["home_region"]) != (region, home_region):
        raise TrailSealInvalid("the sealed trail is another region's, or for another gateway")
    if document["request_digest"] != digest:
        raise TrailSealInvalid("the sealed trail answers another request")
    # (5)
    try:
        answered_at = _parse_time(document["answered_at"])
    except (ValueError, TypeError) as exc:
        raise TrailSealInvalid("answered_at is not a UTC time with microseconds") from exc
    if abs(answered_at - now) > TRAIL_CLOCK_SKEW:
        raise TrailSealInvalid("the sealed trail was not answered now")
    # (6)
    raw, truncated = document["entries"], document["truncated"]
    if not isinstance(raw, list) or len(raw) > MAX_TRAIL_ENTRIES or not isinstance(truncated, bool):
        raise TrailSealInvalid(f"a trail holds at most {MAX_TRAIL_ENTRIES} entries")
    try:
        entries = tuple(TrailEntry.from_document(region, item) for item in raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise TrailSealInvalid(f"an entry is malformed: {exc}") from exc
    return SealedTrail(entries, truncated, kids[0])
