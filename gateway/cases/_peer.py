"""Case events on the wire between gateways (`Peer.DeliverCaseEvents`): the sending side over
the peer pool (`PeerCaseChannel`, the deliverer's `CaseChannel`) and the receiving side's edge
(`deliver_case_events`, the body of the Peer servicer's method).

The receiver's edge refuses, before anything is read into the book:

| the call                                             | status / reason                          |
| ---------------------------------------------------- | ---------------------------------------- |
| not from a peer region's gateway                     | PERMISSION_DENIED / NOT_AUTHORISED_ROLE  |
| no event, or more than MAX_EVENTS_PER_DELIVERY       | INVALID_ARGUMENT / REQUEST_TOO_LARGE     |
| an event's JWS longer than MAX_EVENT_JWS_CHARS       | INVALID_ARGUMENT / REQUEST_TOO_LARGE ("index") |
| more than MAX_ATTACHMENTS_PER_EVENT attachments      | INVALID_ARGUMENT / REQUEST_TOO_LARGE ("index") |
| attachments beyond MAX_DELIVERY_BYTES in all         | INVALID_ARGUMENT / REQUEST_TOO_LARGE     |

then the book decides each event (`CaseIntake.receive`: verified, kept once by id, audited;
CASE_EVENT_INVALID and the like with "index"), and the answer lists the ids it holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol

import grpc

from gateway.breaker import BreakerOpen
from gateway.cases._delivery import (
    MAX_DELIVERY_BYTES,
    MAX_EVENTS_PER_DELIVERY,
    DeliveryFailed,
    OutgoingEvent,
)
from gateway.cases._events import MAX_EVENT_JWS_BYTES
from gateway.errors import Refusal, error_info_of, peer_text
from gateway.identity import Caller, CallerKind
from gateway.peer_certificates import PeerCertificateRefused
from gateway.peers import PeerPool, UnknownPeer
from tongban.v1 import cases_pb2, exchange_pb2

__all__ = [
    "MAX_ATTACHMENTS_PER_EVENT",
    "MAX_EVENT_JWS_CHARS",
    "CaseIntake",
    "PeerCaseChannel",
    "deliver_case_events",
    "delivery_request",
]

MAX_EVENT_JWS_CHARS: Final = MAX_EVENT_JWS_BYTES  # an ASCII JWS: as many characters as bytes
MAX_ATTACHMENTS_PER_EVENT: Final = 64  # materials and result one event names, at most
SEND_TIMEOUT_SECONDS: Final = 10.0  # one call: up to 12 MiB, each event verified and audited

# A refusal of one event (ErrorInfo metadata "index") with one of these codes is the receiver's
# decision on that event: sending the same event again is refused again.
_FINAL_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    }
)


class CaseIntake(Protocol):
    """What the edge needs of the case book."""

    async def receive(
        self, sender_region: str, items: list[tuple[str, list[tuple[bytes, bytes]]]]
    ) -> list[str]:
        """Verify and keep each (jws, attachments) of `sender_region`; the ids held, in order.
        Raises Refusal (metadata "index": the event refused; the ones before it are held)."""
        ...


def delivery_request(events: Sequence[OutgoingEvent]) -> exchange_pb2.DeliverCaseEventsRequest:
    return exchange_pb2.DeliverCaseEventsRequest(
        events=[
            exchange_pb2.SignedCaseEvent(
                jws=event.jws,
                attachments=[
                    cases_pb2.Material(content=content, signed_data=signed)
                    for content, signed in event.attachments
                ],
            )
            for event in events
        ]
    )


class PeerCaseChannel:
    """The deliverer's `CaseChannel` over the gateway's pooled peer channels (their breakers,
    their mTLS): one `Peer.DeliverCaseEvents` call per batch."""

    def __init__(self, peers: PeerPool, *, timeout_seconds: float = SEND_TIMEOUT_SECONDS) -> None:
        self._peers = peers
        self.timeout_seconds = timeout_seconds

    async def deliver(self, destination: str, events: Sequence[OutgoingEvent]) -> list[str]:
        request = delivery_request(events)
        timeout = self.timeout_seconds
        try:
            response = await self._peers.call(
                destination,
                lambda stub: stub.DeliverCaseEvents(request, timeout=timeout),
                timeout_seconds=timeout,
            )
        except PeerCertificateRefused as exc:
            raise DeliveryFailed(f"its server certificate is refused: {exc}") from exc
        except (UnknownPeer, BreakerOpen) as exc:
            raise DeliveryFailed(str(exc) or type(exc).__name__) from exc
        except TimeoutError as exc:
            raise DeliveryFailed(f"no answer within {timeout:.0f}s") from exc
        except grpc.aio.AioRpcError as exc:
            raise _failure(exc, len(events)) from exc
        return list(response.event_ids)


def _failure(exc: grpc.aio.AioRpcError, sent: int) -> DeliveryFailed:
    """The peer's answer as a DeliveryFailed: its code, its reason (one of the contract's),
    its message bounded and escaped; an event it refused for good, by position."""
    info, _ = error_info_of(exc)
    reason = info.reason if info is not None else ""
    metadata: Mapping[str, str] = dict(info.metadata) if info is not None else {}
    index = metadata.get("index", "")
    why = f"{exc.code().name} {reason or '-'}: {peer_text(exc.details() or '')}"
    if exc.code() in _FINAL_CODES and index.isascii() and index.isdigit() and int(index) < sent:
        return DeliveryFailed(why, reason=reason, index=int(index))
    return DeliveryFailed(why, reason=reason)


async def deliver_case_events(
    intake: CaseIntake | None,
    caller: Caller | None,
    request: exchange_pb2.DeliverCaseEventsRequest,
) -> exchange_pb2.DeliverCaseEventsResponse:
    """`Peer.DeliverCaseEvents`: the bounds of the table above, then the book's receipt."""
    if caller is None or caller.kind is not CallerKind.GATEWAY:
        raise Refusal("NOT_AUTHORISED_ROLE", "only a peer region's gateway delivers case events")
    if intake is None:  # no cases here: the sender keeps them waiting
        raise Refusal("NOT_IMPLEMENTED", "this gateway keeps no cases")
    events = request.events
    if not 0 < len(events) <= MAX_EVENTS_PER_DELIVERY:
        raise Refusal(
            "REQUEST_TOO_LARGE", f"a delivery holds 1 to {MAX_EVENTS_PER_DELIVERY} case events"
        )
    total = 0
    items: list[tuple[str, list[tuple[bytes, bytes]]]] = []
    for index, event in enumerate(events):
        where = {"index": str(index)}
        if len(event.jws) > MAX_EVENT_JWS_CHARS:
            raise Refusal(
                "REQUEST_TOO_LARGE",
                f"a case event's JWS is at most {MAX_EVENT_JWS_CHARS} characters",
                metadata=where,
            )
        if len(event.attachments) > MAX_ATTACHMENTS_PER_EVENT:
            raise Refusal(
                "REQUEST_TOO_LARGE",
                f"a case event names at most {MAX_ATTACHMENTS_PER_EVENT} attachments",
                metadata=where,
            )
        total += sum(len(a.content) + len(a.signed_data) for a in event.attachments)
        items.append((event.jws, [(a.content, a.signed_data) for a in event.attachments]))
    if total > MAX_DELIVERY_BYTES:
        raise Refusal(
            "REQUEST_TOO_LARGE",
            f"the attachments of one delivery are at most {MAX_DELIVERY_BYTES} bytes",
        )
    held = await intake.receive(caller.region, items)
    return exchange_pb2.DeliverCaseEventsResponse(event_ids=held)
