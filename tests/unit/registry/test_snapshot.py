"""Signed snapshots: canonical encoding, and one refusal (with its own error type) per way a
snapshot can be wrong."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf import json_format
from support import DEMO_SOURCE

from registry import (
    Registry,
    SnapshotError,
    SnapshotExpired,
    SnapshotFormatError,
    SnapshotRollback,
    SnapshotSignatureInvalid,
    SnapshotSignatureMissing,
    SnapshotUntrustedSigner,
    SnapshotVerifier,
    authority_key_id,
    load_source,
    registry_from_payload,
    registry_to_payload,
    sign_snapshot,
)
from signer import canonical_json
from tongban.v1 import registry_pb2

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
AUTHORITY = ed25519.Ed25519PrivateKey.generate()
OTHER_AUTHORITY = ed25519.Ed25519PrivateKey.generate()


def _registry(
    version: int = 5, issued: datetime = NOW, lifetime: timedelta = timedelta(days=7)
) -> Registry:
    source = load_source(DEMO_SOURCE)
    return Registry(
        name=source.name,
        version=version,
        issued_at=issued,
        expires_at=issued + lifetime,
        refresh_seconds=source.refresh_seconds,
        regions=source.regions,
        agencies=source.agencies,
        datasets=source.datasets,
        purposes=source.purposes,
        agreements=source.agreements,
        matters=source.matters,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact(header: dict[str, object], payload: bytes, signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(payload)}.{_b64(signature)}"


def _payload(registry: Registry) -> bytes:
    return canonical_json(registry_to_payload(registry))


def _good(version: int = 5, **kw: object) -> str:
    return sign_snapshot(_registry(version, **kw), AUTHORITY).jws  # type: ignore[arg-type]


def _good_compact(version: int = 5, **kw: object) -> str:
    """The same snapshot in the compact form made before multi-signing (one signature)."""
    envelope = json.loads(_good(version, **kw))
    (one,) = envelope["signatures"]
    return f"{one['protected']}.{envelope['payload']}.{one['signature']}"


def _tamper_payload(jws: str) -> str:
    envelope = json.loads(jws)
    payload = envelope["payload"]
    document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    document["agreements"][0]["quota_per_minute"] = 1_000_000
    envelope["payload"] = _b64(canonical_json(document))
    return json.dumps(envelope)


def _ec_signed() -> str:
    # Same kid as the installed authority, but an ES256 signature by another key: alg confusion.
    kid = authority_key_id(AUTHORITY.public_key())
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.PyJWS().encode(_payload(_registry()), key, algorithm="ES256", headers={"kid": kid})


def _hmac_with_public_key() -> str:
    # The classic confusion: HS256 keyed with the authority's public key bytes.
    kid = authority_key_id(AUTHORITY.public_key())
    header = {"alg": "HS256", "kid": kid, "typ": "tongban-registry+jws"}
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    secret = AUTHORITY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(_payload(_registry()))}".encode()
    return (
        signing_input.decode()
        + "."
        + _b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    )


@dataclass(frozen=True)
class Case:
    make: Callable[[], str]
    error: type[SnapshotError]
    message: str
    held: int | None = 4
    now: datetime = NOW


CASES = {
    "alg none": Case(
        lambda: _compact(
            {"alg": "none", "kid": authority_key_id(AUTHORITY.public_key())}, _payload(_registry())
        ),
        SnapshotSignatureMissing,
        "not signed",
    ),
    "empty signature": Case(
        lambda: _good_compact().rsplit(".", 1)[0] + ".",
        SnapshotSignatureMissing,
        "not signed",
    ),
    "signed by another authority": Case(
        lambda: sign_snapshot(_registry(), OTHER_AUTHORITY).jws,
        SnapshotUntrustedSigner,
        "which the trusted root does not name",
    ),
    "no kid": Case(
        lambda: jwt.PyJWS().encode(_payload(_registry()), AUTHORITY, algorithm="EdDSA"),
        SnapshotFormatError,
        "names no key (kid)",
    ),
    "a compact snapshot changed after signing": Case(
        lambda: _good_compact().replace(".", ".e30", 1), SnapshotSignatureInvalid, "does not verify"
    ),
    "another key claiming the authority's kid": Case(
        lambda: jwt.PyJWS().encode(
            _payload(_registry()),
            OTHER_AUTHORITY,
            algorithm="EdDSA",
            headers={"kid": authority_key_id(AUTHORITY.public_key())},
        ),
        SnapshotSignatureInvalid,
        "does not verify",
    ),
    "payload changed after signing": Case(
        lambda: _tamper_payload(_good()), SnapshotSignatureInvalid, "does not verify"
    ),
    "algorithm confusion (ES256)": Case(_ec_signed, SnapshotSignatureInvalid, "does not verify"),
    "HS256 keyed with the public key": Case(
        _hmac_with_public_key, SnapshotFormatError, "uses algorithm 'HS256'"
    ),
    "rollback to an older version": Case(
        lambda: _good(3), SnapshotRollback, "not newer than the version held (4)"
    ),
    "replay of the version held": Case(lambda: _good(4), SnapshotRollback, "refusing a rollback"),
    "expired": Case(
        lambda: _good(issued=NOW - timedelta(days=8)),
        SnapshotExpired,
        "expired at 2026-11-20T12:00:00Z",
    ),
    "expires exactly now": Case(lambda: _good(lifetime=timedelta(0)), SnapshotExpired, "expired"),
    "issued in the future": Case(
        lambda: _good(issued=NOW + timedelta(hours=1)), SnapshotFormatError, "issued in the future"
    ),
    "not a JWS": Case(lambda: "hello", SnapshotFormatError, "not a JWS"),
    "JSON serialization with no signature": Case(
        lambda: json.dumps({"payload": "x", "signatures": []}),
        SnapshotSignatureMissing,
        "not signed",
    ),
    "JSON serialization with an unknown member": Case(
        lambda: json.dumps({"payload": "x", "signatures": [], "header": {}}),
        SnapshotFormatError,
        "members other than",
    ),
    "garbage header": Case(
        lambda: "!!!.e30.AAAA", SnapshotFormatError, "protected header does not parse"
    ),
    "payload is not JSON": Case(
        lambda: jwt.PyJWS().encode(
            b"\xff\xfe not json",
            AUTHORITY,
            algorithm="EdDSA",
            headers={"kid": authority_key_id(AUTHORITY.public_key())},
        ),
        SnapshotFormatError,
        "payload is not JSON",
    ),
    "wrong format": Case(
        lambda: jwt.PyJWS().encode(
            canonical_json({**registry_to_payload(_registry()), "format": "tuf/v1"}),
            AUTHORITY,
            algorithm="EdDSA",
            headers={"kid": authority_key_id(AUTHORITY.public_key())},
        ),
        SnapshotFormatError,
        "format is not 'tongban.registry/v1'",
    ),
    "missing field": Case(
        lambda: jwt.PyJWS().encode(
            canonical_json(
                {k: v for k, v in registry_to_payload(_registry()).items() if k != "expires_at"}
            ),
            AUTHORITY,
            algorithm="EdDSA",
            headers={"kid": authority_key_id(AUTHORITY.public_key())},
        ),
        SnapshotFormatError,
        "snapshot.expires_at is missing",
    ),
    "too large": Case(lambda: "a" * (16 * 1024 * 1024 + 1), SnapshotFormatError, "larger than"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_refusal_has_its_own_error(name: str) -> None:
    case = CASES[name]
    verifier = SnapshotVerifier(AUTHORITY.public_key())
    with pytest.raises(case.error) as caught:
        verifier.verify(case.make(), held_version=case.held, now=case.now)
    assert case.message in str(caught.value)
    # Refusals never echo key material.
    assert "PRIVATE" not in str(caught.value)


def test_a_good_snapshot_verifies_and_round_trips() -> None:
    registry = _registry(7)
    signed = sign_snapshot(registry, AUTHORITY)
    verified = SnapshotVerifier(AUTHORITY.public_key()).verify(signed.jws, held_version=6, now=NOW)
    assert verified.registry == registry
    assert verified.jws == signed.jws
    assert verified.authority_key_id == authority_key_id(AUTHORITY.public_key())
    header = json.loads(_unb64(json.loads(signed.jws)["signatures"][0]["protected"]))
    assert header == {
        "alg": "EdDSA",
        "kid": verified.authority_key_id,
        "typ": "tongban-registry+jws",
    }


def test_first_snapshot_needs_no_held_version() -> None:
    verifier = SnapshotVerifier(AUTHORITY.public_key())
    assert verifier.verify(_good(1), held_version=None, now=NOW).registry.version == 1


def test_reading_back_without_a_clock_skips_only_expiry() -> None:
    verifier = SnapshotVerifier(AUTHORITY.public_key())
    old = _good(issued=NOW - timedelta(days=30))
    assert verifier.verify(old, held_version=None, now=None).registry.version == 5
    with pytest.raises(SnapshotSignatureInvalid):
        verifier.verify(_tamper_payload(old), held_version=None, now=None)


def test_p256_authority_is_supported() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = sign_snapshot(_registry(), key)
    protected = json.loads(signed.jws)["signatures"][0]["protected"]
    assert json.loads(_unb64(protected))["alg"] == "ES256"
    assert (
        SnapshotVerifier(key.public_key())
        .verify(signed.jws, held_version=None, now=NOW)
        .registry.version
        == 5
    )


def test_canonical_encoding_is_deterministic_and_ordered() -> None:
    registry = _registry()
    shuffled = replace(
        registry,
        regions=tuple(reversed(registry.regions)),
        agreements=tuple(reversed(registry.agreements)),
    )
    assert _payload(registry) == _payload(shuffled)
    text = _payload(registry).decode()
    assert ", " not in text.split('"description"')[0]  # compact separators
    assert "浙江省" in text  # UTF-8, not \\u escapes
    document = json.loads(text)
    assert list(document) == sorted(document)
    assert [r["code"] for r in document["regions"]] == sorted(
        r["code"] for r in document["regions"]
    )


def test_payload_matches_the_protobuf_schema() -> None:
    """The JSON payload is exactly `tongban.v1.RegistrySnapshot` (unknown keys would fail)."""
    message = json_format.ParseDict(
        registry_to_payload(_registry()), registry_pb2.RegistrySnapshot()
    )
    assert message.version == 5
    assert {d.region for d in message.datasets} == {"330000", "510000", "500000"}


def test_payload_parsing_is_strict() -> None:
    payload = registry_to_payload(_registry())
    payload["datasets"][0]["share_class"] = "secret"
    with pytest.raises(SnapshotFormatError, match="share_class has unknown value 'secret'"):
        registry_from_payload(payload)
    payload = registry_to_payload(_registry())
    payload["agreements"][0]["quota_per_minute"] = "60"
    with pytest.raises(SnapshotFormatError, match="quota_per_minute has the wrong type"):
        registry_from_payload(payload)
    payload = registry_to_payload(_registry())
    payload["regions"].append(payload["regions"][0])
    with pytest.raises(SnapshotFormatError, match="a region id appears twice"):
        registry_from_payload(payload)


def test_requires_consent_travels_in_the_snapshot_and_is_absent_when_false() -> None:
    """The demo marks one dataset (四川's medical insurance); the payload carries the key only
    where it is true, so a snapshot made before it (no key anywhere) reads as false."""
    registry = _registry()
    payload = registry_to_payload(registry)
    marked = [(d["region"], d["id"]) for d in payload["datasets"] if "requires_consent" in d]
    assert marked == [("510000", "medical.insurance")]
    assert registry_from_payload(payload) == registry
    older = json.loads(canonical_json(payload))
    for dataset in older["datasets"]:
        dataset.pop("requires_consent", None)
    assert not any(d.requires_consent for d in registry_from_payload(older).datasets)
    older["datasets"][0]["requires_consent"] = "yes"
    with pytest.raises(SnapshotFormatError, match="requires_consent has the wrong type"):
        registry_from_payload(older)
