"""SM2 certificates and CRLs: their keys, their signatures, and issuing them.

pyca/cryptography parses an SM2 certificate (names, validity, extensions) but can neither load
its key (``public_key()`` raises for the SM2 curve) nor check or make an SM2-with-SM3
signature. This module fills exactly that gap and no more: the key comes from the DER
SubjectPublicKeyInfo (asn1crypto), the signature over ``tbsCertificate`` / ``tbsCertList`` is
checked with `Sm2PublicKey` and the default distinguishing id (GM/T 0015: certificates are
signed with ``1234567812345678``), and issuing lets pyca's builders encode everything but the
key and the signature, which are then put in place and signed with SM2.

Why not a library: none on the package index issues SM2 certificates from Python (gmssl-pyx
has no X.509 writer; the pure-Python ``gmssl`` has none either), and OpenSSL's command line
would put a private key in a file.
"""

from __future__ import annotations

import hashlib
from typing import Final

from asn1crypto import algos as asn1_algos
from asn1crypto import crl as asn1_crl
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer._sm2 import SM2_CURVE_OID, SM2_WITH_SM3_OID, Sm2PrivateKey, Sm2PublicKey
from signer.errors import Sm2KeyInvalid, Sm2SignatureInvalid

# What the package exports (the registry's SM2 CRLs); the other functions are signer internals.
__all__ = ["is_sm2_key", "issue_sm2_crl", "sm2_public_key_of"]

# What pyca/cryptography raises when it parses a field of a certificate or CRL lazily, on first
# access (extensions, names, version): a certificate from a document is read under these.
# KeyError: cryptography 46.0 (the lowest allowed) maps a name attribute's string tag through a
# table and raises KeyError for a tag it does not know.
CERTIFICATE_READ_ERRORS: Final = (
    ValueError,
    TypeError,
    KeyError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

_SM2_WITH_SM3: Final = x509.ObjectIdentifier(SM2_WITH_SM3_OID)
_EC_PUBLIC_KEY: Final = "1.2.840.10045.2.1"


def _spki_of(certificate: x509.Certificate) -> asn1_keys.PublicKeyInfo:
    der = certificate.public_bytes(serialization.Encoding.DER)
    loaded = asn1_x509.Certificate.load(der)
    return loaded["tbs_certificate"]["subject_public_key_info"]


def is_sm2_key(certificate: x509.Certificate) -> bool:
    """Whether the certificate's subject key is an SM2 key (id-ecPublicKey on sm2p256v1)."""
    if certificate.public_key_algorithm_oid.dotted_string != _EC_PUBLIC_KEY:
        return False
    parameters = _spki_of(certificate)["algorithm"]["parameters"]
    return (
        isinstance(parameters, asn1_keys.ECDomainParameters)
        and parameters.name == "named"
        and parameters.chosen.dotted == SM2_CURVE_OID
    )


def sm2_public_key_of(certificate: x509.Certificate) -> Sm2PublicKey:
    """The certificate's SM2 subject key; `Sm2KeyInvalid` if it is not one."""
    if not is_sm2_key(certificate):
        raise Sm2KeyInvalid("the certificate's key is not an SM2 key")
    return Sm2PublicKey.from_spki(bytes(_spki_of(certificate).dump()))


def is_sm2_signed(signed: x509.Certificate | x509.CertificateRevocationList) -> bool:
    """Whether a certificate or CRL is signed with SM2-with-SM3 (OID 1.2.156.10197.1.501)."""
    return signed.signature_algorithm_oid == _SM2_WITH_SM3


def sm2_signature_verifies(
    signed: x509.Certificate | x509.CertificateRevocationList, issuer_key: Sm2PublicKey
) -> bool:
    """Whether the issuer's SM2 key signed this certificate or CRL (default distinguishing id)."""
    if not is_sm2_signed(signed):
        return False
    tbs = (
        signed.tbs_certificate_bytes
        if isinstance(signed, x509.Certificate)
        else signed.tbs_certlist_bytes
    )
    try:
        issuer_key.verify(signed.signature, tbs)
    except Sm2SignatureInvalid:  # Sm2SignatureMalformed too
        return False
    return True


def sm2_subject_key_identifier(key: Sm2PublicKey) -> bytes:
    """RFC 5280 method 1: SHA-1 of the subjectPublicKey bit string (04 || x || y)."""
    return hashlib.sha1(b"\x04" + key.point, usedforsecurity=False).digest()


_PLACEHOLDER = ec.generate_private_key(ec.SECP256R1())  # signs only what is then re-signed


def _sm2_algorithm() -> asn1_algos.SignedDigestAlgorithm:
    # GM/T 0015: the SM2-with-SM3 AlgorithmIdentifier has no parameters (not even NULL).
    return asn1_algos.SignedDigestAlgorithm({"algorithm": SM2_WITH_SM3_OID})


def _ecdsa_sha256_algorithm() -> asn1_algos.SignedDigestAlgorithm:
    # RFC 5758 §3.2: ecdsa-with-SHA256 has no parameters either.
    return asn1_algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})


