"""Case events signed by the making region's audit key (`gateway.cases._events`): verification
against a dev registry, each way an event is refused, and a cross-check of the signature with
the OpenSSL command line. Also the at-rest sealing of events and attachments."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from case_support import CQ, SC, ZJ
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flow_support import NOW, audit_key
from support import Federation

from gateway.cases import (
    EVENT_TYPE,
    MAX_EVENT_JWS_BYTES,
    CaseEvent,
    EventKind,
    EventSigner,
    MaterialRef,
    PartSpec,
    Submission,
    sign_event,
    verify_event,
)
from gateway.cases._sealing import (
    SealedCaseDataError,
    open_bytes,
    open_text,
    pack_attachment,
    seal_bytes,
    seal_text,
    unpack_attachment,
)
from gateway.errors import Refusal
from registry import KeyState, Registry
from signer import sign_json

REF = MaterialRef("id-card", "a" * 64, 10, "jades", CQ, "CN=seal", SC, NOW)
EVENT = CaseEvent(
    case_id="510000-20261121-0A1B2C3D4E",
    origin=SC,
    seq=1,
    seen=(),
    kind=EventKind.SUBMITTED,
    agency="sc.hsa",
    operator="经办人",
    at=NOW,
    materials=(REF,),
    submission=Submission(
        "000125002100",
        "异地就医登记备案",
        "11010519491231002X",
        "sc.hsa",
        (PartSpec(SC, "receive"), PartSpec(CQ, "handle")),
        NOW + timedelta(days=1),
        1,
    ),
)


def signed(fed: Federation, event: CaseEvent = EVENT, region: str = SC) -> str:
    key, kid = audit_key(fed, region)
    return sign_event(event, key, kid)


def refused(registry: Registry, jws: str, sender: str = SC) -> str:
    with pytest.raises(Refusal) as caught:
        verify_event(jws, registry, sender)
    assert caught.value.reason == "CASE_EVENT_INVALID"
    assert "11010519491231002X" not in caught.value.message
    return caught.value.message


def test_a_signed_event_verifies_and_reads_back(fed: Federation, registry: Registry) -> None:
    jws = signed(fed)
    assert verify_event(jws, registry, SC) == EVENT
    header = json.loads(base64.urlsafe_b64decode(jws.split(".")[0] + "=="))
    assert (header["alg"], header["typ"], header["x5t#S256"]) == (
        "EdDSA",
        EVENT_TYPE,
        audit_key(fed, SC)[1],
    )


def test_the_event_signer_finds_its_kid_in_the_registry(
    fed: Federation, registry: Registry
) -> None:
    key, kid = audit_key(fed, SC)
    signer = EventSigner(SC, key)
    assert signer.kid(registry) == kid
    assert verify_event(signer.sign(registry, EVENT), registry, SC) == EVENT
    stranger = EventSigner(SC, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(Refusal) as caught:
        stranger.sign(registry, EVENT)
    assert caught.value.reason == "INTERNAL_ERROR"


def test_the_signature_checks_out_with_the_openssl_command_line(
    fed: Federation, tmp_path: Path
) -> None:
    header, payload, signature = signed(fed).split(".")
    key, _ = audit_key(fed, SC)
    (tmp_path / "pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "input").write_bytes(f"{header}.{payload}".encode())
    (tmp_path / "sig").write_bytes(base64.urlsafe_b64decode(signature + "=="))
    command = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(tmp_path / "pub.pem"),
        "-rawin",
        "-in",
        str(tmp_path / "input"),
        "-sigfile",
        str(tmp_path / "sig"),
    ]
    ok = subprocess.run(command, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "input").write_bytes(f"{header}.{payload}x".encode())
    bad = subprocess.run(command, capture_output=True, text=True, check=False)
    assert bad.returncode != 0


def test_an_event_is_accepted_only_from_its_own_regions_gateway(
    fed: Federation, registry: Registry
) -> None:
    assert "delivers only its own region's" in refused(registry, signed(fed), sender=CQ)


def test_an_event_signed_by_another_regions_key_is_refused(
    fed: Federation, registry: Registry
) -> None:
    assert "key" in refused(registry, signed(fed, region=ZJ))


def test_tampered_bytes_are_refused(fed: Federation, registry: Registry) -> None:
    header, payload, signature = signed(fed).split(".")
    document = json.loads(base64.urlsafe_b64decode(payload + "=="))
    document["note"] = "changed"
    forged = base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")
    refused(registry, f"{header}.{forged}.{signature}")


def test_another_type_a_non_canonical_payload_or_another_shape_is_refused(
    fed: Federation, registry: Registry
) -> None:
    key, kid = audit_key(fed, SC)
    from signer import canonical_json

    payload = canonical_json(EVENT.document())
    other_type = sign_json(
        payload, key, typ="JWT", kid=kid, algorithms=("EdDSA",), headers={"x5t#S256": kid}
    )
    refused(registry, other_type)
    loose = json.dumps(EVENT.document(), indent=1).encode()
    not_canonical = sign_json(
        loose, key, typ=EVENT_TYPE, kid=kid, algorithms=("EdDSA",), headers={"x5t#S256": kid}
    )
    assert "canonical" in refused(registry, not_canonical)
    document = EVENT.document()
    document["extra"] = 1
    extra = sign_json(
        canonical_json(document),
        key,
        typ=EVENT_TYPE,
        kid=kid,
        algorithms=("EdDSA",),
        headers={"x5t#S256": kid},
    )
    assert "version" in refused(registry, extra)
    refused(registry, "")
    refused(registry, "not a jws")
    assert "at most" in refused(registry, "a" * (MAX_EVENT_JWS_BYTES + 1))


def test_a_key_revoked_before_the_event_was_made_is_refused_after_it_not(
    fed: Federation, registry: Registry
) -> None:
    _, kid = audit_key(fed, SC)

    def revoked(at: object) -> Registry:
        keys = tuple(
            dataclasses.replace(k, state=KeyState.REVOKED, revoked_at=at) if k.kid == kid else k
            for k in registry.keys
        )
        return dataclasses.replace(registry, keys=keys)

    jws = signed(fed)
    assert "revoked" in refused(revoked(NOW - timedelta(minutes=1)), jws)
    assert verify_event(jws, revoked(NOW + timedelta(minutes=1)), SC) == EVENT


# -- at rest -----------------------------------------------------------------------------------
KEY = b"k" * 32


def test_sealed_text_and_bytes_open_under_their_id_only() -> None:
    sealed = seal_text("a.b.c", "C1/510000/1", KEY)
    assert sealed.startswith("aes256gcm:")
    assert open_text(sealed, "C1/510000/1", KEY) == "a.b.c"
    assert seal_text("a.b.c", "C1/510000/1", KEY) != sealed  # a fresh nonce each time
    for associated, key in (("C1/510000/2", KEY), ("C1/510000/1", b"j" * 32)):
        with pytest.raises(SealedCaseDataError):
            open_text(sealed, associated, key)
    with pytest.raises(SealedCaseDataError):
        open_text("plain", "C1/510000/1", KEY)
    packed = pack_attachment(b"content", b"signed")
    assert unpack_attachment(open_bytes(seal_bytes(packed, "sha", KEY), "sha", KEY)) == (
        b"content",
        b"signed",
    )
    assert unpack_attachment(pack_attachment(b"only", b"")) == (b"only", b"")
    with pytest.raises(SealedCaseDataError):
        unpack_attachment(b"\x00\x00\x00\x00\x00\x00\x01\x00short")
