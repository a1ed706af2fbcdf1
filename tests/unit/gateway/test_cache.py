"""The answer cache over the in-memory backend and fake failing backends: keys, encryption at
rest, TTL and jitter, single flight, and the circuit breaker (with a manual clock)."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Callable

import pytest

from gateway.audit import pseudonymize
from gateway.breaker import CircuitBreaker
from gateway.cache import (
    AnswerCache,
    BackendTimeout,
    BackendUnavailable,
    MemoryBackend,
    cache_key,
    redis_key,
)

AES_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PSEUDONYM_KEY = b"p" * 32
SUBJECT = "110101199003074512"
SEALED = b"eyJhbGciOiJFUzI1NiJ9.eyJuYW1lIjoi5byg5LiJIiwiaWQiOiIxMTAxMDExOTkwMDMwNzQ1MTIifQ.c2ln"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FlakyBackend(MemoryBackend):
    """A memory backend that raises `error` while it is set, and counts every call."""

    def __init__(self) -> None:
        super().__init__(clock=Clock())
        self.error: Exception | None = None
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def _enter(self) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error

    async def get(self, key: str) -> bytes | None:
        await self._enter()
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        await self._enter()
        await super().set(key, value, ttl_seconds)


class RecordingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.ttls: list[float] = []
        self.stored: dict[str, bytes] = {}

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self.ttls.append(ttl_seconds)
        self.stored[key] = value
        await super().set(key, value, ttl_seconds)


def key_for(
    subject: str = SUBJECT,
    *,
    provider_region: str = "510000",
    dataset: str = "hukou",
    fields: tuple[str, ...] = ("name", "address"),
    purpose: str = "social-insurance-transfer",
) -> bytes:
    return cache_key(
        provider_region=provider_region,
        dataset=dataset,
        subject_pseudonym=pseudonymize(subject, PSEUDONYM_KEY),
        fields=fields,
        purpose=purpose,
    )


def make_cache(
    backend: MemoryBackend | None = None,
    *,
    key_id: str = "a1b2",
    key: bytes = AES_KEY,
    breaker: CircuitBreaker | None = None,
    jitter: float = 0.1,
    previous_keys: dict[str, bytes] | None = None,
) -> AnswerCache:
    return AnswerCache(
        MemoryBackend() if backend is None else backend,
        key=key,
        key_id=key_id,
        breaker=breaker,
        jitter=jitter,
        previous_keys=previous_keys,
    )


def state(cache: AnswerCache) -> str:
    """The breaker's state, read afresh (a call in between may have changed it)."""
    return cache.state


# -- keys -------------------------------------------------------------------------------------


def test_key_is_32_bytes_and_redis_name_is_prefix_and_hex() -> None:
    key = key_for()
    assert len(key) == 32
    assert re.fullmatch(r"tb:c:[0-9a-f]{64}", redis_key(key))
    assert SUBJECT not in redis_key(key)
    with pytest.raises(ValueError, match="32 bytes"):
        redis_key(b"short")


def test_every_part_of_the_question_changes_the_key() -> None:
    table = list(
        itertools.product(
            ["510000", "440000"],
            ["hukou", "social-insurance"],
            [SUBJECT, "44030619851201002X"],
            [("name",), ("name", "address"), ("address",)],
            ["social-insurance-transfer", "marriage-registration"],
        )
    )
    keys = {
        key_for(subject, provider_region=region, dataset=dataset, fields=fields, purpose=purpose)
        for region, dataset, subject, fields, purpose in table
    }
    assert len(keys) == len(table)


def test_fields_are_a_set_and_the_encoding_is_unambiguous() -> None:
    assert key_for(fields=("a", "b")) == key_for(fields=("b", "a", "b"))
    assert key_for(fields=("a,b",)) != key_for(fields=("a", "b"))
    assert key_for(fields=("ab",)) != key_for(fields=("a", "b"))
    assert key_for(fields=()) != key_for(fields=("",))
    assert key_for(provider_region="51", dataset="0000hukou") != key_for(
        provider_region="510000", dataset="hukou"
    )


