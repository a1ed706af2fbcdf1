"""When Redis cannot answer, the replay window and quotas fall back to this replica's memory
(invariant 4: the gateway keeps answering) and come back to Redis by themselves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.quota import FallbackQuotaCounter, MemoryQuotaCounter, QuotaUnavailable
from gateway.replay import FallbackReplayGuard, MemoryReplayGuard, ReplayUnavailable

NOW = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


class Flaky:
    """A primary that fails while `down` is set, and otherwise delegates."""

    def __init__(self, inner: object, error: type[Exception]) -> None:
        self.inner = inner
        self.error = error
        self.down = False

    async def first_use(self, agency: str, request_id: str) -> bool:
        if self.down:
            raise self.error("redis is down")
        return await self.inner.first_use(agency, request_id)  # type: ignore[attr-defined,no-any-return]

    async def take(self, agreement_id: str, limit_per_minute: int, *, now: datetime) -> bool:
        if self.down:
            raise self.error("redis is down")
        return await self.inner.take(agreement_id, limit_per_minute, now=now)  # type: ignore[attr-defined,no-any-return]


async def test_replay_falls_back_and_still_catches_repeats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary = Flaky(MemoryReplayGuard(600, lambda: NOW), ReplayUnavailable)
    guard = FallbackReplayGuard(primary, MemoryReplayGuard(600, lambda: NOW))  # type: ignore[arg-type]
    assert await guard.first_use("sc.hrss", "r1") is True
    primary.down = True
    assert await guard.first_use("sc.hrss", "r1") is False  # remembered locally before the outage
    assert await guard.first_use("sc.hrss", "r2") is True
    assert await guard.first_use("sc.hrss", "r2") is False
    assert guard.degraded
    primary.down = False
    assert await guard.first_use("sc.hrss", "r3") is True
    assert not guard.degraded
    assert "falls back" in caplog.text
    assert "shared in Redis again" in caplog.text


async def test_quota_falls_back_to_a_local_count() -> None:
    primary = Flaky(MemoryQuotaCounter(), QuotaUnavailable)
    quota = FallbackQuotaCounter(primary, MemoryQuotaCounter())  # type: ignore[arg-type]
    assert await quota.take("A", 2, now=NOW)
    primary.down = True
    assert [await quota.take("A", 2, now=NOW) for _ in range(3)] == [True, True, False]
    assert quota.degraded
    primary.down = False
    # Back on Redis's own count, which saw one take before the outage.
    assert [await quota.take("A", 2, now=NOW) for _ in range(2)] == [True, False]
    assert not quota.degraded
