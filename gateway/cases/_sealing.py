"""Cases' personal data at rest: the signed events (their payload holds the applicant's id) and
the materials, sealed before they reach the case store.

AES-256-GCM under a key derived (HKDF-SHA256, info AT_REST_INFO, no salt) from the gateway's
pseudonym key, a random 96-bit nonce, and as associated data what the row is kept under (an
event's id, an attachment's SHA-256), so that a sealed value moved to another row does not open.
An event is kept as ``aes256gcm:`` then base64url (no padding) of nonce ‖ ciphertext ‖ tag; an
attachment as the bytes nonce ‖ ciphertext ‖ tag of its content and signed data packed together
(`pack_attachment`). Like `gateway.audit._kept`: whoever can open them holds the key that makes
pseudonyms, and so could already tell whose case it is.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway._errors import GatewayError
from gateway.audit import derived_aead
from signer import b64url_decode, b64url_encode

__all__ = [
    "AT_REST_INFO",
    "SealedCaseDataError",
    "open_bytes",
    "open_text",
    "pack_attachment",
    "seal_bytes",
    "seal_text",
    "unpack_attachment",
]

AT_REST_INFO: Final = b"tongban cases at-rest v1"
_PREFIX: Final = "aes256gcm:"
_NONCE_BYTES: Final = 12
_LENGTH: Final = struct.Struct(">Q")


class SealedCaseDataError(GatewayError, ValueError):
    """Sealed case data does not open with this key under this id (another deployment's key,
    or the row was altered or moved)."""


def _aead(pseudonym_key: bytes) -> AESGCM:
    return derived_aead(pseudonym_key, AT_REST_INFO)


def seal_bytes(data: bytes, associated: str, pseudonym_key: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + _aead(pseudonym_key).encrypt(nonce, data, associated.encode("utf-8"))


def open_bytes(sealed: bytes, associated: str, pseudonym_key: bytes) -> bytes:
    try:
        return _aead(pseudonym_key).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated.encode("utf-8")
        )
    except (InvalidTag, ValueError) as exc:
        raise SealedCaseDataError(
            "sealed case data does not open with this pseudonym key under its id"
        ) from exc


def seal_text(text: str, associated: str, pseudonym_key: bytes) -> str:
    return _PREFIX + b64url_encode(seal_bytes(text.encode("utf-8"), associated, pseudonym_key))


def open_text(sealed: str, associated: str, pseudonym_key: bytes) -> str:
    if not sealed.startswith(_PREFIX):
        raise SealedCaseDataError("sealed case data is not in the aes256gcm form")
    try:
        raw = b64url_decode(sealed.removeprefix(_PREFIX))
    except ValueError as exc:
        raise SealedCaseDataError("sealed case data is not base64url") from exc
    try:
        return open_bytes(raw, associated, pseudonym_key).decode("utf-8")
    except UnicodeDecodeError as exc:  # pragma: no cover - authenticated bytes we wrote
        raise SealedCaseDataError("sealed case data is not text") from exc


def pack_attachment(content: bytes, signed_data: bytes) -> bytes:
    """Content and signed data as one value: the content's length (8 bytes, big-endian), the
    content, the signed data."""
    return _LENGTH.pack(len(content)) + content + signed_data


def unpack_attachment(packed: bytes) -> tuple[bytes, bytes]:
    if len(packed) < _LENGTH.size:
        raise SealedCaseDataError("a kept attachment is shorter than its header")
    (length,) = _LENGTH.unpack_from(packed)
    if length > len(packed) - _LENGTH.size:
        raise SealedCaseDataError("a kept attachment is shorter than its content")
    body = packed[_LENGTH.size :]
    return body[:length], body[length:]
