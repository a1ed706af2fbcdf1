"""Signed JSON: the one place Tongban makes and checks a compact JWS (RFC 7515) over JSON.

Registry snapshots, access-report batches and request tokens are all the same thing: canonical
JSON signed with a key the registry names, told apart by the header's `typ`. This module holds
what they share; each caller keeps its own words for a refusal and its own checks of the payload.

`sign_json` signs payload bytes (normally `canonical_json(document)`) with a private key whose
algorithm must be in the caller's allow-list. `verify_json` checks, in this order, and raises the
`SignedJsonRefused` subclass that names the step:

    (0) size and shape: at most `max_bytes`, three dot-separated parts   SignedJsonMalformed
    (1) the protected header parses                                      SignedJsonMalformed
    (2) it is signed at all: an `alg` other than `none`, a signature     SignedJsonUnsigned
    (3) `alg` is in the caller's allow-list                              SignedJsonAlgorithmRefused
    (4) `typ`, when present (or always, if required), is the one given,  SignedJsonTypeRefused
        unless the caller checks none (`typ=None`)
    (5) no `crit` or `b64` header: Tongban understands no JWS extension  SignedJsonExtensionRefused
    (6) `key_for(header)` finds the key; the header only names it (a hint, never trusted: a key
        carried in the message is never used); whatever `key_for` raises propagates unchanged
    (7) that key's type signs with `alg` (no algorithm confusion)        SignedJsonAlgorithmRefused
    (8) the signature verifies with that key                             SignedJsonSignatureInvalid

PyJWT does the JWS encoding and the signature arithmetic; its check that each segment is
base64url (a Python test per character: most of the time spent on an 80 KB batch of access
reports) is done here by one regular expression, with the same rules and the same errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from signer._keyfile import PrivateKey, PublicKey, algorithm_for_key
from signer.errors import (
    SignedJsonAlgorithmRefused,
    SignedJsonExtensionRefused,
    SignedJsonMalformed,
    SignedJsonSignatureInvalid,
    SignedJsonTypeRefused,
    SignedJsonUnsigned,
    UnsupportedAlgorithm,
)

__all__ = ["EXTENSION_HEADERS", "canonical_json", "sign_json", "verify_json"]

EXTENSION_HEADERS: Final = frozenset({"crit", "b64"})  # refused: no JWS extension is used

KeyLookup = Callable[[Mapping[str, Any]], PublicKey]

_BASE64URL: Final = re.compile(rb"[A-Za-z0-9_-]*")


class _Jws(jwt.PyJWS):
    """PyJWT's JWS, with the segments' base64url check of `PyJWS._decode_base64url_segment`
    (padding of at most two `=` on a multiple of four, only the URL-safe alphabet, no
    impossible length, the canonical encoding of what it decodes to) made by C code. PyJWT
    calls that hook from 2.14 on (before, it decoded segments leniently and never called it:
    pyproject's floor is 2.15.1, whose check this one equals)."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if (
            padding > 2
            or (padding and len(segment) % 4)
            or len(stripped) % 4 == 1
            or _BASE64URL.fullmatch(stripped) is None
        ):
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
        except (TypeError, binascii.Error) as err:  # pragma: no cover (the checks above)
            raise jwt.DecodeError(f"Invalid {name} padding") from err
        if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


_JWS: Final = _Jws()


