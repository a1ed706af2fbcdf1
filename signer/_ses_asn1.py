"""The ASN.1 of Chinese electronic seals: GB/T 38540-2020 (v4) and GM/T 0031-2014 (v1).

An electronic seal (`SESeal`, 电子印章) is issued by a seal maker (制章人): the seal's
information (header, id, properties with the list of certificates that may use it, picture)
signed with the maker's SM2 key. A sealed signature (`SES_Signature`, 电子签章) embeds the seal
in `TBS_Sign` with the signing time, the hash of the data and a property string, and is signed
with the key of a certificate the seal lists.

Why our own definitions: no Python package defines these structures (asn1crypto knows X.509,
CMS and TSP; pyasn1-modules has no GM/T module), and the standards' texts are not public. The
fields below follow ofdrw's BouncyCastle classes (``org.ofdrw.gm.ses.v1`` / ``.v4``, Apache
2.0), read, not copied, and the real artefacts in ``shared/vectors/gm`` parse with them. They
are asn1crypto `Sequence` classes, so that DER is encoded and decoded by asn1crypto and only
the shape is ours.

`parse_seal` and `parse_signature` turn either version into one plain view (`SealView`,
`SignatureView`) for the verifier; they raise `SesFormatError` for anything that is not
exactly one well-formed structure (trailing bytes, wrong tags, truncation, oversize).
"""

# asn1crypto reads `_fields` / `_child_spec` as plain class lists: its API, not shared state.
# ruff: noqa: RUF012

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, TypedDict, TypeVar

from asn1crypto import core
from asn1crypto import x509 as asn1_x509

# The package exports `ses_version`; the classes and views are for `signer`'s own modules (and
# tests), which import them from here.
__all__ = ["MAX_SES_BYTES", "ses_version"]

MAX_SES_BYTES: Final = 8 * 1024 * 1024  # bytes; a seal with its picture, and a signature
MAX_PICTURE_BYTES: Final = 4 * 1024 * 1024  # bytes
CHINA_STANDARD_TIME: Final = timezone(timedelta(hours=8))


class SesFormatError(ValueError):
    """The bytes are not a well-formed seal or sealed signature of the expected version."""


# -- shared parts (GM/T 0031 defines them, GB/T 38540 keeps them) ---------------------------------
class SesHeader(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("id", core.IA5String),  # "ES"
        ("version", core.Integer),  # 4 for GB/T 38540; 1 (or 2, 3) for GM/T 0031
        ("vid", core.IA5String),  # the maker's vendor id
    ]


class PictureInfo(core.Sequence):  # type: ignore[misc]  # ofdrw: SES_ESPictrueInfo
    _fields = [
        ("type", core.IA5String),  # "PNG", "GIF", "JPG", "OFD", ...
        ("data", core.OctetString),
        ("width", core.Integer),  # millimetres
        ("height", core.Integer),
    ]


class ExtData(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("extn_id", core.ObjectIdentifier),
        ("critical", core.Boolean, {"default": False}),
        ("extn_value", core.OctetString),
    ]


class ExtensionDatas(core.SequenceOf):  # type: ignore[misc]
    _child_spec = ExtData


class CertInfoList(core.SequenceOf):  # type: ignore[misc]  # the signers' certificates, each as DER in an OCTET STRING
    _child_spec = core.OctetString


class CertDigestObj(core.Sequence):  # type: ignore[misc]
    _fields = [("type", core.PrintableString), ("value", core.OctetString)]  # hash name, digest


class CertDigestList(core.SequenceOf):  # type: ignore[misc]
    _child_spec = CertDigestObj


# -- GB/T 38540 (v4) -------------------------------------------------------------------------
class PropertyInfoV4(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("type", core.Integer),
        ("name", core.UTF8String),
        ("cert_list_type", core.Integer),  # 1: certificates, 2: certificate digests
        ("cert_list", core.Any),  # CertInfoList or CertDigestList, by cert_list_type
        ("create_date", core.GeneralizedTime),
        ("valid_start", core.GeneralizedTime),
        ("valid_end", core.GeneralizedTime),
    ]


