"""The `CaseDeliverer`: sends the case events this region made to the other regions of each
case (`Peer.DeliverCaseEvents`), from the store's outbox, in the order they were made.

Exactly once between regions is at-least-once here and an idempotent receipt there: an event
leaves the outbox of a destination only once that destination answered that it holds it
durably; a call that fails, times out or is cut short by a stop is sent again later (the
receiver keeps an event once, by id, and answers it as held). So a peer that is down, or a
crash of either gateway, delays events and never loses or doubles them.

One loop (a lane) per destination with events waiting. A lane sends batches of at most
`max_events` events and about `max_bytes` bytes (attachments and JWS; an event larger than that
alone still goes, alone), oldest first, until the outbox of its destination reads empty; it
then ends. After a failure it pauses, `backoff_min` doubled per failure up to `backoff_max`,
each pause spread by ±`jitter` so that gateways which lost a peer together do not all call it
again in the same instant. A listener of the book (a local write) wakes the deliverer at once;
without one it looks at the outbox every `poll_seconds` (events written by another replica on
the same store, or left by a previous run).

The deliverer knows nothing of gRPC: it calls a `CaseChannel` (gateway.cases._peer has the one
over the peer pool), which raises `DeliveryFailed` for anything but an answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from gateway._errors import GatewayError

__all__ = [
    "BACKOFF_MAX_SECONDS",
    "BACKOFF_MIN_SECONDS",
    "MAX_DELIVERY_BYTES",
    "MAX_EVENTS_PER_DELIVERY",
    "POLL_SECONDS",
    "CaseChannel",
    "CaseDeliverer",
    "CaseOutbox",
    "DeliveryFailed",
    "DeliveryObserver",
    "OutboxBacklog",
    "OutgoingEvent",
    "wire_size",
]

log = logging.getLogger("tongban.cases")

MAX_EVENTS_PER_DELIVERY: Final = 64  # events in one Peer.DeliverCaseEvents call
MAX_DELIVERY_BYTES: Final = 12 * 1024 * 1024  # bytes of attachments and JWS in one call (~)
POLL_SECONDS: Final = 5.0  # the outbox is looked at this often without a wake
BACKOFF_MIN_SECONDS: Final = 0.5  # after a failed call to a destination, doubled up to the max
BACKOFF_MAX_SECONDS: Final = 60.0
JITTER: Final = 0.2  # each pause is spread uniformly by ± this fraction

# Outcomes of a call, as `DeliveryObserver.case_delivery` reports them (a metric label).
DELIVERED: Final = "delivered"  # the destination answered: it holds the events it named
FAILED: Final = "failed"  # not reached, timed out, or it could not take them now: retried
REFUSED: Final = "refused"  # it refused the oldest event for good: retried, and said loudly
OUTCOMES: Final = (DELIVERED, FAILED, REFUSED)


class OutgoingEvent(Protocol):
    """One event as it travels (the book's `Outgoing`): its id, its signed JWS, and the
    (content, signed_data) of each material or result it names."""

    @property
    def event_id(self) -> str: ...

    @property
    def jws(self) -> str: ...

    @property
    def attachments(self) -> Sequence[tuple[bytes, bytes]]: ...


def wire_size(event: OutgoingEvent) -> int:
    """Bytes of an event on the wire, about: its JWS and every attachment."""
    return len(event.jws) + sum(len(c) + len(s) for c, s in event.attachments)


class CaseOutbox(Protocol):
    """What the deliverer needs of the case book."""

    listeners: list[Callable[[], None]]  # called after each local write

    async def outgoing(self, destination: str, limit: int) -> Sequence[OutgoingEvent]:
        """Up to `limit` events not yet delivered to `destination`, oldest first, opened."""
        ...

    async def delivered(self, destination: str, event_ids: list[str]) -> None:
        """`destination` holds these events durably: they leave its outbox."""
        ...


class OutboxBacklog(Protocol):
    """What the deliverer reads of the case store (a `CaseStore` fits)."""

    async def outbox_backlog(self) -> dict[str, int]: ...


class DeliveryFailed(GatewayError):
    """A call to deliver events did not bring an answer. `index`: the destination refused the
    event at that position of the batch for good (its own reason: `reason`); the ones before it
    it may have taken, and they are sent again alone."""

    def __init__(self, why: str, *, reason: str = "", index: int | None = None) -> None:
        super().__init__(why)
        self.reason = reason
        self.index = index


class CaseChannel(Protocol):
    async def deliver(self, destination: str, events: Sequence[OutgoingEvent]) -> list[str]:
        """Send `events` to `destination`'s gateway; the ids it holds. Raises DeliveryFailed."""
        ...


class DeliveryObserver(Protocol):
    def case_delivery(self, region: str, outcome: str) -> None:
        """One call to `region`: DELIVERED, FAILED or REFUSED."""
        ...

    def case_backlog(self, backlog: Mapping[str, int]) -> None:
        """Events waiting per destination, as last read (a destination absent: none)."""
        ...


@dataclass
class DeliveryCounters:
    """Totals since start (for logs and tests)."""

    calls: int = 0  # calls answered
    delivered: int = 0  # events the destinations said they hold
    failures: int = 0  # calls that failed or were refused (retried)
    last_error: str = ""


@dataclass
class _Lane:
    destination: str
    task: asyncio.Task[None] | None = None
    again: bool = False  # woken while draining: read the outbox once more before ending
    pause: float = 0.0  # the last pause after a failure (0: the last call succeeded)


class CaseDeliverer:
    """Sends each destination its events, in order, until every outbox is empty; see the
    module docstring. `run()` until cancelled (or `close()`); `wake()` is the book's listener."""

    def __init__(
        self,
        *,
        outbox: CaseOutbox,
        backlog: OutboxBacklog,
        channel: CaseChannel,
        observer: DeliveryObserver | None = None,
        max_events: int = MAX_EVENTS_PER_DELIVERY,
        max_bytes: int = MAX_DELIVERY_BYTES,
        poll_seconds: float = POLL_SECONDS,
        backoff_min: float = BACKOFF_MIN_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        jitter: float = JITTER,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= max_events <= MAX_EVENTS_PER_DELIVERY:
            raise ValueError(f"max_events is 1 to {MAX_EVENTS_PER_DELIVERY}")
        if max_bytes < 1 or poll_seconds <= 0 or not 0 < backoff_min <= backoff_max:
            raise ValueError("max_bytes, poll_seconds and backoff_min..backoff_max are positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        self._outbox = outbox
        self._backlog = backlog
        self._channel = channel
        self._observer = observer
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.poll_seconds = poll_seconds
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.jitter = jitter
        self._rng = rng or random.SystemRandom()
        self._lanes: dict[str, _Lane] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self.counters = DeliveryCounters()
        self.backlog: dict[str, int] = {}  # events waiting per destination, as last read
        outbox.listeners.append(self.wake)

    @property
    def lanes(self) -> tuple[str, ...]:
        """The destinations being delivered to now."""
        return tuple(sorted(self._lanes))

    def wake(self) -> None:
        """Look at the outbox now (an event was written)."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled or closed: start a lane for each destination with events waiting,
        at once when woken, else every `poll_seconds`. Its lanes end with it."""
        try:
            while not self._closed:
                self._wake.clear()
                await self.look()
                try:
                    async with asyncio.timeout(self.poll_seconds):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            await self._stop_lanes()

    async def look(self) -> dict[str, int]:
        """Read the backlog; wake or start the lane of every destination with events waiting."""
        try:
            backlog = await self._backlog.outbox_backlog()
        except Exception as exc:  # the store is down: the events wait in it; look again later
            log.warning("cases: the outbox cannot be read (%s); retrying", type(exc).__name__)
            return self.backlog
        self._observe_backlog(backlog)
        for destination, waiting in backlog.items():
            if waiting <= 0 or self._closed:
                continue
            lane = self._lanes.get(destination)
            if lane is None:
                lane = self._lanes[destination] = _Lane(destination)
                lane.task = asyncio.create_task(
                    self._run_lane(lane), name=f"case-delivery-{destination}"
                )
            else:
                lane.again = True
        return backlog

    def _observe_backlog(self, backlog: Mapping[str, int]) -> None:
        self.backlog = {d: n for d, n in backlog.items() if n > 0}
        if self._observer is not None:
            self._observer.case_backlog(self.backlog)

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            while not self._closed:
                lane.again = False
                try:
                    drained = await self._drain(lane.destination)
                except Exception as exc:  # the store failed: the events wait in it
                    log.warning(
                        "cases: the outbox for region %s cannot be read or updated (%s: %s); "
                        "retrying",
                        lane.destination,
                        type(exc).__name__,
                        exc,
                    )
                    drained = False
                if drained:
                    lane.pause = 0.0
                    if not lane.again:
                        return  # nothing waits: the next write or look starts a new lane
                    continue
                await asyncio.sleep(self._next_pause(lane))
        finally:
            # No await between the last empty read and this: a wake after it finds no lane.
            if self._lanes.get(lane.destination) is lane:
                del self._lanes[lane.destination]

    def _next_pause(self, lane: _Lane) -> float:
        lane.pause = min(max(lane.pause * 2, self.backoff_min), self.backoff_max)
        spread = 1 + self.jitter * (2 * self._rng.random() - 1)
        return lane.pause * spread

    async def _drain(self, destination: str) -> bool:
        """Send `destination` its events until none waits: True; False after a failure."""
        limit = self.max_events
        while True:
            pending = await self._outbox.outgoing(destination, limit)
            if not pending:
                return True
            batch = self._bounded(pending)
            try:
                held = await self._channel.deliver(destination, batch)
            except DeliveryFailed as exc:
                if exc.index is not None and 0 < exc.index < len(batch):
                    limit = exc.index  # the ones before the refused event go first, alone
                    continue
                self._failed(destination, batch, exc)
                return False
            limit = self.max_events
            sent, answered = [e.event_id for e in batch], set(held)
            taken = [i for i in sent if i in answered]
            if taken:
                await self._outbox.delivered(destination, taken)
            self._count(destination, DELIVERED)
            self.counters.calls += 1
            self.counters.delivered += len(taken)
            if len(taken) < len(sent):
                why = f"it answered {len(taken)} of the {len(sent)} events sent as held"
                self._failed(destination, batch, DeliveryFailed(why), counted=True)
                return False

    def _bounded(self, pending: Sequence[OutgoingEvent]) -> list[OutgoingEvent]:
        """The oldest events, at most `max_events` and `max_bytes` (the first always goes)."""
        batch, size = [pending[0]], wire_size(pending[0])
        for event in pending[1 : self.max_events]:
            size += wire_size(event)
            if size > self.max_bytes:
                break
            batch.append(event)
        return batch

    def _count(self, destination: str, outcome: str) -> None:
        if self._observer is not None:
            self._observer.case_delivery(destination, outcome)

    def _failed(
        self,
        destination: str,
        batch: list[OutgoingEvent],
        exc: DeliveryFailed,
        counted: bool = False,
    ) -> None:
        refused = exc.index == 0
        if not counted:
            self._count(destination, REFUSED if refused else FAILED)
        self.counters.failures += 1
        self.counters.last_error = str(exc)
        if refused:
            log.error(
                "cases: region %s refuses event %s (%s: %s); it stays waiting, with every later "
                "event for that region, until the cause is fixed",
                destination,
                batch[0].event_id,
                exc.reason or "-",
                exc,
            )
        else:
            log.warning(
                "cases: %d events for region %s not delivered (%s); retrying",
                len(batch),
                destination,
                exc,
            )

    async def _stop_lanes(self) -> None:
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in lanes:
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        self._lanes.clear()

    async def close(self) -> None:
        """Stop: calls in flight are cut short (sent again by the next start: the receiver
        holds each event once); what waits stays in the store's outbox."""
        self._closed = True
        self._wake.set()
        await self._stop_lanes()
        if self.wake in self._outbox.listeners:
            self._outbox.listeners.remove(self.wake)
