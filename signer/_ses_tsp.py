"""The RFC 3161 time-stamp of a GB/T 38540 `SES_Signature` (its optional ``timeStamp [0]``).

The token is a CMS SignedData over a TSTInfo whose message imprint is the hash of the
signature value. This module reads it with asn1crypto (`cms`, `tsp`) and checks what the token
alone can show: the imprint is over this signature, the signed attributes hold the digest of
the TSTInfo, and the TSA's signature over them verifies with the certificate the token carries
(SM2 with the default id, or ECDSA/RSA through pyca). Whether that TSA is trusted is the
caller's question (`GmVerifier` checks its path like any other certificate); until then the
genTime is reported, not relied on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from asn1crypto import cms, tsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from signer._report import SubIndication
from signer._sm2_x509 import is_sm2_key, sm2_public_key_of
from signer.errors import Sm2Refused

__all__: list[str] = []  # internals of `_ses_verify`

_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "1.2.156.10197.1.401": hashes.SM3(),
    "2.16.840.1.101.3.4.2.1": hashes.SHA256(),
    "2.16.840.1.101.3.4.2.2": hashes.SHA384(),
    "2.16.840.1.101.3.4.2.3": hashes.SHA512(),
}
_SM2_SIGNATURES: Final = frozenset({"1.2.156.10197.1.501", "1.2.156.10197.1.301.1"})
_PARSE_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)


@dataclass(frozen=True, slots=True)
class TimeStampFinding:
    gen_time: datetime | None
    tsa_certificate: x509.Certificate | None  # the certificate whose signature verified
    problem: str  # "" when the token checks out as far as the token alone can show
    sub: SubIndication
    detail: str
    certificates: tuple[bytes, ...] = ()  # DER, as the token carries them (the TSA's chain)
    nonce: int | None = None  # the TSTInfo's, if any


def _digest(oid: str, data: bytes) -> bytes | None:
    algorithm = _HASHES.get(oid)
    if algorithm is None:
        return None
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def _bad(problem: str, sub: SubIndication = SubIndication.FORMAT_FAILURE) -> TimeStampFinding:
    return TimeStampFinding(None, None, problem, sub, "")


def check_time_stamp(token: bytes, signature_value: bytes) -> TimeStampFinding:
    """What the token shows about `signature_value`; never raises for a malformed token."""
    try:
        info = cms.ContentInfo.load(token, strict=True)
        signed = info["content"]
        if info["content_type"].native != "signed_data":
            return _bad("the time-stamp is not CMS SignedData")
        encap = signed["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            return _bad("the time-stamp does not hold a TSTInfo")
        content = bytes(encap["content"].contents)
        tst = tsp.TSTInfo.load(content, strict=True)
        imprint = tst["message_imprint"]
        gen_time: datetime = tst["gen_time"].native
        nonce = tst["nonce"].native
        signer_infos = list(signed["signer_infos"])
        certificates = [
            c.chosen.dump() for c in signed["certificates"] or () if c.name == "certificate"
        ]
    except _PARSE_ERRORS as exc:
        return _bad(f"the time-stamp token does not parse: {str(exc)[:200]}")
    expected = _digest(imprint["hash_algorithm"]["algorithm"].dotted, signature_value)
    if expected is None:
        return _bad(
            f"the time-stamp's imprint hash {imprint['hash_algorithm']['algorithm'].dotted} is not one this verifier computes",
            SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
        )
    if expected != bytes(imprint["hashed_message"].native):
        return TimeStampFinding(
            gen_time,
            None,
            "the time-stamp is not over this signature value",
            SubIndication.HASH_FAILURE,
            "",
        )
    if len(signer_infos) != 1:
        return _bad(f"the time-stamp has {len(signer_infos)} signer infos, not 1")
    tsa = _verify_signer(signer_infos[0], content, certificates)
    if isinstance(tsa, str):
        return TimeStampFinding(gen_time, None, tsa, SubIndication.SIG_CRYPTO_FAILURE, "")
    return TimeStampFinding(
        gen_time,
        tsa,
        "",
        SubIndication.TRY_LATER,
        f"time-stamp of {gen_time:%Y-%m-%dT%H:%M:%SZ} over the signature value, signed by {tsa.subject.rfc4514_string()}",
        tuple(certificates),
        nonce if isinstance(nonce, int) else None,
    )


def _verify_signer(
    signer_info: cms.SignerInfo, content: bytes, certificates: list[bytes]
) -> x509.Certificate | str:
    """The TSA certificate whose signature verifies, or why none does."""
    try:
        attributes = signer_info["signed_attrs"]
        digests = [
            a["values"][0].native for a in attributes if a["type"].native == "message_digest"
        ]
        digest_oid = signer_info["digest_algorithm"]["algorithm"].dotted
        signed_attributes = b"\x31" + attributes.dump()[1:]  # signed as a SET OF
        signature = bytes(signer_info["signature"].native)
        algorithm = signer_info["signature_algorithm"]["algorithm"].dotted
    except _PARSE_ERRORS:
        return "the time-stamp's signer info does not parse"
    if len(digests) != 1 or _digest(digest_oid, content) != digests[0]:
        return "the time-stamp's signed attributes do not hold the digest of its TSTInfo"
    for der in certificates:
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        if _verifies(certificate, algorithm, digest_oid, signature, signed_attributes):
            return certificate
    return "no certificate in the time-stamp verifies its signature"


def _verifies(
    certificate: x509.Certificate, algorithm: str, digest_oid: str, signature: bytes, data: bytes
) -> bool:
    try:
        if algorithm in _SM2_SIGNATURES or is_sm2_key(certificate):
            sm2_public_key_of(certificate).verify(signature, data)
            return True
        key = certificate.public_key()
        chosen = _HASHES.get(digest_oid)
        if chosen is None:
            return False
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(chosen))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), chosen)
        else:
            return False
    except (InvalidSignature, Sm2Refused, ValueError, TypeError):
        return False
    return True