def canonical_json(value: Any) -> bytes:
    """The canonical JSON of `value`: keys sorted, no insignificant white space, UTF-8. The same
    value always encodes to the same bytes, so a payload can be compared and hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class VerifiedJson:
    """A compact JWS whose signature verified: its header, algorithm and payload bytes."""

    jws: str
    header: Mapping[str, Any]
    algorithm: str
    payload: bytes

    @property
    def is_canonical(self) -> bool:
        """Is the payload JSON in its canonical form (`canonical_json` of what it says)?"""
        try:
            return canonical_json(json.loads(self.payload)) == self.payload
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return False


def sign_json(
    payload: bytes,
    key: PrivateKey,
    *,
    typ: str,
    kid: str,
    algorithms: Collection[str],
    headers: Mapping[str, str] | None = None,
) -> str:
    """A compact JWS of `payload` by `key`, with header `typ`, `kid` and any extra `headers`.

    The algorithm is the one the key's type signs with (`algorithm_for_key`); it must be in
    `algorithms`, else `UnsupportedAlgorithm`. `payload` is signed as given: pass
    `canonical_json(document)`.
    """
    algorithm = algorithm_for_key(key)
    if algorithm not in algorithms:
        raise UnsupportedAlgorithm(
            f"a {typ} is signed with {' or '.join(sorted(algorithms))}, not {algorithm}"
        )
    extra = dict(headers or {})
    if EXTENSION_HEADERS & extra.keys() or {"alg", "typ", "kid"} & extra.keys():
        raise ValueError("extra headers may not set alg, typ, kid, crit or b64")
    return jwt.PyJWS().encode(
        payload, key, algorithm=algorithm, headers={"typ": typ, "kid": kid, **extra}
    )


def verify_json(
    jws: str,
    *,
    key_for: KeyLookup,
    algorithms: Collection[str],
    typ: str | None,
    typ_required: bool,
    max_bytes: int,
    what: str = "the signed document",
) -> VerifiedJson:
    """The verified JWS `jws`, or the `SignedJsonRefused` naming the step it failed (see the
    module docstring). `key_for` is called with the protected header and returns the public
    key the header's key id names, or raises the caller's own error. `typ` is compared without
    regard to case (RFC 7515 §4.1.9); `None` checks none (registry snapshots: their verifier
    never read the header's `typ`, and PyJWT writes `JWT` there unless told otherwise). Messages begin with `what` and never contain `jws`."""
    # (0)
    if len(jws) > max_bytes:
        raise SignedJsonMalformed(f"{what} is larger than {max_bytes} bytes")
    parts = jws.split(".")
    if len(parts) != 3:
        raise SignedJsonMalformed(f"{what} is not a compact JWS (header.payload.signature)")
    # (1)
    try:
        header = _JWS.get_unverified_header(jws)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
        raise SignedJsonMalformed(f"{what} header cannot be read: {exc}") from exc
    # (2)
    algorithm = header.get("alg")
    if not parts[2] or not isinstance(algorithm, str) or algorithm.lower() == "none":
        raise SignedJsonUnsigned(f"{what} is not signed")
    # (3)
    if algorithm not in algorithms:
        raise SignedJsonAlgorithmRefused(
            f"{what} uses algorithm {algorithm!r}, not {' or '.join(sorted(algorithms))}",
            algorithm=algorithm,
        )
    # (4)
    found_typ = header.get("typ")
    if typ is not None and found_typ is None and typ_required:
        raise SignedJsonTypeRefused(f"{what} has no typ; it must be {typ}")
    if (
        typ is not None
        and found_typ is not None
        and (not isinstance(found_typ, str) or found_typ.lower() != typ.lower())
    ):
        raise SignedJsonTypeRefused(f"{what}'s typ is not {typ}")
    # (5)
    if EXTENSION_HEADERS & header.keys():
        raise SignedJsonExtensionRefused(f"{what}'s header carries a JWS extension (crit, b64)")
    # (6)
    public_key = key_for(header)
    # (7)
    try:
        key_algorithm = algorithm_for_key(public_key)
    except UnsupportedAlgorithm as exc:
        raise SignedJsonAlgorithmRefused(
            f"{what} is verified with a key of a type Tongban does not use", algorithm=algorithm
        ) from exc
    if key_algorithm != algorithm:
        raise SignedJsonAlgorithmRefused(
            f"{what} uses algorithm {algorithm!r}; its key signs with {key_algorithm}",
            algorithm=algorithm,
        )
    # (8)
    try:
        payload = _JWS.decode(jws, key=public_key, algorithms=[algorithm])
    except jwt.InvalidSignatureError as exc:
        raise SignedJsonSignatureInvalid(f"{what} signature does not verify") from exc
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:  # pragma: no cover
        # defensive: (1) decoded every part and (7) matched the key to alg
        raise SignedJsonMalformed(f"{what} cannot be decoded: {exc}") from exc
    return VerifiedJson(jws=jws, header=header, algorithm=algorithm, payload=payload)
