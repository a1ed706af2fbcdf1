"""`signer._revocation`: OCSP responses made by `openssl ocsp` (as a responder over a request
file, answering from an `openssl ca` index) and CRLs made by `openssl ca -gencrl`, checked by
cryptography and cross-checked against `openssl ocsp -respin` / `openssl crl -verify`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from openssl_ca import OpenSslCa, make_openssl_ca

from signer import (
    CertStatus,
    RevocationDataInvalid,
    RevocationStatus,
    check_crl,
    check_ocsp_response,
    ocsp_cert_id,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Pki:
    ca: OpenSslCa
    good: Path
    revoked: Path
    responder: Path  # delegated, with OCSPSigning and nocheck
    not_a_responder: Path  # a TLS leaf of the same CA
    foreign_responder: Path  # OCSPSigning, but issued by another CA
    issued_at: datetime

    @property
    def issuer(self) -> x509.Certificate:
        return _cert(self.ca.intermediate)

    def respond(
        self,
        certificate: Path,
        signer: Path | None = None,
        *,
        index: Path | None = None,
        digest: str = "sha1",
        minutes: int = 5,
    ) -> bytes:
        """`openssl ocsp` answering a request for `certificate`, signed by `signer` (with the
        key beside it), from the CA's index."""
        signer = signer or self.responder
        folder = self.ca.dir
        request = folder / f"{certificate.stem}.{digest}.req"
        out = folder / f"{certificate.stem}.{signer.stem}.{digest}.resp"
        _run("ocsp", f"-{digest}", "-issuer", self.ca.intermediate, "-cert", certificate,
             "-no_nonce", "-reqout", request)  # fmt: skip
        _run("ocsp", "-index", index or folder / "index.txt", "-CA", self.ca.intermediate,
             "-rsigner", signer, "-rkey", signer.with_suffix(".key"), "-reqin", request,
             "-respout", out, "-nmin", str(minutes))  # fmt: skip
        return out.read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("ocsp")
    ca = make_openssl_ca(folder / "ca", "Chongqing")
    good, _ = ca.issue("good", "tls")
    revoked, _ = ca.issue("revoked", "tls")
    responder, _ = ca.issue("responder", "ocsp")
    not_a_responder, _ = ca.issue("not-a-responder", "tls")
    foreign = make_openssl_ca(folder / "foreign", "Foreign")
    foreign_responder, _ = foreign.issue("foreign-responder", "ocsp")
    ca.revoke_for(revoked, "keyCompromise")
    return Pki(ca, good, revoked, responder, not_a_responder, foreign_responder, datetime.now(UTC))


def _now() -> datetime:
    return datetime.now(UTC)


def test_good_and_revoked_as_the_responder_says(pki: Pki) -> None:
    good = check_ocsp_response(pki.respond(pki.good), _cert(pki.good), pki.issuer, now=_now())
    assert (good.status, good.source, good.revoked_at) == (CertStatus.GOOD, "ocsp", None)
    assert good.responder == "delegate CN=responder,O=Region (nocheck)"
    assert good.next_update is not None
    assert timedelta(minutes=4) < good.next_update - good.this_update <= timedelta(minutes=5)
    der = pki.respond(pki.revoked)
    revoked = check_ocsp_response(der, _cert(pki.revoked), pki.issuer, now=_now())
    assert revoked.status is CertStatus.REVOKED
    assert revoked.reason == "key_compromise"
    assert revoked.revoked_at is not None
    assert abs(revoked.revoked_at - pki.issued_at) < timedelta(minutes=2)
    assert revoked.der == der
    # OpenSSL's own reading of the same response agrees
    (pki.ca.dir / "revoked.resp").write_bytes(der)
    shown = _run("ocsp", "-respin", pki.ca.dir / "revoked.resp", "-issuer", pki.ca.intermediate,
                 "-CAfile", pki.ca.root, "-cert", pki.revoked)  # fmt: skip
    assert "Response verify OK" in shown.stderr
    assert ": revoked" in shown.stdout
    assert "Reason: keyCompromise" in shown.stdout


def test_signed_by_the_issuer_itself_and_sha256_cert_ids(pki: Pki) -> None:
    der = pki.respond(pki.good, pki.ca.intermediate, digest="sha256")
    status = check_ocsp_response(der, _cert(pki.good), pki.issuer, now=_now())
    assert (status.status, status.responder) == (CertStatus.GOOD, "issuer")
    single = next(ocsp.load_der_ocsp_response(der).responses)
    assert single.hash_algorithm.name == "sha256"
    assert ocsp_cert_id(_cert(pki.good), pki.issuer, "sha256") == (
        single.issuer_name_hash,
        single.issuer_key_hash,
        single.serial_number,
    )


