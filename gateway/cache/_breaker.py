"""The circuit breaker in front of the cache backend, and the cache's counters."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["BreakerState", "CacheCounters", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]

_log = logging.getLogger("gateway.cache")


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
    """closed → open after `failure_threshold` consecutive failures, or at once on a connection
    failure; open → half_open once `open_seconds` have passed; half_open lets exactly one trial
    call through (the others are bypassed): its success closes the breaker, its failure opens
    it again for another `open_seconds`."""

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        open_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "answer cache backend",
        open_note: str = "answers are served uncached",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold is at least 1")
        if open_seconds < 0:
            raise ValueError("open_seconds is not negative")
        self.failure_threshold = failure_threshold
        self.name = name  # for the log: what it guards, and what happens while it is open
        self._open_note = open_note
        self.open_seconds = open_seconds
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._trial = False  # a half-open trial call is in flight
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self.rejected = 0
        self.errors = 0
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
            self._failures = 0
            self._trial = False

    def failure(self, *, connection: bool = False) -> None:
        self.errors += 1
        if self._state == "half_open":
            self._open("the trial call failed")
        elif self._state == "closed":
            self._failures += 1
            if connection:
                self._open("the backend is unreachable")
            elif self._failures >= self.failure_threshold:
                self._open(f"{self._failures} consecutive failures")

    def abandon(self) -> None:
        """The trial call was cancelled without an answer: let the next call try."""
        self._trial = False

    def _open(self, why: str) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._failures = 0
        self._trial = False
        self.opened += 1
        _log.warning(
            "%s bypassed for %.1f s: %s (%s)", self.name, self.open_seconds, why, self._open_note
        )