class SealInfoV4(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("header", SesHeader),
        ("es_id", core.IA5String),
        ("property", PropertyInfoV4),
        ("picture", PictureInfo),
        ("ext_datas", ExtensionDatas, {"optional": True}),
    ]


class SESealV4(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("e_seal_info", SealInfoV4),
        ("cert", core.OctetString),  # the maker's certificate (DER)
        ("sign_alg_id", core.ObjectIdentifier),
        ("signed_value", core.OctetBitString),  # the maker's signature
    ]


class TBSSignV4(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("version", core.Integer),
        ("e_seal", SESealV4),
        ("time_info", core.GeneralizedTime),
        ("data_hash", core.OctetBitString),
        ("property_info", core.IA5String),
        ("ext_datas", ExtensionDatas, {"explicit": 0, "optional": True}),
    ]


class SESSignatureV4(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("to_sign", TBSSignV4),
        ("cert", core.OctetString),  # the signer's certificate (DER)
        ("signature_alg_id", core.ObjectIdentifier),
        ("signature", core.OctetBitString),
        ("time_stamp", core.OctetBitString, {"explicit": 0, "optional": True}),  # RFC 3161
    ]


# -- GM/T 0031 (v1) --------------------------------------------------------------------------
class PropertyInfoV1(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("type", core.Integer),
        ("name", core.UTF8String),
        ("cert_list", CertInfoList),
        ("create_date", asn1_x509.Time),  # UTCTime by the standard; GeneralizedTime seen too
        ("valid_start", asn1_x509.Time),
        ("valid_end", asn1_x509.Time),
    ]


class SealInfoV1(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("header", SesHeader),
        ("es_id", core.IA5String),
        ("property", PropertyInfoV1),
        ("picture", PictureInfo),
        ("ext_datas", ExtensionDatas, {"optional": True}),
    ]


class SignInfoV1(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("cert", core.OctetString),
        ("signature_algorithm", core.ObjectIdentifier),
        ("sign_data", core.OctetBitString),
    ]


class SESealV1(core.Sequence):  # type: ignore[misc]
    _fields = [("e_seal_info", SealInfoV1), ("sign_info", SignInfoV1)]


class TBSSignV1(core.Sequence):  # type: ignore[misc]
    _fields = [
        ("version", core.Integer),
        ("e_seal", SESealV1),
        ("time_info", core.OctetBitString),  # the time as text in a BIT STRING
        ("data_hash", core.OctetBitString),
        ("property_info", core.IA5String),
        ("cert", core.OctetString),  # the signer's certificate, inside what is signed
        ("signature_algorithm", core.ObjectIdentifier),
    ]


class SESSignatureV1(core.Sequence):  # type: ignore[misc]
    _fields = [("to_sign", TBSSignV1), ("signature", core.OctetBitString)]


class _SealToSignV1(core.Sequence):  # type: ignore[misc]
    """What a GM/T 0031 maker signs: the seal information, its certificate and the algorithm."""

    _fields = [
        ("e_seal_info", SealInfoV1),
        ("cert", core.OctetString),
        ("signature_algorithm", core.ObjectIdentifier),
    ]


class _SealToSignV4(core.Sequence):  # type: ignore[misc]
    """The same triple for GB/T 38540, which some makers sign instead of the seal info alone."""

    _fields = [
        ("e_seal_info", SealInfoV4),
        ("cert", core.OctetString),
        ("sign_alg_id", core.ObjectIdentifier),
    ]


