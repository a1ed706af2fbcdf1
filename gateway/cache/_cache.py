"""`AnswerCache`: sealed answers kept encrypted in a backend, behind a circuit breaker, with
single-flight loading.

Stored value (tongban.cache/v1)::

    0x01 | len(key_id) (1 byte) | key_id (ASCII) | nonce (12 bytes) | AES-256-GCM ciphertext+tag

The associated data is the format tag, the 32-byte cache key and the key id, so a value moved
under another key, or relabelled with another key id, does not decrypt. A value that does not
decrypt, or is under a key id this cache does not hold, is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.breaker import BreakerState, CacheCounters, CircuitBreaker
from gateway.cache._backend import BackendTimeout, BackendUnavailable, CacheBackend
from gateway.cache._key import redis_key

__all__ = ["AnswerCache"]

_log = logging.getLogger("gateway.cache")

_VERSION = 1
_NONCE = 12
_AAD_TAG = b"tongban.cache/v1\x00"
_KEY_ID = re.compile(r"[0-9A-Za-z_-]{1,16}")


def _check_key(key_id: str, key: bytes) -> tuple[bytes, AESGCM]:
    if _KEY_ID.fullmatch(key_id) is None:
        raise ValueError("a cache key id is 1 to 16 characters of [0-9A-Za-z_-]")
    if len(key) != 32:
        raise ValueError("the cache encryption key is 32 bytes (AES-256)")
    return key_id.encode("ascii"), AESGCM(key)


class AnswerCache:
    """The gateway's answer cache. Callers authorise first, then look up; the values are the
    sealed-record bytes the caller gives, returned unchanged.

    `key` (32 bytes) and `key_id` come from configuration; values are written under `key_id`.
    `previous_keys` (key id → key) are still read after a rotation, never written. `jitter`
    spreads expiry: a value lives ttl × (1 ± jitter). Backend failures never reach the caller:
    they are counted, reported to the breaker, and read as misses (get) or skipped (set); while
    the breaker is open the backend is not called at all.
    """

    def __init__(
        self,
        backend: CacheBackend,
        *,
        key: bytes,
        key_id: str,
        breaker: CircuitBreaker | None = None,
        jitter: float = 0.1,
        previous_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        self._backend = backend
        self._breaker = breaker if breaker is not None else CircuitBreaker()
        self._jitter = jitter
        self._key_id, self._aead = _check_key(key_id, key)
        self._keys: dict[bytes, AESGCM] = {}
        for old_id, old_key in (previous_keys or {}).items():
            encoded, aead = _check_key(old_id, old_key)
            self._keys[encoded] = aead
        self._keys[self._key_id] = self._aead
        self._random = random.SystemRandom()
        self._flights: dict[bytes, asyncio.Task[tuple[bytes, bool]]] = {}

    @property
    def key_id(self) -> str:
        """The id of the key values are written under (from configuration)."""
        return self._key_id.decode("ascii")

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def state(self) -> BreakerState:
        return self._breaker.state

    @property
    def counters(self) -> CacheCounters:
        return self._breaker.counters

    # -- encryption ------------------------------------------------------------------------

    def _aad(self, key: bytes, key_id: bytes) -> bytes:
        return _AAD_TAG + key + key_id

    def _seal(self, key: bytes, value: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        associated = self._aad(key, self._key_id)
        ciphertext = self._aead.encrypt(nonce, value, associated)
        return bytes((_VERSION, len(self._key_id))) + self._key_id + nonce + ciphertext

    def _open(self, key: bytes, stored: bytes) -> bytes | None:
        if len(stored) < 2 or stored[0] != _VERSION:
            return None
        end = 2 + stored[1]
        key_id = stored[2:end]
        aead = self._keys.get(key_id)
        if aead is None or len(stored) < end + _NONCE + 16:
            return None
        nonce = stored[end : end + _NONCE]
        associated = self._aad(key, key_id)
        try:
            return aead.decrypt(nonce, stored[end + _NONCE :], associated)
        except InvalidTag:
            return None

    def ttl_with_jitter(self, ttl_seconds: float, *, at_most: bool = False) -> float:
        """The TTL actually given to the backend: uniform in ttl × [1 - jitter, 1 + jitter],
        or with `at_most` in ttl × [1 - jitter, 1] (never longer than `ttl_seconds`)."""
        if self._jitter == 0:
            return float(ttl_seconds)
        upper = 1 if at_most else 1 + self._jitter
        return ttl_seconds * self._random.uniform(1 - self._jitter, upper)

    # -- backend calls behind the breaker --------------------------------------------------

    def _failed(self, exc: Exception, operation: str) -> None:
        connection = isinstance(exc, BackendUnavailable) or (
            isinstance(exc, OSError) and not isinstance(exc, TimeoutError)
        )
        _log.debug("answer cache %s failed: %s", operation, type(exc).__name__)
        self._breaker.failure(
            connection=connection, timeout=isinstance(exc, BackendTimeout | TimeoutError)
        )

    async def _backend_get(self, name: str) -> bytes | None:
        if not self._breaker.allow():
            return None
        try:
            stored = await self._backend.get(name)
        except asyncio.CancelledError:
            self._breaker.abandon()
            raise
        except Exception as exc:
            self._failed(exc, "get")
            return None
        self._breaker.success()
        return stored

    async def _backend_set(self, name: str, stored: bytes, ttl: float) -> None:
        if not self._breaker.allow():
            return
        try:
            await self._backend.set(name, stored, ttl)
        except asyncio.CancelledError:
            self._breaker.abandon()
            raise
        except Exception as exc:
            self._failed(exc, "set")
            return
        self._breaker.success()

    # -- the API ---------------------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """The cached answer under `key` (from `cache_key`), or None: absent, expired, not
        decryptable, or the backend failed or is bypassed."""
        name = redis_key(key)
        return self.opened(key, await self._backend_get(name))

    def opened(self, key: bytes, stored: bytes | None) -> bytes | None:
        """The answer in `stored`, the bytes kept under `key` that a caller read from the
        backend itself (`gateway.shared_checks`: one round trip for several checks), or None
        (absent, not decryptable, unavailable); counted as a hit or a miss like `get`."""
        value = None if stored is None else self._open(key, stored)
        if stored is not None and value is None:
            self._breaker.rejected += 1
        if value is None:
            self._breaker.misses += 1
        else:
            self._breaker.hits += 1
        return value

    async def set(
        self, key: bytes, value: bytes, ttl_seconds: float, *, at_most: bool = False
    ) -> None:
        """Keep `value` for about `ttl_seconds` (with jitter); 0 means not cached. With
        `at_most`, never longer than `ttl_seconds` (jitter only shortens it): a requesting
        gateway keeps an owner's answer no longer than the owner's TTL."""
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds is not negative")
        name = redis_key(key)
        if ttl_seconds == 0:
            return
        await self._backend_set(
            name, self._seal(key, value), self.ttl_with_jitter(ttl_seconds, at_most=at_most)
        )

    async def get_or_load(
        self,
        key: bytes,
        ttl_seconds: float,
        load: Callable[[], Awaitable[bytes]],
        *,
        missed: bool = False,
    ) -> tuple[bytes, bool]:
        """(value, hit): the cached answer, or `load()`'s, which is then cached.

        `hit` is True when this call did not run `load` (a cached value, or a concurrent
        caller's load for the same key: concurrent misses make one `load` call). An exception
        from `load` reaches every caller waiting on it and nothing is cached. A caller that is
        cancelled does not cancel the load the others wait for. With `ttl_seconds` 0 nothing
        is cached or shared: `load` is simply called. With `missed`, the caller's own lookup
        has just missed: a new flight loads without asking the backend again.
        """
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds is not negative")
        redis_key(key)  # validates
        if ttl_seconds == 0:
            return await load(), False
        flight = self._flights.get(key)
        if flight is not None:
            value, _ = await asyncio.shield(flight)
            self._breaker.coalesced += 1
            return value, True
        flight = asyncio.get_running_loop().create_task(self._fill(key, ttl_seconds, load, missed))
        flight.add_done_callback(_retrieve)
        self._flights[key] = flight
        return await asyncio.shield(flight)

    def in_flight(self, key: bytes) -> bool:
        """Is a load for `key` under way (its callers wait for it, not for the backend)?"""
        return key in self._flights

    async def _fill(
        self,
        key: bytes,
        ttl_seconds: float,
        load: Callable[[], Awaitable[bytes]],
        missed: bool = False,
    ) -> tuple[bytes, bool]:
        try:
            cached = None if missed else await self.get(key)
            if cached is not None:
                return cached, True
            value = await load()
            await self.set(key, value, ttl_seconds)
            return value, False
        finally:
            self._flights.pop(key, None)

    async def close(self) -> None:
        await self._backend.close()


def _retrieve(task: asyncio.Task[tuple[bytes, bool]]) -> None:
    """Mark a flight's exception as seen, so that a load whose callers all went away is not
    reported as 'exception never retrieved' (each caller still receives it)."""
    if not task.cancelled():
        task.exception()
