"""SM2 certificates and CRLs (`signer._sm2_x509`): keys and signatures of certificates made
here, by OpenSSL and by ofdrw; OpenSSL judging what is issued here (`openssl verify` with the
SM2 id for certificates, `pkeyutl` over the tbsCertList for CRLs, since OpenSSL 3.0 checks an
SM2 CRL signature with an empty id); a changed signed part fails."""

from __future__ import annotations

import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sm2_support import (
    DISTID,
    NOW,
    SIGNING_USAGE,
    Issued,
    crl,
    issue,
    name,
    openssl,
    openssl_verify_links,
)
from support import SHARED

from signer import Sm2KeyInvalid, Sm2PrivateKey
from signer._sm2 import SM2_WITH_SM3_OID
from signer._sm2_x509 import (
    is_sm2_key,
    is_sm2_signed,
    sm2_public_key_of,
    sm2_signature_verifies,
    sm2_subject_key_identifier,
)

GM = SHARED / "vectors" / "gm"


@pytest.fixture(scope="module")
def chain() -> list[Issued]:
    root = issue("Region 330000 Root CA")
    intermediate = issue("Region 330000 Seal CA", root, path_length=0)
    leaf = issue("Agency seal", intermediate, ca=False, usage=SIGNING_USAGE)
    return [leaf, intermediate, root]


def p256_certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(name("P-256"))
        .issuer_name(name("P-256"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_keys_and_signatures_of_an_issued_chain(chain: list[Issued]) -> None:
    leaf, intermediate, root = chain
    for issued, issuer in ((leaf, intermediate), (intermediate, root), (root, root)):
        assert is_sm2_key(issued.certificate)
        assert is_sm2_signed(issued.certificate)
        assert sm2_public_key_of(issued.certificate) == issued.key.public_key()
        assert sm2_signature_verifies(issued.certificate, issuer.key.public_key())
    # another key, or the subject's own key, did not sign it
    assert not sm2_signature_verifies(leaf.certificate, root.key.public_key())
    assert not sm2_signature_verifies(leaf.certificate, leaf.key.public_key())


def test_issued_certificate_is_encoded_as_gm_t_0015_says(chain: list[Issued]) -> None:
    leaf = asn1_x509.Certificate.load(chain[0].certificate.public_bytes(serialization.Encoding.DER))
    for algorithm in (leaf["signature_algorithm"], leaf["tbs_certificate"]["signature"]):
        assert algorithm["algorithm"].dotted == SM2_WITH_SM3_OID
        assert not algorithm["parameters"].contents  # absent, not even NULL
    assert chain[0].certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value.digest == sm2_subject_key_identifier(chain[0].key.public_key())


def test_openssl_verifies_a_chain_issued_here(chain: list[Issued], tmp_path: Path) -> None:
    result = openssl_verify_links(tmp_path, [c.certificate for c in chain])
    assert result.returncode == 0, result.stdout + result.stderr
    # and refuses it with another distinguishing id (the one OpenSSL signs with by default)
    (tmp_path / "root.pem").write_bytes(chain[2].pem)
    (tmp_path / "ca.pem").write_bytes(chain[1].pem)
    wrong_id = openssl(
        "verify", "-vfyopt", "distid:0000", "-CAfile", tmp_path / "root.pem", tmp_path / "ca.pem"
    )
    assert wrong_id.returncode != 0
    assert "certificate signature failure" in wrong_id.stdout + wrong_id.stderr


def test_a_certificate_issued_by_openssl_verifies_here(tmp_path: Path) -> None:
    key, certificate = tmp_path / "key.pem", tmp_path / "cert.pem"
    assert openssl("genpkey", "-algorithm", "SM2", "-out", key).returncode == 0
    made = openssl(
        "req", "-new", "-x509", "-key", key, "-sm3", "-sigopt", DISTID, "-subj", "/CN=OpenSSL",
        "-out", certificate,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    public = sm2_public_key_of(loaded)
    assert public == Sm2PrivateKey.from_pem(key.read_bytes()).public_key()
    assert sm2_signature_verifies(loaded, public)
    # OpenSSL's subjectKeyIdentifier=hash is RFC 5280's method 1, as here
    ski = loaded.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ski == sm2_subject_key_identifier(public)


def test_crl_signature_checked_here_and_by_openssl_pkeyutl(
    chain: list[Issued], tmp_path: Path
) -> None:
    leaf, intermediate, _ = chain
    revocations = crl(intermediate, [(leaf.certificate, NOW - timedelta(days=1))])
    assert is_sm2_signed(revocations)
    assert sm2_signature_verifies(revocations, intermediate.key.public_key())
    assert not sm2_signature_verifies(revocations, leaf.key.public_key())
    loaded = asn1_crl.CertificateList.load(revocations.public_bytes(serialization.Encoding.DER))
    assert loaded["signature_algorithm"]["algorithm"].dotted == SM2_WITH_SM3_OID
    (tmp_path / "tbs.der").write_bytes(revocations.tbs_certlist_bytes)
    (tmp_path / "sig.der").write_bytes(revocations.signature)
    (tmp_path / "pub.pem").write_bytes(intermediate.key.public_key().pem())
    (tmp_path / "other.pem").write_bytes(leaf.key.public_key().pem())

    def pkeyutl(public: str) -> int:
        return openssl(
            "pkeyutl", "-verify", "-pubin", "-inkey", tmp_path / public, "-rawin",
            "-digest", "sm3", "-pkeyopt", DISTID, "-in", tmp_path / "tbs.der",
            "-sigfile", tmp_path / "sig.der",
        ).returncode  # fmt: skip

    assert pkeyutl("pub.pem") == 0
    assert pkeyutl("other.pem") != 0


def test_tampered_tbs_fails(chain: list[Issued]) -> None:
    leaf, intermediate, _ = chain
    der = bytearray(leaf.certificate.public_bytes(serialization.Encoding.DER))
    der[der.find(b"Agency seal")] ^= 0x20  # "agency seal"
    tampered = x509.load_der_x509_certificate(bytes(der))
    assert not sm2_signature_verifies(tampered, intermediate.key.public_key())
    revocations = crl(intermediate)
    der = bytearray(revocations.public_bytes(serialization.Encoding.DER))
    der[der.find(b"Region 330000 Seal CA")] ^= 0x20
    assert not sm2_signature_verifies(
        x509.load_der_x509_crl(bytes(der)), intermediate.key.public_key()
    )


def test_ofdrw_root_self_signature_and_signer_certificate() -> None:
    root = x509.load_pem_x509_certificate((GM / "ofdrw-root.pem").read_bytes())
    assert is_sm2_key(root)
    assert is_sm2_signed(root)
    root_key = sm2_public_key_of(root)
    assert sm2_signature_verifies(root, root_key)
    with zipfile.ZipFile(GM / "ses-v4-signed.ofd") as ofd:
        signed_value = ofd.read("Doc_0/Signs/Sign_0/SignedValue.dat")
    signer = x509.load_der_x509_certificate(asn1_core.Sequence.load(signed_value)[1].native)
    assert sm2_signature_verifies(signer, root_key)
    assert not sm2_signature_verifies(signer, sm2_public_key_of(signer))


def test_non_sm2_certificates_are_told_apart() -> None:
    other = p256_certificate()
    assert not is_sm2_key(other)
    assert not is_sm2_signed(other)
    with pytest.raises(Sm2KeyInvalid, match="not an SM2 key"):
        sm2_public_key_of(other)
    # an ECDSA signature is never taken for an SM2 one
    assert not sm2_signature_verifies(other, Sm2PrivateKey.generate().public_key())
