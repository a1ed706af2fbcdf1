"""SM2 certificate paths (`signer._sm2_path`): a Tongban-issued SM2 PKI passes, each failure
class gives its documented sub-indication, OpenSSL 3 judges the same chains the same way (where
it can: not CRLs, whose SM2 signatures OpenSSL 3.0 checks with an empty id), and ofdrw's test
root gives the key usage failure OpenSSL gives."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sm2_support import (
    NOW,
    SIGNING_USAGE,
    Issued,
    crl,
    issue,
    key_usage,
    name,
    openssl_verify,
    openssl_verify_links,
)
from support import SHARED

from signer import SubIndication
from signer._sm2 import Sm2PrivateKey
from signer._sm2_path import Sm2Path, Sm2PathFailure, check_sm2_path
from signer._sm2_x509 import issue_sm2_certificate

GM = SHARED / "vectors" / "gm"


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    root = issue("Region 330000 Root CA", path_length=1)
    intermediate = issue("Region 330000 Seal CA", root, path_length=0)
    leaf = issue("Agency seal", intermediate, ca=False, usage=SIGNING_USAGE)
    return {"root": root, "intermediate": intermediate, "leaf": leaf}


def failure(leaf: x509.Certificate, **kwargs: object) -> Sm2PathFailure:
    kwargs.setdefault("at", NOW)
    with pytest.raises(Sm2PathFailure) as caught:
        check_sm2_path(leaf, **kwargs)  # type: ignore[arg-type]
    return caught.value


# -- passing ------------------------------------------------------------------------------------
def test_tongban_issued_sm2_pki_passes_here_and_in_openssl(
    pki: dict[str, Issued], tmp_path: Path
) -> None:
    root, intermediate, leaf = pki["root"], pki["intermediate"], pki["leaf"]
    path = check_sm2_path(
        leaf.certificate,
        roots=[root.certificate],
        intermediates=[intermediate.certificate],
        at=NOW,
    )
    assert isinstance(path, Sm2Path)
    assert path.certificates == (leaf.certificate, intermediate.certificate, root.certificate)
    assert path.valid_from == max(c.not_valid_before_utc for c in path.certificates)
    assert path.valid_until == min(c.not_valid_after_utc for c in path.certificates)
    assert path.revoked is None
    assert path.revocation_checked == "no CRL was available for the path"
    result = openssl_verify_links(tmp_path, list(path.certificates))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ca_purpose_checks_a_region_ca_certificate(pki: dict[str, Issued]) -> None:
    root, intermediate = pki["root"], pki["intermediate"]
    path = check_sm2_path(intermediate.certificate, roots=[root.certificate], at=NOW, purpose="ca")
    assert path.certificates == (intermediate.certificate, root.certificate)
    # a root checked as itself: its self-signature is what is checked
    assert check_sm2_path(
        root.certificate, roots=[root.certificate], at=NOW, purpose="ca"
    ).certificates == (root.certificate,)
    refused = failure(
        pki["leaf"].certificate,
        roots=[root.certificate],
        purpose="ca",
        intermediates=[intermediate.certificate],
    )
    assert refused.sub is SubIndication.CHAIN_CONSTRAINTS_FAILURE
    assert "the CA certificate is not a CA" in refused.message


def test_key_identifiers_choose_between_issuers_of_the_same_name(
    pki: dict[str, Issued],
) -> None:
    root = pki["root"]
    # a rolled-over root: same name, another key; the leaf's AKI picks the right one
    other = issue("Region 330000 Root CA", path_length=1)
    leaf = issue("Seal", root, ca=False, usage=SIGNING_USAGE)
    path = check_sm2_path(leaf.certificate, roots=[other.certificate, root.certificate], at=NOW)
    assert path.certificates[-1] == root.certificate
    # without key identifiers both are tried by signature
    bare = issue("Seal", root, ca=False, usage=SIGNING_USAGE, key_ids=False)
    path = check_sm2_path(bare.certificate, roots=[other.certificate, root.certificate], at=NOW)
    assert path.certificates[-1] == root.certificate


# -- (1) path -----------------------------------------------------------------------------------
def test_bad_signature_finds_no_chain(pki: dict[str, Issued], tmp_path: Path) -> None:
    root, intermediate = pki["root"], pki["intermediate"]
    forged = issue(
        "Seal", intermediate, ca=False, usage=SIGNING_USAGE, signing_key=Sm2PrivateKey.generate()
    )
    refused = failure(
        forged.certificate, roots=[root.certificate], intermediates=[intermediate.certificate]
    )
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "the signature of the signing certificate does not verify with the key of " in (
        refused.message
    )
    assert "Region 330000 Seal CA" in refused.message
    result = openssl_verify_links(tmp_path, [forged.certificate, intermediate.certificate])
    assert result.returncode != 0
    assert "certificate signature failure" in result.stdout + result.stderr


def test_tampered_tbs_finds_no_chain(pki: dict[str, Issued]) -> None:
    from cryptography.hazmat.primitives import serialization

    der = bytearray(pki["leaf"].certificate.public_bytes(serialization.Encoding.DER))
    position = der.find(b"Agency seal")
    der[position] ^= 0x01  # "@gency seal": the signed bytes changed, the signature did not
    tampered = x509.load_der_x509_certificate(bytes(der))
    refused = failure(
        tampered,
        roots=[pki["root"].certificate],
        intermediates=[pki["intermediate"].certificate],
    )
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "does not verify" in refused.message


def test_wrong_issuer_key_finds_no_chain(pki: dict[str, Issued], tmp_path: Path) -> None:
    root = pki["root"]
    # an impostor CA with the intermediate's name but its own key, and no key identifiers
    impostor = issue("Region 330000 Seal CA", root, key_ids=False)
    leaf = issue("Seal", pki["intermediate"], ca=False, usage=SIGNING_USAGE, key_ids=False)
    refused = failure(
        leaf.certificate, roots=[root.certificate], intermediates=[impostor.certificate]
    )
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "does not verify with the key of CA certificate" in refused.message
    result = openssl_verify_links(tmp_path, [leaf.certificate, impostor.certificate])
    assert result.returncode != 0


def test_no_anchor_finds_no_chain(pki: dict[str, Issued], tmp_path: Path) -> None:
    stranger = issue("Another root")
    refused = failure(
        pki["leaf"].certificate,
        roots=[stranger.certificate],
        intermediates=[pki["intermediate"].certificate],
    )
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "no certificate in the roots or intermediates issued CA certificate " in (
        refused.message
    )
    result = openssl_verify(
        tmp_path,
        pki["leaf"].certificate,
        [stranger.certificate],
        [pki["intermediate"].certificate],
    )
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


def test_self_signed_leaf_not_among_roots_finds_no_chain() -> None:
    alone = issue("Self-made seal", ca=False, usage=SIGNING_USAGE)
    refused = failure(alone.certificate, roots=[issue("Root").certificate])
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "self-issued and not among the roots" in refused.message


def test_loop_is_refused() -> None:
    # two CAs that certify each other, neither a root: building goes round in a circle
    key_a, key_b = Sm2PrivateKey.generate(), Sm2PrivateKey.generate()
    a_for_b = Issued(
        key_a,
        issue(
            "CA A", Issued(key_b, issue("CA B", key=key_b).certificate), key=key_a, key_ids=False
        ).certificate,
    )
    b_for_a = Issued(key_b, issue("CA B", a_for_b, key=key_b, key_ids=False).certificate)
    leaf = issue("Seal", a_for_b, ca=False, usage=SIGNING_USAGE, key_ids=False)
    refused = failure(
        leaf.certificate,
        roots=[issue("Root").certificate],
        intermediates=[a_for_b.certificate, b_for_a.certificate],
    )
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "appears twice in the path (a loop)" in refused.message


def test_over_deep_chain_is_refused(tmp_path: Path) -> None:
    root = issue("Root")
    chain = [root]
    for depth in range(5):
        chain.append(issue(f"CA {depth}", chain[-1]))
    leaf = issue("Seal", chain[-1], ca=False, usage=SIGNING_USAGE)
    intermediates = [c.certificate for c in chain[1:]]
    refused = failure(leaf.certificate, roots=[root.certificate], intermediates=intermediates)
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "longer than 4 certificates above the leaf" in refused.message
    path = check_sm2_path(
        leaf.certificate,
        roots=[root.certificate],
        intermediates=intermediates,
        at=NOW,
        max_depth=6,
    )
    assert len(path.certificates) == 7
    assert openssl_verify_links(tmp_path, list(path.certificates)).returncode == 0


def _ecdsa_root(p256: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(name(common_name))
        .public_key(p256.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(p256, hashes.SHA256())
    )


def _sm2_leaf_under(
    root: x509.Certificate, signing_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(name("Seal"))
        .issuer_name(root.subject)
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(SIGNING_USAGE), critical=True)
    )
    return issue_sm2_certificate(builder, Sm2PrivateKey.generate().public_key(), signing_key)


def test_mixed_chain_an_sm2_leaf_under_an_ecdsa_ca(pki: dict[str, Issued]) -> None:
    # A region's P-256 CA over its SM2 seal certificates: the ECDSA links are pyca's to check.
    p256 = ec.generate_private_key(ec.SECP256R1())
    ecdsa_root = _ecdsa_root(p256, "ECDSA root")
    leaf = _sm2_leaf_under(ecdsa_root, p256)
    path = check_sm2_path(leaf, roots=[ecdsa_root], at=NOW)
    assert path.certificates == (leaf, ecdsa_root)
    # an ECDSA signature by another P-256 key does not link
    forged = _sm2_leaf_under(ecdsa_root, ec.generate_private_key(ec.SECP256R1()))
    refused = failure(forged, roots=[ecdsa_root])
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "neither SM2-with-SM3 nor an ECDSA signature" in refused.message
    # an SM2-signed leaf naming an ECDSA issuer: an SM2 signature needs an SM2 issuer key
    leaf = issue(
        "Seal", Issued(pki["root"].key, ecdsa_root), ca=False, usage=SIGNING_USAGE, key_ids=False
    )
    refused = failure(leaf.certificate, roots=[ecdsa_root])
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "has a key that is not SM2" in refused.message


def test_root_with_a_bad_self_signature_is_no_anchor(pki: dict[str, Issued]) -> None:
    key = Sm2PrivateKey.generate()
    broken = issue("Broken root", key=key, signing_key=Sm2PrivateKey.generate())
    leaf = issue("Seal", Issued(key, broken.certificate), ca=False, usage=SIGNING_USAGE)
    refused = failure(leaf.certificate, roots=[broken.certificate])
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "a trusted root is refused: the signature of CA certificate" in refused.message
    assert "does not verify with its own key" in refused.message


# -- (3)-(5) constraints ------------------------------------------------------------------------
def constraint_case(case: str) -> tuple[Issued, list[Issued], Issued]:
    """(root, intermediates, leaf) broken in one way."""
    root = issue("Root")
    if case == "ca without keyCertSign":
        ca = issue("CA", root, usage={"crl_sign", "digital_signature"})
    elif case == "ca without basicConstraints":
        ca = issue("CA", root, ca=None)
    elif case == "ca with cA=FALSE":
        ca = issue("CA", root, ca=False)
    elif case == "pathLen exceeded":
        root = issue("Root", path_length=0)
        ca = issue("CA", root)
    else:
        ca = issue("CA", root)
    usage = {"key_encipherment"} if case == "leaf without digitalSignature" else SIGNING_USAGE
    leaf = issue("Seal", ca, ca=case == "leaf is a CA", usage=usage)
    return root, [ca], leaf


@pytest.mark.parametrize(
    ("case", "words", "openssl_words"),
    [
        (
            "ca without keyCertSign",
            "CA certificate CN=CA,O=Tongban test,C=CN has a keyUsage without keyCertSign",
            "key usage does not include certificate signing",
        ),
        ("ca without basicConstraints", "has no basicConstraints", "invalid CA certificate"),
        ("ca with cA=FALSE", "is not a CA (basicConstraints cA=FALSE)", "invalid CA certificate"),
        (
            "pathLen exceeded",
            "allows 0 intermediate CA certificates",
            "path length constraint exceeded",
        ),
        ("leaf without digitalSignature", "without digitalSignature or nonRepudiation", None),
        ("leaf is a CA", "is a CA certificate (basicConstraints cA=TRUE)", None),
    ],
)
def test_constraint_failures(
    case: str, words: str, openssl_words: str | None, tmp_path: Path
) -> None:
    root, intermediates, leaf = constraint_case(case)
    refused = failure(
        leaf.certificate,
        roots=[root.certificate],
        intermediates=[c.certificate for c in intermediates],
    )
    assert refused.sub is SubIndication.CHAIN_CONSTRAINTS_FAILURE
    assert words in refused.message
    if openssl_words is not None:  # OpenSSL's default purpose checks no leaf key usage
        if case == "pathLen exceeded":  # judged on the whole chain, before any signature
            result = openssl_verify(
                tmp_path, leaf.certificate, [root.certificate], [intermediates[0].certificate]
            )
        else:
            links = [leaf.certificate, intermediates[0].certificate, root.certificate]
            # without -x509_strict OpenSSL takes keyCertSign alone for a CA (RFC 5280 does not)
            result = openssl_verify_links(tmp_path, links, strict=True)
        assert result.returncode != 0
        assert openssl_words in result.stdout + result.stderr


def test_unknown_critical_extension_is_refused(tmp_path: Path) -> None:
    root = issue("Root")
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00")
    leaf = issue("Seal", root, ca=False, usage=SIGNING_USAGE, extensions=[(odd, True)])
    refused = failure(leaf.certificate, roots=[root.certificate])
    assert refused.sub is SubIndication.CHAIN_CONSTRAINTS_FAILURE
    assert "critical extension this check does not understand (1.2.3.4.5)" in refused.message
    result = openssl_verify(tmp_path, leaf.certificate, [root.certificate])
    assert "unhandled critical extension" in result.stdout + result.stderr
    # the same extension, not critical, is no obstacle
    mild = issue("Seal", root, ca=False, usage=SIGNING_USAGE, extensions=[(odd, False)])
    check_sm2_path(mild.certificate, roots=[root.certificate], at=NOW)


def test_malformed_extension_is_a_format_failure() -> None:
    root = issue("Root")
    # the CT poison extension must be a NULL; an INTEGER there is unreadable to pyca
    poison = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.3")
    garbage = x509.UnrecognizedExtension(poison, b"\x02\x01\x00")
    leaf = issue("Seal", root, ca=False, usage=SIGNING_USAGE, extensions=[(garbage, False)])
    refused = failure(leaf.certificate, roots=[root.certificate])
    assert refused.sub is SubIndication.FORMAT_FAILURE
    assert refused.message.startswith("the signing certificate has a malformed extension")


def _with_duplicated_extension(issued: Issued, issuer_key: Sm2PrivateKey) -> x509.Certificate:
    """`issued`'s certificate with its first extension twice (RFC 5280 forbids it; pyca raises
    DuplicateExtension, not a ValueError, when the extensions are first read), re-signed."""
    loaded = asn1_x509.Certificate.load(issued.certificate.public_bytes(serialization.Encoding.DER))
    tbs = loaded["tbs_certificate"]
    extensions = list(tbs["extensions"])
    tbs["extensions"] = asn1_x509.Extensions([*extensions, extensions[0]])
    tbs_der = bytes(tbs.dump(force=True))
    certificate = asn1_x509.Certificate(
        {
            "tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
            "signature_algorithm": loaded["signature_algorithm"],
            "signature_value": issuer_key.sign(tbs_der),
        }
    )
    return x509.load_der_x509_certificate(bytes(certificate.dump()))


def test_a_duplicated_extension_is_a_format_failure_not_an_exception() -> None:
    root = issue("Root")
    leaf = issue("Seal", root, ca=False, usage=SIGNING_USAGE)
    twice = _with_duplicated_extension(leaf, root.key)
    with pytest.raises(x509.DuplicateExtension):
        _ = twice.extensions  # what pyca does: the class this test guards against
    refused = failure(twice, roots=[root.certificate])
    assert refused.sub is SubIndication.FORMAT_FAILURE
    assert "malformed extension" in refused.message
    # an anchor with a duplicated extension: refused in words, never raised
    bad_root = _with_duplicated_extension(root, root.key)
    refused = failure(leaf.certificate, roots=[bad_root])
    assert refused.sub in (SubIndication.FORMAT_FAILURE, SubIndication.NO_CERTIFICATE_CHAIN_FOUND)


# -- (6) validity -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("at", "sub", "words", "openssl_words"),
    [
        (NOW + timedelta(days=400), SubIndication.EXPIRED, "expired", "certificate has expired"),
        (
            NOW - timedelta(days=400),
            SubIndication.NOT_YET_VALID,
            "not yet valid",
            "certificate is not yet valid",
        ),
    ],
)
def test_leaf_outside_its_validity(
    at: datetime, sub: SubIndication, words: str, openssl_words: str, tmp_path: Path
) -> None:
    root = issue(
        "Root", not_before=NOW - timedelta(days=3650), not_after=NOW + timedelta(days=3650)
    )
    leaf = issue("Seal", root, ca=False, usage=SIGNING_USAGE)
    refused = failure(leaf.certificate, roots=[root.certificate], at=at)
    assert refused.sub is sub
    assert f"the signing certificate was {words} at {at:%Y-%m-%dT%H:%M:%SZ}" in refused.message
    result = openssl_verify(tmp_path, leaf.certificate, [root.certificate], at=at)
    assert openssl_words in result.stdout + result.stderr


def test_ca_outside_its_validity_is_a_chain_constraints_failure(tmp_path: Path) -> None:
    root = issue(
        "Root", not_before=NOW - timedelta(days=3650), not_after=NOW + timedelta(days=3650)
    )
    ca = issue("CA", root, not_after=NOW - timedelta(days=1))
    leaf = issue(
        "Seal",
        ca,
        ca=False,
        usage=SIGNING_USAGE,
        not_before=NOW - timedelta(days=30),
        not_after=NOW + timedelta(days=30),
    )
    refused = failure(leaf.certificate, roots=[root.certificate], intermediates=[ca.certificate])
    assert refused.sub is SubIndication.CHAIN_CONSTRAINTS_FAILURE
    assert "CA certificate CN=CA,O=Tongban test,C=CN was not valid at" in refused.message
    result = openssl_verify_links(tmp_path, [leaf.certificate, ca.certificate, root.certificate])
    assert "certificate has expired" in result.stdout + result.stderr


# -- (7) CRLs -----------------------------------------------------------------------------------
def test_revoked_leaf_is_reported_for_the_caller(pki: dict[str, Issued]) -> None:
    root, intermediate, leaf = pki["root"], pki["intermediate"], pki["leaf"]
    when = NOW - timedelta(days=2)
    path = check_sm2_path(
        leaf.certificate,
        roots=[root.certificate],
        intermediates=[intermediate.certificate],
        crls=[crl(intermediate, [(leaf.certificate, when)]), crl(root)],
        at=NOW,
    )
    assert path.revoked == ("the signing certificate", when, "key_compromise")
    assert "the signing certificate is listed on the CRL of CN=Region 330000 Seal CA" in (
        path.revocation_checked
    )


def test_revoked_ca_is_reported(pki: dict[str, Issued]) -> None:
    root, intermediate, leaf = pki["root"], pki["intermediate"], pki["leaf"]
    when = NOW - timedelta(days=2)
    path = check_sm2_path(
        leaf.certificate,
        roots=[root.certificate],
        intermediates=[intermediate.certificate],
        crls=[crl(intermediate), crl(root, [(intermediate.certificate, when)], reason=None)],
        at=NOW,
    )
    assert path.revoked is not None
    assert path.revoked[0].startswith("CA certificate CN=Region 330000 Seal CA")
    assert path.revoked[1:] == (when, "")


def test_current_crls_that_do_not_list_the_path(pki: dict[str, Issued]) -> None:
    root, intermediate, leaf = pki["root"], pki["intermediate"], pki["leaf"]
    path = check_sm2_path(
        leaf.certificate,
        roots=[root.certificate],
        intermediates=[intermediate.certificate],
        crls=[crl(intermediate), crl(root)],
        at=NOW,
        require_crl=True,
    )
    assert path.revoked is None
    assert path.revocation_checked == (
        "not listed on the current CRLs: the signing certificate, "
        "CA certificate CN=Region 330000 Seal CA,O=Tongban test,C=CN"
    )


def test_stale_crl_is_try_later_unless_a_current_one_is_there(pki: dict[str, Issued]) -> None:
    root, intermediate, leaf = pki["root"], pki["intermediate"], pki["leaf"]
    stale = crl(
        intermediate, last_update=NOW - timedelta(days=10), next_update=NOW - timedelta(days=3)
    )
    kwargs = {"roots": [root.certificate], "intermediates": [intermediate.certificate]}
    refused = failure(leaf.certificate, crls=[stale], **kwargs)
    assert refused.sub is SubIndication.TRY_LATER
    assert "were past their next update" in refused.message
    path = check_sm2_path(leaf.certificate, crls=[stale, crl(intermediate)], at=NOW, **kwargs)  # type: ignore[arg-type]
    assert path.revoked is None
    # the newest current CRL decides: an older current one that lists nothing does not hide it
    older = crl(intermediate, last_update=NOW - timedelta(days=5))
    newer = crl(intermediate, [(leaf.certificate, NOW - timedelta(hours=1))])
    path = check_sm2_path(leaf.certificate, crls=[older, newer], at=NOW, **kwargs)  # type: ignore[arg-type]
    assert path.revoked is not None


def test_crl_with_a_bad_signature_is_ignored(pki: dict[str, Issued]) -> None:
    root, intermediate, leaf = pki["root"], pki["intermediate"], pki["leaf"]
    forged = crl(intermediate, [(leaf.certificate, NOW)], signing_key=Sm2PrivateKey.generate())
    kwargs = {"roots": [root.certificate], "intermediates": [intermediate.certificate]}
    path = check_sm2_path(leaf.certificate, crls=[forged], at=NOW, **kwargs)  # type: ignore[arg-type]
    assert path.revoked is None
    assert "was ignored: it has a signature that does not verify with the issuer's key" in (
        path.revocation_checked
    )
    refused = failure(leaf.certificate, crls=[forged], require_crl=True, **kwargs)
    assert refused.sub is SubIndication.TRY_LATER
    assert "no usable CRL from CN=Region 330000 Seal CA" in refused.message


def test_require_crl_without_one_is_try_later(pki: dict[str, Issued]) -> None:
    refused = failure(
        pki["leaf"].certificate,
        roots=[pki["root"].certificate],
        intermediates=[pki["intermediate"].certificate],
        crls=[crl(pki["root"])],
        require_crl=True,
    )
    assert refused.sub is SubIndication.TRY_LATER


def test_crl_from_an_issuer_without_crl_sign_is_ignored() -> None:
    root = issue("Root", usage={"key_cert_sign"})
    leaf = issue("Seal", root, ca=False, usage=SIGNING_USAGE)
    path = check_sm2_path(
        leaf.certificate,
        roots=[root.certificate],
        crls=[crl(root, [(leaf.certificate, NOW)])],
        at=NOW,
    )
    assert path.revoked is None
    assert "keyUsage lacks cRLSign" in path.revocation_checked


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("leaf", "kwargs"),
    [
        (b"not a certificate", {}),
        (None, {}),
        ("cert", {"roots": ["not a certificate"]}),
        ("cert", {"crls": ["not a CRL"]}),
        ("cert", {"at": datetime(2026, 1, 1)}),  # naive
        ("cert", {"purpose": "tls"}),
    ],
)
def test_bad_input_is_a_format_failure(
    leaf: object, kwargs: dict[str, object], pki: dict[str, Issued]
) -> None:
    if leaf == "cert":
        leaf = pki["leaf"].certificate
    kwargs.setdefault("roots", [pki["root"].certificate])
    refused = failure(leaf, **kwargs)  # type: ignore[arg-type]
    assert refused.sub is SubIndication.FORMAT_FAILURE


def test_a_point_off_the_curve_is_no_chain(pki: dict[str, Issued]) -> None:
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import serialization

    loaded = asn1_x509.Certificate.load(
        pki["root"].certificate.public_bytes(serialization.Encoding.DER)
    )
    spki = loaded["tbs_certificate"]["subject_public_key_info"]
    spki["public_key"] = b"\x04" + b"\x01" * 64
    weird = x509.load_der_x509_certificate(loaded.dump(force=True))
    refused = failure(pki["intermediate"].certificate, roots=[weird], purpose="ca")
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "unusable SM2 key" in refused.message


# -- ofdrw ------------------------------------------------------------------------------------
def ofdrw_signer_certificate() -> x509.Certificate:
    with zipfile.ZipFile(GM / "ses-v4-signed.ofd") as ofd:
        signed_value = ofd.read("Doc_0/Signs/Sign_0/SignedValue.dat")
    # SES_Signature: SEQUENCE { TBS_Sign, cert OCTET STRING, signatureAlgID, signature, ... }
    cert = asn1_core.Sequence.load(signed_value)[1]
    assert isinstance(cert, asn1_core.OctetString)
    return x509.load_der_x509_certificate(cert.native)


def test_ofdrw_chain_fails_on_key_usage_as_in_openssl(tmp_path: Path) -> None:
    root = x509.load_pem_x509_certificate((GM / "ofdrw-root.pem").read_bytes())
    signer = ofdrw_signer_certificate()
    assert signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test Certificate"
    within = datetime(2021, 4, 21, tzinfo=UTC)  # inside the signer certificate's validity
    signed_at = datetime(2026, 8, 4, 2, 8, 9, tzinfo=UTC)  # the seal's timeInfo: expired by then
    for at in (within, signed_at):
        refused = failure(signer, roots=[root], at=at)
        assert refused.sub is SubIndication.CHAIN_CONSTRAINTS_FAILURE
        assert refused.message == (
            "CA certificate CN=OFD Reader and WriterROOT Certificate,L=Hangzhou,ST=Zhejiang,"
            "O=OFD R&W,C=CN has a keyUsage without keyCertSign: key usage does not include "
            "certificate signing"
        )
        result = openssl_verify(tmp_path, signer, [root], at=at)
        assert result.returncode != 0
        assert "key usage does not include certificate signing" in result.stdout + result.stderr
    # checked as a CA on its own, the root fails the same way (OpenSSL does not check an
    # anchor that is its own leaf)
    refused = failure(root, roots=[root], at=within, purpose="ca")
    assert refused.sub is SubIndication.CHAIN_CONSTRAINTS_FAILURE
    assert refused.message.startswith("the CA certificate has a keyUsage without keyCertSign")


def test_many_issuers_of_one_name_are_tried_within_a_budget(pki: dict[str, Issued]) -> None:
    root = pki["root"]
    impostors = [issue("Region 330000 Seal CA", root, key_ids=False) for _ in range(70)]
    leaf = issue("Seal", pki["intermediate"], ca=False, usage=SIGNING_USAGE, key_ids=False)
    refused = failure(
        leaf.certificate, roots=[root.certificate], intermediates=[c.certificate for c in impostors]
    )
    assert refused.sub is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    assert "within 64 signature checks" in refused.message
    # the genuine issuer among a few impostors is found
    path = check_sm2_path(
        leaf.certificate,
        roots=[root.certificate],
        intermediates=[*(c.certificate for c in impostors[:5]), pki["intermediate"].certificate],
        at=NOW,
    )
    assert path.certificates[1] == pki["intermediate"].certificate


def test_ca_purpose_reports_its_own_dates_as_expired_or_not_yet_valid(
    pki: dict[str, Issued],
) -> None:
    root, intermediate = pki["root"], pki["intermediate"]
    later = intermediate.certificate.not_valid_after_utc + timedelta(days=1)
    refused = failure(intermediate.certificate, roots=[root.certificate], purpose="ca", at=later)
    assert refused.sub is SubIndication.EXPIRED
    assert refused.message.startswith("the CA certificate was expired at")
    # a validation time in another time zone is the same instant, reported in UTC
    east = NOW.astimezone(timezone(timedelta(hours=8)))
    assert check_sm2_path(
        intermediate.certificate, roots=[root.certificate], purpose="ca", at=east
    ).certificates == (intermediate.certificate, root.certificate)
