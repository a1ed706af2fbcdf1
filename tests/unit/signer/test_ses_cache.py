"""What GmVerifier remembers between validations changes no report: a repeated validation is
the same report; the signature over TBS_Sign and the data are checked every time; a newer
trust source drops what was learnt about seals and paths."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from sm2_support import SIGNING_USAGE, issue

from signer import GmVerifier, Sm2FileSigner, SubIndication, make_seal, sign_with_seal

REGION = "330000"
DATA = b"<ofd:Signature>remembered</ofd:Signature>"
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class OneRegion:
    roots: tuple[x509.Certificate, ...]
    version: int

    def key(self, kid: str) -> None:
        return None

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return (self.roots, ()) if region == REGION else ((), ())

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return ()

    def regions(self) -> tuple[str, ...]:
        return (REGION,)


@pytest.fixture(scope="module")
def made() -> tuple[x509.Certificate, bytes]:
    window = {"not_before": NOW - timedelta(days=30), "not_after": NOW + timedelta(days=365)}
    root = issue("Cache root CA", **window)  # type: ignore[arg-type]
    leaf = {"ca": False, "usage": SIGNING_USAGE, **window}
    maker = issue("Cache seal maker", root, **leaf)  # type: ignore[arg-type]
    signer = issue("Cache seal key", root, **leaf)  # type: ignore[arg-type]
    seal = make_seal(
        maker=Sm2FileSigner(maker.key, maker.certificate),
        es_id="33000000000000000007",
        name="缓存测试章",
        seal_type=1,
        signer_certificates=[signer.certificate],
        picture=b"\x89PNG\r\n\x1a\n" + bytes(8),
        width_mm=40,
        height_mm=40,
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=30),
        created=NOW - timedelta(days=1),
    )
    signed = sign_with_seal(
        DATA,
        seal=seal,
        signer=Sm2FileSigner(signer.key, signer.certificate),
        at=NOW - timedelta(minutes=1),
        property_info="cache",
    )
    return root.certificate, signed


def test_a_repeated_validation_is_the_same_report(made: tuple[x509.Certificate, bytes]) -> None:
    root, signed = made
    verifier = GmVerifier(OneRegion((root,), 1), clock=lambda: NOW)
    first = verifier.validate_signature(signed, DATA)
    assert first.passed, first.message
    assert verifier.validate_signature(signed, DATA) == first
    assert verifier.validate_signature(bytes(signed), DATA) == first


def test_the_signature_and_the_data_are_checked_every_time(
    made: tuple[x509.Certificate, bytes],
) -> None:
    root, signed = made
    verifier = GmVerifier(OneRegion((root,), 1), clock=lambda: NOW)
    assert verifier.validate_signature(signed, DATA).passed
    changed = verifier.validate_signature(signed, DATA + b" ")
    assert changed.sub_indication is SubIndication.HASH_FAILURE
    flipped = bytearray(signed)
    flipped[-5] ^= 0x01  # inside the signature value, the last field
    report = verifier.validate_signature(bytes(flipped), DATA)
    assert report.sub_indication in {SubIndication.SIG_CRYPTO_FAILURE, SubIndication.FORMAT_FAILURE}
    assert verifier.validate_signature(signed, DATA).passed


def test_a_newer_trust_source_drops_what_was_learnt(
    made: tuple[x509.Certificate, bytes],
) -> None:
    root, signed = made
    verifier = GmVerifier(OneRegion((root,), 1), clock=lambda: NOW)
    assert verifier.validate_signature(signed, DATA).passed
    verifier.use(OneRegion((), 2))  # version 2 no longer has the region's root
    report = verifier.validate_signature(signed, DATA)
    assert report.sub_indication is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert report.registry_version == 2
    verifier.use(OneRegion((root,), 3))
    assert verifier.validate_signature(signed, DATA).passed
