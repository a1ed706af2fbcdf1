"""A case event's signed form: a compact JWS (RFC 7515) by the making region's audit key.

The region that makes an event signs, with its audit key (Ed25519, `alg` EdDSA, the key its
signed forwards use: `gateway.forward_signing`), a compact JWS whose header has `typ`
EVENT_TYPE and `x5t#S256` / `kid` the key's registry id, and whose payload is the canonical
JSON of `CaseEvent.document()`. A receiving gateway (`verify_event`) accepts it only from the
gateway of the event's own region (a gateway delivers only its region's events), by an audit key
its registry publishes for that region, not revoked when the event was made and with a
certificate valid then (an event is evidence for the case's whole life: a key rotated since does
not undo it). Any failure is CASE_EVENT_INVALID with a plain sentence (never a value of the
event: its payload holds the applicant's id).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.cases._model import CaseEvent, MalformedEvent
from gateway.errors import Refusal
from gateway.forward_signing import AuditKeySigner, audit_public_key
from registry import KeyRefused, Registry
from signer import (
    JwsFormatError,
    SignedJsonRefused,
    canonical_json,
    parse_compact,
    sign_json,
    verify_json,
)

__all__ = [
    "EVENT_TYPE",
    "MAX_EVENT_JWS_BYTES",
    "EventSigner",
    "read_event",
    "sign_event",
    "verify_event",
]

EVENT_TYPE: Final = "tongban.case-event+jws"
MAX_EVENT_JWS_BYTES: Final = 64 * 1024  # 64 material refs and every text at its bound fit
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def _invalid(message: str) -> Refusal:
    return Refusal("CASE_EVENT_INVALID", message)


def sign_event(event: CaseEvent, key: ed25519.Ed25519PrivateKey, kid: str) -> str:
    """The compact JWS of the event's canonical document by `key` (registry id `kid`)."""
    return sign_json(
        canonical_json(event.document()),
        key,
        typ=EVENT_TYPE,
        kid=kid,
        algorithms=("EdDSA",),
        headers={"x5t#S256": kid},
    )


class EventSigner(AuditKeySigner):
    """Signs this gateway's case events with its audit key, like `RequestSigner`."""

    what = "case events"

    def sign(self, registry: Registry, event: CaseEvent) -> str:
        return sign_event(event, self._key, self.required_kid(registry))


def _unverified(jws: str) -> dict[str, Any]:
    """The payload's document before any check (to find its origin and time), or a refusal."""
    try:
        document = json.loads(parse_compact(jws).payload)
    except (JwsFormatError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _invalid("the case event is not a compact JWS of a JSON document") from None
    if not isinstance(document, dict):
        raise _invalid("the case event's payload is not a JSON object")
    return document


def _made_at(document: dict[str, Any]) -> datetime:
    try:
        return datetime.strptime(str(document.get("at")), _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _invalid("the case event has no time it was made (at)") from None


def verify_event(jws: str, registry: Registry, sender_region: str) -> CaseEvent:
    """The event `jws` signs, delivered by the gateway of `sender_region`; CASE_EVENT_INVALID
    (a plain sentence) if it is not one that gateway may deliver.

    (1) a compact JWS of at most MAX_EVENT_JWS_BYTES, `typ` EVENT_TYPE, EdDSA
    (2) the event's origin is `sender_region`
    (3) its `x5t#S256` names an audit key the registry publishes for that region, not revoked
        at the event's `at` and with a certificate valid then; the signature verifies with it
    (4) the payload is the canonical JSON of a case event of this version
    """
    if not isinstance(jws, str) or not jws:
        raise _invalid("the case event is empty")
    if len(jws) > MAX_EVENT_JWS_BYTES:
        raise _invalid(f"a case event is at most {MAX_EVENT_JWS_BYTES} bytes")
    document = _unverified(jws)
    origin = document.get("origin")
    if origin != sender_region:  # (2)
        raise _invalid(
            f"the gateway of region {sender_region} delivers only its own region's case events"
        )
    at = _made_at(document)

    def key_for(header: Any) -> ed25519.Ed25519PublicKey:
        try:
            return audit_public_key(
                registry, header.get("x5t#S256"), sender_region, at, signed_at=True
            )
        except KeyRefused as exc:
            raise _invalid(f"the case event's key: {exc}") from exc

    try:  # (1), (3)
        verified = verify_json(
            jws,
            key_for=key_for,
            algorithms=("EdDSA",),
            typ=EVENT_TYPE,
            typ_required=True,
            max_bytes=MAX_EVENT_JWS_BYTES,
            what="the case event",
        )
    except SignedJsonRefused as exc:
        raise _invalid(str(exc)) from exc
    if not verified.is_canonical:  # (4)
        raise _invalid("the case event's payload is not canonical JSON")
    try:
        return CaseEvent.from_document(json.loads(verified.payload))
    except (MalformedEvent, KeyError, TypeError, ValueError) as exc:
        raise _invalid(f"the case event is not one of this version: {exc}") from exc


def read_event(jws: str) -> CaseEvent:
    """The event of a JWS this gateway holds (verified on arrival or signed here): no check of
    the signature again; MalformedEvent if it does not read."""
    try:
        return CaseEvent.from_document(json.loads(parse_compact(jws).payload))
    except (JwsFormatError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as exc:
        raise MalformedEvent("a held case event does not read") from exc
