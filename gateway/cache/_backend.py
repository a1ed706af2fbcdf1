"""Where cached values are kept: the backend protocol, its errors, and the in-memory backend."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway._errors import GatewayError

__all__ = [
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "CacheBackend",
    "MemoryBackend",
]


class BackendError(GatewayError):
    """The backend failed to answer (a protocol or server error)."""


class BackendTimeout(BackendError):
    """The backend did not answer in time."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached (connection refused, reset or lost)."""


class CacheBackend(Protocol):
    """Opaque bytes under string keys with a time to live. Failures raise (any exception);
    `AnswerCache` turns them into misses, so a backend need not be defensive."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None: ...

    async def close(self) -> None: ...


class MemoryBackend:
    """One process's cache: entries expire after their TTL; the least recently used entry is
    dropped when `max_entries` would be exceeded."""

    def __init__(
        self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries is at least 1")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if ttl_seconds <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self._clock() + ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()
