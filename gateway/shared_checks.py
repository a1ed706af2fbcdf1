"""A request's checks against the shared state, in one Redis round trip.

After its decision, a gateway checks the request against what its replicas share: the request
id's first use in the replay window (requester only), one count of the agreement's quota this
minute, and a read of its answer cache. Asked one after the other, that is three awaited round
trips to Redis per request; `OneTrip` makes them one server-side script (`EVALSHA`) with the
same semantics, in the same order:

- the replay `SET NX` comes first: a repeat is refused there, and nothing is counted or read;
- the quota window's `INCR` (with its `EXPIRE` on the first count) comes next, only for a
  request that is not a repeat; every such request counts, allowed or not;
- the cache `GET` comes last, only for a request within its quota; the value stays encrypted
  (AES-256-GCM, `AnswerCache`): the script only reads the bytes, which this gateway opens.

Authorisation precedes the cache: the decision is made in Python before the round trip.

When Redis cannot answer (an error, a timeout, the breaker open), each part falls back as it
does on its own (invariant 4): the replay window and the quota to this replica's memory (the
`FallbackReplayGuard` and `FallbackQuotaCounter` this check shares, logged each way), the cache
to a miss (counted as one). `SequentialChecks` makes the same checks with separate calls, for
guards other than Redis ones (memory, tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.cache import AnswerCache, redis_key
from gateway.quota import (
    WINDOW_TTL_SECONDS,
    FallbackQuotaCounter,
    MemoryQuotaCounter,
    QuotaCounter,
    RedisQuotaCounter,
    minute_of,
    quota_key,
)
from gateway.replay import (
    FallbackReplayGuard,
    MemoryReplayGuard,
    RedisReplayGuard,
    ReplayGuard,
    redis_call,
    replay_key,
)

__all__ = ["Checked", "OneTrip", "SequentialChecks", "SharedChecks", "Wanted"]


@dataclass(frozen=True, slots=True)
class Wanted:
    """What to check. `replay`: (agency, request id), None for no replay check (the owner);
    `quota`: (counter key, limit per minute), None for none; `cache`: the cache key to read
    (`cache_key`), None for no read."""

    replay: tuple[str, str] | None = None
    quota: tuple[str, int] | None = None
    cache: bytes | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome: `first_use` False for a repeat (then nothing was counted or read);
    `within_quota` False when the count including this request is over the limit (then
    nothing was read); `cached` the cache's answer, opened (None: absent, not asked, not
    readable, Redis unavailable)."""

    first_use: bool = True
    within_quota: bool = True
    cached: bytes | None = None


class SharedChecks(Protocol):
    async def check(self, wanted: Wanted, cache: AnswerCache, *, now: datetime) -> Checked:
        """Check `wanted` (reading `cache`'s entry); raises `ReplayUnavailable` or
        `QuotaUnavailable` when that check cannot be made."""
        ...


class SequentialChecks:
    """The checks one after the other, with the given guard (None: the owner's, which checks
    no replay), counter and cache, each its own call: a gateway whose shared state is in
    memory, and tests."""

    def __init__(self, replay: ReplayGuard | None, quota: QuotaCounter) -> None:
        self.replay = replay
        self.quota = quota

    async def check(self, wanted: Wanted, cache: AnswerCache, *, now: datetime) -> Checked:
        if wanted.replay is not None:
            if self.replay is None:
                raise TypeError("these checks have no replay guard")
            if not await self.replay.first_use(*wanted.replay):
                return Checked(first_use=False)
        if wanted.quota is not None:
            key, limit = wanted.quota
            if not await self.quota.take(key, limit, now=now):
                return Checked(within_quota=False)
        if wanted.cache is None:
            return Checked()
        return Checked(cached=await cache.get(wanted.cache))