# -- plain views -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SealView:
    """A seal of either version, as the verifier needs it."""

    version: int  # 4 or 1
    header_version: int
    vid: str
    es_id: str
    seal_type: int
    name: str
    cert_list_type: int  # 1: certificates, 2: digests (v1 is always 1)
    certificates: tuple[bytes, ...]  # DER, when cert_list_type is 1
    digests: tuple[tuple[str, bytes], ...]  # (hash name, digest), when cert_list_type is 2
    created: datetime
    valid_start: datetime
    valid_end: datetime
    picture_type: str
    picture: bytes
    maker_certificate: bytes  # DER
    algorithm: str  # dotted OID of the maker's signature
    signed_value: bytes
    # The byte strings the maker may have signed, each with a name for the report.
    to_be_signed: tuple[tuple[str, bytes], ...]

    @property
    def format(self) -> str:
        return "GB/T 38540 SESeal v4" if self.version == 4 else "GM/T 0031 SESeal v1"


@dataclass(frozen=True, slots=True)
class SignatureView:
    """A sealed signature of either version, as the verifier needs it."""

    version: int
    tbs_version: int
    seal: SealView
    time_text: str  # the signing time as written
    signing_time: datetime | None  # None when the text is not a time this module reads
    data_hash: bytes
    property_info: str
    signer_certificate: bytes  # DER
    algorithm: str  # dotted OID
    signature: bytes
    tbs: bytes  # the DER of TBS_Sign as it arrived: what was signed
    time_stamp: bytes | None  # the DER RFC 3161 token, if any

    @property
    def format(self) -> str:
        return "GB/T 38540 SES_Signature v4" if self.version == 4 else "GM/T 0031 SES_Signature v1"


# Parsing: asn1crypto decodes lazily; `.native` forces every field, inside the guard, so a
# malformed part surfaces here and not later in the verifier.
_PARSE_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)


_A = TypeVar("_A", bound=core.Asn1Value)
_V = TypeVar("_V")


def _load(spec: type[_A], der: bytes) -> _A:
    if not isinstance(der, bytes | bytearray | memoryview):
        raise SesFormatError("a seal or signature must be bytes")
    der = bytes(der)
    if len(der) > MAX_SES_BYTES:
        raise SesFormatError(f"{len(der)} bytes; at most {MAX_SES_BYTES} are read")
    try:
        value: _A = spec.load(der, strict=True)
        _ = value.native
    except _PARSE_ERRORS as exc:
        raise SesFormatError(f"not a DER {spec.__name__}: {_brief(exc)}") from None
    return value


