"""The requesting gateway's calls to a provider region's gateway: `Peer.Forward`, coalesced.

A BatchQuery's items to one region, and concurrent queries under load, each reach `PeerOwners`
as one forward. Sent one call each, they cost the owner a call's fixed work (TLS records, HTTP/2
frames, the interceptors, admission) per query, and the requester as much again. So
`ForwardCoalescer` queues each forward per region and, at the end of the current event-loop
iteration (`call_soon`: no waiting is added), sends every forward queued for that region as
ONE `Peer.ForwardBatch` (at most MAX_FORWARD_BATCH_ITEMS a call); a forward alone goes as a
plain `Peer.Forward`, made by its own caller's task, as before. A BatchQuery's items reach
their forwards an iteration or more apart (each after its own Redis round trip): their
`ForwardGathering` holds them until every item has forwarded or ended (at most
MAX_GATHER_SECONDS), so that they, too, go as one call per region.

Each waiting forward gets what a single Forward would have given it: its own answer, or the
same Refusal (`peer_refusal` maps an item's status exactly as a call's). A failure of the
whole call (breaker open, no answer in time, UNAVAILABLE) fails each item as that single call
would have failed. Each item keeps its own deadline: the batch call has the latest of its
items', and an item whose deadline passes first is answered then, as its single call's deadline
would have ended it, while the others wait on (were the call bound by the earliest, one item
about to expire would fail the whole batch: under load, queued items near their deadlines would
fail every item coalesced with them). An item whose caller gave up may still be answered by the
owner, which then records it as answered, as it would a single call's answer that arrived just
after its deadline. A peer that answers
ForwardBatch UNIMPLEMENTED (an older gateway) is sent single Forwards for
SINGLE_FORWARDS_SECONDS, the batch's items re-sent singly at once. `peer_call` metrics count
calls, one per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import grpc
from google.rpc import error_details_pb2, status_pb2

from gateway.breaker import BreakerOpen
from gateway.errors import (
    RELAYED_CODES,
    Refusal,
    error_info_of,
    peer_text,
    relayed_message,
    status_error_info,
)
from gateway.metrics import GatewayMetrics
from gateway.peer_certificates import PeerCertificateRefused
from gateway.peers import PeerPool, UnknownPeer
from tongban.v1 import exchange_pb2

__all__ = [
    "MAX_FORWARD_BATCH_ITEMS",
    "MAX_GATHER_SECONDS",
    "SINGLE_FORWARDS_SECONDS",
    "ForwardCoalescer",
    "ForwardGathering",
    "peer_refusal",
]

log = logging.getLogger("tongban.exchange")

MAX_FORWARD_BATCH_ITEMS: Final = 20  # forwards in one Peer.ForwardBatch (the owner refuses more)
MAX_GATHER_SECONDS: Final = 0.05  # a BatchQuery's forwards held for its slowest item, at most
SINGLE_FORWARDS_SECONDS: Final = 300.0  # a peer without ForwardBatch gets single Forwards so long
# A peer gateway's own dependency is down: its UNAVAILABLE is passed on with its reason.
_PEER_UP_REASONS: Final = frozenset(
    {"AUDIT_UNAVAILABLE", "PROVIDER_UNAVAILABLE", "REGISTRY_STALE", "SEAL_KEY_UNAVAILABLE"}
)
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}
_CALL_ERRORS: Final = (UnknownPeer, BreakerOpen, TimeoutError, grpc.aio.AioRpcError)


def peer_refusal(
    region: str,
    code: grpc.StatusCode,
    info: error_details_pb2.ErrorInfo | None,
    message: str,
    ours: bool,
) -> Refusal:
    """What the requesting gateway raises for a peer's error status (a Forward call's, or a
    ForwardBatch item's): `message` is the peer's status message, logged, never relayed."""
    reason = info.reason if info is not None else ""
    if (
        code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        and reason not in _PEER_UP_REASONS
    ):
        return Refusal(
            "PEER_UNAVAILABLE",
            f"the gateway of region {region} did not answer: {peer_text(message)}",
            code=None if ours else code,
        )
    if code in RELAYED_CODES and reason:
        # The reason travels on; the owner's words stay in this log, never relayed.
        log.info("region %s refused with %s: %s", region, reason, peer_text(message))
        return Refusal.passed_on(code, reason, relayed_message(region, reason))
    return Refusal("PEER_UNAVAILABLE", f"the gateway of region {region} failed: {code.name}")


def _call_refusal(region: str, exc: Exception, ours: bool) -> Refusal:
    """What a forward raises when its call (single or batch) failed as a whole with `exc`."""
    if isinstance(exc, UnknownPeer):
        return Refusal("UNKNOWN_REGION", str(exc))
    if isinstance(exc, PeerCertificateRefused):  # revoked: the peer is not called
        return Refusal(exc.reason, str(exc))
    if isinstance(exc, BreakerOpen):
        return Refusal(
            "PEER_UNAVAILABLE",
            f"the gateway of region {region} is failing: not called "
            "(its circuit breaker is open); try again shortly",
        )
    if isinstance(exc, grpc.aio.AioRpcError):
        info, message = error_info_of(exc)
        return peer_refusal(region, exc.code(), info, exc.details() or message, ours)
    # TimeoutError, the backstop: the call's own deadline did not end it
    return Refusal(
        "PEER_UNAVAILABLE",
        f"the gateway of region {region} did not answer in time",
        code=None if ours else grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def _item_outcome(
    region: str, item: exchange_pb2.ForwardBatchItem, ours: bool
) -> exchange_pb2.ForwardResponse | Refusal:
    """One ForwardBatch item's answer, or the Refusal a single Forward's status would give."""
    if item.WhichOneof("outcome") == "response":
        return item.response
    status: status_pb2.Status = item.status
    if item.WhichOneof("outcome") != "status" or status.code == 0:
        return Refusal("PEER_UNAVAILABLE", f"the gateway of region {region} failed: no outcome")
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return peer_refusal(region, code, status_error_info(status), status.message, ours)


class _Alone:
    """The flush's word to a queued forward: make your own single Forward."""


