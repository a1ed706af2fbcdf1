"""The case metrics (gateway.metrics) and the gateway's case tasks (gateway._wiring_cases): labels
stay bounded (no case id, applicant or request id can become a series), gauges follow what the
store says, and the tasks stop without leaving one behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway._wiring_cases import Cases, watch_overdue
from gateway.cases._delivery import CaseDeliverer
from gateway.metrics import GatewayMetrics

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_case_events_are_counted_by_kind_and_where_made() -> None:
    metrics = GatewayMetrics()
    metrics.case_event("submitted", "here")
    metrics.case_event("approved", "received")
    metrics.case_event("approved", "received")
    metrics.case_event("510000-20261207-abc", "here")  # not a kind: never its own series
    assert value(metrics, "tongban_case_events_total", kind="submitted", made="here") == 1
    assert value(metrics, "tongban_case_events_total", kind="approved", made="received") == 2
    assert value(metrics, "tongban_case_events_total", kind="other", made="here") == 1
    with pytest.raises(ValueError, match="made"):
        metrics.case_event("submitted", "there")  # type: ignore[arg-type]


def test_delivery_backlog_and_outcomes_by_peer_region() -> None:
    metrics = GatewayMetrics()
    metrics.case_backlog({"500000": 3, "330000": 1})
    # a region first seen has its delivered counter at 0: "no delivery lately" sees it
    assert (
        value(metrics, "tongban_case_deliveries_total", peer_region="500000", outcome="delivered")
        == 0
    )
    metrics.case_delivery("500000", "failed")
    metrics.case_delivery("500000", "delivered")
    metrics.case_delivery("500000", "lost in space")
    metrics.case_backlog({"330000": 2})  # 500000 emptied: it stays, at 0
    assert value(metrics, "tongban_case_delivery_backlog", peer_region="500000") == 0
    assert value(metrics, "tongban_case_delivery_backlog", peer_region="330000") == 2
    for outcome, n in (("failed", 1), ("delivered", 1), ("other", 1)):
        assert (
            value(metrics, "tongban_case_deliveries_total", peer_region="500000", outcome=outcome)
            == n
        )


def test_overdue_cases_per_matter_of_the_registry_only() -> None:
    metrics = GatewayMetrics()
    metrics._matters = frozenset({"000125002100", "000112003100"})  # as a registry observed sets
    metrics.observe_cases_overdue({"000125002100": 2, "110105194912310021": 1, "x": 1})
    assert value(metrics, "tongban_cases_overdue", matter="000125002100") == 2
    assert value(metrics, "tongban_cases_overdue", matter="other") == 2  # never its own series
    assert value(metrics, "tongban_cases_overdue", matter="110105194912310021") is None
    metrics.observe_cases_overdue({})
    assert value(metrics, "tongban_cases_overdue", matter="000125002100") == 0


class Overdue:
    def __init__(self) -> None:
        self.asked: list[datetime] = []
        self.fail = False

    async def overdue(self, now: datetime) -> dict[str, int]:
        self.asked.append(now)
        if self.fail:
            raise OSError("the store is down")
        return {"000125002100": len(self.asked)}


async def test_the_overdue_gauge_is_refreshed_and_survives_a_store_failure() -> None:
    metrics, store = GatewayMetrics(), Overdue()
    task = asyncio.create_task(watch_overdue(store, metrics, lambda: T0, every_seconds=0.01))
    while len(store.asked) < 2:
        await asyncio.sleep(0.005)
    store.fail = True
    failed_at = len(store.asked)
    while len(store.asked) < failed_at + 2:
        await asyncio.sleep(0.005)
    assert value(metrics, "tongban_cases_overdue", matter="000125002100") == failed_at
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.asked[0] == T0


class Book:
    def __init__(self) -> None:
        self.listeners: list[Callable[[], None]] = []

    async def outgoing(self, destination: str, limit: int) -> list[Any]:
        return []

    async def delivered(self, destination: str, event_ids: list[str]) -> None:
        return None

    async def receive(self, sender_region: str, items: list[Any]) -> list[str]:
        return []


class Store(Overdue):
    async def outbox_backlog(self) -> dict[str, int]:
        return {}


async def test_the_cases_task_stops_with_everything_it_started() -> None:
    before = asyncio.all_tasks()
    book, store, metrics = Book(), Store(), GatewayMetrics()
    deliverer = CaseDeliverer(outbox=book, backlog=store, channel=None)  # type: ignore[arg-type]
    cases = Cases(book, None, deliverer, store, metrics, lambda: T0 + timedelta(days=1))  # type: ignore[arg-type]
    task = asyncio.create_task(cases.run())
    while not store.asked:
        await asyncio.sleep(0.005)
    assert book.listeners == [deliverer.wake]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert book.listeners == []
