"""Signed forwarded requests: the requesting gateway signs each `Peer.Forward`, so that the
owner can prove which region asked (format `tongban.forward-request/v1`).

The requesting gateway signs, with its audit key (Ed25519, `alg` EdDSA: the key it already
signs its access-report batches and audit checkpoints with, published in the registry with
usage `audit`), a compact JWS (RFC 7515; header `typ` REQUEST_TYPE, `x5t#S256` and `kid` the
key's registry id) whose payload is the canonical JSON (keys sorted, no white space, UTF-8) of::

    {"v": 1, "requesting_region": "510000", "owner_region": "330000",
     "query": {"provider_region", "dataset", "purpose", "subject_id", "fields" (as sent),
               "case_id", "request_id", and "consent" (the consent artefact) only when the
               query carries one, so that a request signed before it verifies as it was},
     "caller": {"agency_id", "region", "operator", "certificate_thumbprint"},
     "credential_type": "", "requesting_gateway_audit_id": "",
     "issued_at": "2026-11-21T08:00:00.123456Z"}

The owner verifies it (`verify_forward`) and decides on what it signs: the plain fields of the
ForwardRequest are a convenience copy, refused when they differ (REQUEST_PAYLOAD_MISMATCH). It
keeps the JWS with its audit record (`gateway.audit.seal_kept_request`: encrypted, since the
payload holds the subject id; its digest in the record), and `tongban audit show-request`
verifies it again, years later, at its signing time (`verify_forward(..., at_signing=True)`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.errors import Refusal
from gateway.policy import DataRequest
from registry import KeyRefused, KeyState, KeyUsage, Registry
from signer import (
    JwsFormatError,
    SignedJsonRefused,
    canonical_json,
    parse_compact,
    sign_json,
    verify_json,
)

__all__ = [
    "MAX_REQUEST_JWS_BYTES",
    "REQUEST_CLOCK_SKEW",
    "REQUEST_TYPE",
    "REQUEST_VERSION",
    "AuditKeySigner",
    "ForwardDocument",
    "RequestSigner",
    "SignedForward",
    "audit_public_key",
    "sign_forward",
    "signing_kid",
    "verify_forward",
]

REQUEST_TYPE: Final = "tongban.forward-request+jws"
REQUEST_VERSION: Final = 1
MAX_REQUEST_JWS_BYTES: Final = 44 * 1024  # every text at its bound, and a consent of 8 KiB, fit
REQUEST_CLOCK_SKEW: Final = timedelta(minutes=5)  # |issued_at - the owner's now|, at most

_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_REGION: Final = re.compile(r"[0-9]{6}")
_KEYS: Final = frozenset(
    {
        "v",
        "requesting_region",
        "owner_region",
        "query",
        "caller",
        "credential_type",
        "requesting_gateway_audit_id",
        "issued_at",
    }
)
_QUERY_KEYS: Final = frozenset(
    {"provider_region", "dataset", "purpose", "subject_id", "fields", "case_id", "request_id"}
)
_CALLER_KEYS: Final = frozenset({"agency_id", "region", "operator", "certificate_thumbprint"})


def _invalid(message: str) -> Refusal:
    return Refusal("REQUEST_SIGNATURE_INVALID", message)


def _malformed(message: str) -> Refusal:
    return Refusal("INVALID_ARGUMENT_FORMAT", f"the signed request: {message}")


@dataclass(frozen=True, slots=True)
class ForwardDocument:
    """What a requesting gateway signs about one forwarded query or credential fetch."""

    requesting_region: str
    owner_region: str
    request: DataRequest
    caller_agency: str
    caller_region: str
    caller_operator: str
    caller_thumbprint: str
    credential_type: str
    requesting_gateway_audit_id: str
    issued_at: datetime  # UTC, microseconds

    def document(self) -> dict[str, Any]:
        data = self.request
        return {
            "v": REQUEST_VERSION,
            "requesting_region": self.requesting_region,
            "owner_region": self.owner_region,
            "query": {
                "provider_region": data.provider_region,
                "dataset": data.dataset,
                "purpose": data.purpose,
                "subject_id": data.subject_id,
                "fields": list(data.fields),
                "case_id": data.case_id,
                "request_id": data.request_id,
                **({"consent": data.consent} if data.consent else {}),
            },
            "caller": {
                "agency_id": self.caller_agency,
                "region": self.caller_region,
                "operator": self.caller_operator,
                "certificate_thumbprint": self.caller_thumbprint,
            },
            "credential_type": self.credential_type,
            "requesting_gateway_audit_id": self.requesting_gateway_audit_id,
            "issued_at": self.issued_at.astimezone(UTC).strftime(_TIME_FORMAT),
        }

    def payload(self) -> bytes:
        """The exact bytes the JWS signs."""
        return canonical_json(self.document())

    @classmethod
    def from_document(cls, document: object) -> ForwardDocument:
        """The document a verified payload holds; a Refusal (INVALID_ARGUMENT_FORMAT) if it is
        not in this format. The values' own grammar is the flow's check, as for a plain one."""
        if not isinstance(document, dict) or set(document) != _KEYS:
            raise _malformed(f"a forward request has exactly the keys {sorted(_KEYS)}")
        if document["v"] != REQUEST_VERSION:
            raise _malformed(f"version {document['v']!r:.8} is not {REQUEST_VERSION}")
        query, caller = document["query"], document["caller"]
        if not isinstance(query, dict) or set(query) - {"consent"} != _QUERY_KEYS:
            raise _malformed(f"its query has exactly the keys {sorted(_QUERY_KEYS)}")
        if not isinstance(caller, dict) or set(caller) != _CALLER_KEYS:
            raise _malformed(f"its caller has exactly the keys {sorted(_CALLER_KEYS)}")
        texts = [
            document["requesting_region"],
            document["owner_region"],
            document["credential_type"],
            document["requesting_gateway_audit_id"],
            document["issued_at"],
            *(query[k] for k in sorted(_QUERY_KEYS - {"fields"})),
            *caller.values(),
        ]
        fields = query["fields"]
        if not all(isinstance(t, str) for t in texts) or not (
            isinstance(fields, list) and all(isinstance(f, str) for f in fields)
        ):
            raise _malformed("its values are strings, and fields a list of strings")
        try:
            issued_at = datetime.strptime(document["issued_at"], _TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError as exc:
            raise _malformed("issued_at is an RFC 3339 UTC time with microseconds") from exc
        return cls(
            requesting_region=document["requesting_region"],
            owner_region=document["owner_region"],
            request=DataRequest(
                provider_region=query["provider_region"],
                dataset=query["dataset"],
                purpose=query["purpose"],
                subject_id=query["subject_id"],
                fields=tuple(fields),
                case_id=query["case_id"],
                request_id=query["request_id"],
                consent=query.get("consent", ""),
            ),
            caller_agency=caller["agency_id"],
            caller_region=caller["region"],
            caller_operator=caller["operator"],
            caller_thumbprint=caller["certificate_thumbprint"],
            credential_type=document["credential_type"],
            requesting_gateway_audit_id=document["requesting_gateway_audit_id"],
            issued_at=issued_at,
        )


@dataclass(frozen=True, slots=True)
class SignedForward:
    """A verified signed request: the JWS as sent, the registry key that signed it, and what
    it says."""

    jws: str
    kid: str
    document: ForwardDocument

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the compact JWS (what an audit record holds of it)."""
        return hashlib.sha256(self.jws.encode("ascii")).hexdigest()


