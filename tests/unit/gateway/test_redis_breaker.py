"""One breaker for the gateway's Redis, shared by the replay window, the quotas and the answer
cache: a Redis that does not answer costs each use its bound until the
breaker opens, then no use calls it at all (each falls back or refuses at once)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.breaker import CircuitBreaker
from gateway.cache import AnswerCache, MemoryBackend
from gateway.quota import (
    FallbackQuotaCounter,
    MemoryQuotaCounter,
    QuotaUnavailable,
    RedisQuotaCounter,
)
from gateway.replay import (
    FallbackReplayGuard,
    MemoryReplayGuard,
    RedisReplayGuard,
    ReplayUnavailable,
)

NOW = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
BOUND = 0.02  # seconds: each call's bound in these tests


class FrozenRedis:
    """Stands for a `redis.asyncio.Redis` whose server was stopped (SIGSTOP): every command
    waits for an answer that does not come. Counts the commands sent."""

    def __init__(self) -> None:
        self.sent = 0
        self._never = asyncio.Event()

    async def _hang(self, *args: Any, **kwargs: Any) -> Any:
        self.sent += 1
        await self._never.wait()

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        return await self._hang()

    def register_script(self, script: str) -> Any:
        return self._hang

    def pipeline(self, transaction: bool = True) -> FrozenRedis._Pipeline:
        return FrozenRedis._Pipeline(self)

    class _Pipeline:
        def __init__(self, redis: FrozenRedis) -> None:
            self._redis = redis

        async def __aenter__(self) -> FrozenRedis._Pipeline:
            return self

        async def __aexit__(
            self,
            kind: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            return None

        def __getattr__(self, name: str) -> Any:
            return lambda *args, **kwargs: None  # xlen, xadd, sadd: queued

        async def execute(self) -> Any:
            return await self._redis._hang()


async def test_every_use_of_a_frozen_redis_stops_calling_it_once_the_breaker_opens() -> None:
    redis = FrozenRedis()
    client: Redis = redis  # type: ignore[assignment]
    breaker = CircuitBreaker(failure_threshold=2, open_seconds=60, name="Redis")
    replay = FallbackReplayGuard(
        RedisReplayGuard(client, breaker=breaker, timeout_seconds=BOUND), MemoryReplayGuard()
    )
    quota = FallbackQuotaCounter(
        RedisQuotaCounter(client, breaker=breaker, timeout_seconds=BOUND), MemoryQuotaCounter()
    )
    cache = AnswerCache(MemoryBackend(), key=b"k" * 32, key_id="k1", breaker=breaker)
    # (1) each use waits its bound and counts a timeout; the second opens the breaker
    assert await replay.first_use("sc.amr", "req-1")  # answered from memory
    assert await quota.take("A-1", 10, now=NOW)
    assert breaker.state == "open"
    assert breaker.timeouts == 2
    assert redis.sent == 2
    # (2) open: no use calls Redis (none can wait for it); each falls back, or refuses
    errors = breaker.errors
    assert not await replay.first_use("sc.amr", "req-1"), "the replica remembers the id"
    assert await replay.first_use("sc.amr", "req-2")
    assert await quota.take("A-1", 10, now=NOW)
    assert await cache.get(b"k" * 32) is None  # the answer cache: a miss, Redis not asked
    assert redis.sent == 2
    assert breaker.errors == errors
    assert breaker.bypassed == 4


async def test_the_redis_guards_raise_their_own_errors_while_the_breaker_is_open() -> None:
    redis = FrozenRedis()
    client: Redis = redis  # type: ignore[assignment]
    breaker = CircuitBreaker(failure_threshold=1, open_seconds=60, name="Redis")
    breaker.failure()
    with pytest.raises(ReplayUnavailable, match="breaker"):
        await RedisReplayGuard(client, breaker=breaker).first_use("sc.amr", "req-1")
    with pytest.raises(QuotaUnavailable, match="breaker"):
        await RedisQuotaCounter(client, breaker=breaker).take("A-1", 10, now=NOW)
    assert redis.sent == 0
