"""Cases in a gateway (docs/cases.md): the case book kept beside the audit log, its `Cases`
service, the deliverer of its events to the other regions, and the overdue gauge.

A gateway keeps cases when it has the query path (peers and an audit log): cases travel over the
peer channel, and every change is audited. `build_cases` makes them; the gateway serves
`Cases.service`, gives `Cases.book` to its Peer servicer (`Peer.DeliverCaseEvents`), and runs
`Cases.run()` with its other background tasks (cancelling it stops the deliverer and leaves no
task behind).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import AuditLog
from gateway.cases import (
    MAX_CALL_MATERIAL_BYTES,
    CaseBook,
    CaseStore,
    EventSigner,
    MaterialVerifier,
)
from gateway.cases import case_store_for as stores_beside
from gateway.cases._delivery import CaseDeliverer, CaseOutbox
from gateway.cases._peer import CaseIntake, PeerCaseChannel
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics
from gateway.peers import PeerPool
from gateway.services.cases import CasesService
from gateway.tokens import TokenVerifier
from registry import RegistryStore
from signer import DocumentVerifier, open_signing_key
from tongban.v1 import cases_pb2, cases_pb2_grpc

__all__ = [
    "CASES_SERVICE",
    "OVERDUE_SECONDS",
    "CaseBookLike",
    "CaseParts",
    "Cases",
    "MakeBook",
    "build_cases",
]

log = logging.getLogger("tongban.cases")

CASES_SERVICE: Final = cases_pb2.DESCRIPTOR.services_by_name["Cases"].full_name
OVERDUE_SECONDS: Final = 30.0  # how often the overdue gauge is read from the case store


class CaseBookLike(CaseOutbox, CaseIntake, Protocol):
    """What the gateway needs of the case book beyond its service: the deliverer's outbox and
    the peer edge's intake (gateway.cases.CaseBook)."""


@dataclass(frozen=True, slots=True)
class CaseParts:
    """What the case book and its service are made from: the gateway's own parts."""

    region: str
    registry: RegistryStore
    store: CaseStore  # beside the audit log, in its store
    audit: AuditLog
    audit_key: ed25519.Ed25519PrivateKey  # signs the events this region makes
    pseudonym_key: bytes  # the applicant's pseudonym, and the at-rest sealing key's root
    documents: DocumentVerifier  # verifies materials and results
    metrics: GatewayMetrics
    clock: Callable[[], datetime]


MakeBook = Callable[[CaseParts], tuple[CaseBookLike, cases_pb2_grpc.CasesServicer]]
CaseStoreFor = Callable[[AuditLog], CaseStore]


class OverdueObserver(Protocol):
    def observe_cases_overdue(self, overdue: Mapping[str, int]) -> None: ...


class OverdueSource(Protocol):
    async def overdue(self, now: datetime) -> dict[str, int]: ...


async def watch_overdue(
    store: OverdueSource,
    observer: OverdueObserver,
    clock: Callable[[], datetime],
    every_seconds: float = OVERDUE_SECONDS,
) -> None:
    """Until cancelled: the open cases past their time limit, per matter, into the gauge."""
    while True:
        try:
            observer.observe_cases_overdue(await store.overdue(clock()))
        except Exception as exc:  # the store is down: the gauge keeps its last values
            log.warning("cases: overdue cases cannot be counted (%s)", type(exc).__name__)
        await asyncio.sleep(every_seconds)


@dataclass(frozen=True, slots=True)
class Cases:
    book: CaseBookLike
    service: cases_pb2_grpc.CasesServicer
    deliverer: CaseDeliverer
    store: CaseStore
    metrics: GatewayMetrics
    clock: Callable[[], datetime]

    def serve(self, server: grpc.aio.Server) -> None:
        cases_pb2_grpc.add_CasesServicer_to_server(self.service, server)

    async def run(self) -> None:
        """Until cancelled: deliver events, keep the overdue gauge. On cancellation both stop,
        the deliverer's lanes with them."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.deliverer.run(), name="case-delivery")
                group.create_task(
                    watch_overdue(self.store, self.metrics, self.clock), name="cases-overdue"
                )
        finally:
            await self.deliverer.close()


def _book_and_service(config: GatewayConfig) -> MakeBook:
    """The gateway's own book (`CaseBook`) and its `Cases` service, with `[cases]`'s limits."""

    def make(p: CaseParts) -> tuple[CaseBookLike, cases_pb2_grpc.CasesServicer]:
        limit = config.cases.max_material_bytes
        book = CaseBook(
            p.region,
            p.store,
            registry=p.registry,
            signer=EventSigner(p.region, p.audit_key),
            materials=MaterialVerifier(
                p.documents,
                p.region,
                max_material_bytes=limit,
                max_call_bytes=max(limit, MAX_CALL_MATERIAL_BYTES),
            ),
            pseudonym_key=p.pseudonym_key,
            audit=p.audit,
            gateway_name=f"gateway-{p.region}",
            clock=p.clock,
        )
        book.on_event = p.metrics.case_event
        return book, CasesService(book, TokenVerifier(region=p.region, clock=p.clock))

    return make


def build_cases(
    config: GatewayConfig,
    audit: AuditLog | None,
    peers: PeerPool | None,
    store: RegistryStore,
    clock: Callable[[], datetime],
    *,
    documents: DocumentVerifier,
    metrics: GatewayMetrics,
    make_book: MakeBook | None = None,
    case_store_for: CaseStoreFor | None = None,
) -> Cases | None:
    """The gateway's cases, when it has the query path (peers and an audit log); None without.
    `make_book` builds the book and its service (by default gateway.cases.CaseBook and
    CasesService, with `[cases]`'s material limit) and `case_store_for` finds the case store
    kept beside the audit log (by default gateway.cases.case_store_for); tests give others."""
    if audit is None or peers is None or config.audit is None:
        return None
    make_book = make_book or _book_and_service(config)
    case_store_for = case_store_for or stores_beside
    audit_key = open_signing_key(config.audit.key, config.tls_passphrase)
    assert isinstance(audit_key, ed25519.Ed25519PrivateKey)  # build_audit_log checked it
    case_store = case_store_for(audit)
    parts = CaseParts(
        region=config.region,
        registry=store,
        store=case_store,
        audit=audit,
        audit_key=audit_key,
        pseudonym_key=config.audit.pseudonym_key,
        documents=documents,
        metrics=metrics,
        clock=clock,
    )
    book, service = make_book(parts)
    deliverer = CaseDeliverer(
        outbox=book, backlog=case_store, channel=PeerCaseChannel(peers), observer=metrics
    )
    return Cases(book, service, deliverer, case_store, metrics, clock)
