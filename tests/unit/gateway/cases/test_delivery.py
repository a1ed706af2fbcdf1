"""The case deliverer (gateway.cases._delivery) over the real memory case store, with a fake
peer that holds what it receives once by id (as the receiving book does), and the peer edge
(gateway.cases._peer): what it refuses before the book reads anything, and how the sending side
reads a peer's answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.audit import AuditLog, MemoryAuditStore
from gateway.breaker import BreakerOpen
from gateway.cases import (
    CaseChange,
    CaseSummary,
    MemoryCaseStore,
    StoredAttachment,
    StoredEvent,
)
from gateway.cases._delivery import (
    MAX_DELIVERY_BYTES,
    CaseDeliverer,
    DeliveryFailed,
    OutgoingEvent,
)
from gateway.cases._peer import (
    MAX_EVENT_JWS_CHARS,
    PeerCaseChannel,
    deliver_case_events,
    delivery_request,
)
from gateway.errors import Refusal
from gateway.identity import Caller, CallerKind
from gateway.peers import UnknownPeer
from tests.audit_contract import make_record
from tongban.v1 import cases_pb2, exchange_pb2

SC, CQ, ZJ = "510000", "500000", "330000"
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
FAST = {"backoff_min": 0.01, "backoff_max": 0.04, "poll_seconds": 0.05}


# -- a book over the real memory store --------------------------------------------------------------
@dataclass(frozen=True)
class Out:
    event_id: str
    jws: str
    attachments: list[tuple[bytes, bytes]] = field(default_factory=list)


class StoreBook:
    """The outbox half of a case book: events written to a MemoryCaseStore with their audit
    record (one transaction), opened for delivery; `listeners` called after each write."""

    def __init__(self, store: MemoryCaseStore) -> None:
        self.store = store
        self.listeners: list[Callable[[], None]] = []
        self.written = 0

    async def write(
        self, case_id: str, destinations: Sequence[str], attachment: bytes = b""
    ) -> str:
        self.written += 1
        seq = sum(1 for e in await self.store.events(case_id)) + 1
        event_id = f"{case_id}/{SC}/{seq}"
        digest = f"{self.written:064x}"
        stored = StoredEvent(
            event_id=event_id,
            case_id=case_id,
            origin=SC,
            seq=seq,
            sealed_jws=f"jws-of-{event_id}",
            attachments=(digest,) if attachment else (),
            received_at=T0,
        )
        summary = CaseSummary(
            case_id=case_id,
            matter_code="000125002100",
            window_region=SC,
            window_agency="sc.window",
            applicant="ab" * 32,
            state="open",
            submitted_at=T0,
            due_at=T0 + timedelta(days=20),
            updated_at=T0 + timedelta(seconds=self.written),
            agencies=("sc.window",),
            ready_regions=(CQ,),
            handling=(),
        )
        attachments = (StoredAttachment(digest, attachment),) if attachment else ()
        change = CaseChange(stored, attachments, summary, destinations=tuple(destinations))
        await self.store.write(make_record(self.written), change)
        for listener in self.listeners:
            listener()
        return event_id

    async def outgoing(self, destination: str, limit: int) -> list[OutgoingEvent]:
        found: list[OutgoingEvent] = []
        for event in await self.store.outbox(destination, limit):
            held = [await self.store.attachment(d) for d in event.attachments]
            found.append(
                Out(event.event_id, event.sealed_jws, [(a.sealed, b"") for a in held if a])
            )
        return found

    async def delivered(self, destination: str, event_ids: list[str]) -> None:
        await self.store.delivered(destination, event_ids)


def make_store() -> MemoryCaseStore:
    key = ed25519.Ed25519PrivateKey.generate()
    return MemoryCaseStore(
        AuditLog(MemoryAuditStore(), origin="audit.test", key=key, key_name="audit.test")
    )


# -- a peer that keeps each event once ---------------------------------------------------------------
class Peers:
    """The receiving gateways: each keeps an event once by id and answers the ids it holds."""

    def __init__(self) -> None:
        self.held: dict[str, list[str]] = {}
        self.calls: list[tuple[str, list[str], int]] = []  # destination, ids, bytes
        self.down: set[str] = set()
        self.refuse: dict[str, str] = {}  # event id -> reason (refused for good)
        self.hang: asyncio.Event | None = None  # kept, then the answer never comes
        self.answer_only: int | None = None  # answers this many ids only

    async def deliver(self, destination: str, events: Sequence[OutgoingEvent]) -> list[str]:
        ids = [e.event_id for e in events]
        size = sum(len(e.jws) + sum(len(c) + len(s) for c, s in e.attachments) for e in events)
        self.calls.append((destination, ids, size))
        if destination in self.down:
            raise DeliveryFailed("UNAVAILABLE PEER_UNAVAILABLE: down")
        held = self.held.setdefault(destination, [])
        for index, event_id in enumerate(ids):
            if event_id in self.refuse:
                raise DeliveryFailed("refused", reason=self.refuse[event_id], index=index)
            if event_id not in held:
                held.append(event_id)
        if self.hang is not None:
            await self.hang.wait()
        return ids if self.answer_only is None else ids[: self.answer_only]


class Observed:
    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str]] = []
        self.backlogs: list[dict[str, int]] = []

    def case_delivery(self, region: str, outcome: str) -> None:
        self.deliveries.append((region, outcome))

    def case_backlog(self, backlog: Any) -> None:
        self.backlogs.append(dict(backlog))


async def until(check: Callable[[], Awaitable[bool] | bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await asyncio.sleep(0.005)


async def empty(store: MemoryCaseStore) -> bool:
    return not await store.outbox_backlog()


def deliverer(book: StoreBook, peers: Peers, **kwargs: Any) -> CaseDeliverer:
    return CaseDeliverer(outbox=book, backlog=book.store, channel=peers, **{**FAST, **kwargs})


# -- the deliverer ----------------------------------------------------------------------------------
async def test_each_destination_gets_its_events_in_the_order_they_were_made() -> None:
    book, peers = StoreBook(make_store()), Peers()
    made: list[str] = []
    for i in range(12):  # two cases interleaved; CQ has a part in both, ZJ in case B only
        case, to = ("CASE-A", [CQ]) if i % 3 else ("CASE-B", [CQ, ZJ])
        made.append(await book.write(case, to))
    sending = deliverer(book, peers)
    task = asyncio.create_task(sending.run())
    await until(lambda: empty(book.store))
    await sending.close()
    await task
    assert peers.held[CQ] == made
    assert peers.held[ZJ] == [m for m in made if m.startswith("CASE-B")]
    assert sending.counters.delivered == len(made) + 4


async def test_a_call_carries_at_most_64_events_and_about_12_mib() -> None:
    book, peers = StoreBook(make_store()), Peers()
    for _ in range(150):
        await book.write("CASE-A", [CQ])
    sending = deliverer(book, peers)
    await sending.look()
    await until(lambda: empty(book.store))
    assert [len(ids) for _, ids, _ in peers.calls] == [64, 64, 22]

    big = b"x" * (5 * 1024 * 1024)
    peers.calls.clear()
    for _ in range(5):
        await book.write("CASE-B", [ZJ], attachment=big)
    await book.write("CASE-B", [ZJ], attachment=b"y" * (MAX_DELIVERY_BYTES + 1))  # alone
    await book.write("CASE-B", [ZJ])
    await sending.look()
    await until(lambda: empty(book.store))
    assert [len(ids) for _, ids, _ in peers.calls] == [2, 2, 1, 1, 1]
    assert all(size <= MAX_DELIVERY_BYTES for _, ids, size in peers.calls if len(ids) > 1)
    await sending.close()


async def test_a_peer_down_delays_its_events_then_gets_them_all_once() -> None:
    book, peers, seen = StoreBook(make_store()), Peers(), Observed()
    peers.down.add(CQ)
    made = [await book.write("CASE-A", [CQ, ZJ]) for _ in range(5)]
    sending = deliverer(book, peers, observer=seen)
    task = asyncio.create_task(sending.run())
    await until(lambda: sending.counters.failures >= 3)
    assert peers.held.get(CQ) is None
    assert await book.store.outbox_backlog() == {CQ: 5}  # nothing lost
    assert peers.held[ZJ] == made  # another destination is not held up
    made.append(await book.write("CASE-A", [CQ]))  # written while it is down
    peers.down.clear()
    await until(lambda: empty(book.store))
    assert peers.held[CQ] == made
    assert (CQ, "failed") in seen.deliveries
    assert seen.deliveries[-1] == (CQ, "delivered")
    assert seen.backlogs[0] == {CQ: 5, ZJ: 5}
    await sending.close()
    await task


async def test_the_pause_grows_per_failure_with_jitter_up_to_the_bound() -> None:
    book, peers = StoreBook(make_store()), Peers()
    sending = deliverer(book, peers, backoff_min=1.0, backoff_max=8.0, jitter=0.2)
    from gateway.cases._delivery import _Lane

    lane = _Lane(CQ)
    pauses = [sending._next_pause(lane) for _ in range(6)]
    for pause, base in zip(pauses, [1, 2, 4, 8, 8, 8], strict=True):
        assert base * 0.8 <= pause <= base * 1.2
    assert len(set(pauses[3:])) == 3  # spread, not the same instant every time


async def test_after_a_crash_a_new_deliverer_sends_what_was_not_acknowledged_once() -> None:
    book, peers = StoreBook(make_store()), Peers()
    made = [await book.write("CASE-A", [CQ]) for _ in range(3)]
    peers.hang = asyncio.Event()  # the peer keeps them, and the gateway dies before the answer
    first = deliverer(book, peers)
    await first.look()
    await until(lambda: len(peers.calls) == 1)
    await asyncio.wait_for(first.close(), 1.0)  # the call in flight is cut short
    assert await book.store.outbox_backlog() == {CQ: 3}
    peers.hang = None
    second = deliverer(book, peers)  # the next start, over the same store
    await second.look()
    await until(lambda: empty(book.store))
    assert [ids for _, ids, _ in peers.calls] == [made, made]  # sent twice
    assert peers.held[CQ] == made  # held once
    await second.close()


async def test_a_local_write_wakes_the_deliverer_at_once() -> None:
    book, peers = StoreBook(make_store()), Peers()
    sending = deliverer(book, peers, poll_seconds=60.0)
    task = asyncio.create_task(sending.run())
    await asyncio.sleep(0.05)  # idle: it looked once, and waits a minute for the next look
    made = await book.write("CASE-A", [CQ])
    await until(lambda: peers.held.get(CQ) == [made], seconds=1.0)
    await sending.close()
    await task
    assert sending.wake not in book.listeners


async def test_an_event_refused_for_good_stays_waiting_and_holds_the_later_ones() -> None:
    book, peers, seen = StoreBook(make_store()), Peers(), Observed()
    made = [await book.write("CASE-A", [CQ]) for _ in range(5)]
    peers.refuse[made[2]] = "CASE_EVENT_INVALID"
    sending = deliverer(book, peers, observer=seen)
    await sending.look()
    await until(lambda: seen.deliveries.count((CQ, "refused")) >= 2)
    assert peers.held[CQ] == made[:2]  # the ones before it went first, alone
    assert [e.event_id for e in await book.store.outbox(CQ, 10)] == made[2:]
    assert [ids for _, ids, _ in peers.calls[:2]] == [made, made[:2]]
    del peers.refuse[made[2]]  # fixed (the peer's registry caught up)
    await until(lambda: empty(book.store))
    assert peers.held[CQ] == made
    await sending.close()


async def test_only_the_events_the_peer_answered_leave_the_outbox() -> None:
    book, peers = StoreBook(make_store()), Peers()
    made = [await book.write("CASE-A", [CQ]) for _ in range(4)]
    peers.answer_only = 1
    sending = deliverer(book, peers, backoff_min=0.2, backoff_max=0.2)
    await sending.look()
    await until(lambda: sending.counters.failures >= 1)
    # the one answered left the outbox; the others wait, in order
    assert [e.event_id for e in await book.store.outbox(CQ, 10)] == made[1:]
    peers.answer_only = None
    await until(lambda: empty(book.store))
    assert peers.held[CQ] == made
    await sending.close()


async def test_close_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    book, peers = StoreBook(make_store()), Peers()
    peers.down.add(ZJ)  # one lane pausing after failures
    await book.write("CASE-A", [ZJ])
    peers.hang = asyncio.Event()  # one lane waiting for an answer
    await book.write("CASE-B", [CQ])
    sending = deliverer(book, peers, backoff_min=30.0, backoff_max=30.0)
    task = asyncio.create_task(sending.run())
    await until(lambda: len(peers.calls) == 2)
    assert sorted(sending.lanes) == sorted([ZJ, CQ])
    await asyncio.wait_for(sending.close(), 1.0)
    await asyncio.wait_for(task, 1.0)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert sending.lanes == ()
    assert book.listeners == []


async def test_cancelling_run_stops_its_lanes() -> None:
    before = asyncio.all_tasks()
    book, peers = StoreBook(make_store()), Peers()
    peers.hang = asyncio.Event()
    await book.write("CASE-A", [CQ])
    sending = deliverer(book, peers)
    task = asyncio.create_task(sending.run())
    await until(lambda: len(peers.calls) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


def test_bounds_are_checked() -> None:
    book, peers = StoreBook(make_store()), Peers()
    with pytest.raises(ValueError, match="max_events"):
        CaseDeliverer(outbox=book, backlog=book.store, channel=peers, max_events=65)
    with pytest.raises(ValueError, match="jitter"):
        CaseDeliverer(outbox=book, backlog=book.store, channel=peers, jitter=1.0)


# -- the sending side over the peer pool ------------------------------------------------------------
def rpc_error(code: grpc.StatusCode, reason: str = "", index: int | None = None) -> Exception:
    trailing: tuple[tuple[str, bytes], ...] = ()
    if reason:
        detail = any_pb2.Any()
        metadata = {"index": str(index)} if index is not None else {}
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tongban", metadata=metadata))
        status = status_pb2.Status(code=code.value[0], message="refused", details=[detail])
        trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "why")


class Pool:
    def __init__(self, outcome: Exception | list[str]) -> None:
        self.outcome = outcome
        self.requests: list[exchange_pb2.DeliverCaseEventsRequest] = []

    async def DeliverCaseEvents(  # the stub
        self, request: exchange_pb2.DeliverCaseEventsRequest, timeout: float
    ) -> exchange_pb2.DeliverCaseEventsResponse:
        self.requests.append(request)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return exchange_pb2.DeliverCaseEventsResponse(event_ids=self.outcome)

    async def call(self, region: str, make: Any, *, timeout_seconds: float) -> Any:
        return await make(self)


EVENTS = [Out("C/510000/1", "jws-1", [(b"pdf", b"")]), Out("C/510000/2", "jws-2")]


async def test_the_channel_sends_events_with_their_attachments_and_reads_the_ids_held() -> None:
    pool = Pool(["C/510000/1", "C/510000/2"])
    held = await PeerCaseChannel(pool).deliver(CQ, EVENTS)  # type: ignore[arg-type]
    assert held == ["C/510000/1", "C/510000/2"]
    (request,) = pool.requests
    assert [e.jws for e in request.events] == ["jws-1", "jws-2"]
    assert request.events[0].attachments[0].content == b"pdf"
    assert request == delivery_request(EVENTS)


@pytest.mark.parametrize(
    ("error", "index", "reason"),
    [
        (
            rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "CASE_EVENT_INVALID", 1),
            1,
            "CASE_EVENT_INVALID",
        ),
        (
            rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "CASE_EVENT_INVALID", 7),
            None,
            "CASE_EVENT_INVALID",
        ),
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE", 0), None, "AUDIT_UNAVAILABLE"),
        (rpc_error(grpc.StatusCode.UNAVAILABLE), None, ""),
        (UnknownPeer("no gateway for 500000"), None, ""),
        (BreakerOpen("open"), None, ""),
        (TimeoutError(), None, ""),
    ],
)
async def test_the_channel_reads_a_failure(
    error: Exception, index: int | None, reason: str
) -> None:
    with pytest.raises(DeliveryFailed) as failed:
        await PeerCaseChannel(Pool(error)).deliver(CQ, EVENTS)  # type: ignore[arg-type]
    assert failed.value.index == index
    assert failed.value.reason == reason


# -- the receiving edge -----------------------------------------------------------------------------
class Intake:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[tuple[str, list[tuple[bytes, bytes]]]]]] = []

    async def receive(
        self, sender_region: str, items: list[tuple[str, list[tuple[bytes, bytes]]]]
    ) -> list[str]:
        self.received.append((sender_region, items))
        return [f"id-{i}" for i in range(len(items))]


GATEWAY = Caller(CallerKind.GATEWAY, SC, "", "0" * 43, "CN=gateway-510000")
AGENCY = Caller(CallerKind.AGENCY, SC, "sc.window", "0" * 43, "CN=sc.window")


def request(
    n: int, jws: str = "e.e.e", content: bytes = b""
) -> exchange_pb2.DeliverCaseEventsRequest:
    material = [cases_pb2.Material(content=content)] if content else []
    return exchange_pb2.DeliverCaseEventsRequest(
        events=[exchange_pb2.SignedCaseEvent(jws=jws, attachments=material) for _ in range(n)]
    )


async def test_the_edge_gives_a_gateways_events_to_the_book() -> None:
    intake = Intake()
    answer = await deliver_case_events(intake, GATEWAY, request(2, content=b"pdf"))
    assert list(answer.event_ids) == ["id-0", "id-1"]
    assert intake.received == [(SC, [("e.e.e", [(b"pdf", b"")])] * 2)]


@pytest.mark.parametrize(
    ("caller", "sent", "reason", "index"),
    [
        (AGENCY, request(1), "NOT_AUTHORISED_ROLE", None),
        (None, request(1), "NOT_AUTHORISED_ROLE", None),
        (GATEWAY, request(65), "REQUEST_TOO_LARGE", None),
        (GATEWAY, request(0), "REQUEST_TOO_LARGE", None),
        (GATEWAY, request(2, jws="x" * (MAX_EVENT_JWS_CHARS + 1)), "REQUEST_TOO_LARGE", "0"),
        (
            GATEWAY,
            request(3, content=b"z" * (MAX_DELIVERY_BYTES // 3 + 1)),
            "REQUEST_TOO_LARGE",
            None,
        ),
    ],
)
async def test_the_edge_refuses_before_the_book_reads_anything(
    caller: Caller | None,
    sent: exchange_pb2.DeliverCaseEventsRequest,
    reason: str,
    index: str | None,
) -> None:
    intake = Intake()
    with pytest.raises(Refusal) as refused:
        await deliver_case_events(intake, caller, sent)
    assert refused.value.reason == reason
    assert refused.value.metadata.get("index") == index
    assert intake.received == []


async def test_the_edge_refuses_too_many_attachments_on_one_event() -> None:
    sent = exchange_pb2.DeliverCaseEventsRequest(
        events=[
            exchange_pb2.SignedCaseEvent(jws="e.e.e"),
            exchange_pb2.SignedCaseEvent(
                jws="e.e.e", attachments=[cases_pb2.Material(content=b"a")] * 65
            ),
        ]
    )
    with pytest.raises(Refusal) as refused:
        await deliver_case_events(Intake(), GATEWAY, sent)
    assert (refused.value.reason, refused.value.metadata) == ("REQUEST_TOO_LARGE", {"index": "1"})


async def test_a_gateway_without_cases_refuses_so_that_the_sender_keeps_them() -> None:
    with pytest.raises(Refusal) as refused:
        await deliver_case_events(None, GATEWAY, request(1))
    assert refused.value.reason == "NOT_IMPLEMENTED"