def issue_sm2_certificate(
    builder: x509.CertificateBuilder,
    subject_key: Sm2PublicKey,
    issuer_key: Sm2PrivateKey | ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    """Issue `builder`'s certificate for an SM2 subject key, signed with the issuer's key.

    The builder carries the names, serial, validity and extensions (a SubjectKeyIdentifier, if
    wanted, from `sm2_subject_key_identifier`); it must not set a public key: this does. An SM2
    issuer signs with SM2-with-SM3; an ECDSA issuer (a region's P-256 CA: gRPC's TLS cannot use
    SM2, so a region's CA stays ECDSA and its SM2 seal certificates sit in a mixed chain) signs
    with ecdsa-with-SHA256, over the tbsCertificate that carries the SM2 key.
    """
    placeholder = builder.public_key(_PLACEHOLDER.public_key()).sign(_PLACEHOLDER, hashes.SHA256())
    loaded = asn1_x509.Certificate.load(placeholder.public_bytes(serialization.Encoding.DER))
    tbs = loaded["tbs_certificate"]
    algorithm = (
        _sm2_algorithm() if isinstance(issuer_key, Sm2PrivateKey) else _ecdsa_sha256_algorithm()
    )
    tbs["signature"] = algorithm
    tbs["subject_public_key_info"] = asn1_keys.PublicKeyInfo.load(subject_key.spki())
    tbs_der = bytes(tbs.dump(force=True))
    signature = (
        issuer_key.sign(tbs_der)
        if isinstance(issuer_key, Sm2PrivateKey)
        else issuer_key.sign(tbs_der, ec.ECDSA(hashes.SHA256()))
    )
    certificate = asn1_x509.Certificate(
        {
            "tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
            "signature_algorithm": algorithm,
            "signature_value": signature,
        }
    )
    return x509.load_der_x509_certificate(bytes(certificate.dump()))


def issue_sm2_crl(
    builder: x509.CertificateRevocationListBuilder, issuer_key: Sm2PrivateKey
) -> x509.CertificateRevocationList:
    """Issue `builder`'s CRL signed with the issuer's SM2 key (the builder sets everything else)."""
    placeholder = builder.sign(_PLACEHOLDER, hashes.SHA256())
    loaded = asn1_crl.CertificateList.load(placeholder.public_bytes(serialization.Encoding.DER))
    tbs = loaded["tbs_cert_list"]
    tbs["signature"] = _sm2_algorithm()
    tbs_der = bytes(tbs.dump(force=True))
    crl = asn1_crl.CertificateList(
        {
            "tbs_cert_list": asn1_crl.TbsCertList.load(tbs_der),
            "signature_algorithm": _sm2_algorithm(),
            "signature": issuer_key.sign(tbs_der),
        }
    )
    return x509.load_der_x509_crl(bytes(crl.dump()))
