"""`CircuitBreaker`: one breaker type for every dependency, driven by a fake clock; its
transitions as a table (one row per sequence of events and the state it leads to)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.breaker import BREAKER_STATES, BreakerOpen, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(events: str, breaker: CircuitBreaker, clock: Clock) -> list[bool]:
    """Play `events` (space separated): `f` failure, `t` timeout, `c` connection refused,
    `s` success, `a` allow (recorded), `x` abandon, `+N` clock forward N seconds."""
    allowed = []
    for event in events.split():
        if event == "f":
            breaker.failure()
        elif event == "t":
            breaker.failure(timeout=True)
        elif event == "c":
            breaker.failure(connection=True)
        elif event == "s":
            breaker.success()
        elif event == "a":
            allowed.append(breaker.allow())
        elif event == "x":
            breaker.abandon()
        elif event.startswith("+"):
            clock.now += float(event[1:])
        else:  # pragma: no cover - a typo in a row
            raise AssertionError(event)
    return allowed


# threshold 3, window 10 s, open 2 s
TABLE = [
    ("no failures", "a a a", "closed", [True, True, True]),
    ("two failures stay closed", "f f", "closed", []),
    ("three failures open", "f f f", "open", []),
    ("three timeouts open", "t t t", "open", []),
    ("timeouts and errors count together", "t f t", "open", []),
    ("a success forgets the failures", "f f s f f", "closed", []),
    ("failures outside the window are forgotten", "f f +11 f", "closed", []),
    ("failures spread inside the window open", "f +4 f +4 f", "open", []),
    ("a connection refused opens at once", "c", "open", []),
    ("open bypasses", "t t t a a", "open", [False, False]),
    ("half open after open_seconds: one trial", "t t t +2 a a", "half_open", [True, False]),
    ("the trial's success closes", "t t t +2 a s a a", "closed", [True, True, True]),
    ("the trial's timeout opens again", "t t t +2 a t a", "open", [True, False]),
    ("an abandoned trial lets the next call try", "t t t +2 a x a", "half_open", [True, True]),
    ("a late success while open changes nothing", "t t t s a", "open", [False]),
]


@pytest.mark.parametrize(
    ("events", "state", "allowed"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_transitions(events: str, state: str, allowed: list[bool]) -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_threshold=3, window_seconds=10.0, open_seconds=2.0, clock=clock, name="test"
    )
    assert run(events, breaker, clock) == allowed
    assert breaker.state == state
    assert BREAKER_STATES[breaker.state] == {"closed": 0, "open": 1, "half_open": 2}[state]


def test_counters() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    run("t f a a", breaker, clock)
    assert (breaker.errors, breaker.timeouts, breaker.opened, breaker.bypassed) == (2, 1, 1, 2)


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_threshold": 0}, {"open_seconds": -1.0}, {"window_seconds": 0.0}],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


async def test_call_bounds_the_dependency_and_counts_a_timeout() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    never = asyncio.Event()
    with pytest.raises(TimeoutError):
        await breaker.call(never.wait, timeout_seconds=0.01)
    assert breaker.state == "open"
    assert breaker.timeouts == 1
    called = False

    async def make() -> int:
        nonlocal called
        called = True
        return 1

    with pytest.raises(BreakerOpen):
        await breaker.call(make, timeout_seconds=1)
    assert not called, "an open breaker does not call the dependency"
    clock.now += 2
    assert await breaker.call(make, timeout_seconds=1) == 1
    assert breaker.state == "closed"


async def test_call_tells_failures_from_answers() -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=Clock())

    async def refuses() -> None:
        raise LookupError("the dependency answered: not found")

    with pytest.raises(LookupError):
        await breaker.call(
            refuses, timeout_seconds=1, failed=lambda exc: not isinstance(exc, LookupError)
        )
    assert breaker.state == "closed"
    with pytest.raises(LookupError):
        await breaker.call(refuses, timeout_seconds=1)
    assert breaker.state == "open"