def _brief(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _octets(value: core.OctetBitString) -> bytes:
    """The bytes of a BIT STRING that holds whole bytes; a signature or hash with unused bits
    is malformed (asn1crypto would drop them silently)."""
    if not value.contents or value.contents[0] != 0:
        raise SesFormatError("a BIT STRING that holds bytes has unused bits")
    return bytes(value.contents[1:])


def _seal_view_v4(seal: SESealV4) -> SealView:
    info = seal["e_seal_info"]
    prop = info["property"]
    kind = int(prop["cert_list_type"].native)
    raw_list = prop["cert_list"].dump()
    certificates: tuple[bytes, ...] = ()
    digests: tuple[tuple[str, bytes], ...] = ()
    try:
        if kind == 1:
            certificates = tuple(bytes(c.native) for c in CertInfoList.load(raw_list, strict=True))
        elif kind == 2:
            listed = CertDigestList.load(raw_list, strict=True)
            digests = tuple((str(d["type"].native), bytes(d["value"].native)) for d in listed)
        else:
            raise SesFormatError(f"certListType {kind} is neither 1 (certificates) nor 2 (digests)")
    except _PARSE_ERRORS as exc:
        raise SesFormatError(f"the seal's certList does not parse: {_brief(exc)}") from None
    to_sign_triple = _SealToSignV4(
        {"e_seal_info": info, "cert": seal["cert"], "sign_alg_id": seal["sign_alg_id"]}
    )
    return SealView(
        version=4,
        **_common_seal_fields(info),
        cert_list_type=kind,
        certificates=certificates,
        digests=digests,
        created=prop["create_date"].native,
        valid_start=prop["valid_start"].native,
        valid_end=prop["valid_end"].native,
        maker_certificate=bytes(seal["cert"].native),
        algorithm=seal["sign_alg_id"].dotted,
        signed_value=_octets(seal["signed_value"]),
        to_be_signed=(
            ("the DER of eSealInfo", bytes(info.dump())),
            ("the DER of SEQUENCE {eSealInfo, cert, signAlgID}", bytes(to_sign_triple.dump())),
        ),
    )


class _CommonSealFields(TypedDict):
    header_version: int
    vid: str
    es_id: str
    seal_type: int
    name: str
    picture_type: str
    picture: bytes


def _common_seal_fields(info: SealInfoV4 | SealInfoV1) -> _CommonSealFields:
    header = info["header"]
    prop = info["property"]
    picture = info["picture"]
    if len(picture["data"].native) > MAX_PICTURE_BYTES:
        raise SesFormatError(f"the seal's picture is over {MAX_PICTURE_BYTES} bytes")
    return {
        "header_version": int(header["version"].native),
        "vid": str(header["vid"].native),
        "es_id": str(info["es_id"].native),
        "seal_type": int(prop["type"].native),
        "name": str(prop["name"].native),
        "picture_type": str(picture["type"].native),
        "picture": bytes(picture["data"].native),
    }


def _seal_view_v1(seal: SESealV1) -> SealView:
    info = seal["e_seal_info"]
    prop = info["property"]
    sign_info = seal["sign_info"]
    to_sign = _SealToSignV1(
        {
            "e_seal_info": info,
            "cert": sign_info["cert"],
            "signature_algorithm": sign_info["signature_algorithm"],
        }
    )
    return SealView(
        version=1,
        **_common_seal_fields(info),
        cert_list_type=1,
        certificates=tuple(bytes(c.native) for c in prop["cert_list"]),
        digests=(),
        created=prop["create_date"].native,
        valid_start=prop["valid_start"].native,
        valid_end=prop["valid_end"].native,
        maker_certificate=bytes(sign_info["cert"].native),
        algorithm=sign_info["signature_algorithm"].dotted,
        signed_value=_octets(sign_info["sign_data"]),
        to_be_signed=(
            ("the DER of SEQUENCE {eSealInfo, cert, signatureAlgorithm}", bytes(to_sign.dump())),
        ),
    )


def parse_seal(der: bytes) -> SealView:
    """A DER `SESeal` of either version; `SesFormatError` if it is neither, exactly."""
    version = ses_version(der)
    if version == "SESeal v4":
        return _guarded(_seal_view_v4, _load(SESealV4, der))
    if version == "SESeal v1":
        return _guarded(_seal_view_v1, _load(SESealV1, der))
    raise SesFormatError(_not_what("an SESeal (v4 or v1)", der, version))


def parse_signature(der: bytes) -> SignatureView:
    """A DER `SES_Signature` of either version; `SesFormatError` if it is neither, exactly."""
    version = ses_version(der)
    if version == "SES_Signature v4":
        return _guarded(_signature_view_v4, _load(SESSignatureV4, der))
    if version == "SES_Signature v1":
        return _guarded(_signature_view_v1, _load(SESSignatureV1, der))
    raise SesFormatError(_not_what("an SES_Signature (v4 or v1)", der, version))


def _guarded(make: Callable[[_A], _V], value: _A) -> _V:
    try:
        return make(value)
    except SesFormatError:
        raise
    except _PARSE_ERRORS as exc:
        raise SesFormatError(f"malformed field: {_brief(exc)}") from None


def _not_what(expected: str, der: bytes, found: str | None) -> str:
    if found is not None:
        return f"expected {expected}, found {found}"
    if isinstance(der, bytes | bytearray | memoryview) and len(der) > MAX_SES_BYTES:
        return f"{len(der)} bytes; at most {MAX_SES_BYTES} are read"
    return f"not {expected}: the DER does not match either version's structure"


def _signature_view_v4(signature: SESSignatureV4) -> SignatureView:
    tbs = signature["to_sign"]
    stamp = signature["time_stamp"]
    return SignatureView(
        version=4,
        tbs_version=int(tbs["version"].native),
        seal=_seal_view_v4(tbs["e_seal"]),
        time_text=str(tbs["time_info"].contents.decode("ascii", "replace")),
        signing_time=tbs["time_info"].native,
        data_hash=_octets(tbs["data_hash"]),
        property_info=str(tbs["property_info"].native),
        signer_certificate=bytes(signature["cert"].native),
        algorithm=signature["signature_alg_id"].dotted,
        signature=_octets(signature["signature"]),
        tbs=bytes(tbs.dump()),
        time_stamp=None if isinstance(stamp, core.Void) else _octets(stamp),
    )


def _signature_view_v1(signature: SESSignatureV1) -> SignatureView:
    tbs = signature["to_sign"]
    text = _octets(tbs["time_info"]).decode("ascii", "replace")
    return SignatureView(
        version=1,
        tbs_version=int(tbs["version"].native),
        seal=_seal_view_v1(tbs["e_seal"]),
        time_text=text,
        signing_time=time_of_text(text),
        data_hash=_octets(tbs["data_hash"]),
        property_info=str(tbs["property_info"].native),
        signer_certificate=bytes(tbs["cert"].native),
        algorithm=tbs["signature_algorithm"].dotted,
        signature=_octets(signature["signature"]),
        tbs=bytes(tbs.dump()),
        time_stamp=None,
    )


_TEXT_TIME_FORMATS: Final = (
    ("%Y%m%d%H%M%SZ", UTC),  # GeneralizedTime text
    ("%y%m%d%H%M%SZ", UTC),  # UTCTime text
    ("%Y-%m-%d %H:%M:%S", CHINA_STANDARD_TIME),  # ofdrw's v1, local time without a zone
    ("%Y-%m-%dT%H:%M:%S%z", None),
    ("%Y-%m-%dT%H:%M:%SZ", UTC),
)


def time_of_text(text: str) -> datetime | None:
    """A GM/T 0031 timeInfo (text in a BIT STRING): the formats seen in practice, else None.

    A time without a zone is China Standard Time (UTC+8), as the makers that write it mean.
    """
    for pattern, zone in _TEXT_TIME_FORMATS:
        try:
            parsed = datetime.strptime(text.strip(), pattern)
        except ValueError:
            continue
        return parsed.replace(tzinfo=zone) if zone is not None else parsed.astimezone(UTC)
    return None


def _shape(der: bytes) -> tuple[int, list[core.Asn1Value]] | None:
    """The number and first children of a top-level SEQUENCE, without trusting anything."""
    try:
        outer = core.Sequence.load(der, strict=True)
        children = [outer[i] for i in range(min(len(outer), 3))]
        return len(outer), children
    except _PARSE_ERRORS:
        return None


def ses_version(der: bytes) -> str | None:
    """Which of the four structures these bytes are, by their content; None if none. Never raises.

    "SES_Signature v4", "SES_Signature v1", "SESeal v4", "SESeal v1" or None.
    """
    if not isinstance(der, bytes | bytearray | memoryview) or len(der) > MAX_SES_BYTES:
        return None
    der = bytes(der)
    shape = _shape(der)
    if shape is None:
        return None
    count, children = shape
    try:
        if count in (4, 5) and isinstance(children[1], core.OctetString):
            first = children[0]
            inner = core.Sequence.load(first.dump(), strict=True) if _is_seq(first) else None
            if inner is not None and len(inner) >= 5 and isinstance(inner[0], core.Integer):
                return "SES_Signature v4"
            if inner is not None and len(inner) in (4, 5) and count == 4:
                return "SESeal v4"
        if count == 2 and _is_seq(children[0]):
            inner = core.Sequence.load(children[0].dump(), strict=True)
            if _is_seq(children[1]) and len(inner) in (4, 5):
                return "SESeal v1"
            if isinstance(children[1], core.BitString) and len(inner) >= 7:
                return "SES_Signature v1"
    except _PARSE_ERRORS:
        return None
    return None


def _is_seq(value: core.Asn1Value) -> bool:
    return bool(value.class_ == 0 and value.tag == 16 and value.method == 1)
