"""`OneTrip` (gateway/shared_checks.py) over a real Redis of its own: the replay check, the
quota count and the cache read in one script, in that order (a repeat counts nothing and reads
nothing, a request over quota reads nothing), what Redis holds, and the fallbacks while Redis
is down (memory replay window and quota, cache misses) and after it is back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from support import RedisServer

from gateway.audit import pseudonymize
from gateway.breaker import CircuitBreaker
from gateway.cache import AnswerCache, MemoryBackend, cache_key, redis_key
from gateway.quota import (
    FallbackQuotaCounter,
    MemoryQuotaCounter,
    RedisQuotaCounter,
    minute_of,
    quota_key,
)
from gateway.replay import FallbackReplayGuard, MemoryReplayGuard, RedisReplayGuard, replay_key
from gateway.shared_checks import Checked, OneTrip, SequentialChecks, Wanted

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 7, 10, 0, 30, tzinfo=UTC)
AGREEMENT = "ZJ-SC-SI-2026"
KEY = cache_key(
    provider_region="330000",
    dataset="si.participation",
    subject_pseudonym=pseudonymize("110101199003074512", b"audit-pseudonym-key-for-tests-32"),
    fields=["insured", "months"],
    purpose="SOCIAL-INSURANCE-TRANSFER",
)
ANSWER = b'{"insured":true,"months":120}'


class Parts:
    def __init__(self, url: str) -> None:
        self.client = Redis.from_url(
            url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
        )
        self.breaker = CircuitBreaker(name="redis", open_seconds=0.2)
        self.memory = MemoryReplayGuard(600, lambda: NOW)
        self.replay = FallbackReplayGuard(
            RedisReplayGuard(self.client, breaker=self.breaker), self.memory
        )
        self.counts = MemoryQuotaCounter()
        self.quota = FallbackQuotaCounter(
            RedisQuotaCounter(self.client, breaker=self.breaker), self.counts
        )
        self.cache = AnswerCache(MemoryBackend(), key=bytes(32), key_id="k1", breaker=self.breaker)
        self.checks = OneTrip(
            self.client,
            replay=self.replay,
            quota=self.quota,
            breaker=self.breaker,
            timeout_seconds=0.25,
        )

    async def check(self, request_id: str, limit: int = 10, cache: bool = True) -> Checked:
        wanted = Wanted(
            replay=("sc.hrss", request_id),
            quota=(AGREEMENT, limit),
            cache=KEY if cache else None,
        )
        return await self.checks.check(wanted, self.cache, now=NOW)

    async def count(self) -> int:
        value = await self.client.get(quota_key(AGREEMENT, minute_of(NOW)))
        return 0 if value is None else int(value)


@pytest.fixture
async def parts(redis_server: RedisServer) -> AsyncIterator[Parts]:
    made = Parts(redis_server.url)
    try:
        yield made
    finally:
        await made.client.aclose()


def _degraded(parts: Parts) -> tuple[bool, bool]:
    return parts.replay.degraded, parts.quota.degraded  # read afresh (mypy would narrow)


async def _keep(parts: Parts) -> None:
    """An answer in Redis under KEY, encrypted as the cache writes it."""
    backend = MemoryBackend()
    await AnswerCache(backend, key=bytes(32), key_id="k1", jitter=0).set(KEY, ANSWER, 60)
    stored = await backend.get(redis_key(KEY))
    assert stored is not None
    await parts.client.set(redis_key(KEY), stored)


async def test_one_script_checks_counts_and_reads_in_order(parts: Parts) -> None:
    await _keep(parts)
    first = await parts.check("r-1")
    assert first == Checked(first_use=True, within_quota=True, cached=ANSWER)
    assert await parts.count() == 1
    assert await parts.client.ttl(replay_key("sc.hrss", "r-1")) > 590
    assert 0 < await parts.client.ttl(quota_key(AGREEMENT, minute_of(NOW))) <= 120
    assert parts.memory.seen("sc.hrss", "r-1")  # remembered here too
    # a repeat: refused, nothing counted, nothing read
    repeat = await parts.check("r-1")
    assert repeat == Checked(first_use=False)
    assert await parts.count() == 1
    assert (parts.cache.counters.hits, parts.cache.counters.misses) == (1, 0)


async def test_over_quota_counts_and_reads_nothing(parts: Parts) -> None:
    await _keep(parts)
    assert (await parts.check("r-1", limit=1)).cached == ANSWER
    over = await parts.check("r-2", limit=1)
    assert over == Checked(first_use=True, within_quota=False)
    assert await parts.count() == 2  # counted, allowed or not
    assert (parts.cache.counters.hits, parts.cache.counters.misses) == (1, 0)


async def test_no_cache_key_no_read_and_a_miss_is_counted(parts: Parts) -> None:
    assert await parts.check("r-1", cache=False) == Checked()
    assert parts.cache.counters.misses == 0
    assert await parts.check("r-2") == Checked()
    assert parts.cache.counters.misses == 1


async def test_an_id_this_replica_holds_is_a_repeat_even_if_redis_forgot_it(
    parts: Parts,
) -> None:
    await parts.check("r-1")
    await parts.client.flushdb()  # a Redis restarted empty
    assert await parts.check("r-1") == Checked(first_use=False)
    assert await parts.count() == 0  # nothing counted for it
    assert await parts.client.exists(replay_key("sc.hrss", "r-1"))  # shared again


async def test_a_value_that_does_not_decrypt_is_a_miss(parts: Parts) -> None:
    await parts.client.set(redis_key(KEY), b"\x01\x02k1" + bytes(40))
    assert (await parts.check("r-1")).cached is None
    assert (parts.cache.counters.misses, parts.breaker.rejected) == (1, 1)


async def test_redis_down_falls_back_to_memory_and_back(
    parts: Parts, redis_server: RedisServer
) -> None:
    await _keep(parts)
    redis_server.kill()
    down = await parts.check("r-1", limit=2)
    assert down == Checked(first_use=True, within_quota=True, cached=None)  # answered uncached
    assert _degraded(parts) == (True, True)
    assert parts.cache.counters.misses == 1
    assert await parts.check("r-1") == Checked(first_use=False)  # memory catches the repeat
    assert await parts.check("r-2", limit=2) == Checked(cached=None)
    assert (await parts.check("r-3", limit=2)).within_quota is False  # counted in memory
    assert parts.breaker.state == "open"  # unreachable: Redis is not asked again for now
    redis_server.start()
    parts.breaker._opened_at -= 1  # past open_seconds
    await _keep(parts)
    back = await parts.check("r-4")
    assert back == Checked(cached=ANSWER)
    assert _degraded(parts) == (False, False)
    assert await parts.check("r-1") == Checked(first_use=False)  # seen while Redis was down


async def test_the_sequential_checks_give_the_same_outcomes(parts: Parts) -> None:
    await _keep(parts)
    sequential = SequentialChecks(parts.replay, parts.quota)
    cache = AnswerCache(MemoryBackend(), key=bytes(32), key_id="k1", jitter=0)
    await cache.set(KEY, ANSWER, 60)
    wanted = Wanted(replay=("sc.hrss", "s-1"), quota=(AGREEMENT, 1), cache=KEY)
    assert await sequential.check(wanted, cache, now=NOW) == Checked(cached=ANSWER)
    assert await sequential.check(wanted, cache, now=NOW) == Checked(first_use=False)
    again = Wanted(replay=("sc.hrss", "s-2"), quota=(AGREEMENT, 1), cache=KEY)
    assert await sequential.check(again, cache, now=NOW) == Checked(within_quota=False)
    assert await parts.count() == 2


def test_one_trip_needs_redis_guards_falling_back_to_memory() -> None:
    memory = MemoryReplayGuard()
    with pytest.raises(TypeError):
        OneTrip(
            Redis(),
            replay=FallbackReplayGuard(memory, memory),
            quota=FallbackQuotaCounter(MemoryQuotaCounter(), MemoryQuotaCounter()),
            breaker=None,
            timeout_seconds=0.25,
        )
