"""JAdES baseline-B signatures in JWS compact serialisation (ETSI TS 119 182-1, RFC 7515).

Protected header of a Tongban seal::

    alg        ES256 | EdDSA | PS256
    typ        "JOSE"                      (JAdES compact serialisation)
    cty        the payload's media type
    x5t#S256   the signer certificate's thumbprint: the key's id in the registry
    x5c        the chain, leaf first (informative: the registry's certificate is what counts)
    iat        the claimed signing time (JAdES uses `iat` for signatures made from 2025-07-15)
    sigD, crit detached payloads only: `sigD` carries the payload's SHA-256 (mechanism
               ObjectIdByURIHash) and `crit` lists it, so the JWS payload part stays empty and a
               swapped payload is a HASH_FAILURE, not a mere bad signature

PyJWT does not implement `sigD` (its `crit` handling knows only `b64`), so the compact form is
assembled here; the signature itself comes from the key provider.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from signer._keys import KeyProvider

__all__ = [
    "MAX_JWS_BYTES",
    "SIGD_HASH_MECHANISM",
    "JwsFormatError",
    "parse_compact",
    "seal",
]

MAX_JWS_BYTES: Final = 8 * 1024 * 1024  # bytes of compact JWS accepted for verification
SIGD_HASH_MECHANISM: Final = "http://uri.etsi.org/19182/ObjectIdByURIHash"
DETACHED_PAYLOAD_URI: Final = "urn:tongban:payload"
JOSE_TYPE: Final = "JOSE"
_BASE64URL_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class JwsFormatError(ValueError):
    """The bytes are not a well-formed compact JWS."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding, as RFC 7515 requires."""
    if "+" in text or "/" in text or "=" in text or len(text) % 4 == 1:
        raise JwsFormatError("not unpadded base64url")
    try:
        return binascii.a2b_base64(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), strict_mode=True
        )
    except (binascii.Error, ValueError) as exc:
        raise JwsFormatError("not base64url") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise JwsFormatError(f"duplicate header parameter {', '.join(duplicated)}")
    return dict(pairs)


@dataclass(frozen=True, slots=True)
class ParsedJws:
    header: dict[str, Any]
    header_b64: str
    payload_b64: str
    signature: bytes

    @property
    def payload(self) -> bytes:
        """The attached payload, decoded (empty when detached); decoded only when asked for."""
        return b64url_decode(self.payload_b64) if self.payload_b64 else b""

    @property
    def detached(self) -> bool:
        return self.payload_b64 == ""

    def signing_input(self, detached_payload: bytes | None = None) -> bytes:
        """The bytes signed: header and payload parts (RFC 7515 section 5.2)."""
        if self.detached and detached_payload is not None and "sigD" not in self.header:
            # RFC 7515 appendix F: the payload travels apart but is signed as usual.
            return f"{self.header_b64}.{b64url_encode(detached_payload)}".encode("ascii")
        return f"{self.header_b64}.{self.payload_b64}".encode("ascii")


def parse_compact(jws: str | bytes) -> ParsedJws:
    """Split and decode a compact JWS; raise `JwsFormatError` on anything malformed."""
    if isinstance(jws, bytes):
        try:
            jws = jws.decode("ascii")
        except UnicodeDecodeError as exc:
            raise JwsFormatError("a compact JWS is ASCII") from exc
    jws = jws.strip()
    if len(jws) > MAX_JWS_BYTES:
        raise JwsFormatError(f"larger than {MAX_JWS_BYTES} bytes")
    parts = jws.split(".")
    if len(parts) != 3:
        raise JwsFormatError("not a compact JWS (header.payload.signature)")
    header_b64, payload_b64, signature_b64 = parts
    header = _header(header_b64)
    # Checked here (decoding waits until the payload is asked for): a character outside the
    # base64url alphabet, non-ASCII text included, is malformed and never reaches a verifier.
    if (
        len(payload_b64) % 4 == 1
        or not payload_b64.isascii()
        or payload_b64.encode("ascii").translate(None, _BASE64URL_ALPHABET)
    ):
        raise JwsFormatError("the payload is not unpadded base64url")
    return ParsedJws(header, header_b64, payload_b64, b64url_decode(signature_b64))


_HEADERS: OrderedDict[str, dict[str, Any]] = OrderedDict()
MAX_CACHED_HEADERS: Final = (
    1024  # parsed protected headers kept (seals of one key in one second share one)
)
# Only a header of a plausible size is kept (a seal's, x5c chain included, is ~3.5 KB): 1024
# headers of the megabytes a JWS may carry would hold gigabytes.
MAX_CACHED_HEADER_BYTES: Final = 32 * 1024


def _header(header_b64: str) -> dict[str, Any]:
    """The protected header as a JSON object. Callers must not modify it: it may be shared."""
    header = _HEADERS.get(header_b64)
    if header is not None:
        _HEADERS.move_to_end(header_b64)
        return header
    try:
        header = json.loads(b64url_decode(header_b64), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise JwsFormatError("the protected header is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise JwsFormatError("the protected header is not JSON") from exc
    except RecursionError:  # nesting deeper than the interpreter's stack: no profile needs it
        raise JwsFormatError("the protected header is nested too deeply") from None
    if not isinstance(header, dict):
        raise JwsFormatError("the protected header is not a JSON object")
    if len(header_b64) <= MAX_CACHED_HEADER_BYTES:
        _HEADERS[header_b64] = header
        if len(_HEADERS) > MAX_CACHED_HEADERS:
            _HEADERS.popitem(last=False)
    return header


def _x5c(provider: KeyProvider) -> list[str]:
    return [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii")
        for c in provider.certificate_chain
    ]


def seal(
    payload: bytes,
    provider: KeyProvider,
    *,
    content_type: str = "application/json",
    detached: bool = False,
    signing_time: datetime | None = None,
) -> str:
    """Seal (or sign) `payload` with `provider`'s key: a compact JAdES baseline-B JWS."""
    when = signing_time or datetime.now(UTC)
    header: dict[str, Any] = {
        "alg": provider.algorithm,
        "typ": JOSE_TYPE,
        "cty": content_type,
        "x5t#S256": provider.kid,
        "x5c": _x5c(provider),
        "iat": int(when.timestamp()),
    }
    if detached:
        header["sigD"] = {
            "mId": SIGD_HASH_MECHANISM,
            "pars": [DETACHED_PAYLOAD_URI],
            "hashM": "S256",
            "hashV": [b64url_encode(hashlib.sha256(payload).digest())],
            "ctys": [content_type],
        }
        header["crit"] = ["sigD"]
    header_b64 = b64url_encode(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    payload_b64 = "" if detached else b64url_encode(payload)
    signature = provider.sign(f"{header_b64}.{payload_b64}".encode("ascii"))
    return f"{header_b64}.{payload_b64}.{b64url_encode(signature)}"
