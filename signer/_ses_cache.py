"""What GmVerifier remembers between validations, so that validating again costs about one SM2
signature check (the signature over TBS_Sign, never remembered) and one SM3 of the data.

Functions of their input bytes alone, kept for the process: a certificate read whole, and its
SM2 public key. Kept by the verifier for the current trust source's version only (`remember`
fills them): the parsed structure by its DER (as SealVerifier keeps parsed JWS headers), the
seal's checks (the maker's signature and path) by the seal, and a certificate path's check by
(certificate, time, owner). Each cache is emptied when it reaches `MAX_CACHED` entries.
"""

from __future__ import annotations

import functools
import warnings
from typing import Final, TypeVar

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from signer._sm2 import Sm2PublicKey
from signer._sm2_x509 import CERTIFICATE_READ_ERRORS, is_sm2_key, sm2_public_key_of
from signer.errors import Sm2Refused

# Internal to signer: its __all__ lists only what the package exports (test_public_api).
__all__ = ["MAX_CACHED", "MAX_CACHED_DER_BYTES"]

MAX_CACHED: Final = 1024  # entries of each cache before it is emptied
MAX_CACHED_DER_BYTES: Final = 64 * 1024  # a larger structure is parsed every time
_K = TypeVar("_K")
_V = TypeVar("_V")


@functools.lru_cache(maxsize=MAX_CACHED)
def read_certificate(der: bytes) -> x509.Certificate | str:
    """The certificate, read whole (pyca parses lazily: a bad field surfaces here), or why
    not (remembered either way: reading is a function of the bytes)."""
    try:
        with warnings.catch_warnings():  # pyca warns of what RFC 5280 forbids: refuse it here
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            certificate = x509.load_der_x509_certificate(der)
        _ = certificate.subject.rfc4514_string(), certificate.not_valid_after_utc
        _ = certificate.extensions
    except CERTIFICATE_READ_ERRORS:  # pyca parses lazily: a bad field surfaces on access
        return "is not a DER X.509 certificate"
    except CryptographyDeprecationWarning as warning:
        return f"breaks RFC 5280: {warning}"
    return certificate


@functools.lru_cache(maxsize=MAX_CACHED)
def sm2_key(certificate: x509.Certificate) -> Sm2PublicKey | Sm2Refused | None:
    """The certificate's SM2 public key; the refusal if its point is not on the curve; None if
    it is not an SM2 key. Remembered per certificate (pyca hashes and compares by DER)."""
    if not is_sm2_key(certificate):
        return None
    try:
        return sm2_public_key_of(certificate)
    except Sm2Refused as refusal:
        return refusal


def remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    if len(cache) >= MAX_CACHED:
        cache.clear()
    cache[key] = value
    return value
