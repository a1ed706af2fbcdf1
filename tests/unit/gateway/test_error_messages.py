"""Issue 14, point 3 (threat T13): a status message that leaves a gateway says the reason in a
plain, fixed sentence and never what went wrong inside: no host, port, path, DSN or driver text
of a foreign exception (psycopg, sqlite3, redis, gRPC, OSError) reaches a client or a peer,
whichever way the refusal is sent (`abort`/`rich_status`, a batch item's status, a peer's
refusal passed on, a data system's refusal); the detail goes to the gateway's own log."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psycopg
import pytest
import redis.exceptions
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import (
    FIXED_MESSAGE_REASONS,
    KNOWN_REASONS,
    PLAIN_MESSAGES,
    Refusal,
    abort,
    client_message,
    relayed_message,
    rich_status,
    status_of,
)
from gateway.identity import Caller, CallerKind
from gateway.provider import ProviderClient, ProviderError
from gateway.services.exchange import PeerOwners, data_request
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

# What foreign exceptions say, as their libraries word it (hosts and paths of a deployment).
FOREIGN: list[BaseException] = [
    psycopg.OperationalError(
        'connection failed: connection to server at "10.20.30.40", port 6432 failed: '
        "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
        "connections?"
    ),
    psycopg.errors.AdminShutdown(
        "terminating connection due to administrator command (dbname=tongban_audit "
        "user=tongban_app host=pg-primary.internal)"
    ),
    sqlite3.OperationalError("attempt to write a readonly database"),
    sqlite3.DatabaseError("database disk image is malformed: /var/lib/tongban/audit-330000.db"),
    redis.exceptions.ConnectionError(
        "Error 111 connecting to redis-0.tongban.svc:6379. Connection refused."
    ),
    OSError(28, "No space left on device", "/var/lib/tongban/audit-330000.db-wal"),
    TimeoutError("timed out connecting to 10.20.30.41:50051"),
]
# No sentence of the table, and no message the tests accept, contains any of these.
INTERNAL = re.compile(
    r"\d+\.\d+\.\d+\.\d+|:\d{2,5}\b|\bport\b|\bhost\b|dbname|user=|psycopg|sqlite|redis|"
    r"connection|refused|/var/|\.db|errno|\berror \d+",
    re.IGNORECASE,
)


def message_of(status: grpc.Status) -> str:
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            return str(status_pb2.Status.FromString(value).message)
    raise AssertionError("no rich status")


def reason_of(status: grpc.Status) -> str:
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    raise AssertionError("no ErrorInfo")


def test_every_contract_reason_has_one_plain_sentence() -> None:
    assert set(PLAIN_MESSAGES) == KNOWN_REASONS
    assert FIXED_MESSAGE_REASONS <= KNOWN_REASONS
    for reason, sentence in PLAIN_MESSAGES.items():
        assert sentence, reason
        assert not INTERNAL.search(sentence), reason
        assert not re.search(r"\d", sentence), reason


@pytest.mark.parametrize("reason", sorted(FIXED_MESSAGE_REASONS))
@pytest.mark.parametrize("exc", FOREIGN, ids=lambda e: type(e).__name__)
def test_an_outage_is_sent_as_its_fixed_sentence_and_logged_in_full(
    reason: str, exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tongban.errors")
    made_with = f"the answer was not released: {exc}"
    status = rich_status(grpc.StatusCode.UNAVAILABLE, reason, made_with)
    assert status.details == PLAIN_MESSAGES[reason]
    assert message_of(status) == PLAIN_MESSAGES[reason]
    assert reason_of(status) == reason
    # A batch item's status (`status_of`: UNAVAILABLE, the table's code) is made the same way.
    item = status_of(Refusal(reason, made_with))
    assert (item.message, item.code) == (
        PLAIN_MESSAGES[reason],
        grpc.StatusCode.UNAVAILABLE.value[0],
    )
    # The operator still reads what failed, where: in this gateway's own log.
    assert any(str(exc) in r.getMessage() for r in caplog.records), caplog.records


def test_a_relayed_refusal_names_the_region_and_the_sentence_only() -> None:
    relayed = relayed_message("330000", "AUDIT_UNAVAILABLE")
    assert relayed == f"region 330000: {PLAIN_MESSAGES['AUDIT_UNAVAILABLE']}"
    assert client_message("AUDIT_UNAVAILABLE", relayed) == relayed
    # A peer's own words dressed as a relayed message are not passed on.
    forged = f"region 330000: {FOREIGN[0]}"
    assert client_message("AUDIT_UNAVAILABLE", forged) == PLAIN_MESSAGES["AUDIT_UNAVAILABLE"]
    forged = f"region 330000 at 10.0.0.1: {PLAIN_MESSAGES['AUDIT_UNAVAILABLE']}"
    assert client_message("AUDIT_UNAVAILABLE", forged) == PLAIN_MESSAGES["AUDIT_UNAVAILABLE"]
    # A reason outside the table (never read from a peer: error_info_of drops it) stays plain.
    assert relayed_message("330000", "MADE_UP") == "region 330000: the request was refused"


class TalkativeDataSystem(exchange_pb2_grpc.DataProviderServicer):
    """A data system whose refusals quote its own internals."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        self.code, self.reason = code, reason

    async def Fetch(
        self,
        request: exchange_pb2.ProviderFetchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> exchange_pb2.ProviderFetchResponse:
        await abort(context, self.code, self.reason, f"query on {FOREIGN[0]} failed: {FOREIGN[3]}")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT_FORMAT"),
        (grpc.StatusCode.INVALID_ARGUMENT, "SUBJECT_ID_INVALID"),
        (grpc.StatusCode.NOT_FOUND, "SUBJECT_NOT_FOUND"),
    ],
)
async def test_a_data_systems_refusal_goes_on_without_its_words(
    code: grpc.StatusCode, reason: str
) -> None:
    server = grpc.aio.server()
    exchange_pb2_grpc.add_DataProviderServicer_to_server(TalkativeDataSystem(code, reason), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with ProviderClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(ProviderError) as caught:
                await client.fetch(
                    dataset="civil.marriage",
                    subject_id="11010519491231002X",
                    fields=("name",),
                    purpose="demo.purpose",
                    case_id="CASE-1",
                    request_id="req-1",
                    requesting_region="510000",
                    requesting_agency="sc.data",
                )
    finally:
        await server.stop(None)
    assert (caught.value.reason, caught.value.code) == (reason, code)
    # What the owner's gateway sends the requesting region (Refusal(code, reason, str(exc))).
    sent = rich_status(code, caught.value.reason, str(caught.value))
    assert sent.details == PLAIN_MESSAGES[reason]
    assert not INTERNAL.search(sent.details)


class _Peers:
    """A PeerPool whose one stub fails every Forward with `error`."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self.error = error

    def stub(self, region: str) -> Any:
        error = self.error

        class Stub:
            async def Forward(self, request: Any, timeout: float) -> Any:
                raise error

        return Stub()

    async def call(
        self, region: str, send: Callable[[Any], Awaitable[Any]], *, timeout_seconds: float
    ) -> Any:
        return await send(self.stub(region))  # as PeerPool.call, without a breaker


CALLER = Caller(CallerKind.AGENCY, "510000", "sc.amr", "0" * 43, "CN=sc.amr")


class _Metrics:
    def peer_call(self, *_args: Any) -> None:
        pass


class _Context:
    def time_remaining(self) -> float:
        return 5.0


class _Registry:
    """The registry store as PeerOwners reads it (the signer below needs no key of it)."""

    def current(self) -> object:
        return object()


class _Signer:
    """Signs nothing: what is tested here is the peer's refusal, after the request left."""

    def sign(self, registry: object, document: object) -> str:
        return "signed.request.here"


def peer_refusal(code: grpc.StatusCode, reason: str, message: str) -> grpc.aio.AioRpcError:
    """A peer's refusal as an older or careless gateway would send it: its own words in the
    message, in the rich status too."""
    details = []
    if reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tongban"))
        details.append(detail)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=message,
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "FIELD_NOT_ALLOWED"),
        (grpc.StatusCode.INVALID_ARGUMENT, "SUBJECT_ID_INVALID"),
        (grpc.StatusCode.NOT_FOUND, "SUBJECT_NOT_FOUND"),
        (grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE"),
        (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (grpc.StatusCode.UNAVAILABLE, ""),  # no rich status: the peer is unavailable
        (grpc.StatusCode.DEADLINE_EXCEEDED, ""),
    ],
)
async def test_the_requester_passes_on_a_peers_reason_never_its_words(
    code: grpc.StatusCode, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    words = f"the owner says: {FOREIGN[0]} / {FOREIGN[4]}"
    path = PeerOwners(
        region="510000",
        peers=_Peers(peer_refusal(code, reason, words)),  # type: ignore[arg-type]
        metrics=_Metrics(),  # type: ignore[arg-type]
        registry=_Registry(),  # type: ignore[arg-type]
        signer=_Signer(),  # type: ignore[arg-type]
        peer_timeout_seconds=5.0,
    )
    query = data_request(exchange_pb2.QueryRequest(provider_region="330000"))
    with pytest.raises(Refusal) as caught:
        await path.forward(query, CALLER, "operator", _Context().time_remaining)
    refusal = caught.value
    expected = reason or "PEER_UNAVAILABLE"
    sent = status_of(refusal)
    assert sent.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
    assert refusal.reason == expected
    assert not INTERNAL.search(sent.message), sent.message
    assert "owner says" not in sent.message
    assert sent.message in (
        PLAIN_MESSAGES[expected],
        relayed_message("330000", expected),
    )
    # The requester's own log keeps the peer's words, quoted.
    assert any("owner says" in r.getMessage() for r in caplog.records)
