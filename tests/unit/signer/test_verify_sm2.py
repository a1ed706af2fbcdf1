"""SealVerifier with an SM2 region CA: a JWS seal key (ES256) certified by an SM2 CA has its
chain and CRLs checked by `signer._sm2_path`; a published SM2 seal key is refused as a key type
JWS does not use, with a report, never an exception."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sm2_support import NOW, SIGNING_USAGE, Issued, crl, issue, issue_for_key, key_usage, name

from signer import (
    FileKeyProvider,
    Indication,
    SealVerifier,
    SubIndication,
    TrustedKey,
    seal,
    write_private_key,
    x5t_s256_of_certificate,
)
from signer._oids import EKU_DOCUMENT_SIGNING, POLICY_SEAL

REGION = "330000"
SIGNED = NOW - timedelta(hours=1)


@dataclass
class Trust:
    """An in-memory trust source: one region, its anchors and CRLs, its published keys."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    crl_list: tuple[x509.CertificateRevocationList, ...] = ()
    keys: dict[str, TrustedKey] = field(default_factory=dict)
    version: int = 1

    def publish(self, certificate: x509.Certificate) -> str:
        kid = x5t_s256_of_certificate(certificate)
        self.keys[kid] = TrustedKey(
            kid, certificate, "seal", "agency-1", "Agency One", REGION, "active"
        )
        return kid

    def key(self, kid: str) -> TrustedKey | None:
        return self.keys.get(kid)

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return (self.roots, self.intermediates) if region == REGION else ((), ())

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return self.crl_list if region == REGION else ()

    def regions(self) -> tuple[str, ...]:
        return (REGION,)


def seal_certificate(
    issuer: Issued, key: ec.EllipticCurvePrivateKey, *, eku: bool = True
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(name("Agency One seal"))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(SIGNING_USAGE), critical=True)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(POLICY_SEAL, None)]), critical=False
        )
    )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([EKU_DOCUMENT_SIGNING]), critical=False
        )
    return issue_for_key(builder, issuer.key)


@dataclass
class Region:
    root: Issued
    intermediate: Issued
    leaf: x509.Certificate
    provider: FileKeyProvider


def sm2_region(tmp_path: Path, *, ca_usage: set[str] | None = None, eku: bool = True) -> Region:
    root = issue("Region 330000 Root CA", path_length=1)
    intermediate = issue(
        "Region 330000 Seal CA",
        root,
        path_length=0,
        usage=ca_usage if ca_usage is not None else {"key_cert_sign", "crl_sign"},
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = seal_certificate(intermediate, key, eku=eku)
    write_private_key(tmp_path / "seal.key", key)
    (tmp_path / "seal.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + intermediate.pem
    )
    return Region(
        root, intermediate, leaf, FileKeyProvider(tmp_path / "seal.key", tmp_path / "seal.pem")
    )


def validate(
    trust: Trust, jws: str
) -> tuple[Indication, SubIndication | None, str, dict[str, str]]:
    report = SealVerifier(trust, clock=lambda: NOW).validate(jws)
    return (
        report.indication,
        report.sub_indication,
        report.message,
        {c.name: c.detail for c in report.checks},
    )


def test_es256_seal_under_an_sm2_region_ca_passes(tmp_path: Path) -> None:
    region = sm2_region(tmp_path)
    trust = Trust((region.root.certificate,), (region.intermediate.certificate,))
    trust.publish(region.leaf)
    jws = seal(b'{"ok": true}', region.provider, signing_time=SIGNED)
    indication, sub, message, checks = validate(trust, jws)
    assert indication is Indication.TOTAL_PASSED, message
    assert sub is None
    assert checks["certificate chain"] == (
        "3 certificates to region 330000's root, at the signing time"
    )
    # with the region's CRLs: current, SM2-signed, not listing the seal
    trust.crl_list = (crl(region.intermediate), crl(region.root))
    indication, _, message, checks = validate(trust, jws)
    assert indication is Indication.TOTAL_PASSED, message
    assert "not on region 330000's CRLs" in checks["revocation"]


def test_revocation_on_an_sm2_crl_is_found(tmp_path: Path) -> None:
    region = sm2_region(tmp_path)
    revoked = crl(region.intermediate, [(region.leaf, SIGNED - timedelta(hours=1))])
    trust = Trust((region.root.certificate,), (region.intermediate.certificate,), (revoked,))
    trust.publish(region.leaf)
    jws = seal(b"{}", region.provider, signing_time=SIGNED)
    indication, sub, message, _ = validate(trust, jws)
    assert (indication, sub) == (Indication.TOTAL_FAILED, SubIndication.REVOKED)
    assert "the signing certificate was revoked" in message
    # a CRL that the CA did not sign says nothing: no valid CRL, so try later
    forged = crl(
        region.intermediate,
        [(region.leaf, SIGNED - timedelta(hours=1))],
        signing_key=issue("Other").key,
    )
    trust.crl_list = (forged,)
    indication, sub, message, _ = validate(trust, jws)
    assert sub is SubIndication.TRY_LATER
    assert "no valid CRL from CN=Region 330000 Seal CA" in message


@pytest.mark.parametrize(
    ("ca_usage", "eku", "words"),
    [
        ({"crl_sign"}, True, "key usage does not include certificate signing"),
        (None, False, "it has no extendedKeyUsage"),
    ],
)
def test_chain_constraints_under_an_sm2_ca(
    tmp_path: Path, ca_usage: set[str] | None, eku: bool, words: str
) -> None:
    region = sm2_region(tmp_path, ca_usage=ca_usage, eku=eku)
    trust = Trust((region.root.certificate,), (region.intermediate.certificate,))
    trust.publish(region.leaf)
    indication, sub, message, _ = validate(trust, seal(b"{}", region.provider, signing_time=SIGNED))
    assert (indication, sub) == (Indication.INDETERMINATE, SubIndication.CHAIN_CONSTRAINTS_FAILURE)
    assert message.startswith(
        "the certificate does not chain to region 330000's CA as a signing certificate: "
    )
    assert words in message


def test_an_sm2_ca_that_did_not_sign_the_seal_certificate(tmp_path: Path) -> None:
    region = sm2_region(tmp_path)
    impostor = issue("Region 330000 Seal CA", region.root, key_ids=False)
    trust = Trust((region.root.certificate,), (impostor.certificate,))
    trust.publish(region.leaf)
    _, sub, message, _ = validate(trust, seal(b"{}", region.provider, signing_time=SIGNED))
    assert sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "does not verify with the key of CA certificate" in message


def test_a_published_sm2_seal_key_gets_a_report_not_an_exception(tmp_path: Path) -> None:
    region = sm2_region(tmp_path)
    sm2_seal = issue("Agency One SM2 seal", region.intermediate, ca=False, usage=SIGNING_USAGE)
    trust = Trust((region.root.certificate,), (region.intermediate.certificate,))
    kid = trust.publish(sm2_seal.certificate)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "ES256", "typ": "JOSE", "x5t#S256": kid, "iat": int(SIGNED.timestamp())}
    jws = f"{b64(json.dumps(header).encode())}.{b64(b'{}')}.{b64(bytes(64))}"
    indication, sub, message, _ = validate(trust, jws)
    assert (indication, sub) == (
        Indication.INDETERMINATE,
        SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
    )
    assert message == "the certificate's key is not a Tongban signing key type"