def sign_forward(document: ForwardDocument, key: ed25519.Ed25519PrivateKey, kid: str) -> str:
    """A compact JWS of the document's payload by the requesting gateway's audit key."""
    return sign_json(
        document.payload(),
        key,
        typ=REQUEST_TYPE,
        kid=kid,
        algorithms=("EdDSA",),
        headers={"x5t#S256": kid},
    )


def audit_public_key(
    registry: Registry, kid: object, region: str, at: datetime, *, signed_at: bool = False
) -> ed25519.Ed25519PublicKey:
    """The Ed25519 public key of `region`'s audit key `kid` in the registry, or `KeyRefused`.
    `at` is now (the key is not revoked, its certificate valid now) or, with `signed_at`, the
    time a past signature was made (it was not revoked then: "may this key verify a past
    signature")."""
    if not isinstance(kid, str) or not kid:
        raise KeyRefused("the header names no key (x5t#S256)")
    entry = registry.key(kid)
    if entry is None:
        raise KeyRefused(f"key {kid} is not in registry version {registry.version}")
    if entry.usage is not KeyUsage.AUDIT:
        raise KeyRefused(f"key {kid} is a {entry.usage.value} key, not an audit key")
    if entry.owner != region:
        raise KeyRefused(f"key {kid} is {entry.owner}'s, not region {region}'s")
    if signed_at:
        entry.check_may_verify(at)
    else:
        if entry.state is KeyState.REVOKED:
            raise KeyRefused(f"key {kid} is revoked")
        if not entry.not_before <= at <= entry.not_after:
            raise KeyRefused(f"key {kid} is outside its certificate's validity")
    public = _public_key(entry.certificate)
    if public is None:
        raise KeyRefused(f"key {kid} is not an Ed25519 key")
    return public


