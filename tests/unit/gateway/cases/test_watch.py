"""One follower of the store's arrival order feeds every Watch stream of a gateway
(`gateway.cases._watch`): over a book double whose store counts its reads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.cases import CaseCaller
from gateway.cases import _watch as watch_module
from gateway.cases._watch import CaseWatchers, Watcher
from gateway.errors import Refusal

SC = "510000"
WINDOW = CaseCaller(SC, "sc.window")
OTHER = CaseCaller(SC, "sc.other")


@dataclass(frozen=True)
class Stored:
    event_id: str
    case_id: str
    position: int


@dataclass(frozen=True)
class Summary:
    applicant: str = ""
    agencies: tuple[str, ...] = ("sc.window",)
    ready_regions: tuple[str, ...] = ()


@dataclass
class Store:
    events: list[Stored] = field(default_factory=list)
    reads: int = 0
    broken: bool = False

    async def changes(self, after: int, limit: int) -> list[Stored]:
        self.reads += 1
        if self.broken:
            raise Refusal("AUDIT_UNAVAILABLE", "the case store did not answer")
        return [e for e in self.events if e.position > after][:limit]

    async def summary(self, case_id: str) -> Summary:
        return Summary()


@dataclass
class Book:
    store: Store = field(default_factory=Store)
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def add(self, case_id: str) -> None:
        position = len(self.store.events) + 1
        self.store.events.append(Stored(f"e{position}", case_id, position))
        for listener in list(self.listeners):
            listener()

    async def view(self, case_id: str) -> str:
        return f"view of {case_id}"

    def opened(self, stored: Stored) -> str:
        return stored.event_id


async def settle() -> None:
    """Let the follower run until it waits (the double never suspends on I/O)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def taken(watcher: Watcher, count: int) -> list[Any]:
    return [(await asyncio.wait_for(watcher.next(), 2))[1] for _ in range(count)]


async def test_one_read_per_change_feeds_every_watcher_and_none_without_watchers() -> None:
    book = Book()
    watchers = CaseWatchers(book, poll_seconds=60.0)  # type: ignore[arg-type]
    every = [watchers.follow(WINDOW, "", 0) for _ in range(5)]
    one_case = watchers.follow(WINDOW, "c-2", 0)
    unseen = watchers.follow(OTHER, "", 0)
    await settle()
    before = book.store.reads
    book.add("c-1")
    book.add("c-2")
    await settle()
    assert book.store.reads - before == 1  # one read for seven streams
    for w in every:
        assert await taken(w, 2) == ["e1", "e2"]
    assert await taken(one_case, 1) == ["e2"]
    assert unseen.after == 2  # read past
    assert not unseen._waiting  # shown nothing
    for w in [*every, one_case, unseen]:
        watchers.leave(w)
    assert book.listeners == []
    before = book.store.reads
    book.add("c-1")
    await asyncio.sleep(0.05)
    assert book.store.reads == before  # nobody watches: nothing is read


async def test_a_watcher_that_joins_behind_the_others_still_sees_every_change() -> None:
    book = Book()
    watchers = CaseWatchers(book, poll_seconds=60.0)  # type: ignore[arg-type]
    first = watchers.follow(WINDOW, "", 0)
    book.add("c-1")
    book.add("c-1")
    await settle()
    late = watchers.follow(WINDOW, "", 1)  # its first messages showed the case after e1
    book.add("c-1")
    assert await taken(late, 2) == ["e2", "e3"]
    assert await taken(first, 3) == ["e1", "e2", "e3"]
    watchers.leave(first)
    watchers.leave(late)


async def test_a_slow_reader_is_left_behind_then_sent_the_rest_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch_module, "MAX_WATCH_BACKLOG", 2)
    book = Book()
    watchers = CaseWatchers(book, poll_seconds=0.01)  # type: ignore[arg-type]
    slow = watchers.follow(WINDOW, "", 0)
    quick = watchers.follow(WINDOW, "", 0)
    for _ in range(5):
        book.add("c-1")
    assert await taken(quick, 5) == ["e1", "e2", "e3", "e4", "e5"]
    assert len(slow._waiting) == 2  # held no more than its bound
    assert await taken(slow, 5) == ["e1", "e2", "e3", "e4", "e5"]
    watchers.leave(slow)
    watchers.leave(quick)


async def test_a_failed_read_ends_the_streams_with_its_refusal() -> None:
    book = Book()
    watchers = CaseWatchers(book, poll_seconds=60.0)  # type: ignore[arg-type]
    watcher = watchers.follow(WINDOW, "", 0)
    book.add("c-1")
    await settle()
    book.store.broken = True
    book.add("c-1")
    assert await taken(watcher, 1) == ["e1"]  # what was handed before still comes first
    with pytest.raises(Refusal) as caught:
        await asyncio.wait_for(watcher.next(), 2)
    assert caught.value.reason == "AUDIT_UNAVAILABLE"
    watchers.leave(watcher)
    assert book.listeners == []
