"""OFD digital signatures (`Type="Sign"`): a GB/T 35275 SM2 `SignedData` over Signature.xml.

GM/T 0099-2020 §7.2.2 b) has an OFD digital signature made with SM2 carry a GB/T 35275
(the SM2 form of PKCS #7) `SignedData` in SignedValue.dat; ofdrw writes and reads it so
(`GBT35275DSContainer`, `GBT35275Validate`): the content is ``SM3(Signature.xml)`` as an OCTET
STRING, and the signer's SM2 signature is over that content, or, when the signer info carries
PKCS #9 authenticated attributes, over their DER as a SET, whose messageDigest is then
``SM3(Signature.xml)``. The signer's certificate is the one in `certificates` with the signer
info's issuer and serial number.

The structures are declared here with asn1crypto's classes rather than taken from
`asn1crypto.cms`, whose ContentInfo and algorithm maps know the PKCS #7 object identifiers but
not GB/T 35275's (``1.2.156.10197.6.1.4.2.*``); the fields are PKCS #7 v1.5's.

What is checked (`check_signed_data`), each a check of the signature's report:
    structure      ContentInfo signedData, one SignerInfo              FORMAT_FAILURE
    algorithms     digest SM3, signature SM2 (or SM2-with-SM3)         CRYPTO_CONSTRAINTS_FAILURE
    data hash      content and/or messageDigest = SM3(Signature.xml)   HASH_FAILURE
    signer certificate   found by issuer and serial, an SM2 key        NO_CERTIFICATE_CHAIN_FOUND
    signature      SM2 (default id) over what was signed               SIG_CRYPTO_FAILURE
The signer's certificate (and the signingTime it signed, if any) goes back to the OFD verifier,
which has `GmVerifier.check_signer` check it as a seal's signer's: validity, path, revocation.
"""

# asn1crypto reads `_fields` / `_child_spec` as plain class lists: its API, not shared state.
# ruff: noqa: RUF012

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from asn1crypto import core
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from signer._report import SubIndication
from signer._sm2_x509 import sm2_public_key_of
from signer.errors import Sm2KeyInvalid, Sm2SignatureInvalid

__all__: list[str] = []  # internals of `_ofd_verify`

SIGNED_DATA_OIDS: Final = frozenset({"1.2.156.10197.6.1.4.2.2", "1.2.840.113549.1.7.2"})
DATA_OIDS: Final = frozenset({"1.2.156.10197.6.1.4.2.1", "1.2.840.113549.1.7.1"})  # GM, PKCS #7
SM3_OID: Final = "1.2.156.10197.1.401"
SM2_SIGNATURE_OIDS: Final = frozenset({"1.2.156.10197.1.301.1", "1.2.156.10197.1.501"})
MESSAGE_DIGEST_OID: Final = "1.2.840.113549.1.9.4"
SIGNING_TIME_OID: Final = "1.2.840.113549.1.9.5"
FORMAT: Final = "GB/T 35275 SignedData"
_PARSE_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)


class _Algorithm(core.Sequence):  # type: ignore[misc]
    _fields = [("algorithm", core.ObjectIdentifier), ("parameters", core.Any, {"optional": True})]


class _Algorithms(core.SetOf):  # type: ignore[misc]
    _child_spec = _Algorithm


class _DataContentInfo(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("content_type", core.ObjectIdentifier),
        ("content", core.OctetString, {"explicit": 0, "optional": True}),
    ]


class _Values(core.SetOf):  # type: ignore[misc]
    _child_spec = core.Any


class _Attribute(core.Sequence):  # type: ignore[misc]
    _fields = [("type", core.ObjectIdentifier), ("values", _Values)]


class _Attributes(core.SetOf):  # type: ignore[misc]
    _child_spec = _Attribute


class _IssuerAndSerialNumber(core.Sequence):  # type: ignore[misc]
    _fields = [("issuer", asn1_x509.Name), ("serial_number", core.Integer)]


class _SignerInfo(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("version", core.Integer),
        ("issuer_and_serial_number", _IssuerAndSerialNumber),
        ("digest_algorithm", _Algorithm),
        ("authenticated_attributes", _Attributes, {"implicit": 0, "optional": True}),
        ("digest_encryption_algorithm", _Algorithm),
        ("encrypted_digest", core.OctetString),
        ("unauthenticated_attributes", _Attributes, {"implicit": 1, "optional": True}),
    ]


