"""Per-agreement quotas (`Agreement.quota_per_minute`), counted in fixed one-minute windows.

A window is a minute of Unix time (`floor(epoch seconds / 60)`, so the same minute for every
replica whatever its time zone); every request counted in it, allowed or not, raises the count,
and a request is under quota while the count including it is at most the limit. Fixed windows
may let up to twice the limit through across a minute boundary; that is the accepted price of
one Redis round trip per request.

`RedisQuotaCounter` is the one shared by every replica of a region's gateway. When Redis fails
it raises `QuotaUnavailable`, and the gateway answers UNAVAILABLE: a quota is a term of the
agreement, so it is never skipped (unlike the cache, which is an optimisation and is bypassed
when Redis is down). `MemoryQuotaCounter` has the same semantics for one process (tests, a single
gateway without Redis).

Keys are `tb:quota:<agreement id>:<minute number>`; agreement ids are registry ids, not
personal data, so they may appear in keys.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.errors import GatewayError
from gateway.policy import Decision, grpc_code_for
from gateway.replay import REDIS_CALL_SECONDS, redis_call

__all__ = [
    "KEY_PREFIX",
    "WINDOW_SECONDS",
    "WINDOW_TTL_SECONDS",
    "FallbackQuotaCounter",
    "MemoryQuotaCounter",
    "QuotaCounter",
    "QuotaUnavailable",
    "RedisQuotaCounter",
    "apply_quota",
    "minute_of",
    "quota_key",
]

_log = logging.getLogger("tongban.gateway")

KEY_PREFIX = "tb:quota:"
WINDOW_SECONDS = 60  # one window is one minute
WINDOW_TTL_SECONDS = 120  # a window's key outlives its minute, then Redis drops it


class QuotaUnavailable(GatewayError):
    """The quota store cannot count; the gateway answers UNAVAILABLE rather than skip a quota."""


def minute_of(now: datetime) -> int:
    """The window (minutes since the Unix epoch) that `now`, which must be timezone-aware, is in."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("quota windows need a timezone-aware time")
    return int(now.timestamp()) // WINDOW_SECONDS


def quota_key(agreement_id: str, minute: int) -> str:
    return f"{KEY_PREFIX}{agreement_id}:{minute}"


class QuotaCounter(Protocol):
    async def take(self, agreement_id: str, limit_per_minute: int, *, now: datetime) -> bool:
        """Count one request against the agreement's window at `now`; True if the count,
        including this request, is within `limit_per_minute` (a limit below 1 refuses all)."""
        ...


# INCR the window's counter and, the first time, give it its expiry: one atomic command.
_TAKE = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class RedisQuotaCounter:
    """Counts in Redis: `INCR` of the window's key, `EXPIRE` on its first count, in one server-side
    script (`EVALSHA`, loaded once): one round trip and no MULTI/EXEC pipeline per request."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        breaker: CircuitBreaker | None = None,
        timeout_seconds: float = REDIS_CALL_SECONDS,
    ) -> None:
        self._client = client
        self._take = client.register_script(_TAKE)
        self._breaker = breaker  # the gateway's Redis breaker, shared with its other uses
        self._timeout = timeout_seconds

    async def take(self, agreement_id: str, limit_per_minute: int, *, now: datetime) -> bool:
        key = quota_key(agreement_id, minute_of(now))
        try:
            count = await redis_call(
                self._breaker,
                lambda: self._take(keys=[key], args=[WINDOW_TTL_SECONDS]),
                self._timeout,
            )
        except BreakerOpen as exc:
            raise QuotaUnavailable(
                f"cannot count the quota of agreement {agreement_id}: {exc}"
            ) from exc
        except (RedisError, OSError) as exc:
            raise QuotaUnavailable(
                f"cannot count the quota of agreement {agreement_id}: {type(exc).__name__}"
            ) from exc
        return int(count) <= limit_per_minute


class MemoryQuotaCounter:
    """Counts in this process; windows older than the previous minute are forgotten."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    async def take(self, agreement_id: str, limit_per_minute: int, *, now: datetime) -> bool:
        minute = minute_of(now)
        for stale in [k for k in self._counts if k[1] < minute - 1]:
            del self._counts[stale]
        key = (agreement_id, minute)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count <= limit_per_minute


async def apply_quota(counter: QuotaCounter, decision: Decision, *, now: datetime) -> Decision:
    """Count an allow decision against its agreement's quota.

    Returns the decision unchanged if it is a refusal or under quota, else a QUOTA_EXCEEDED
    refusal resting on the same agreement. Raises `QuotaUnavailable` when the counter cannot
    count.
    """
    if not decision.allowed:
        return decision
    if await counter.take(decision.agreement_id, decision.quota_per_minute, now=now):
        return decision
    return dataclasses.replace(
        decision,
        allowed=False,
        reason="QUOTA_EXCEEDED",
        message=(
            f"Agreement {decision.agreement_id} allows {decision.quota_per_minute} queries a "
            "minute and this minute's are used up."
        ),
        fields=frozenset(),
        grpc_code=grpc_code_for("QUOTA_EXCEEDED"),
    )


class FallbackQuotaCounter:
    """Redis first; while Redis cannot answer, this replica's own count (invariant 4). The
    quota then holds per replica, and the switch is logged each way."""

    def __init__(self, primary: QuotaCounter, fallback: QuotaCounter) -> None:
        self._primary = primary
        self._fallback = fallback
        self.degraded = False

    @property
    def primary(self) -> QuotaCounter:
        return self._primary

    @property
    def fallback(self) -> QuotaCounter:
        return self._fallback

    def unavailable(self, why: object) -> None:
        """The primary could not count (`why`): the fallback counts until it does again."""
        if not self.degraded:
            _log.warning("quotas fall back to this replica's count: %s", why)
            self.degraded = True

    def answered(self) -> None:
        """The primary counted (again)."""
        if self.degraded:
            _log.warning("quotas are shared in Redis again")
            self.degraded = False

    async def take(self, agreement_id: str, limit_per_minute: int, *, now: datetime) -> bool:
        try:
            allowed = await self._primary.take(agreement_id, limit_per_minute, now=now)
        except QuotaUnavailable as exc:
            self.unavailable(exc)
            return await self._fallback.take(agreement_id, limit_per_minute, now=now)
        self.answered()
        return allowed
