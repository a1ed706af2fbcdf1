"""The Watch streams of one gateway, fed by one follower of the store's arrival order.

Each `Cases.Watch` stream is a `Watcher`: who watches, which case (or every case it sees), the
arrival position it has been sent up to, and the updates waiting for it. `CaseWatchers` runs one
task for all of them while there is at least one: it reads the changes after the lowest watcher
position (`CaseStore.changes`) every `poll_seconds`, and at once when the book writes here (its
`listeners`; a change made by a replica sharing the store shows at the next poll), reads each
changed case once (summary, events) and hands the case and the event to every watcher that may
see it. With no watcher the task stops and nothing is read.

A watcher whose client reads slowly holds at most MAX_WATCH_BACKLOG updates: past that it is
left where it is, and the next reads start from its position again (it sees every change, in
order, later; the others are not held back). A read that fails (AUDIT_UNAVAILABLE) ends the
streams of the watchers it was for, as it did when each stream read for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Final

from gateway.cases._book import CHANGES_PAGE, CaseBookBase
from gateway.cases._calls import CaseCaller, may_see
from gateway.cases._fold import CaseView
from gateway.cases._model import CaseEvent
from gateway.cases._store import StoredEvent

__all__ = ["MAX_WATCH_BACKLOG", "CaseWatchers", "Watcher"]

MAX_WATCH_BACKLOG: Final = 1000  # updates waiting for one stream's client


class Watcher:
    """One Watch stream: what it sees, how far it has been sent, what waits for it."""

    def __init__(self, caller: CaseCaller, case_id: str, after: int) -> None:
        self.caller = caller
        self.case_id = case_id
        self.after = after  # the arrival position it has been handed every change up to
        self.error: BaseException | None = None
        self._waiting: deque[tuple[CaseView, CaseEvent]] = deque()
        self._ready = asyncio.Event()

    def wants(self, stored: StoredEvent) -> bool:
        return stored.position > self.after and self.case_id in ("", stored.case_id)

    @property
    def full(self) -> bool:
        return len(self._waiting) >= MAX_WATCH_BACKLOG

    def hand(self, update: tuple[CaseView, CaseEvent] | None, position: int) -> None:
        if update is not None:
            self._waiting.append(update)
            self._ready.set()
        self.after = position

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._ready.set()

    async def next(self) -> tuple[CaseView, CaseEvent]:
        """The next update (the case as it then was, the event); the read's error once every
        update handed before it was taken."""
        while not self._waiting:
            if self.error is not None:
                raise self.error
            self._ready.clear()
            await self._ready.wait()
        return self._waiting.popleft()


class CaseWatchers:
    """Every Watch stream of one gateway's case book, and the one task that feeds them."""

    def __init__(self, book: CaseBookBase, poll_seconds: float) -> None:
        self._book = book
        self._poll = poll_seconds
        self._watchers: set[Watcher] = set()
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def follow(self, caller: CaseCaller, case_id: str, after: int) -> Watcher:
        """A new watcher, handed the changes after arrival position `after`."""
        watcher = Watcher(caller, case_id, after)
        self._watchers.add(watcher)
        if self._task is None:
            self._book.listeners.append(self._woken.set)
            self._task = asyncio.create_task(self._run(), name="case watch follower")
        self._woken.set()  # read what arrived since `after` now, not at the next poll
        return watcher

    def leave(self, watcher: Watcher) -> None:
        """The stream ended; with no stream left the follower stops (nothing is read)."""
        self._watchers.discard(watcher)
        if not self._watchers and self._task is not None:
            self._task.cancel()
            self._task = None
            with contextlib.suppress(ValueError):
                self._book.listeners.remove(self._woken.set)

    async def _run(self) -> None:
        while self._watchers:
            self._woken.clear()
            if not await self._read_once():  # a full page: read on at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), self._poll)

    async def _read_once(self) -> bool:
        """Hand out the changes after the lowest watcher position; False once none is left."""
        watchers = [w for w in self._watchers if w.error is None]
        if not watchers:
            return False
        try:
            changes = await self._book.store.changes(min(w.after for w in watchers), CHANGES_PAGE)
            left_behind: set[Watcher] = set()  # full: handed nothing more in this read
            for stored in changes:
                wanting = [w for w in watchers if w not in left_behind and w.wants(stored)]
                left_behind.update(w for w in wanting if w.full)
                for w in watchers:  # the positions of those that skip this change move on
                    if w not in left_behind and not w.wants(stored):
                        w.after = max(w.after, stored.position)
                wanting = [w for w in wanting if not w.full]
                if wanting:
                    await self._hand(stored, wanting)
        except Exception as exc:  # the store's refusal ends the streams it was read for
            for w in watchers:
                w.fail(exc)
            return False
        return len(changes) == CHANGES_PAGE

    async def _hand(self, stored: StoredEvent, watchers: list[Watcher]) -> None:
        summary = await self._book.store.summary(stored.case_id)
        view = await self._book.view(stored.case_id) if summary is not None else None
        event = self._book.opened(stored) if view is not None else None
        for w in watchers:
            if summary is not None and view is not None and event is not None:
                seen = may_see(summary, w.caller)
                w.hand((view, event) if seen else None, stored.position)
            else:
                w.hand(None, stored.position)
