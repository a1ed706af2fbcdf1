"""A signed request kept with its audit record, without the record holding a raw subject id.

A Peer.Forward's signed request (`gateway.forward_signing`) is the proof of who asked for
what, and its payload holds the subject id. The record keeps its digest (`request_digest`,
hex SHA-256 of the compact JWS: what an outsider checks a disclosed JWS against, and what the
Merkle leaf commits to) and the JWS itself encrypted (`request_sealed`): AES-256-GCM under a key
derived (HKDF-SHA256, info KEPT_REQUEST_INFO) from the deployment's pseudonym key, a random
96-bit nonce, the digest as associated data; ``aes256gcm:`` then base64url (no padding) of
nonce ‖ ciphertext ‖ tag. Whoever can open it holds the key that makes pseudonyms, and so could
already tell whose record it is; nobody else can, not even by trying candidate ids against the
signature (the payload is not there to try them on).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.audit.errors import KeptRequestError
from signer import b64url_decode, b64url_encode

__all__ = [
    "KEPT_REQUEST_INFO",
    "derived_aead",
    "open_kept_request",
    "request_digest",
    "seal_kept_request",
]

KEPT_REQUEST_INFO: Final = b"tongban audit kept-request v1"
_PREFIX: Final = "aes256gcm:"
_NONCE_BYTES: Final = 12


@functools.lru_cache(maxsize=16)
def derived_aead(pseudonym_key: bytes, info: bytes) -> AESGCM:
    """AES-256-GCM under the key HKDF-SHA256 derives from the deployment's pseudonym key for
    `info` (one purpose, one key), derived once: the kept requests' (KEPT_REQUEST_INFO) and the
    cases' data at rest (`gateway.cases._sealing`)."""
    if len(pseudonym_key) < 16:
        raise ValueError("the audit pseudonym key must be at least 16 bytes")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(pseudonym_key)
    return AESGCM(key)


def _aead(pseudonym_key: bytes) -> AESGCM:
    return derived_aead(pseudonym_key, KEPT_REQUEST_INFO)


def request_digest(jws: str) -> str:
    return hashlib.sha256(jws.encode("ascii")).hexdigest()


def seal_kept_request(jws: str, pseudonym_key: bytes) -> tuple[str, str]:
    """(request_digest, request_sealed) of a signed request, for its audit record."""
    digest = request_digest(jws)
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _aead(pseudonym_key).encrypt(nonce, jws.encode("ascii"), digest.encode("ascii"))
    text = b64url_encode(nonce + sealed)
    return digest, _PREFIX + text


def open_kept_request(sealed: str, digest: str, pseudonym_key: bytes) -> str:
    """The signed request a record keeps, checked against the record's digest."""
    if not sealed.startswith(_PREFIX):
        raise KeptRequestError("the kept request is not in the aes256gcm form")
    body = sealed.removeprefix(_PREFIX)
    try:
        raw = b64url_decode(body)
        plain = _aead(pseudonym_key).decrypt(
            raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], digest.encode("ascii")
        )
        jws = plain.decode("ascii")
    except (InvalidTag, UnicodeDecodeError, ValueError) as exc:
        raise KeptRequestError(
            "the kept request does not open with this pseudonym key (another deployment's "
            "key, or the record was altered)"
        ) from exc
    if request_digest(jws) != digest:
        raise KeptRequestError("the kept request does not match the record's digest")
    return jws
