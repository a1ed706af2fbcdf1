"""Making GB/T 38540 (v4) electronic seals and sealed signatures with SM2.

`make_seal` is the seal maker's act (制章): the seal's information, with the certificates of
those who may use it, signed with the maker's key. `sign_with_seal` is the signer's (签章): a
`TBS_Sign` holding the seal, the signing time, SM3 of the data and a property string, signed
with the key of a certificate the seal lists. Both write DER through the asn1crypto classes of
`signer._ses_asn1` and sign with SM2-with-SM3 and the default distinguishing id, so that
OpenSSL (``pkeyutl -rawin -digest sm3``), ofdrw and `GmVerifier` check them alike.

What the maker signs is the DER of ``eSealInfo``, as ofdrw does (`GmVerifier` also accepts the
``SEQUENCE {eSealInfo, cert, signAlgID}`` that some makers sign).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from signer._jades_json import TimeStamper
from signer._ses_asn1 import (
    CertInfoList,
    PictureInfo,
    PropertyInfoV4,
    SealInfoV4,
    SESealV4,
    SesFormatError,
    SesHeader,
    SESSignatureV4,
    TBSSignV4,
    parse_seal,
)
from signer._sm2 import SM2_WITH_SM3_OID, Sm2PrivateKey
from signer._sm2_x509 import sm2_public_key_of

__all__ = ["Sm2FileSigner", "Sm2Signer", "make_seal", "sign_with_seal"]


class Sm2Signer(Protocol):
    """A key that signs with SM2 and the certificate that proves it (a file today, a module
    tomorrow)."""

    @property
    def certificate(self) -> x509.Certificate: ...

    def sign_sm2(self, data: bytes) -> bytes:
        """The DER SM2-with-SM3 signature of `data` with the default distinguishing id."""
        ...


class Sm2FileSigner:
    """An `Sm2Signer` from an SM2 private key (held in memory) and its certificate."""

    def __init__(self, key: Sm2PrivateKey, certificate: x509.Certificate) -> None:
        if sm2_public_key_of(certificate) != key.public_key():
            raise ValueError("the certificate is not the SM2 private key's")
        self._key = key
        self._certificate = certificate

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    def sign_sm2(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"Sm2FileSigner({self._certificate.subject.rfc4514_string()!r})"


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be an aware datetime")
    return moment.astimezone(UTC).replace(microsecond=0)


def make_seal(
    *,
    maker: Sm2Signer,
    es_id: str,
    name: str,
    seal_type: int,
    signer_certificates: Sequence[x509.Certificate],
    picture: bytes,
    picture_type: str = "PNG",
    width_mm: int,
    height_mm: int,
    valid_from: datetime,
    valid_until: datetime,
    created: datetime,
    vid: str = "Tongban",
) -> bytes:
    """A DER GB/T 38540 `SESeal` (v4) listing `signer_certificates`, signed by `maker`."""
    if not signer_certificates:
        raise ValueError("a seal lists at least one signer certificate")
    if not _utc(valid_from, "valid_from") < _utc(valid_until, "valid_until"):
        raise ValueError("a seal's validity must start before it ends")
    if not es_id.isascii() or not vid.isascii() or not picture_type.isascii():
        raise ValueError("es_id, vid and picture_type are IA5 (ASCII) strings")
    certs = CertInfoList([core.OctetString(_der(c)) for c in signer_certificates])
    info = SealInfoV4(
        {
            "header": SesHeader({"id": "ES", "version": 4, "vid": vid}),
            "es_id": es_id,
            "property": PropertyInfoV4(
                {
                    "type": seal_type,
                    "name": name,
                    "cert_list_type": 1,
                    "cert_list": core.Any.load(certs.dump()),
                    "create_date": _utc(created, "created"),
                    "valid_start": _utc(valid_from, "valid_from"),
                    "valid_end": _utc(valid_until, "valid_until"),
                }
            ),
            "picture": PictureInfo(
                {"type": picture_type, "data": picture, "width": width_mm, "height": height_mm}
            ),
        }
    )
    signed_value = maker.sign_sm2(bytes(info.dump()))
    seal = SESealV4(
        {
            "e_seal_info": info,
            "cert": _der(maker.certificate),
            "sign_alg_id": SM2_WITH_SM3_OID,
            "signed_value": signed_value,
        }
    )
    return bytes(seal.dump())


def sign_with_seal(
    data: bytes,
    *,
    seal: bytes,
    signer: Sm2Signer,
    at: datetime,
    property_info: str,
    tsa: TimeStamper | None = None,
) -> bytes:
    """A DER GB/T 38540 `SES_Signature` (v4) over `data` (dataHash = SM3(data)) with `seal`;
    with `tsa`, its `timeStamp` holds an RFC 3161 token over the signature value (what `tsa`
    raises, `TimeStampUnavailable`, is raised).

    The seal must be a v4 seal that lists the signer's certificate: a signature the verifier
    would refuse for that reason is not made.
    """
    try:
        view = parse_seal(seal)
    except SesFormatError as exc:
        raise ValueError(f"not a usable seal: {exc}") from None
    if view.version != 4:
        raise ValueError("sign_with_seal makes GB/T 38540 (v4) signatures with v4 seals")
    if _der(signer.certificate) not in view.certificates:
        raise ValueError("the seal does not list the signer's certificate")
    if not property_info.isascii():
        raise ValueError("property_info is an IA5 (ASCII) string")
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    tbs = TBSSignV4(
        {
            "version": 4,
            "e_seal": SESealV4.load(seal),
            "time_info": _utc(at, "at"),
            "data_hash": digest.finalize(),
            "property_info": property_info,
        }
    )
    tbs_der = bytes(tbs.dump())
    value = signer.sign_sm2(tbs_der)
    fields = {
        "to_sign": TBSSignV4.load(tbs_der),
        "cert": _der(signer.certificate),
        "signature_alg_id": SM2_WITH_SM3_OID,
        "signature": value,
    }
    if tsa is not None:
        fields["time_stamp"] = tsa.stamp(value)
    return bytes(SESSignatureV4(fields).dump())