@functools.lru_cache(maxsize=256)
def _public_key(certificate: bytes) -> ed25519.Ed25519PublicKey | None:
    """The Ed25519 key of a registry certificate (DER), parsed once: parsing, not the
    signature, is most of a verification's cost."""
    public = x509.load_der_x509_certificate(certificate).public_key()
    return public if isinstance(public, ed25519.Ed25519PublicKey) else None


def _issued_at(payload: bytes) -> datetime | None:
    """The payload's issued_at, read before the key is chosen (for `at_signing`); None when
    it has none (the payload is refused later, once the signature is checked)."""
    try:
        document = json.loads(payload)
        return datetime.strptime(document["issued_at"], _TIME_FORMAT).replace(tzinfo=UTC)
    except (ValueError, TypeError, KeyError):
        return None


def verify_forward(
    jws: str,
    *,
    registry: Registry,
    requesting_region: str,
    owner_region: str,
    now: datetime,
    at_signing: bool = False,
) -> SignedForward:
    """The request `jws` signs, or the Refusal that says why it is not accepted.

    (1) present, a compact JWS of at most MAX_REQUEST_JWS_BYTES, EdDSA, `typ` REQUEST_TYPE
    (2) its `x5t#S256` names an audit key the registry publishes for `requesting_region`, not
        revoked and valid `now` (with `at_signing`: not revoked, and valid, when it was signed)
    (3) the signature verifies with that key (never with a key carried in the message)
    (4) the payload is the canonical JSON of this format, from `requesting_region`
        (REQUEST_PAYLOAD_MISMATCH) to `owner_region` (UNKNOWN_REGION: signed for another owner)
    (5) issued within REQUEST_CLOCK_SKEW of `now` (not checked `at_signing`: oversight checks
        an old request)
    """
    # (1)
    if not jws:
        raise _invalid(
            "the forwarded request is not signed (signed_request is empty): every gateway of "
            "the federation signs its requests"
        )
    if len(jws) > MAX_REQUEST_JWS_BYTES:
        raise Refusal(
            "REQUEST_TOO_LARGE", f"a signed request is at most {MAX_REQUEST_JWS_BYTES} bytes"
        )
    kid_used: list[str] = []

    def key_for(header: Any) -> ed25519.Ed25519PublicKey:
        kid = header.get("x5t#S256")
        at = now
        if at_signing:
            at = _issued_at(_payload_of(jws)) or now
        try:
            public = audit_public_key(registry, kid, requesting_region, at, signed_at=at_signing)
        except KeyRefused as exc:
            raise _invalid(f"the signed request's key: {exc}") from exc
        kid_used.append(kid)
        return public

    try:  # (2), (3)
        verified = verify_json(
            jws,
            key_for=key_for,
            algorithms=("EdDSA",),
            typ=REQUEST_TYPE,
            typ_required=True,
            max_bytes=MAX_REQUEST_JWS_BYTES,
            what="the signed request",
        )
    except SignedJsonRefused as exc:
        raise _invalid(str(exc)) from exc
    document = _document(verified.payload, verified.is_canonical)  # (4)
    if document.requesting_region != requesting_region:
        raise Refusal(
            "REQUEST_PAYLOAD_MISMATCH",
            f"the signed request is from {document.requesting_region:.8}, not from "
            f"{requesting_region}",
        )
    if document.owner_region != owner_region:  # a request signed for another owner
        raise Refusal(
            "UNKNOWN_REGION",
            f"this is the gateway of region {owner_region}, not {document.owner_region:.8}",
        )
    # (5)
    if not at_signing and abs(document.issued_at - now) > REQUEST_CLOCK_SKEW:
        raise _invalid(
            f"the signed request was issued at {document.issued_at:%Y-%m-%dT%H:%M:%SZ}, more "
            f"than {int(REQUEST_CLOCK_SKEW.total_seconds())}s from this gateway's clock"
        )
    return SignedForward(jws, kid_used[0], document)