def test_a_raw_subject_id_is_refused() -> None:
    with pytest.raises(ValueError, match="pseudonym"):
        cache_key(
            provider_region="510000",
            dataset="hukou",
            subject_pseudonym=SUBJECT,
            fields=["name"],
            purpose="p",
        )


# -- round trip, encryption at rest -----------------------------------------------------------


async def test_round_trip_returns_the_exact_bytes() -> None:
    cache = make_cache()
    key = key_for()
    assert await cache.get(key) is None
    await cache.set(key, SEALED, 60)
    assert await cache.get(key) == SEALED
    assert cache.counters.hits == 1
    assert cache.counters.misses == 1


async def test_the_stored_value_is_encrypted_and_names_its_key_id() -> None:
    backend = RecordingBackend()
    cache = make_cache(backend)
    key = key_for()
    await cache.set(key, SEALED, 60)
    stored = backend.stored[redis_key(key)]
    assert SEALED not in stored
    assert SUBJECT.encode() not in stored
    assert stored[:6] == b"\x01\x04a1b2"
    assert len(stored) == 6 + 12 + len(SEALED) + 16
    await cache.set(key, SEALED, 60)
    assert backend.stored[redis_key(key)] != stored, "a fresh nonce per write"


@pytest.mark.parametrize("position", [0, 1, 3, 6, 17, 18, 40, -1])
async def test_a_tampered_value_is_a_miss(position: int) -> None:
    backend = RecordingBackend()
    cache = make_cache(backend)
    key = key_for()
    await cache.set(key, SEALED, 60)
    name = redis_key(key)
    stored = bytearray(backend.stored[name])
    stored[position] ^= 0x01
    await backend.set(name, bytes(stored), 60)
    assert await cache.get(key) is None
    assert cache.counters.rejected == 1


@pytest.mark.parametrize("garbage", [b"", b"\x01", b"\x01\x04a1b2", b"\x01\x04a1b2" + b"\x00" * 27])
async def test_truncated_values_are_misses(garbage: bytes) -> None:
    backend = MemoryBackend()
    cache = make_cache(backend)
    await backend.set(redis_key(key_for()), garbage, 60)
    assert await cache.get(key_for()) is None


async def test_another_key_id_or_key_is_a_miss_and_previous_keys_still_read() -> None:
    backend = MemoryBackend()
    key = key_for()
    await make_cache(backend, key_id="a1b2").set(key, SEALED, 60)
    assert await make_cache(backend, key_id="c3d4").get(key) is None
    assert await make_cache(backend, key_id="a1b2", key=OTHER_KEY).get(key) is None
    rotated = make_cache(backend, key_id="c3d4", key=OTHER_KEY, previous_keys={"a1b2": AES_KEY})
    assert await rotated.get(key) == SEALED


async def test_a_value_moved_to_another_key_is_a_miss() -> None:
    backend = RecordingBackend()
    cache = make_cache(backend)
    mine, theirs = key_for(), key_for(purpose="marriage-registration")
    await cache.set(mine, SEALED, 60)
    await backend.set(redis_key(theirs), backend.stored[redis_key(mine)], 60)
    assert await cache.get(theirs) is None
    assert await cache.get(mine) == SEALED


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        make_cache(key=b"short")
    with pytest.raises(ValueError, match="key id"):
        make_cache(key_id="not a key id")
    with pytest.raises(ValueError, match="jitter"):
        make_cache(jitter=1.0)


# -- TTL, jitter, memory bound ----------------------------------------------------------------


async def test_ttl_zero_is_not_cached() -> None:
    backend = RecordingBackend()
    cache = make_cache(backend)
    await cache.set(key_for(), SEALED, 0)
    assert backend.ttls == []
    assert await cache.get(key_for()) is None
    loads = 0

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        return SEALED

    assert await cache.get_or_load(key_for(), 0, load) == (SEALED, False)
    assert await cache.get_or_load(key_for(), 0, load) == (SEALED, False)
    assert loads == 2
    with pytest.raises(ValueError, match="negative"):
        await cache.set(key_for(), SEALED, -1)