class _SignerInfos(core.SetOf):  # type: ignore[misc]
    _child_spec = _SignerInfo


class _Certificates(core.SetOf):  # type: ignore[misc]
    _child_spec = asn1_x509.Certificate


class _Crls(core.SetOf):  # type: ignore[misc]
    _child_spec = asn1_crl.CertificateList


class _SignedData(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("version", core.Integer),
        ("digest_algorithms", _Algorithms),
        ("content_info", _DataContentInfo),
        ("certificates", _Certificates, {"implicit": 0, "optional": True}),
        ("crls", _Crls, {"implicit": 1, "optional": True}),
        ("signer_infos", _SignerInfos),
    ]


class _ContentInfo(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("content_type", core.ObjectIdentifier),
        ("content", _SignedData, {"explicit": 0}),
    ]


class Recorder(Protocol):
    """Where the checks go (the OFD verifier's run of one signature)."""

    def ok(self, name: str, detail: str = "") -> None: ...

    def fail(self, name: str, sub: SubIndication, detail: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Parsed:
    content: bytes | None  # the signed content (the digest of Signature.xml), if carried
    attributes: bytes | None  # DER of the authenticated attributes as a SET, if any
    message_digest: bytes | None
    digest_algorithm: str
    signature_algorithm: str
    signature: bytes
    certificate: x509.Certificate | None
    signing_time: datetime | None  # the PKCS #9 signingTime attribute, when signed


@dataclass(frozen=True, slots=True)
class SignedData:
    """What the checks of a SignedData found out: its signer's certificate and signing time."""

    certificate: x509.Certificate | None
    signing_time: datetime | None


def _parse(der: bytes) -> _Parsed:
    """The parts of a GB/T 35275 SignedData; ValueError with the reason when it is not one."""
    try:
        info = _ContentInfo.load(der, strict=True)
        if info["content_type"].dotted not in SIGNED_DATA_OIDS:
            raise ValueError(f"the content type {info['content_type'].dotted} is not signedData")
        signed = info["content"]
        _ = info.native  # asn1crypto parses lazily: every field now, inside the guard
        if len(signed["signer_infos"]) != 1:
            raise ValueError("a digital signature has exactly one SignerInfo")
        signer = signed["signer_infos"][0]
        if signed["version"].native != 1:  # GB/T 35275 §8.2, as PKCS #7 v1.5
            raise ValueError(f"SignedData version {signed['version'].native} is not 1")
        listed = {a["algorithm"].dotted for a in signed["digest_algorithms"]}
        if signer["digest_algorithm"]["algorithm"].dotted not in listed:
            raise ValueError("the signer's digest algorithm is not among digestAlgorithms")
        if signed["content_info"]["content_type"].dotted not in DATA_OIDS:
            raise ValueError("the signed content is not of type data")
        content = signed["content_info"]["content"].native
        attributes = signer["authenticated_attributes"]
        return _Parsed(
            content=content,
            attributes=None if not attributes else _as_set(attributes.contents),
            message_digest=_message_digest(attributes) if attributes else None,
            digest_algorithm=signer["digest_algorithm"]["algorithm"].dotted,
            signature_algorithm=signer["digest_encryption_algorithm"]["algorithm"].dotted,
            signature=signer["encrypted_digest"].native,
            certificate=_signer_certificate(signed, signer["issuer_and_serial_number"]),
            signing_time=_signing_time(attributes) if attributes else None,
        )
    except _PARSE_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ValueError(reason or type(exc).__name__) from None


def _as_set(contents: bytes) -> bytes:
    """The authenticated attributes as signed: their bytes as received under a universal SET
    tag (PKCS #7 §9.3; ofdrw's `getEncoded()`), not re-encoded."""
    size = len(contents)
    if size < 0x80:
        return b"\x31" + bytes([size]) + contents
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return b"\x31" + bytes([0x80 | len(length)]) + length + contents


def _message_digest(attributes: _Attributes) -> bytes:
    found = [a for a in attributes if a["type"].dotted == MESSAGE_DIGEST_OID]
    if len(found) != 1 or len(found[0]["values"]) != 1:
        raise ValueError("the authenticated attributes hold no single messageDigest")
    digest: bytes = core.OctetString.load(found[0]["values"][0].dump()).native
    return digest


def _signing_time(attributes: _Attributes) -> datetime | None:
    found = [a for a in attributes if a["type"].dotted == SIGNING_TIME_OID]
    if not found:
        return None
    if len(found) != 1 or len(found[0]["values"]) != 1:
        raise ValueError("the authenticated attributes hold more than one signingTime")
    value = core.load(found[0]["values"][0].dump())
    if not isinstance(value, core.UTCTime | core.GeneralizedTime):
        raise TypeError("signingTime is neither a UTCTime nor a GeneralizedTime")
    moment = value.native
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError("signingTime is not a time with a zone")
    return moment


def _signer_certificate(
    signed: _SignedData, wanted: _IssuerAndSerialNumber
) -> x509.Certificate | None:
    for candidate in signed["certificates"] or ():
        tbs = candidate["tbs_certificate"]
        if (
            tbs["serial_number"].native == wanted["serial_number"].native
            and tbs["issuer"] == wanted["issuer"]
        ):
            return x509.load_der_x509_certificate(bytes(candidate.dump()))
    return None


def _sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def check_signed_data(der: bytes, data: bytes, run: Recorder) -> SignedData:
    """Record the checks of the SignedData `der` over `data` (Signature.xml); the signer's
    certificate when it was found, and the signing time it signed."""
    try:
        parsed = _parse(der)
    except ValueError as exc:
        run.fail(FORMAT, SubIndication.FORMAT_FAILURE, f"SignedValue.dat: {exc}")
        return SignedData(None, None)
    run.ok(FORMAT, "one SignerInfo")
    if parsed.digest_algorithm != SM3_OID or parsed.signature_algorithm not in SM2_SIGNATURE_OIDS:
        run.fail(
            "algorithms",
            SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
            f"digest {parsed.digest_algorithm} and signature {parsed.signature_algorithm};"
            " only SM3 and SM2 are accepted",
        )
        return SignedData(parsed.certificate, parsed.signing_time)
    run.ok("algorithms", "SM3 digest, SM2 signature")
    _check_hash(parsed, _sm3(data), run)
    _check_signature(parsed, run)
    return SignedData(parsed.certificate, parsed.signing_time)


def _check_hash(parsed: _Parsed, expected: bytes, run: Recorder) -> None:
    # ofdrw accepts the digest base64-encoded as content too (a non-standard form some readers
    # need: `setEnableFileHashBase64`); the signature is over the bytes as carried either way.
    carried = [v for v in (parsed.content, parsed.message_digest) if v is not None]
    if parsed.attributes is None and parsed.content is None:
        run.fail("data hash", SubIndication.FORMAT_FAILURE, "neither content nor attributes")
    elif all(v in (expected, base64.b64encode(expected)) for v in carried):
        run.ok("data hash", "the signed digest is SM3 of Signature.xml")
    else:
        run.fail("data hash", SubIndication.HASH_FAILURE, "Signature.xml was changed after signing")


def _check_signature(parsed: _Parsed, run: Recorder) -> None:
    if parsed.certificate is None:
        run.fail(
            "signer certificate",
            SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
            "no certificate in the SignedData has the signer's issuer and serial number",
        )
        return
    signed = parsed.attributes if parsed.attributes is not None else parsed.content
    if signed is None:
        return  # nothing was signed: already a failure of "data hash"
    try:
        key = sm2_public_key_of(parsed.certificate)
    except Sm2KeyInvalid:
        run.fail("signer certificate", SubIndication.FORMAT_FAILURE, "its key is not SM2")
        return
    run.ok("signer certificate", "carried in the SignedData")
    try:
        key.verify(parsed.signature, signed)
    except Sm2SignatureInvalid:
        run.fail("signature", SubIndication.SIG_CRYPTO_FAILURE, "the SM2 signature does not verify")
    else:
        run.ok("signature", "the SM2 signature verifies with the signer's certificate")