_ALONE: Final = _Alone()
_Outcome = exchange_pb2.ForwardResponse | Refusal | _Alone


@dataclass(slots=True)
class _Queued:
    forward: exchange_pb2.ForwardRequest
    ends: float  # time.monotonic() when its call's deadline ends
    ours: bool  # that deadline is this gateway's bound, shorter than its caller's
    outcome: asyncio.Future[_Outcome]

    def settle(self, outcome: _Outcome) -> None:
        if not self.outcome.done():  # a caller that gave up (cancelled) is not told
            self.outcome.set_result(outcome)


class ForwardGathering:
    """The forwards of one BatchQuery's items, held until each item has queued its forward or
    ended without one (refused, answered from this gateway's cache), then sent per region
    (`ForwardCoalescer.send`). The items of a BatchQuery reach their forward one Redis round
    trip apart, in different event-loop iterations, so the end of one iteration would split
    them; the BatchQuery waits for its slowest item anyway. At most MAX_GATHER_SECONDS after
    the first forward held: an item still on its way then forwards on its own.

    Each item runs inside `item()` (in its own task: the item is known by a context variable)."""

    def __init__(self, items: int) -> None:
        self._away = items  # items that have neither queued their forward nor ended
        self._held: dict[tuple[ForwardCoalescer, str], list[_Queued]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sent = False

    @contextlib.contextmanager
    def item(self) -> Iterator[None]:
        """One item's query runs inside: its first forward is held with the others'."""
        slot = _Slot(self)
        token = _ITEM.set(slot)
        try:
            yield
        finally:
            _ITEM.reset(token)
            slot.arrived()  # ended without a forward (or already arrived: nothing)

    def hold(self, coalescer: ForwardCoalescer, region: str, queued: _Queued) -> None:
        self._held.setdefault((coalescer, region), []).append(queued)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(MAX_GATHER_SECONDS, self.send)

    def arrived(self) -> None:
        self._away -= 1
        if self._away <= 0:
            self.send()

    @property
    def sent(self) -> bool:
        return self._sent

    def send(self) -> None:
        if self._sent:
            return
        self._sent = True
        if self._timer is not None:
            self._timer.cancel()
        held, self._held = self._held, {}
        for (coalescer, region), queued in held.items():
            coalescer.send(region, queued)


class _Slot:
    """One BatchQuery item in its gathering: arrived once it queued its forward or ended."""

    def __init__(self, gathering: ForwardGathering) -> None:
        self._gathering = gathering
        self._arrived = False

    def hold(self, coalescer: ForwardCoalescer, region: str, queued: _Queued) -> bool:
        """Hold the item's first forward, unless the gathering was sent (then: False)."""
        if self._arrived or self._gathering.sent:
            return False
        self._gathering.hold(coalescer, region, queued)
        self.arrived()
        return True

    def arrived(self) -> None:
        if not self._arrived:
            self._arrived = True
            self._gathering.arrived()


_ITEM: Final[contextvars.ContextVar[_Slot | None]] = contextvars.ContextVar(
    "tongban_batch_item", default=None
)


class ForwardCoalescer:
    """Forwards to peer gateways, one call per region per event-loop iteration (see the module
    docstring). `forward` answers the peer's ForwardResponse or raises a Refusal."""

    def __init__(
        self,
        peers: PeerPool,
        metrics: GatewayMetrics,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._peers = peers
        self.metrics = metrics
        self._monotonic = monotonic
        self._queued: dict[str, list[_Queued]] = {}  # region -> forwards of this iteration
        self._single_until: dict[str, float] = {}  # region -> single Forwards until (monotonic)
        self._batches: set[asyncio.Task[None]] = set()  # ForwardBatch calls in flight

    async def forward(
        self,
        region: str,
        forward: exchange_pb2.ForwardRequest,
        *,
        timeout_seconds: float,
        ours: bool,
    ) -> exchange_pb2.ForwardResponse:
        """`forward` sent to `region`'s gateway within `timeout_seconds` (`ours`: that bound is
        this gateway's, shorter than its caller's deadline), alone or with the others queued
        for `region` in this iteration."""
        loop = asyncio.get_running_loop()
        queued = _Queued(forward, self._monotonic() + timeout_seconds, ours, loop.create_future())
        item = _ITEM.get()  # a BatchQuery's item: sent with its other forwards to `region`
        if item is None or not item.hold(self, region, queued):
            waiting = self._queued.get(region)
            if waiting is None:
                waiting = self._queued[region] = []
                loop.call_soon(self._flush, region)
            waiting.append(queued)
        try:
            async with asyncio.timeout_at(loop.time() + queued.ends - self._monotonic()):
                outcome = await queued.outcome  # cancelled by the timeout: not waited for
        except TimeoutError:  # its own deadline, the batch still out: as its single call ends
            raise peer_refusal(
                region, grpc.StatusCode.DEADLINE_EXCEEDED, None, "Deadline Exceeded", queued.ours
            ) from None
        if isinstance(outcome, _Alone):
            return await self._single(region, queued)
        if isinstance(outcome, Refusal):
            raise outcome
        return outcome

    def _flush(self, region: str) -> None:
        self.send(region, self._queued.pop(region, []))

    def send(self, region: str, queued: list[_Queued]) -> None:
        """Send `queued` to `region`: batches of up to MAX_FORWARD_BATCH_ITEMS; a lone forward
        (or every one, to a peer without ForwardBatch) is made by its own caller."""
        live = [q for q in queued if not q.outcome.done()]
        if self._single_until.get(region, 0.0) > self._monotonic():
            chunks = [[q] for q in live]
        else:
            self._single_until.pop(region, None)
            chunks = [
                live[i : i + MAX_FORWARD_BATCH_ITEMS]
                for i in range(0, len(live), MAX_FORWARD_BATCH_ITEMS)
            ]
        for chunk in chunks:
            if len(chunk) == 1:
                chunk[0].settle(_ALONE)
                continue
            task = asyncio.get_running_loop().create_task(self._batch(region, chunk))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            abandoned = functools.partial(_cancel_when_abandoned, chunk, task)
            for waiting in chunk:  # every caller gone: the call is not worth finishing
                waiting.outcome.add_done_callback(abandoned)

    async def _single(self, region: str, queued: _Queued) -> exchange_pb2.ForwardResponse:
        """`Peer.Forward` of one forward, in its caller's task (its cancellation is the call's)."""
        timeout = max(queued.ends - self._monotonic(), 0.01)
        started = time.perf_counter()
        try:
            answer: exchange_pb2.ForwardResponse = await self._peers.call(
                region,
                lambda stub: stub.Forward(queued.forward, timeout=timeout),
                timeout_seconds=timeout,
            )
        except _CALL_ERRORS as exc:
            self._count_failure(region, exc, started)
            raise _call_refusal(region, exc, queued.ours) from exc
        self.metrics.peer_call(region, grpc.StatusCode.OK, time.perf_counter() - started)
        return answer

    async def _batch(self, region: str, chunk: list[_Queued]) -> None:
        """`Peer.ForwardBatch` of `chunk`, with the latest of its deadlines; settles each (an
        item whose own deadline passed first was answered by its caller's wait)."""
        ends = max(q.ends for q in chunk)
        timeout = max(ends - self._monotonic(), 0.01)
        request = exchange_pb2.ForwardBatchRequest(items=[q.forward for q in chunk])
        started = time.perf_counter()
        try:
            answer: exchange_pb2.ForwardBatchResponse = await self._peers.call(
                region,
                lambda stub: stub.ForwardBatch(request, timeout=timeout),
                timeout_seconds=timeout,
            )
        except _CALL_ERRORS as exc:
            self._count_failure(region, exc, started)
            if _unimplemented(exc):
                log.info(
                    "region %s does not serve Peer.ForwardBatch: single Forwards for %.0f s",
                    region,
                    SINGLE_FORWARDS_SECONDS,
                )
                self._single_until[region] = self._monotonic() + SINGLE_FORWARDS_SECONDS
                for queued in chunk:
                    queued.settle(_ALONE)
                return
            for queued in chunk:
                queued.settle(_call_refusal(region, exc, queued.ours))
            return
        except asyncio.CancelledError:
            for queued in chunk:  # no caller is left waiting (or the loop stops)
                queued.outcome.cancel()
            raise
        except Exception as exc:  # a bug: each caller fails as its single call would have
            for queued in chunk:
                if not queued.outcome.done():
                    queued.outcome.set_exception(exc)
            return
        self.metrics.peer_call(region, grpc.StatusCode.OK, time.perf_counter() - started)
        if len(answer.results) != len(chunk):
            for queued in chunk:
                queued.settle(
                    Refusal(
                        "PEER_UNAVAILABLE",
                        f"the gateway of region {region} failed: {len(answer.results)} "
                        f"results for {len(chunk)} requests",
                    )
                )
            return
        for queued, item in zip(chunk, answer.results, strict=True):
            queued.settle(_item_outcome(region, item, queued.ours))

    def _count_failure(self, region: str, exc: Exception, started: float) -> None:
        """One failed call in the peer_call metrics (a call that was made: not one refused
        before it, for an unknown peer or an open breaker)."""
        if isinstance(exc, TimeoutError):
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        elif isinstance(exc, grpc.aio.AioRpcError):
            code = exc.code()
        else:
            return
        self.metrics.peer_call(region, code, time.perf_counter() - started)


def _unimplemented(exc: Exception) -> bool:
    """Is `exc` a peer's answer that it has no such method (gRPC's own UNIMPLEMENTED, without a
    Tongban reason)?"""
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() is grpc.StatusCode.UNIMPLEMENTED
        and error_info_of(exc)[0] is None
    )


def _cancel_when_abandoned(
    chunk: list[_Queued], task: asyncio.Task[None], _: asyncio.Future[_Outcome]
) -> None:
    if not task.done() and all(q.outcome.cancelled() for q in chunk):
        task.cancel()
