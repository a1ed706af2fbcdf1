"""The answer cache over a real Redis of its own (a `redis-server` started on a free port, with
no persistence; the machine's own Redis is never touched): round trip, what Redis holds (keys
and values carry no subject id and no plaintext), and Redis killed and restarted mid-test: no
call raises, misses are quick, the breaker opens, and hits resume by themselves."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.utils import HIREDIS_AVAILABLE
from support import Federation, RedisServer

from gateway._wiring import REDIS_MAX_CONNECTIONS
from gateway.audit import pseudonymize
from gateway.breaker import CircuitBreaker
from gateway.cache import AnswerCache, RedisBackend, cache_key
from gateway.demo.config import config_for_dev_pki
from gateway.server import Gateway

pytestmark = pytest.mark.integration  # redis-server is on every machine (Debian's package)

AES_KEY = bytes(range(32))
PSEUDONYM_KEY = b"audit-pseudonym-key-for-tests-32"
CITIZEN_ID = "110101199003074512"  # an 18-digit resident identity number (GB 11643)
SEALED = (
    b'{"payload":{"id":"110101199003074512","name":"\xe5\xbc\xa0\xe4\xb8\x89",'
    b'"hukou":"\xe5\x9b\x9b\xe5\xb7\x9d\xe7\x9c\x81\xe6\x88\x90\xe9\x83\xbd\xe5\xb8\x82"},'
    b'"signature":"c2lnbmF0dXJl"}'
)
OPEN_SECONDS = 0.5
RECOVERY_SECONDS = 60.0  # a hang guard for the cache to be used again, not a bound


def _key(subject_id: str = CITIZEN_ID, purpose: str = "social-insurance-transfer") -> bytes:
    return cache_key(
        provider_region="510000",
        dataset="hukou",
        subject_pseudonym=pseudonymize(subject_id, PSEUDONYM_KEY),
        fields=["name", "hukou"],
        purpose=purpose,
    )


def _cache(server: RedisServer) -> AnswerCache:
    return AnswerCache(
        RedisBackend(server.url),
        key=AES_KEY,
        key_id="k001",
        breaker=CircuitBreaker(open_seconds=OPEN_SECONDS),
    )


def _state(cache: AnswerCache) -> str:
    return cache.state  # read afresh: mypy would otherwise narrow the property


async def test_round_trip_and_what_redis_holds(redis_server: RedisServer) -> None:
    assert HIREDIS_AVAILABLE
    cache, other_replica = _cache(redis_server), _cache(redis_server)
    raw = Redis.from_url(redis_server.url)
    try:
        key = _key()
        assert await cache.get(key) is None
        await cache.set(key, SEALED, 60)
        assert await cache.get(key) == SEALED
        assert await other_replica.get(key) == SEALED, "replicas share the cache"
        await cache.set(_key(purpose="marriage-registration"), SEALED, 60)

        names = [name async for name in raw.scan_iter(match="*", count=100)]
        assert len(names) == 2
        pseudonym = pseudonymize(CITIZEN_ID, PSEUDONYM_KEY).encode()
        for name in names:
            assert re.fullmatch(rb"tb:c:[0-9a-f]{64}", name)
            assert CITIZEN_ID.encode() not in name
            assert pseudonym not in name
            stored = await raw.get(name)
            assert stored is not None
            assert SEALED not in stored
            assert CITIZEN_ID.encode() not in stored
            assert "张三".encode() not in stored
            ttl = await raw.pttl(name)
            assert 60_000 * 0.9 - 1000 <= ttl <= 60_000 * 1.1
    finally:
        await raw.aclose()
        await cache.close()
        await other_replica.close()


async def test_single_flight_through_redis(redis_server: RedisServer) -> None:
    cache = _cache(redis_server)
    loads = 0

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.02)
        return SEALED

    try:
        results = await asyncio.gather(*(cache.get_or_load(_key(), 60, load) for _ in range(50)))
        assert loads == 1
        assert {r for r, _ in results} == {SEALED}
        assert await cache.get_or_load(_key(), 60, load) == (SEALED, True)
    finally:
        await cache.close()


async def test_redis_killed_and_restarted(redis_server: RedisServer) -> None:
    cache = _cache(redis_server)
    key = _key()
    try:
        await cache.set(key, SEALED, 60)
        assert await cache.get(key) == SEALED
        assert _state(cache) == "closed"

        redis_server.kill()
        started = time.monotonic()
        for i in range(20):
            if i % 2:
                await cache.set(_key(purpose=f"p{i}"), SEALED, 60)
            else:
                assert await cache.get(key) is None
        assert _state(cache) == "open"
        # Each call failed at Redis or never went there: none waited on it beyond one attempt.
        assert cache.counters.errors + cache.counters.bypassed == 20
        assert cache.counters.errors >= 1
        assert cache.counters.bypassed >= 1

        redis_server.start()  # same port, empty (no persistence)
        recovered_after = None
        deadline = time.monotonic() + RECOVERY_SECONDS
        while time.monotonic() < deadline:
            await cache.set(key, SEALED, 60)
            if await cache.get(key) == SEALED:
                recovered_after = time.monotonic() - started
                break
            await asyncio.sleep(0.05)
        assert recovered_after is not None, "hits did not resume after the restart"
        assert _state(cache) == "closed"
        assert cache.counters.opened >= 1
    finally:
        await cache.close()


async def test_redis_hung_then_resumed(redis_server: RedisServer) -> None:
    """A Redis that stops answering (SIGSTOP: connections stay open, nothing comes back) costs
    at most the operation timeout per call until the breaker opens, then nothing."""
    cache = _cache(redis_server)
    key = _key()
    process = redis_server.process
    assert process is not None
    try:
        await cache.set(key, SEALED, 60)
        process.send_signal(signal.SIGSTOP)
        for i in range(20):
            if i % 2:
                await cache.set(key, SEALED, 60)
            else:
                assert await cache.get(key) is None
        assert _state(cache) == "open"
        # Only the calls that opened the breaker waited on the hung Redis; the rest skipped it.
        assert cache.counters.errors == cache.breaker.failure_threshold
        assert cache.counters.bypassed == 20 - cache.breaker.failure_threshold

        process.send_signal(signal.SIGCONT)
        await asyncio.sleep(OPEN_SECONDS)
        deadline = time.monotonic() + RECOVERY_SECONDS
        while await cache.get(key) != SEALED:
            assert time.monotonic() < deadline, "hits did not resume after SIGCONT"
            await asyncio.sleep(0.05)
        assert _state(cache) == "closed"
    finally:
        process.send_signal(signal.SIGCONT)
        await cache.close()


async def test_a_burst_of_requests_opens_a_bounded_number_of_redis_connections(
    redis_server: RedisServer, federation: Federation, tmp_path: Path
) -> None:
    # The replay window, quotas and report queue share one client: a burst of calls (up to the
    # gateway's 2,000 in flight) must wait for a pooled connection, not open one each and keep
    # them all open for the life of the process.
    config = config_for_dev_pki(
        federation.pki,
        "510000",
        listen="127.0.0.1:0",
        snapshot_file=federation.current,
        audit_db=tmp_path / "audit.db",
        redis_url=redis_server.url,
    )
    gateway = Gateway(config)
    try:
        assert gateway.query_path is not None
        replay = gateway.query_path.requester._replay
        firsts = await asyncio.gather(
            *(replay.first_use("sc.hrss", f"burst-{n}") for n in range(300))
        )
        assert all(firsts)
        async with Redis.from_url(redis_server.url) as probe:
            clients = (await probe.info("clients"))["connected_clients"]
        assert clients <= REDIS_MAX_CONNECTIONS + 1  # + the probe
    finally:
        await gateway.stop(0)