def _document(payload: bytes, is_canonical: bool) -> ForwardDocument:
    """(4) of `verify_forward`: the signed payload, if it is this format's canonical JSON."""
    try:
        parsed = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _malformed("the payload is not JSON") from exc
    document = ForwardDocument.from_document(parsed)
    if not is_canonical:
        raise _malformed("the payload is not canonical JSON")
    return document


def _payload_of(jws: str) -> bytes:
    """The payload part of a compact JWS, decoded, before any check (b"" when it is not one)."""
    try:
        return parse_compact(jws).payload
    except JwsFormatError:
        return b""


def signing_kid(registry: Registry, region: str, public: bytes) -> str | None:
    """The registry id of `region`'s audit key (not revoked) whose raw Ed25519 public key is
    `public`: the kid this gateway's own audit key signs under."""
    for entry in registry.keys_of(region, KeyUsage.AUDIT):
        if entry.state is KeyState.REVOKED:
            continue
        key = x509.load_der_x509_certificate(entry.certificate).public_key()
        if isinstance(key, ed25519.Ed25519PublicKey) and (
            key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == public
        ):
            return entry.kid
    return None


class AuditKeySigner:
    """This gateway's audit key, under the kid the current registry publishes for it (looked up
    once per registry version): what `RequestSigner` and the case book's `EventSigner` sign
    with."""

    what = "documents"  # what it signs, for the refusal when it cannot

    def __init__(self, region: str, key: ed25519.Ed25519PrivateKey) -> None:
        self.region = region
        self._key = key
        self._public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._kid: tuple[int, str | None] = (-1, None)

    def kid(self, registry: Registry) -> str | None:
        version, kid = self._kid
        if version != registry.version:
            kid = signing_kid(registry, self.region, self._public)
            self._kid = (registry.version, kid)
        return kid

    def required_kid(self, registry: Registry) -> str:
        """The kid; a Refusal (INTERNAL_ERROR) when the registry publishes no audit key of this
        region matching this gateway's (it cannot sign what peers would accept)."""
        kid = self.kid(registry)
        if kid is None:
            raise Refusal(
                "INTERNAL_ERROR",
                f"the registry publishes no audit key of region {self.region} matching this "
                f"gateway's audit key: {self.what} cannot be signed",
            )
        return kid


class RequestSigner(AuditKeySigner):
    """Signs this gateway's forwarded requests with its audit key."""

    what = "forwarded requests"

    def sign(self, registry: Registry, document: ForwardDocument) -> str:
        return sign_forward(document, self._key, self.required_kid(registry))
