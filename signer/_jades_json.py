"""JAdES in JWS JSON serialisation (RFC 7515 section 7.2.2, flattened) with validation data in
the unsigned `etsiU` header (ETSI TS 119 182-1 section 5.3): the baseline-LT form of a seal.

    {"payload": BASE64URL(payload),            absent for a detached seal (compact: empty part)
     "protected": BASE64URL(protected header), exactly as in the compact form
     "header": {"etsiU": [ ... ]},             the unprotected header: `etsiU` and nothing else
     "signature": BASE64URL(signature)}        exactly as in the compact form

The protected header and the signature are those of the compact form, so a seal is augmented
(validation data added) without re-signing, and `to_compact` / `to_json` convert a seal without
validation data back and forth without changing a byte of what was signed.

Each `etsiU` element is one unsigned property: `{"sigTst": {"tstTokens": [{"val": B64}]}}` (an
RFC 3161 time-stamp token over the signature value: baseline-T), `{"xVals": [{"x509Cert":
{"val": B64}}, ...]}` (certificates) or `{"rVals": {"crlVals": [{"val": B64}], "ocspVals":
[{"val": B64}]}}` (CRLs, OCSPResponses), `val` the standard base64 of the DER. The message
imprint of a `sigTst` token is computed over the base64url JWS Signature Value, as ASCII
(ETSI TS 119 182-1 section 5.3.4.2; `timestamp_input`). The standard lets the elements be either
base64url encodings of those JSON objects or the objects themselves ("clear incorporation"),
all in the same form; EU DSS writes the base64url form by default and reads both. `add_validation_data`
and `add_timestamp` write base64url (or the form the seal already uses); the parser reads both.
Other unsigned properties (archive time-stamps, `sigPSt`, attribute certificates, a `sigTst`
with `canonAlg`) are refused: Tongban does not check them, and a report must not look as if it
had.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from signer._jades import (
    _BASE64URL_ALPHABET,
    MAX_JWS_BYTES,
    JwsFormatError,
    ParsedJws,
    _header,
    b64url_decode,
    b64url_encode,
    parse_compact,
)

# The package's surface; `TimeStamper`, `timestamp_input`, `ValidationData`, `is_json_serialisation`, `looks_like_json_jws` and
# the limits are for its own modules (the verifier, `recognise`).
__all__ = ["add_timestamp", "add_validation_data", "parse_jws", "to_compact", "to_json"]

MAX_VALIDATION_ITEMS: Final = 64  # certificates, CRLs and OCSP responses embedded in one seal
_KNOWN_MEMBERS: Final = frozenset({"payload", "protected", "header", "signature"})
_PROPERTIES: Final = ("sigTst", "xVals", "rVals")
MAX_TIME_STAMPS: Final = 4  # sigTst tokens in one seal


@dataclass(frozen=True, slots=True)
class ValidationData:
    """What a seal's `etsiU` carries: DER certificates, CRLs and OCSPResponses, in order, and
    the DER time-stamp tokens of its `sigTst` properties."""

    certificates: tuple[bytes, ...] = ()
    crls: tuple[bytes, ...] = ()
    ocsp_responses: tuple[bytes, ...] = ()
    clear: bool = False  # the etsiU elements were clear JSON (else base64url)
    time_stamps: tuple[bytes, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.certificates or self.crls or self.ocsp_responses or self.time_stamps)


def is_json_serialisation(text: str | bytes) -> bool:
    """Whether `text` looks like the JSON serialisation (an object), not the compact form."""
    start = text.lstrip()[:1]
    return start in ("{", b"{")


def looks_like_json_jws(data: bytes) -> bool:
    """Whether `data` is a JSON object with string members `protected` and `signature`: the JWS
    JSON serialisation, for recognising a document by content (its details are checked when it
    is validated). Never raises."""
    if not is_json_serialisation(data) or len(data) > MAX_JWS_BYTES:
        return False
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(document, dict)
        and isinstance(document.get("protected"), str)
        and isinstance(document.get("signature"), str)
    )


def parse_jws(jws: str | bytes) -> tuple[ParsedJws, ValidationData]:
    """Either serialisation, strictly: the parsed JWS and the validation data it embeds (empty
    for the compact form); `JwsFormatError` naming what is malformed."""
    if not is_json_serialisation(jws):
        return parse_compact(jws), ValidationData()
    if len(jws) > MAX_JWS_BYTES:
        raise JwsFormatError(f"larger than {MAX_JWS_BYTES} bytes")
    try:
        document = json.loads(jws, object_pairs_hook=_no_duplicate_members)
    except UnicodeDecodeError as exc:
        raise JwsFormatError("the JSON serialisation is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise JwsFormatError(f"not JSON: {exc.msg} at character {exc.pos}") from exc
    except RecursionError:
        raise JwsFormatError("the JSON serialisation is nested too deeply") from None
    if not isinstance(document, dict):
        raise JwsFormatError("the JSON serialisation is not a JSON object")
    if "signatures" in document:
        raise JwsFormatError(
            "the general JSON serialisation (signatures) is not accepted: one signature, flattened"
        )
    # RFC 7515 section 7.2.1: members that are not understood are ignored.
    protected = _string_member(document, "protected")
    signature = _string_member(document, "signature")
    payload = document.get("payload", "")
    if not isinstance(payload, str):
        raise JwsFormatError("payload must be a string")
    if (
        len(payload) % 4 == 1
        or not payload.isascii()
        or payload.encode().translate(None, _BASE64URL_ALPHABET)
    ):
        raise JwsFormatError("the payload is not unpadded base64url")
    header = _header(protected)
    unprotected = document.get("header", {})
    if not isinstance(unprotected, dict):
        raise JwsFormatError("header (the unprotected header) must be a JSON object")
    others = sorted(set(unprotected) - {"etsiU"})
    if others:
        raise JwsFormatError(
            f"the unprotected header holds {others[0]!r}: only etsiU may be unprotected"
        )
    data = _etsi_u(unprotected["etsiU"]) if "etsiU" in unprotected else ValidationData()
    if "etsiU" in header:
        raise JwsFormatError("etsiU is an unprotected header, not a protected one")
    parsed = ParsedJws(header, protected, payload, b64url_decode(signature))
    return parsed, data


def _no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise JwsFormatError(f"duplicate JSON member {', '.join(duplicated)}")
    return dict(pairs)


def _string_member(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise JwsFormatError(f"{name} must be a non-empty string")
    return value


def _etsi_u(elements: object) -> ValidationData:
    if not isinstance(elements, list) or not elements:
        raise JwsFormatError("etsiU must be a non-empty array")
    kinds = {isinstance(e, str) for e in elements}
    if len(kinds) != 1 or not all(isinstance(e, str | dict) for e in elements):
        raise JwsFormatError(
            "etsiU elements must all be base64url strings or all JSON objects, not a mixture"
        )
    clear = kinds == {False}
    certificates: list[bytes] = []
    crls: list[bytes] = []
    responses: list[bytes] = []
    stamps: list[bytes] = []
    for index, element in enumerate(elements):
        where = f"etsiU[{index}]"
        item = element if clear else _decoded_element(element, where)
        if not isinstance(item, dict) or len(item) != 1:
            raise JwsFormatError(f"{where} must be an object with exactly one property")
        ((name, value),) = item.items()
        if name == "xVals":
            certificates.extend(_x_vals(value, f"{where}.xVals"))
        elif name == "rVals":
            more_crls, more_responses = _r_vals(value, f"{where}.rVals")
            crls.extend(more_crls)
            responses.extend(more_responses)
        elif name == "sigTst":
            stamps.extend(_sig_tst(value, f"{where}.sigTst"))
        else:
            raise JwsFormatError(f"{where} is {name!r}: only sigTst, xVals and rVals are accepted")
    if len(certificates) + len(crls) + len(responses) > MAX_VALIDATION_ITEMS:
        raise JwsFormatError(f"more than {MAX_VALIDATION_ITEMS} embedded validation items")
    if len(stamps) > MAX_TIME_STAMPS:
        raise JwsFormatError(f"more than {MAX_TIME_STAMPS} signature time-stamps")
    return ValidationData(tuple(certificates), tuple(crls), tuple(responses), clear, tuple(stamps))


def _sig_tst(value: object, where: str) -> list[bytes]:
    """A sigTst (TS 119 182-1 section 5.3.4.2) without canonAlg: its tokens' DER."""
    if not isinstance(value, dict) or set(value) != {"tstTokens"}:
        raise JwsFormatError(f"{where} must hold tstTokens and nothing else")
    tokens = value["tstTokens"]
    if not isinstance(tokens, list) or not tokens:
        raise JwsFormatError(f"{where}.tstTokens must be a non-empty array")
    out = []
    for index, item in enumerate(tokens):
        der = _pki_ob(item, f"{where}.tstTokens[{index}]")
        try:
            content = cms.ContentInfo.load(der, strict=True)
            signed = content["content_type"].native == "signed_data"
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError):
            signed = False
        if not signed:
            raise JwsFormatError(f"{where}.tstTokens[{index}] is not a CMS time-stamp token")
        out.append(der)
    return out


