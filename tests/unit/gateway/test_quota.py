"""Per-agreement quotas in fixed one-minute windows: the Redis counter against the real Redis at
127.0.0.1:6379 (shared by replicas, fails loudly when Redis is down) and the memory counter."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.policy import Decision
from gateway.quota import (
    WINDOW_TTL_SECONDS,
    MemoryQuotaCounter,
    QuotaCounter,
    QuotaUnavailable,
    RedisQuotaCounter,
    apply_quota,
    minute_of,
    quota_key,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
NOW = datetime(2026, 11, 21, 12, 0, 5, tzinfo=UTC)


def _agreement_id() -> str:
    return f"TEST-QUOTA-{secrets.token_hex(6)}"


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(REDIS_URL, socket_timeout=2)
    yield c
    await c.aclose()


@pytest.fixture
async def second_client() -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(REDIS_URL, socket_timeout=2)
    yield c
    await c.aclose()


@pytest.fixture(params=["redis", "memory"])
def counter(request: pytest.FixtureRequest, client: aioredis.Redis) -> QuotaCounter:
    if request.param == "redis":
        return RedisQuotaCounter(client)
    return MemoryQuotaCounter()


async def _takes(
    counter: QuotaCounter, agreement: str, limit: int, n: int, now: datetime
) -> list[bool]:
    return [await counter.take(agreement, limit, now=now) for _ in range(n)]


async def test_limit_takes_allowed_then_refused(counter: QuotaCounter) -> None:
    agreement = _agreement_id()
    assert await _takes(counter, agreement, 3, 5, NOW) == [True, True, True, False, False]
    # Later in the same minute: still refused.
    assert not await counter.take(agreement, 3, now=NOW + timedelta(seconds=50))


async def test_a_new_minute_resets(counter: QuotaCounter) -> None:
    agreement = _agreement_id()
    assert await _takes(counter, agreement, 2, 3, NOW) == [True, True, False]
    next_minute = NOW.replace(second=0) + timedelta(minutes=1)
    assert await _takes(counter, agreement, 2, 3, next_minute) == [True, True, False]
    # A window is a minute of Unix time whatever the time zone of `now`.
    same_minute = next_minute.astimezone(datetime.now().astimezone().tzinfo) + timedelta(seconds=59)
    assert minute_of(same_minute) == minute_of(next_minute)
    assert not await counter.take(agreement, 2, now=same_minute)


async def test_agreements_are_counted_apart(counter: QuotaCounter) -> None:
    first, second = _agreement_id(), _agreement_id()
    assert await _takes(counter, first, 1, 2, NOW) == [True, False]
    assert await counter.take(second, 1, now=NOW)


async def test_a_limit_below_one_refuses(counter: QuotaCounter) -> None:
    assert not await counter.take(_agreement_id(), 0, now=NOW)


async def test_naive_time_is_a_programming_error(counter: QuotaCounter) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await counter.take(_agreement_id(), 1, now=datetime(2026, 11, 21, 12, 0))


async def test_two_replicas_share_the_count(
    client: aioredis.Redis, second_client: aioredis.Redis
) -> None:
    one, two = RedisQuotaCounter(client), RedisQuotaCounter(second_client)
    agreement = _agreement_id()
    results = [await (one if i % 2 else two).take(agreement, 4, now=NOW) for i in range(6)]
    assert results == [True, True, True, True, False, False]


async def test_redis_key_and_expiry(client: aioredis.Redis) -> None:
    agreement = _agreement_id()
    await RedisQuotaCounter(client).take(agreement, 10, now=NOW)
    key = quota_key(agreement, minute_of(NOW))
    assert key == f"tb:quota:{agreement}:{int(NOW.timestamp()) // 60}"
    assert int(await client.get(key) or 0) == 1
    assert 0 < await client.ttl(key) <= WINDOW_TTL_SECONDS


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


async def test_redis_down_is_quota_unavailable() -> None:
    port = _closed_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    down = aioredis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        with pytest.raises(QuotaUnavailable, match="agreement CY-SI-2026"):
            await RedisQuotaCounter(down).take("CY-SI-2026", 10, now=NOW)
    finally:
        await down.aclose()


def _allowed(agreement: str, quota: int) -> Decision:
    return Decision(
        allowed=True,
        reason="",
        message="Allowed.",
        agreement_id=agreement,
        fields=frozenset({"name"}),
        registry_version=3,
        grpc_code="OK",
        quota_per_minute=quota,
    )


async def test_apply_quota_turns_the_excess_into_quota_exceeded() -> None:
    counter = MemoryQuotaCounter()
    agreement = _agreement_id()
    decision = _allowed(agreement, 1)
    assert await apply_quota(counter, decision, now=NOW) is decision
    over = await apply_quota(counter, decision, now=NOW)
    assert not over.allowed
    assert over.reason == "QUOTA_EXCEEDED"
    assert over.grpc_code == "RESOURCE_EXHAUSTED"
    assert over.agreement_id == agreement
    assert over.fields == frozenset()
    assert over.registry_version == 3
    assert agreement in over.message


async def test_apply_quota_leaves_refusals_uncounted() -> None:
    counter = MemoryQuotaCounter()
    refused = Decision(
        allowed=False,
        reason="NO_AGREEMENT",
        message="No agreement.",
        agreement_id="",
        fields=frozenset(),
        registry_version=3,
        grpc_code="PERMISSION_DENIED",
    )
    assert await apply_quota(counter, refused, now=NOW) is refused
    assert await counter.take("", 1, now=NOW)  # nothing was counted for the refusal
