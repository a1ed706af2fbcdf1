"""The answer cache key: everything that shapes an answer, hashed, so no identifier shows."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

__all__ = ["KEY_PREFIX", "KEY_SIZE", "cache_key", "redis_key"]

KEY_PREFIX = "tb:c:"
KEY_SIZE = 32  # SHA-256

_DOMAIN = b"tongban.cache.key/v1"
# A requesting gateway's own copy of an owner's answer (cache_scope "requester") lives under a
# key of its own: never the owner's provider-side entry, never another requesting region's.
_REQUESTER_DOMAIN = b"tongban.cache.key/requester/v1"
_PSEUDONYM = re.compile(r"[0-9a-f]{64}")


def _part(data: str) -> bytes:
    encoded = data.encode("utf-8")
    return len(encoded).to_bytes(4, "big") + encoded


def cache_key(
    *,
    provider_region: str,
    dataset: str,
    subject_pseudonym: str,
    fields: Iterable[str],
    purpose: str,
    requester: str = "",
) -> bytes:
    """SHA-256 (32 bytes) over a length-prefixed encoding of the parts, the field set sorted.

    `requester` is empty for the data owner's own (provider-side) cache; a requesting gateway
    that keeps owners' answers (cache_scope "requester") passes its own region code, which
    puts its entries in a key space of their own, apart from the owner's and from every other
    requesting region's (gateways of several regions may share one Redis).

    `subject_pseudonym` is the keyed HMAC of the subject id (`gateway.audit.pseudonymize`),
    64 lowercase hex characters; anything else (a raw id above all) is refused with ValueError.
    Fields are a set: order and repetition do not change the key.
    """
    if _PSEUDONYM.fullmatch(subject_pseudonym) is None:
        raise ValueError("the cache key takes the subject's pseudonym (hex HMAC), never a raw id")
    field_set = sorted(set(fields))
    digest = hashlib.sha256(_REQUESTER_DOMAIN if requester else _DOMAIN)
    if requester:
        digest.update(_part(requester))
    for part in (provider_region, dataset, subject_pseudonym, purpose):
        digest.update(_part(part))
    digest.update(len(field_set).to_bytes(4, "big"))
    for name in field_set:
        digest.update(_part(name))
    return digest.digest()


def redis_key(key: bytes) -> str:
    """The backend's name for a cache key: "tb:c:" and 64 hex characters."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"a cache key is {KEY_SIZE} bytes (see cache_key)")
    return KEY_PREFIX + key.hex()