def _decoded_element(element: object, where: str) -> object:
    assert isinstance(element, str)
    try:
        return json.loads(b64url_decode(element), object_pairs_hook=_no_duplicate_members)
    except JwsFormatError as exc:
        raise JwsFormatError(f"{where}: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise JwsFormatError(f"{where} is not base64url of a JSON object") from None


def _x_vals(value: object, where: str) -> list[bytes]:
    if not isinstance(value, list) or not value:
        raise JwsFormatError(f"{where} must be a non-empty array")
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"x509Cert"}:
            raise JwsFormatError(f'{where}[{index}] must be {{"x509Cert": {{"val": ...}}}}')
        der = _pki_ob(item["x509Cert"], f"{where}[{index}].x509Cert")
        _load(x509.load_der_x509_certificate, der, f"{where}[{index}]", "an X.509 certificate")
        out.append(der)
    return out


def _r_vals(value: object, where: str) -> tuple[list[bytes], list[bytes]]:
    if not isinstance(value, dict) or not value or set(value) - {"crlVals", "ocspVals"}:
        raise JwsFormatError(f"{where} must hold crlVals and/or ocspVals, nothing else")
    found: dict[str, list[bytes]] = {"crlVals": [], "ocspVals": []}
    for name, load, what in (
        ("crlVals", x509.load_der_x509_crl, "a CRL"),
        ("ocspVals", ocsp.load_der_ocsp_response, "an OCSPResponse"),
    ):
        items = value.get(name, [])
        if not isinstance(items, list) or (name in value and not items):
            raise JwsFormatError(f"{where}.{name} must be a non-empty array")
        for index, item in enumerate(items):
            der = _pki_ob(item, f"{where}.{name}[{index}]")
            _load(load, der, f"{where}.{name}[{index}]", what)
            found[name].append(der)
    return found["crlVals"], found["ocspVals"]


