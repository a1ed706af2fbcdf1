"""Case events between three regions' gateways over their real mTLS peer channels: what the
gateway wires (gateway._wiring_cases) with a stand-in for the case book (its outbox on the
memory case store, its receipt keeping each event once): the Cases service is served and
healthy, each region's deliverer sends the other regions their events in order, the receiving
gateway's Peer.DeliverCaseEvents hands them to its book with the sender's region as its mTLS
certificate says, an agency may not call it, and the delivery metrics move."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from audit_contract import make_record
from grpc_health.v1 import health_pb2, health_pb2_grpc
from query_support import Cluster, running_cluster
from support import Federation, channel, credentials_as, error_info, eventually

import gateway.server
from gateway._wiring_cases import CASES_SERVICE, CaseParts, build_cases
from gateway.audit import AuditLog
from gateway.cases import (
    CaseChange,
    CaseStore,
    CaseSummary,
    MemoryCaseStore,
    StoredEvent,
)
from gateway.errors import Refusal
from tongban.v1 import cases_pb2, cases_pb2_grpc, exchange_pb2, exchange_pb2_grpc

pytestmark = pytest.mark.integration

SC, CQ, ZJ = "510000", "500000", "330000"
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Out:
    event_id: str
    jws: str
    attachments: list[tuple[bytes, bytes]]


class StandInBook:
    """The case book's outbox and receipt, without signatures: an event's JWS is its id."""

    def __init__(self, parts: CaseParts) -> None:
        self.region = parts.region
        self.store = parts.store
        self.listeners: list[Callable[[], None]] = []
        self.received: list[tuple[str, str, list[tuple[bytes, bytes]]]] = []  # kept once
        self.made = 0

    async def make(self, case_id: str, destinations: tuple[str, ...]) -> str:
        self.made += 1
        event_id = f"{case_id}/{self.region}/{self.made}"
        summary = CaseSummary(
            case_id, "000125002100", self.region, "window", "ab" * 32, "open", T0,
            T0 + timedelta(days=20), T0, ("window",), (), (),
        )  # fmt: skip
        event = StoredEvent(event_id, case_id, self.region, self.made, event_id, (), T0)
        await self.store.write(make_record(self.made), CaseChange(event, (), summary, destinations))
        for listener in self.listeners:
            listener()
        return event_id

    async def outgoing(self, destination: str, limit: int) -> list[Out]:
        found = await self.store.outbox(destination, limit)
        return [
            Out(e.event_id, e.sealed_jws, [(b"material of " + e.event_id.encode(), b"")])
            for e in found
        ]

    async def delivered(self, destination: str, event_ids: list[str]) -> None:
        await self.store.delivered(destination, event_ids)

    async def receive(self, sender_region: str, items: list[Any]) -> list[str]:
        for jws, attachments in items:
            if all(jws != kept for _, kept, _ in self.received):
                self.received.append((sender_region, jws, attachments))
        return [jws for jws, _ in items]


class StandInService(cases_pb2_grpc.CasesServicer):
    async def Get(self, request: cases_pb2.GetCaseRequest, context: Any) -> cases_pb2.Case:
        raise Refusal("NOT_IMPLEMENTED", "a stand-in")


def make_book(parts: CaseParts) -> tuple[StandInBook, cases_pb2_grpc.CasesServicer]:
    return StandInBook(parts), StandInService()


_STORES: dict[int, MemoryCaseStore] = {}


def memory_case_store(audit: AuditLog) -> CaseStore:
    return _STORES.setdefault(id(audit), MemoryCaseStore(audit))


@pytest.fixture
async def cluster(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Cluster]:
    wired = functools.partial(build_cases, make_book=make_book, case_store_for=memory_case_store)
    monkeypatch.setattr(gateway.server, "build_cases", wired)
    _STORES.clear()  # one store per audit log of this cluster
    try:
        async with running_cluster(federation, tmp_path, audit_on_disk=False) as made:
            yield made
    finally:
        _STORES.clear()


def book_of(cluster: Cluster, region: str) -> StandInBook:
    cases = cluster.gateways[region].cases
    assert cases is not None
    assert isinstance(cases.book, StandInBook)
    return cases.book


async def test_each_region_gets_the_events_of_its_cases_in_order(
    cluster: Cluster, federation: Federation
) -> None:
    window = book_of(cluster, SC)
    made = [await window.make("CASE-1", (CQ,)), await window.make("CASE-2", (CQ, ZJ))]
    made.append(await window.make("CASE-1", (CQ,)))
    await eventually(lambda: len(book_of(cluster, CQ).received) == 3, "500000's events")
    await eventually(lambda: len(book_of(cluster, ZJ).received) == 1, "330000's event")
    assert [(r, jws) for r, jws, _ in book_of(cluster, CQ).received] == [(SC, m) for m in made]
    assert book_of(cluster, ZJ).received == [
        (SC, made[1], [(b"material of " + made[1].encode(), b"")])
    ]
    cases = cluster.gateways[SC].cases
    assert cases is not None
    await eventually(lambda: not cases.deliverer.lanes, "the lanes to end")
    assert await window.store.outbox_backlog() == {}
    registry = cluster.gateways[SC].metrics.registry
    assert registry.get_sample_value(
        "tongban_case_deliveries_total", {"peer_region": CQ, "outcome": "delivered"}
    )
    # and back: the handling region's events reach the window
    answer = await book_of(cluster, CQ).make("CASE-1", (SC,))
    await eventually(lambda: any(jws == answer for _, jws, _ in window.received), "the answer")


async def test_the_cases_service_is_served_and_only_gateways_deliver(
    cluster: Cluster, federation: Federation
) -> None:
    async with channel(cluster.ports[CQ], credentials_as(federation, "sc.hrss", CQ)) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        status = await health.Check(health_pb2.HealthCheckRequest(service=CASES_SERVICE))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unserved:  # the stand-in answers, no more
            await cases_pb2_grpc.CasesStub(ch).Get(cases_pb2.GetCaseRequest(), timeout=5.0)
        assert unserved.value.code() is grpc.StatusCode.UNIMPLEMENTED
        sent = exchange_pb2.DeliverCaseEventsRequest(
            events=[exchange_pb2.SignedCaseEvent(jws="CASE-9/510000/1")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await exchange_pb2_grpc.PeerStub(ch).DeliverCaseEvents(sent, timeout=5.0)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_info(refused.value).reason == "NOT_AUTHORISED_ROLE"
    assert book_of(cluster, CQ).received == []