async def test_values_expire_after_their_ttl() -> None:
    clock = Clock()
    cache = make_cache(MemoryBackend(clock=clock), jitter=0)
    await cache.set(key_for(), SEALED, 60)
    clock.advance(59.9)
    assert await cache.get(key_for()) == SEALED
    clock.advance(0.1)
    assert await cache.get(key_for()) is None


@pytest.mark.parametrize("jitter", [0.1, 0.2])
async def test_jitter_stays_within_bounds_and_spreads(jitter: float) -> None:
    backend = RecordingBackend()
    cache = make_cache(backend, jitter=jitter)
    for _ in range(500):
        await cache.set(key_for(), SEALED, 100)
    assert all(100 * (1 - jitter) <= t <= 100 * (1 + jitter) for t in backend.ttls)
    assert min(backend.ttls) < 100 * (1 - jitter / 2) < 100 * (1 + jitter / 2) < max(backend.ttls)


async def test_no_jitter_gives_the_exact_ttl() -> None:
    backend = RecordingBackend()
    await make_cache(backend, jitter=0).set(key_for(), SEALED, 30)
    assert backend.ttls == [30.0]


async def test_memory_backend_drops_the_least_recently_used() -> None:
    backend = MemoryBackend(max_entries=2)
    await backend.set("a", b"1", 60)
    await backend.set("b", b"2", 60)
    assert await backend.get("a") == b"1"  # a is now the most recently used
    await backend.set("c", b"3", 60)
    assert len(backend) == 2
    assert await backend.get("b") is None
    assert await backend.get("a") == b"1"
    assert await backend.get("c") == b"3"


# -- single flight ----------------------------------------------------------------------------


def counting_load(
    value: bytes = SEALED, *, error: Exception | None = None
) -> tuple[Callable[[], Awaitable[bytes]], list[int]]:
    calls = [0]

    async def load() -> bytes:
        calls[0] += 1
        await asyncio.sleep(0.01)
        if error is not None:
            raise error
        return value

    return load, calls


async def test_concurrent_misses_make_one_load() -> None:
    cache = make_cache()
    load, calls = counting_load()
    results = await asyncio.gather(*(cache.get_or_load(key_for(), 60, load) for _ in range(100)))
    assert calls == [1]
    assert {value for value, _ in results} == {SEALED}
    assert sum(not hit for _, hit in results) == 1
    assert cache.counters.coalesced == 99
    assert await cache.get_or_load(key_for(), 60, load) == (SEALED, True)
    assert calls == [1]


async def test_different_keys_load_separately() -> None:
    cache = make_cache()
    load, calls = counting_load()
    keys = [key_for(purpose=f"p{i}") for i in range(5)]
    await asyncio.gather(*(cache.get_or_load(k, 60, load) for k in keys for _ in range(10)))
    assert calls == [5]


async def test_a_load_error_reaches_every_waiter_and_is_not_cached() -> None:
    cache = make_cache()
    failing, calls = counting_load(error=LookupError("provider said no"))
    results = await asyncio.gather(
        *(cache.get_or_load(key_for(), 60, failing) for _ in range(100)), return_exceptions=True
    )
    assert calls == [1]
    assert all(isinstance(r, LookupError) for r in results)
    assert await cache.get(key_for()) is None
    load, again = counting_load()
    assert await cache.get_or_load(key_for(), 60, load) == (SEALED, False)
    assert again == [1]


async def test_a_cancelled_caller_does_not_cancel_the_load_others_wait_for() -> None:
    cache = make_cache()
    load, calls = counting_load()
    first = asyncio.create_task(cache.get_or_load(key_for(), 60, load))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.get_or_load(key_for(), 60, load))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == (SEALED, True)
    assert first.cancelled()
    assert calls == [1]
    assert await cache.get(key_for()) == SEALED