def test_unknown_to_the_responder(pki: Pki) -> None:
    empty = pki.ca.dir / "empty-index.txt"
    empty.write_text("")
    der = pki.respond(pki.good, index=empty)
    status = check_ocsp_response(der, _cert(pki.good), pki.issuer, now=_now())
    assert status.status is CertStatus.UNKNOWN


def _tampered(der: bytes) -> bytes:
    signature = ocsp.load_der_ocsp_response(der).signature
    at = der.index(signature) + len(signature) // 2
    return der[:at] + bytes([der[at] ^ 0x01]) + der[at + 1 :]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("foreign responder", "is not certified by the issuer"),
        ("responder without OCSPSigning", "lacks the OCSPSigning extended key usage"),
        ("tampered signature", "signature does not verify"),
        ("another certificate", "says nothing about serial"),
        ("expired nextUpdate", "is stale: its next update was due"),
        ("from the future", "was issued in the future"),
        ("not a response", "not a DER OCSP response"),
        ("responder refuses", "answered malformed_request"),
        ("delegate not valid now", "is not valid at"),
    ],
)
def test_refused_responses(pki: Pki, case: str, message: str) -> None:
    certificate, now = _cert(pki.good), _now()
    der = pki.respond(pki.good)
    if case == "foreign responder":
        der = pki.respond(pki.good, pki.foreign_responder)
    elif case == "responder without OCSPSigning":
        der = pki.respond(pki.good, pki.not_a_responder)
    elif case == "tampered signature":
        der = _tampered(der)
    elif case == "another certificate":
        certificate = _cert(pki.revoked)
    elif case == "expired nextUpdate":
        now += timedelta(minutes=6)
    elif case == "from the future":
        now -= timedelta(minutes=6)
    elif case == "not a response":
        der = b"\x30\x03\x0a\x01"
    elif case == "responder refuses":
        der = ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        ).public_bytes(Encoding.DER)
    elif case == "delegate not valid now":
        now = _cert(pki.responder).not_valid_after_utc + timedelta(minutes=1)
        der = pki.respond(pki.good, minutes=60 * 24 * 40)
    with pytest.raises(RevocationDataInvalid, match=message):
        check_ocsp_response(der, certificate, pki.issuer, now=now)


def test_crl_good_revoked_and_pem(pki: Pki) -> None:
    der = pki.ca.crl("test.crl", der=True).read_bytes()
    good = check_crl(der, _cert(pki.good), pki.issuer, now=_now())
    assert (good.status, good.source, good.der) == (CertStatus.GOOD, "crl", der)
    pem = pki.ca.crl("test.pem").read_bytes()
    revoked = check_crl(pem, _cert(pki.revoked), pki.issuer, now=_now())
    assert (revoked.status, revoked.reason) == (CertStatus.REVOKED, "key_compromise")
    assert revoked.der == x509.load_pem_x509_crl(pem).public_bytes(Encoding.DER)
    # OpenSSL agrees that the CRL is the issuer's and lists the serial
    listed = _run("crl", "-in", pki.ca.dir / "test.pem", "-CAfile", pki.ca.intermediate,
                  "-noout", "-text").stdout  # fmt: skip
    assert f"{_cert(pki.revoked).serial_number:X}" in listed.replace(":", "").upper()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("another issuer", "not by CN=Chongqing Issuing CA"),
        ("tampered", "signature does not verify"),
        ("stale", "is stale"),
        ("garbage", "not a CRL"),
    ],
)
def test_refused_crls(pki: Pki, tmp_path: Path, case: str, message: str) -> None:
    der = pki.ca.crl("refused.crl", der=True).read_bytes()
    now = _now()
    if case == "another issuer":
        der = make_openssl_ca(tmp_path / "other", "Other").crl("o.crl", der=True).read_bytes()
    elif case == "tampered":
        signature = x509.load_der_x509_crl(der).signature
        at = der.index(signature) + 10
        der = der[:at] + bytes([der[at] ^ 0x01]) + der[at + 1 :]
    elif case == "stale":
        now += timedelta(days=31)
    elif case == "garbage":
        der = b"not a crl"
    with pytest.raises(RevocationDataInvalid, match=message):
        check_crl(der, _cert(pki.good), pki.issuer, now=now)


def test_status_refuses_to_exist_inconsistent() -> None:
    now = _now()
    with pytest.raises(ValueError, match="revocation time"):
        RevocationStatus(CertStatus.REVOKED, "ocsp", now, None, b"")
    with pytest.raises(ValueError, match="source"):
        RevocationStatus(CertStatus.GOOD, "ldap", now, None, b"")
    fresh = RevocationStatus(CertStatus.GOOD, "crl", now, now + timedelta(hours=1), b"")
    assert fresh.current_at(now + timedelta(minutes=59))
    assert not fresh.current_at(now + timedelta(minutes=61))
