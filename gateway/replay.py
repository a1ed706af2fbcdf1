"""The request-id replay guard: a request id is accepted once per agency within the window.

Every request carries a `request_id` unique per agency; a repeat within the replay window is
refused (`REQUEST_REPLAYED`). The ids are remembered in Redis, so that every replica of a
gateway sees them: `SET key 1 NX EX window` answers "first use?" and remembers in one round
trip. The key is ``tb:replay:`` and the hex SHA-256 of the agency and the id, so no raw request
id reaches Redis (keys show up in MONITOR and SLOWLOG).

When Redis cannot answer, `RedisReplayGuard` raises `ReplayUnavailable` and the gateway fails
closed (`UNAVAILABLE`), or falls back to `FallbackReplayGuard`'s memory: a replay check that
cannot be made is not skipped. Each call is bounded (`timeout_seconds`) and goes through the
breaker of the gateway's Redis (shared with quotas and the answer cache): while
it is open Redis is not asked and `ReplayUnavailable` is raised at once.
`MemoryReplayGuard` is the single-process equivalent, for tests and a gateway without Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final, Protocol, TypeVar, runtime_checkable

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway._errors import GatewayError
from gateway.breaker import BreakerOpen, CircuitBreaker

__all__ = [
    "KEY_PREFIX",
    "MAX_REQUEST_ID_CHARS",
    "REDIS_CALL_SECONDS",
    "REPLAY_WINDOW_SECONDS",
    "FallbackReplayGuard",
    "MemoryReplayGuard",
    "RedisReplayGuard",
    "ReplayGuard",
    "ReplayUnavailable",
    "check_request_id",
    "redis_call",
    "replay_key",
]

_log = logging.getLogger("tongban.gateway")
_T = TypeVar("_T")

REPLAY_WINDOW_SECONDS: Final = 600
REDIS_CALL_SECONDS: Final = 0.25  # one call to the gateway's Redis, wait for a connection included
MAX_REQUEST_ID_CHARS: Final = 128
KEY_PREFIX: Final = "tb:replay:"
MAX_MEMORY_ENTRIES: Final = 1_000_000  # ~150 MB at most; beyond that the guard refuses
_REQUEST_ID: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")


class ReplayUnavailable(GatewayError):
    """The replay check cannot be made (Redis is unreachable, or the memory guard is full)."""


async def redis_call(
    breaker: CircuitBreaker | None,
    make: Callable[[], Awaitable[_T]],
    timeout_seconds: float,
) -> _T:
    """`await make()` (a call to the gateway's Redis) within `timeout_seconds`, through the
    Redis breaker when there is one. Raises `BreakerOpen`, `TimeoutError`, `RedisError` or
    `OSError`."""
    if breaker is None:
        async with asyncio.timeout(timeout_seconds):
            return await make()
    return await breaker.call(
        make,
        timeout_seconds=timeout_seconds,
        failed=lambda exc: isinstance(exc, RedisError | OSError),
        unreachable=lambda exc: isinstance(exc, RedisConnectionError | ConnectionRefusedError),
    )


def check_request_id(value: object) -> None:
    """Raise `ValueError` unless `value` is 1 to 128 printable ASCII characters (no spaces)."""
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
        raise ValueError(
            f"a request id is 1 to {MAX_REQUEST_ID_CHARS} printable ASCII characters without spaces"
        )


def _digest(agency: str, request_id: str) -> bytes:
    if not agency or "\x00" in agency:
        raise ValueError("the agency of a request id is empty or contains NUL")
    check_request_id(request_id)
    return hashlib.sha256(f"{agency}\x00{request_id}".encode()).digest()


def replay_key(agency: str, request_id: str, prefix: str = KEY_PREFIX) -> str:
    """The Redis key remembering (`agency`, `request_id`): no raw id in it."""
    return prefix + _digest(agency, request_id).hex()


@runtime_checkable
class ReplayGuard(Protocol):
    async def first_use(self, agency: str, request_id: str) -> bool:
        """True the first time `agency` uses `request_id` within the window, False for a
        repeat. Raises `ValueError` for a malformed id, `ReplayUnavailable` when it cannot tell.
        """
        ...


class RedisReplayGuard:
    """Request ids remembered in Redis for `window_seconds`, seen by every replica."""

    def __init__(
        self,
        client: Redis,
        *,
        window_seconds: int = REPLAY_WINDOW_SECONDS,
        key_prefix: str = KEY_PREFIX,
        breaker: CircuitBreaker | None = None,
        timeout_seconds: float = REDIS_CALL_SECONDS,
    ) -> None:
        if isinstance(window_seconds, bool) or not isinstance(window_seconds, int):
            raise TypeError("the replay window is a whole number of seconds")
        if window_seconds < 1:
            raise ValueError("the replay window is at least 1 second")
        self._client = client
        self.window_seconds = window_seconds
        self.key_prefix = key_prefix
        self._breaker = breaker
        self._timeout = timeout_seconds

    async def first_use(self, agency: str, request_id: str) -> bool:
        key = replay_key(agency, request_id, self.key_prefix)
        try:
            stored = await redis_call(
                self._breaker,
                lambda: self._client.set(key, b"1", nx=True, ex=self.window_seconds),
                self._timeout,
            )
        except BreakerOpen as exc:
            raise ReplayUnavailable(f"the replay check cannot be made: {exc}") from exc
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            raise ReplayUnavailable(
                f"the replay check cannot be made: Redis did not answer ({type(exc).__name__})"
            ) from exc
        return bool(stored)


class MemoryReplayGuard:
    """Request ids remembered in this process for `window_seconds` (a single gateway, tests).

    Bounded: expired ids are swept as new ones arrive (oldest first, since every id is kept for
    the same window); if `max_entries` ids are all still inside the window, the guard raises
    `ReplayUnavailable` rather than forget one early.
    """

    def __init__(
        self,
        window_seconds: int = REPLAY_WINDOW_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        max_entries: int = MAX_MEMORY_ENTRIES,
    ) -> None:
        if window_seconds < 1:
            raise ValueError("the replay window is at least 1 second")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.window_seconds = window_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry, oldest first

    def __len__(self) -> int:
        return len(self._seen)

    async def first_use(self, agency: str, request_id: str) -> bool:
        digest = _digest(agency, request_id)
        now = self._clock().timestamp()
        self._sweep(now)
        expires = self._seen.get(digest)
        if expires is not None and expires > now:
            return False
        if expires is not None:  # pragma: no cover - swept above unless the clock went back
            del self._seen[digest]
        if len(self._seen) >= self._max_entries:
            raise ReplayUnavailable(
                f"the replay check cannot be made: {self._max_entries} request ids are "
                "remembered and none has left the window"
            )
        self._seen[digest] = now + self.window_seconds
        return True

    def seen(self, agency: str, request_id: str) -> bool:
        """Does this memory hold (`agency`, `request_id`) within the window? Remembers nothing."""
        expires = self._seen.get(_digest(agency, request_id))
        return expires is not None and expires > self._clock().timestamp()

    def _sweep(self, now: float) -> None:
        while self._seen:
            digest, expires = next(iter(self._seen.items()))
            if expires > now:
                return
            del self._seen[digest]


class FallbackReplayGuard:
    """Redis first; while Redis cannot answer, this replica's own memory (invariant 4: the
    gateway keeps answering when Redis is down). Repeats are then caught per replica only, and
    the switch is logged each way. A repeat is refused if either remembers the id, so ids this
    replica saw survive a Redis that lost its data; other replicas' ids, then, do not."""

    def __init__(self, primary: ReplayGuard, fallback: ReplayGuard) -> None:
        self._primary = primary
        self._fallback = fallback
        self.degraded = False

    @property
    def primary(self) -> ReplayGuard:
        return self._primary

    @property
    def fallback(self) -> ReplayGuard:
        return self._fallback

    def unavailable(self, why: object) -> None:
        """The primary could not answer (`why`): the fallback answers until it does again."""
        if not self.degraded:
            _log.warning("replay window falls back to this replica's memory: %s", why)
            self.degraded = True

    def answered(self) -> None:
        """The primary answered (again)."""
        if self.degraded:
            _log.warning("replay window is shared in Redis again")
            self.degraded = False

    async def first_use(self, agency: str, request_id: str) -> bool:
        try:
            first = await self._primary.first_use(agency, request_id)
        except ReplayUnavailable as exc:
            self.unavailable(exc)
            return await self._fallback.first_use(agency, request_id)
        self.answered()
        # Remember locally too, so a repeat is still caught if Redis fails right after; and ask
        # the local memory as well: a Redis that came back empty (restarted, nothing on disk)
        # has forgotten ids this replica saw before, inside the window.
        first_here = await self._fallback.first_use(agency, request_id)
        return first and first_here
