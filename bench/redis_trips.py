"""What a request's shared-state checks cost a gateway: separate calls against one script.

Issue 20: a requester-side hit used to make three awaited Redis round trips (the replay
`SET NX`, the quota script, the cache `GET`), a forwarded hit two at each gateway. This times,
in one process and interleaved rounds, the CPU time (and the wall time) per request of

    separate   `FallbackReplayGuard.first_use` + `FallbackQuotaCounter.take` + `AnswerCache.get`
               (each its own round trip, as `SequentialChecks` makes them; the path before)
    one trip   `OneTrip.check` (one `EVALSHA`), the same checks, the same answer

with the same clients as a gateway (`gateway/_wiring.py`: a blocking pool without retries for
the replay window and quotas, `RedisBackend` for the cache), `--concurrency` requests in flight.
Every key it writes is under a prefix of its own, deleted at the end.

    .venv/bin/python bench/redis_trips.py [--redis URL] [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.breaker import CircuitBreaker
from gateway.cache import AnswerCache, RedisBackend, cache_key
from gateway.quota import FallbackQuotaCounter, MemoryQuotaCounter, RedisQuotaCounter
from gateway.replay import FallbackReplayGuard, MemoryReplayGuard, RedisReplayGuard
from gateway.shared_checks import OneTrip, SequentialChecks, SharedChecks, Wanted

NOW = datetime.now(UTC)
ANSWER = b"x" * 3200  # a sealed record's size


async def _timed(
    make: Callable[[int], Awaitable[object]], n: int, concurrency: int
) -> tuple[float, float]:
    """(CPU µs, wall µs) per request, `concurrency` in flight."""
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await make(i)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


def _report(figures: dict[str, list[tuple[float, float]]]) -> None:
    """The table: CPU and wall time per request of each way, and the CPU ratio."""
    if not figures["separate"]:
        print("NOT VALID: no round without fallbacks (Redis too slow)")
    else:
        print(f"{'':10} {'CPU µs/request':>16} {'wall µs/request':>16}   (median; min-max)")
        for name, rows in figures.items():
            cpu, wall = [r[0] for r in rows], [r[1] for r in rows]
            print(
                f"{name:10} {statistics.median(cpu):16,.0f} {statistics.median(wall):16,.0f}"
                f"   ({min(cpu):,.0f}-{max(cpu):,.0f}; {min(wall):,.0f}-{max(wall):,.0f})"
            )
        pairs = zip(figures["separate"], figures["one trip"], strict=True)
        ratio = statistics.median(b[0] / a[0] for a, b in pairs)
        print(f"one trip / separate, CPU, median of per-round ratios: {ratio:.2f}")


async def main(url: str, requests: int, rounds: int, concurrency: int, parts: set[str]) -> int:
    prefix = f"tb:bench-trips:{os.getpid()}:"
    client = redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=0.25, socket_timeout=0.25, retry=Retry(NoBackoff(), 0)
        )
    )
    breaker = CircuitBreaker(name="redis")
    replay = FallbackReplayGuard(
        RedisReplayGuard(client, key_prefix=prefix + "r:", breaker=breaker),
        MemoryReplayGuard(clock=lambda: NOW, max_entries=10_000_000),
    )
    quota = FallbackQuotaCounter(RedisQuotaCounter(client, breaker=breaker), MemoryQuotaCounter())
    backend = RedisBackend(url)
    cache = AnswerCache(backend, key=bytes(32), key_id="bench", breaker=breaker)
    key = cache_key(
        provider_region="500000", dataset="bench", subject_pseudonym="0" * 64, fields=["a"],
        purpose=prefix,
    )  # fmt: skip
    await cache.set(key, ANSWER, 600)
    agreement = prefix + "agreement"
    ways: dict[str, SharedChecks] = {
        "separate": SequentialChecks(replay, quota),
        "one trip": OneTrip(
            client, replay=replay, quota=quota, breaker=breaker, timeout_seconds=0.25
        ),
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    serial, dropped = 0, 0
    fell_back: list[int] = []
    for _ in range(rounds):
        fell_back.clear()
        row = {}
        for name, checks in ways.items():
            base = serial

            async def one(i: int, checks: SharedChecks = checks, base: int = base) -> None:
                wanted = Wanted(
                    replay=("bench", f"id-{base + i}") if "replay" in parts else None,
                    quota=(agreement, 10**12) if "quota" in parts else None,
                    cache=key if "cache" in parts else None,
                )
                checked = await checks.check(wanted, cache, now=NOW)
                hit = checked.cached == (ANSWER if "cache" in parts else None)
                if not (checked.first_use and checked.within_quota and hit):
                    fell_back.append(1)  # Redis did not answer in time: a fallback was timed

            row[name] = await _timed(one, requests, concurrency)
            serial += requests
        if fell_back:  # the round timed fallbacks, not Redis: left out
            dropped += 1
            await asyncio.sleep(breaker.open_seconds)  # the breaker lets Redis be asked again
            continue
        for name, figure in row.items():
            figures[name].append(figure)
    print(
        f"{' + '.join(sorted(parts))}: {requests} requests x {rounds} rounds each, "
        f"{concurrency} in flight, Redis {url}"
    )
    if dropped:
        print(f"{dropped} round(s) left out: Redis did not answer some requests in time")
    _report(figures)
    await client.aclose()
    await backend.close()
    sweeper = redis.asyncio.Redis.from_url(url)  # no short timeouts: SCAN of a large keyspace
    for pattern in (prefix + "*", "tb:quota:" + agreement + "*"):
        async for name in sweeper.scan_iter(match=pattern, count=1000):
            await sweeper.delete(name)
    await sweeper.delete("tb:c:" + key.hex())
    await sweeper.aclose()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=4000, help="per round and way")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--checks",
        default="replay,quota,cache",
        help="which checks a request makes (default replay,quota,cache: a requester-side hit; "
        "replay,quota: a forwarded query at the requester; quota,cache: the owner)",
    )
    args = parser.parse_args()
    wanted = set(args.checks.split(","))
    if not wanted or not wanted <= {"replay", "quota", "cache"}:
        parser.error("--checks: a comma-separated subset of replay,quota,cache")
    sys.exit(asyncio.run(main(args.redis, args.requests, args.rounds, args.concurrency, wanted)))