def _pki_ob(item: object, where: str) -> bytes:
    """A pkiOb (TS 119 182-1 section 5.3.5.1) with DER, the default encoding, in `val`."""
    if not isinstance(item, dict) or "val" not in item:
        raise JwsFormatError(f"{where} must be an object with val")
    if set(item) != {"val"}:
        extra = sorted(set(item) - {"val"})[0]
        raise JwsFormatError(f"{where} has {extra!r}: only DER in val is accepted")
    val = item["val"]
    if not isinstance(val, str) or not val:
        raise JwsFormatError(f"{where}.val must be a non-empty base64 string")
    try:
        return binascii.a2b_base64(val, strict_mode=True)
    except (binascii.Error, ValueError):
        raise JwsFormatError(f"{where}.val is not base64") from None


def _load(load: Any, der: bytes, where: str, what: str) -> None:
    try:
        load(der)
    except ValueError:
        raise JwsFormatError(f"{where} is not {what} (DER)") from None


# -- writing ----------------------------------------------------------------------------------


def _object(parsed: ParsedJws, data: ValidationData) -> str:
    document: dict[str, Any] = {}
    if parsed.payload_b64:
        document["payload"] = parsed.payload_b64
    document["protected"] = parsed.header_b64
    if data:
        document["header"] = {"etsiU": _etsi_u_elements(data)}
    document["signature"] = b64url_encode(parsed.signature)
    return json.dumps(document, separators=(",", ":"))