# -- backend failures and the circuit breaker -------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [BackendTimeout("t"), BackendUnavailable("u"), ConnectionRefusedError(), RuntimeError("x")],
)
async def test_backend_failures_are_misses_never_errors(error: Exception) -> None:
    backend = FlakyBackend()
    cache = make_cache(backend)
    backend.error = error
    assert await cache.get(key_for()) is None
    await cache.set(key_for(), SEALED, 60)
    load, _ = counting_load()
    assert await cache.get_or_load(key_for(purpose="x"), 60, load) == (SEALED, False)
    assert cache.counters.errors >= 1


async def test_breaker_opens_after_consecutive_failures_and_bypasses() -> None:
    clock = Clock()
    backend = FlakyBackend()
    cache = make_cache(backend, breaker=CircuitBreaker(failure_threshold=3, clock=clock))
    backend.error = BackendTimeout("slow")
    for expected in ("closed", "closed", "open"):
        assert await cache.get(key_for()) is None
        assert state(cache) == expected
    assert backend.calls == 3
    for _ in range(10):
        assert await cache.get(key_for()) is None
        await cache.set(key_for(), SEALED, 60)
    assert backend.calls == 3, "the backend is not called while the breaker is open"
    assert cache.counters.bypassed == 20
    assert cache.counters.errors == 3
    assert cache.counters.opened == 1


async def test_a_success_resets_the_consecutive_count() -> None:
    backend = FlakyBackend()
    cache = make_cache(backend, breaker=CircuitBreaker(failure_threshold=3, clock=Clock()))
    for _ in range(3):
        backend.error = BackendTimeout("slow")
        await cache.get(key_for())
        await cache.get(key_for())
        backend.error = None
        await cache.get(key_for())
    assert state(cache) == "closed"


async def test_a_connection_failure_opens_at_once() -> None:
    backend = FlakyBackend()
    cache = make_cache(backend, breaker=CircuitBreaker(clock=Clock()))
    backend.error = BackendUnavailable("refused")
    await cache.set(key_for(), SEALED, 60)
    assert state(cache) == "open"


async def test_half_open_trial_closes_on_success_and_reopens_on_failure() -> None:
    clock = Clock()
    backend = FlakyBackend()
    cache = make_cache(backend, breaker=CircuitBreaker(open_seconds=2.0, clock=clock))
    backend.error = BackendUnavailable("refused")
    await cache.get(key_for())
    assert state(cache) == "open"
    clock.advance(1.9)
    await cache.get(key_for())
    assert (state(cache), backend.calls) == ("open", 1)

    clock.advance(0.1)
    assert state(cache) == "half_open"
    await cache.get(key_for())  # the trial fails
    assert (state(cache), backend.calls) == ("open", 2)

    clock.advance(2.0)
    backend.error = None
    await cache.set(key_for(), SEALED, 60)  # the trial succeeds
    assert (state(cache), backend.calls) == ("closed", 3)
    assert await cache.get(key_for()) == SEALED


async def test_half_open_lets_one_trial_through() -> None:
    clock = Clock()
    backend = FlakyBackend()
    cache = make_cache(backend, breaker=CircuitBreaker(clock=clock))
    backend.error = BackendUnavailable("refused")
    await cache.get(key_for())
    clock.advance(2.0)
    backend.error = None
    backend.gate = asyncio.Event()
    trial = asyncio.create_task(cache.get(key_for()))
    await asyncio.sleep(0)
    assert await asyncio.gather(*(cache.get(key_for()) for _ in range(5))) == [None] * 5
    assert backend.calls == 2
    backend.gate.set()
    assert await trial is None
    assert state(cache) == "closed"


async def test_a_cancelled_trial_lets_the_next_call_try() -> None:
    clock = Clock()
    backend = FlakyBackend()
    cache = make_cache(backend, breaker=CircuitBreaker(clock=clock))
    backend.error = BackendUnavailable("refused")
    await cache.get(key_for())
    clock.advance(2.0)
    backend.error = None
    backend.gate = asyncio.Event()
    trial = asyncio.create_task(cache.get(key_for()))
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    backend.gate.set()
    await cache.get(key_for())
    assert backend.calls == 3
    assert state(cache) == "closed"
