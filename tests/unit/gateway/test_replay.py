"""The request-id replay guard: against the real Redis (127.0.0.1:6379) and in memory, with the
same semantics; request id validation; failing closed when Redis is down.

The Redis tests use a key prefix unique to the run and delete only their own keys.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.replay import (
    KEY_PREFIX,
    REPLAY_WINDOW_SECONDS,
    MemoryReplayGuard,
    RedisReplayGuard,
    ReplayGuard,
    ReplayUnavailable,
    check_request_id,
    replay_key,
)

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RUN_PREFIX = f"{KEY_PREFIX}test-{uuid.uuid4().hex}:"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2, socket_connect_timeout=2)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{RUN_PREFIX}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def fresh_id() -> str:
    return f"req-{uuid.uuid4()}"


# -- request ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "x" * 128, str(uuid.uuid4()), "2026-11-21T08:00:00Z/case:42", "~!@#$%^&*()_+{}|"],
)
def test_good_request_ids(value: str) -> None:
    check_request_id(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param("with space", id="space"),
        pytest.param("tab\t", id="tab"),
        pytest.param("new\nline", id="newline"),
        pytest.param("nul\x00", id="nul"),
        pytest.param("del\x7f", id="del"),
        pytest.param("请求", id="non-ascii"),
        pytest.param("é", id="latin-1"),
        pytest.param(None, id="none"),
        pytest.param(42, id="number"),
        pytest.param(b"bytes", id="bytes"),
    ],
)
def test_bad_request_ids(value: object) -> None:
    with pytest.raises(ValueError, match="1 to 128 printable ASCII"):
        check_request_id(value)


def test_the_key_is_a_hash_of_agency_and_id() -> None:
    key = replay_key("zj.hrss", "req-1")
    assert re.fullmatch(r"tb:replay:[0-9a-f]{64}", key)
    assert "req-1" not in key
    assert "zj.hrss" not in key
    assert key == replay_key("zj.hrss", "req-1")
    assert key != replay_key("zj.hsa", "req-1")
    assert key != replay_key("zj.hrss", "req-2")
    # The separator keeps (agency, id) pairs apart.
    assert replay_key("zj.hrss", "a-b") != replay_key("zj.hrss-a", "b")


@pytest.mark.parametrize(("agency", "request_id"), [("", "req"), ("a\x00b", "req"), ("a", "")])
def test_the_key_refuses_bad_parts(agency: str, request_id: str) -> None:
    with pytest.raises(ValueError, match=r"agency|request id"):
        replay_key(agency, request_id)


# -- the same semantics, Redis and memory -----------------------------------------------------

GuardFactory = Callable[[int], ReplayGuard]


@pytest.fixture(params=["redis", "memory"])
def make_guard(request: pytest.FixtureRequest, redis_client: Redis) -> GuardFactory:
    if request.param == "redis":
        return lambda window: RedisReplayGuard(
            redis_client, window_seconds=window, key_prefix=RUN_PREFIX
        )
    return lambda window: MemoryReplayGuard(window, Clock())


async def test_first_use_then_repeat(make_guard: GuardFactory) -> None:
    guard = make_guard(REPLAY_WINDOW_SECONDS)
    assert isinstance(guard, ReplayGuard)
    request_id = fresh_id()
    assert await guard.first_use("zj.hrss", request_id) is True
    assert await guard.first_use("zj.hrss", request_id) is False
    assert await guard.first_use("zj.hrss", request_id) is False
    # Unique per agency: another agency may use the same id.
    assert await guard.first_use("sc.hrss", request_id) is True
    assert await guard.first_use("sc.hrss", request_id) is False
    assert await guard.first_use("zj.hrss", fresh_id()) is True


async def test_concurrent_uses_of_one_id_admit_exactly_one(make_guard: GuardFactory) -> None:
    guard = make_guard(REPLAY_WINDOW_SECONDS)
    request_id = fresh_id()
    results = await asyncio.gather(*(guard.first_use("zj.hrss", request_id) for _ in range(20)))
    assert sorted(results) == [False] * 19 + [True]


async def test_a_bad_request_id_is_refused_before_any_lookup(make_guard: GuardFactory) -> None:
    guard = make_guard(REPLAY_WINDOW_SECONDS)
    with pytest.raises(ValueError, match="request id"):
        await guard.first_use("zj.hrss", "has space")


# -- Redis ------------------------------------------------------------------------------------


async def test_redis_keys_hold_no_raw_id_and_live_for_the_window(redis_client: Redis) -> None:
    guard = RedisReplayGuard(redis_client, key_prefix=RUN_PREFIX)
    request_id = fresh_id()
    assert await guard.first_use("zj.hrss", request_id)
    keys = [key.decode() async for key in redis_client.scan_iter(match=f"{RUN_PREFIX}*")]
    assert keys == [replay_key("zj.hrss", request_id, RUN_PREFIX)]
    (key,) = keys
    assert re.fullmatch(re.escape(RUN_PREFIX) + r"[0-9a-f]{64}", key)
    assert request_id not in key
    assert 0 < await redis_client.ttl(key) <= REPLAY_WINDOW_SECONDS
    assert await redis_client.get(key) == b"1"
    # A repeat does not extend the window.
    await redis_client.expire(key, 100)
    assert not await guard.first_use("zj.hrss", request_id)
    assert await redis_client.ttl(key) <= 100


def test_the_default_key_prefix() -> None:
    guard = RedisReplayGuard(Redis(host=REDIS_HOST, port=REDIS_PORT))
    assert guard.key_prefix == "tb:replay:"
    assert guard.window_seconds == REPLAY_WINDOW_SECONDS == 600


async def test_redis_forgets_an_id_after_the_window(redis_client: Redis) -> None:
    guard = RedisReplayGuard(redis_client, window_seconds=1, key_prefix=RUN_PREFIX)
    request_id = fresh_id()
    assert await guard.first_use("zj.hrss", request_id)
    assert not await guard.first_use("zj.hrss", request_id)
    await asyncio.sleep(1.2)
    assert await guard.first_use("zj.hrss", request_id)
    assert not await guard.first_use("zj.hrss", request_id)


async def test_two_replicas_share_what_they_have_seen(redis_client: Redis) -> None:
    other = Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        first = RedisReplayGuard(redis_client, key_prefix=RUN_PREFIX)
        second = RedisReplayGuard(other, key_prefix=RUN_PREFIX)
        request_id = fresh_id()
        assert await first.first_use("zj.hrss", request_id)
        assert not await second.first_use("zj.hrss", request_id)
    finally:
        await other.aclose()


async def test_redis_down_fails_closed(free_port: Callable[[], int]) -> None:
    # No retries: the failure is the point (a deployment's client retries briefly, then fails).
    client = Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        guard = RedisReplayGuard(client, key_prefix=RUN_PREFIX)
        request_id = fresh_id()
        with pytest.raises(ReplayUnavailable, match="Redis did not answer") as caught:
            await guard.first_use("zj.hrss", request_id)
        assert request_id not in str(caught.value)
    finally:
        await client.aclose()


@pytest.mark.parametrize("window", [0, -1])
def test_redis_window_must_be_positive(window: int) -> None:
    with pytest.raises(ValueError, match="at least 1 second"):
        RedisReplayGuard(Redis(host=REDIS_HOST, port=REDIS_PORT), window_seconds=window)


# -- memory -----------------------------------------------------------------------------------


async def test_memory_forgets_an_id_after_the_window() -> None:
    clock = Clock()
    guard = MemoryReplayGuard(10, clock)
    assert await guard.first_use("zj.hrss", "req-1")
    clock.advance(9.9)
    assert not await guard.first_use("zj.hrss", "req-1")
    clock.advance(0.1)
    assert await guard.first_use("zj.hrss", "req-1")
    assert not await guard.first_use("zj.hrss", "req-1")


async def test_memory_sweeps_expired_ids() -> None:
    clock = Clock()
    guard = MemoryReplayGuard(10, clock)
    for i in range(5):
        assert await guard.first_use("zj.hrss", f"req-{i}")
        clock.advance(1)
    assert len(guard) == 5
    clock.advance(6)  # req-0 and req-1 have left the window (used at +0 s and +1 s; now +11 s)
    assert await guard.first_use("zj.hrss", "req-new")
    assert len(guard) == 4  # req-2..4 and req-new
    assert not await guard.first_use("zj.hrss", "req-4")


async def test_memory_is_bounded_and_fails_closed_when_full() -> None:
    clock = Clock()
    guard = MemoryReplayGuard(10, clock, max_entries=3)
    for i in range(3):
        assert await guard.first_use("zj.hrss", f"req-{i}")
    with pytest.raises(ReplayUnavailable, match="none has left the window"):
        await guard.first_use("zj.hrss", "req-3")
    assert not await guard.first_use("zj.hrss", "req-0")  # a repeat is still recognised
    clock.advance(10)
    assert await guard.first_use("zj.hrss", "req-3")
    assert len(guard) == 1