def _etsi_u_elements(data: ValidationData) -> list[Any]:
    def b64(der: bytes) -> dict[str, str]:
        return {"val": base64.b64encode(der).decode("ascii")}

    properties: list[dict[str, Any]] = []
    if data.time_stamps:
        properties.append({"sigTst": {"tstTokens": [b64(t) for t in data.time_stamps]}})
    if data.certificates:
        properties.append({"xVals": [{"x509Cert": b64(c)} for c in data.certificates]})
    r_vals: dict[str, Any] = {}
    if data.crls:
        r_vals["crlVals"] = [b64(c) for c in data.crls]
    if data.ocsp_responses:
        r_vals["ocspVals"] = [b64(r) for r in data.ocsp_responses]
    if r_vals:
        properties.append({"rVals": r_vals})
    if data.clear:
        return list(properties)
    return [b64url_encode(json.dumps(p, separators=(",", ":")).encode("ascii")) for p in properties]


def to_json(jws: str | bytes) -> str:
    """The seal in flattened JSON serialisation (a JSON one is returned re-serialised)."""
    parsed, data = parse_jws(jws)
    return _object(parsed, data)


def to_compact(jws: str | bytes) -> str:
    """The seal in compact serialisation; embedded validation data cannot travel in it and is
    dropped (the signature and protected header are unchanged)."""
    parsed, _ = parse_jws(jws)
    return f"{parsed.header_b64}.{parsed.payload_b64}.{b64url_encode(parsed.signature)}"


def _ders(items: Iterable[bytes | x509.Certificate], what: str) -> tuple[bytes, ...]:
    out = []
    for item in items:
        if isinstance(item, x509.Certificate):
            out.append(item.public_bytes(serialization.Encoding.DER))
        elif isinstance(item, bytes):
            out.append(item)
        else:
            raise TypeError(f"{what} must be DER bytes")
    return tuple(out)


def add_validation_data(
    jws: str | bytes,
    *,
    crls: Sequence[bytes] = (),
    ocsp_responses: Sequence[bytes] = (),
    certificates: Sequence[bytes | x509.Certificate] = (),
) -> str:
    """The seal with CRLs, OCSPResponses and certificates (DER) added to its `etsiU`, in JSON
    serialisation: an augmentation, nothing is re-signed. `JwsFormatError` if the seal is
    malformed or an item is not what it is given as (it is parsed as the verifier will)."""
    parsed, held = parse_jws(jws)
    added = ValidationData(
        _ders(certificates, "certificates"),
        _ders(crls, "crls"),
        _ders(ocsp_responses, "ocsp_responses"),
        held.clear,
    )
    merged = ValidationData(
        held.certificates + added.certificates,
        held.crls + added.crls,
        held.ocsp_responses + added.ocsp_responses,
        held.clear,
        held.time_stamps,
    )
    text = _object(parsed, merged)
    parse_jws(text)  # every item as the verifier will read it, and the limits
    return text


class TimeStamper(Protocol):
    """What gives an RFC 3161 token over some bytes (`signer.TimeStampClient`)."""

    def stamp(self, message: bytes) -> bytes: ...


def timestamp_input(parsed: ParsedJws) -> bytes:
    """What a `sigTst` token's message imprint is over: the base64url JWS Signature Value."""
    return b64url_encode(parsed.signature).encode("ascii")


def add_timestamp(jws: str | bytes, tsa: TimeStamper) -> str:
    """The seal made baseline-T: a `sigTst` token from `tsa` over its signature value added to
    its `etsiU`, in JSON serialisation; an augmentation, nothing is re-signed. Raises what
    `tsa.stamp` raises (`TimeStampUnavailable`) and `JwsFormatError` for a malformed seal."""
    parsed, held = parse_jws(jws)
    token = tsa.stamp(timestamp_input(parsed))
    merged = ValidationData(
        held.certificates,
        held.crls,
        held.ocsp_responses,
        held.clear,
        (*held.time_stamps, token),
    )
    text = _object(parsed, merged)
    parse_jws(text)
    return text