# KEYS: the replay key, the quota window's key, the cache key (each "" when not asked).
# ARGV: the replay window in seconds, "1" when this replica's memory already holds the id
# (a repeat: Redis remembers it too, nothing is counted), the quota window's TTL, the quota
# limit. Returns {first use 0/1, the count (-1: not counted), the cached value or false}.
_CHECK: Final = """
if KEYS[1] ~= '' then
  local first = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
  if not first or ARGV[2] == '1' then return {0, -1, false} end
end
local count = -1
if KEYS[2] ~= '' then
  count = redis.call('INCR', KEYS[2])
  if count == 1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
  if count > tonumber(ARGV[4]) then return {1, count, false} end
end
local value = false
if KEYS[3] ~= '' then value = redis.call('GET', KEYS[3]) end
return {1, count, value}
"""


class OneTrip:
    """The checks in one `EVALSHA` on the client and breaker the replay guard and the quota
    counter use (see the module docstring), falling back as they do."""

    def __init__(
        self,
        client: Redis,
        *,
        replay: FallbackReplayGuard,
        quota: FallbackQuotaCounter,
        breaker: CircuitBreaker | None,
        timeout_seconds: float,
    ) -> None:
        shared, memory = replay.primary, replay.fallback
        if not isinstance(shared, RedisReplayGuard) or not isinstance(memory, MemoryReplayGuard):
            raise TypeError("OneTrip needs a Redis replay guard falling back to memory")
        if not isinstance(quota.primary, RedisQuotaCounter) or not isinstance(
            quota.fallback, MemoryQuotaCounter
        ):
            raise TypeError("OneTrip needs a Redis quota counter falling back to memory")
        self.replay = replay
        self.quota = quota
        self._window = shared.window_seconds
        self._prefix = shared.key_prefix
        self._memory = memory
        self._script = client.register_script(_CHECK)
        self._breaker = breaker
        self._timeout = timeout_seconds

    async def check(self, wanted: Wanted, cache: AnswerCache, *, now: datetime) -> Checked:
        keys = ["", "", ""]
        seen_here = False
        if wanted.replay is not None:
            keys[0] = replay_key(*wanted.replay, self._prefix)
            seen_here = self._memory.seen(*wanted.replay)
        limit = 0
        if wanted.quota is not None:
            keys[1] = quota_key(wanted.quota[0], minute_of(now))
            limit = wanted.quota[1]
        if wanted.cache is not None:
            keys[2] = redis_key(wanted.cache)
        try:
            answer = await redis_call(
                self._breaker,
                lambda: self._script(
                    keys=keys,
                    args=[self._window, "1" if seen_here else "0", WINDOW_TTL_SECONDS, limit],
                ),
                self._timeout,
            )
        except (BreakerOpen, RedisError, OSError) as exc:  # TimeoutError is an OSError
            return await self._without_redis(wanted, cache, now, _why(exc))
        first, count, stored = answer
        if wanted.replay is not None:
            self.replay.answered()
            # Remembered here too (a repeat is still caught if Redis fails right after).
            first_here = seen_here or await self._memory.first_use(*wanted.replay)
            if not first or seen_here or not first_here:
                return Checked(first_use=False)
        if wanted.quota is not None:
            self.quota.answered()
            if int(count) > limit:
                return Checked(within_quota=False)
        if wanted.cache is None:
            return Checked()
        return Checked(cached=cache.opened(wanted.cache, stored if stored else None))

    async def _without_redis(
        self, wanted: Wanted, cache: AnswerCache, now: datetime, why: str
    ) -> Checked:
        """Each check as it falls back on its own: memory for the replay window and the quota
        (`ReplayUnavailable` when the memory guard is full), a miss for the cache."""
        if wanted.replay is not None:
            self.replay.unavailable(f"the replay check cannot be made: {why}")
            if not await self._memory.first_use(*wanted.replay):
                return Checked(first_use=False)
        if wanted.quota is not None:
            key, limit = wanted.quota
            self.quota.unavailable(f"cannot count the quota of agreement {key}: {why}")
            if not await self.quota.fallback.take(key, limit, now=now):
                return Checked(within_quota=False)
        if wanted.cache is None:
            return Checked()
        return Checked(cached=cache.opened(wanted.cache, None))


def _why(exc: BaseException) -> str:
    if isinstance(exc, BreakerOpen):
        return str(exc)
    return f"Redis did not answer ({type(exc).__name__})"
