"""The circuit breaker in front of each dependency (Redis, the audit store, each peer region, the
data system).

A breaker also keeps the answer cache's lookup totals (`CacheCounters`: the cache counts them on
the breaker it is given, and the metrics read a breaker and a cache alike).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from gateway._errors import GatewayError

__all__ = ["BREAKER_STATES", "BreakerOpen", "BreakerState", "CacheCounters", "CircuitBreaker"]

_T = TypeVar("_T")

BreakerState = Literal["closed", "open", "half_open"]
BREAKER_STATES: dict[BreakerState, int] = {"closed": 0, "open": 1, "half_open": 2}  # gauge values

_log = logging.getLogger("gateway.cache")  # the name its log lines have always had


class BreakerOpen(GatewayError):
    """The dependency is not called: its breaker is open (or its half-open trial is taken)."""


@dataclass(frozen=True, slots=True)
class CacheCounters:
    """Totals since start, for metrics.

    hits, misses   `AnswerCache.get` results (a miss includes every failure and bypass)
    coalesced      `get_or_load` callers served by another caller's load (single flight)
    rejected       stored values that did not decrypt (unknown key id, tampered, moved)
    errors         backend calls that failed (timeout, connection, protocol)
    bypassed       backend calls not made because the breaker was open
    opened         times the breaker opened
    """

    hits: int
    misses: int
    coalesced: int
    rejected: int
    errors: int
    bypassed: int
    opened: int


class CircuitBreaker:
    """closed → open after `failure_threshold` failures (errors or timeouts) with no success
    between them, all within the last `window_seconds`, or at once on a connection failure;
    open → half_open once `open_seconds` have passed; half_open lets exactly one trial call
    through (the others are bypassed): its success closes the breaker, its failure opens it
    again for another `open_seconds`.

    One instance per dependency, shared by every use of it (the gateway's Redis: replay window,
    quotas and answer cache), so that they agree on the dependency being down.
    While open, callers do not call the dependency: they refuse at once, or fall back.

    | state | call | outcome | next state |
    | --- | --- | --- | --- |
    | closed | made | success | closed (failures forgotten) |
    | closed | made | failure or timeout, the N-th within the window | open |
    | closed | made | connection refused | open |
    | open | bypassed (until open_seconds passed) | - | open |
    | half_open | the one trial | success | closed |
    | half_open | the one trial | failure or timeout | open |
    | half_open | the one trial | cancelled (`abandon`) | half_open (next call tries) |
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        open_seconds: float = 2.0,
        window_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "answer cache backend",
        open_note: str = "answers are served uncached",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold is at least 1")
        if open_seconds < 0:
            raise ValueError("open_seconds is not negative")
        if window_seconds <= 0:
            raise ValueError("window_seconds is positive")
        self.window_seconds = window_seconds
        self.failure_threshold = failure_threshold
        self.name = name  # for the log: what it guards, and what happens while it is open
        self._open_note = open_note
        self.open_seconds = open_seconds
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures: deque[float] = deque()  # times of failures since the last success
        self._opened_at = 0.0
        self._trial = False  # a half-open trial call is in flight
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self.rejected = 0
        self.errors = 0
        self.timeouts = 0  # of the errors, calls that did not answer within their bound
        self.bypassed = 0
        self.opened = 0

    @property
    def state(self) -> BreakerState:
        self._advance()
        return self._state

    @property
    def counters(self) -> CacheCounters:
        return CacheCounters(
            hits=self.hits,
            misses=self.misses,
            coalesced=self.coalesced,
            rejected=self.rejected,
            errors=self.errors,
            bypassed=self.bypassed,
            opened=self.opened,
        )

    def _advance(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self.open_seconds:
            self._state = "half_open"
            self._trial = False

    def allow(self) -> bool:
        """May a backend call be made now? False counts as bypassed. In half_open, True is
        given once; the caller must then report `success`, `failure` or `abandon`."""
        self._advance()
        if self._state == "closed":
            return True
        if self._state == "half_open" and not self._trial:
            self._trial = True
            return True
        self.bypassed += 1
        return False

    def success(self) -> None:
        if self._state == "half_open":
            _log.warning("%s is back: in use again", self.name)
        if self._state != "open":  # a late answer to a call made before opening changes nothing
            self._state = "closed"
            self._failures.clear()
            self._trial = False

    def failure(self, *, connection: bool = False, timeout: bool = False) -> None:
        """A call failed: it was refused or broke (`connection`: the dependency cannot be reached
        at all), or it did not answer within its bound (`timeout`), which counts the same."""
        self.errors += 1
        if timeout:
            self.timeouts += 1
        if self._state == "half_open":
            self._open("the trial call " + ("timed out" if timeout else "failed"))
        elif self._state == "closed":
            now = self._clock()
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.window_seconds:
                self._failures.popleft()
            if connection:
                self._open("it is unreachable")
            elif len(self._failures) >= self.failure_threshold:
                self._open(
                    f"{len(self._failures)} failures or timeouts in {self.window_seconds:g} s"
                )

    async def call(
        self,
        make: Callable[[], Awaitable[_T]],
        *,
        timeout_seconds: float,
        failed: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Exception),
        unreachable: Callable[[BaseException], bool] = lambda exc: False,
    ) -> _T:
        """`await make()` within `timeout_seconds`, through the breaker. Raises `BreakerOpen`
        without calling while open, `TimeoutError` when the bound passed (a failure), and
        whatever the call raised (a failure when `failed(exc)`, else the dependency answered;
        `unreachable(exc)` opens the breaker at once)."""
        if not self.allow():
            raise BreakerOpen(f"{self.name} is not called: its circuit breaker is open")
        try:
            async with asyncio.timeout(timeout_seconds):
                result = await make()
        except TimeoutError:
            self.failure(timeout=True)
            raise
        except asyncio.CancelledError:
            self.abandon()  # cancelled by the caller: no verdict on the dependency
            raise
        except BaseException as exc:
            if failed(exc):
                self.failure(connection=unreachable(exc))
            else:
                self.success()
            raise
        self.success()
        return result

    def abandon(self) -> None:
        """The trial call was cancelled without an answer: let the next call try."""
        self._trial = False

    def _open(self, why: str) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._failures.clear()
        self._trial = False
        self.opened += 1
        _log.warning(
            "%s bypassed for %.1f s: %s (%s)", self.name, self.open_seconds, why, self._open_note
        )
