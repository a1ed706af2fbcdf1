"""Size limits and deadlines, configured and enforced; and the regressions the fuzzing found.

One cluster for the module, in which 四川's gateway is told that 浙江's gateway listens on a
"black hole" (a socket that accepts connections and never answers), so that a query to 浙江
waits for its deadline:

- a message one byte over the server's `grpc.max_receive_message_length` is refused by gRPC
  (RESOURCE_EXHAUSTED), one exactly at it reaches the gateway, which applies its own, smaller
  limits (REQUEST_TOO_LARGE); metadata over gRPC's hard limit is refused the same way;
- a tiny client deadline ends the call client-side (DEADLINE_EXCEEDED); a query to a peer that
  never answers ends within the gateway's own per-call deadline even when the client set none
  (DEADLINE_EXCEEDED, PEER_UNAVAILABLE); the gateway is healthy after each.

Each regression test names the bug it pins down; all of them were UNKNOWN statuses or hangs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import grpc
import pytest
from fuzz.fuzz_support import CALL_TIMEOUT, Harness, bearer, harness_for, valid_query
from fuzz.strategies import Deep, Raw, b64url, json_header
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from query_support import request
from support import sign_forward_message

from gateway.errors import MAX_STATUS_MESSAGE_BYTES, bounded_message
from gateway.server import MAX_MESSAGE_BYTES
from gateway.services.credentials import MAX_SEAL_PAYLOAD_BYTES
from gateway.services.exchange import DEFAULT_DEADLINE_SECONDS
from signer import MAX_JWS_BYTES
from tongban.v1 import (
    common_pb2,
    credentials_pb2,
    exchange_pb2,
    oversight_pb2,
)

pytestmark = [pytest.mark.integration]

QUERY = "/tongban.v1.DataExchange/Query"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
SEAL = "/tongban.v1.Credentials/Seal"
VERIFY = "/tongban.v1.Credentials/Verify"


@pytest.fixture(scope="module")
def black_hole() -> Iterator[int]:
    """A loopback port whose connections are accepted by the kernel and never answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, black_hole: int) -> Iterator[Harness]:
    overrides = {"510000": {"330000": f"127.0.0.1:{black_hole}"}}
    with harness_for(tmp_path_factory.mktemp("limits"), peer_overrides=overrides) as h:
        yield h


def seal_request_of_size(size: int) -> credentials_pb2.SealRequest:
    """A SealRequest whose serialized form is exactly `size` bytes."""
    payload = 0
    while True:
        message = credentials_pb2.SealRequest(payload=b"\x00" * payload)
        missing = size - message.ByteSize()
        if missing == 0:
            return message
        payload += missing


# -- message size ------------------------------------------------------------------------------
def test_a_message_over_the_receive_limit_is_refused_by_grpc(harness: Harness) -> None:
    h = harness
    over = seal_request_of_size(MAX_MESSAGE_BYTES + 1)
    result = h.unary("zj.hrss", "330000", SEAL, credentials_pb2.SealResponse, over, timeout=30)
    assert result.code is grpc.StatusCode.RESOURCE_EXHAUSTED, result
    assert "larger than max" in result.details.lower() or "exceeds" in result.details.lower()
    # Exactly at the limit it reaches the gateway, whose own limit for a payload is smaller.
    at = seal_request_of_size(MAX_MESSAGE_BYTES)
    result = h.unary("zj.hrss", "330000", SEAL, credentials_pb2.SealResponse, at, timeout=30)
    assert (result.code, result.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
    ), result
    h.assert_healthy()


def test_the_gateways_own_limits_answer_with_a_reason(harness: Harness) -> None:
    h = harness
    seal = credentials_pb2.SealRequest(payload=b"\x01" * (MAX_SEAL_PAYLOAD_BYTES + 1))
    result = h.unary("zj.hrss", "330000", SEAL, credentials_pb2.SealResponse, seal, timeout=30)
    assert (result.code, result.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    seal = credentials_pb2.SealRequest(payload=b"\x01" * MAX_SEAL_PAYLOAD_BYTES, detached=True)
    result = h.unary("zj.hrss", "330000", SEAL, credentials_pb2.SealResponse, seal, timeout=30)
    assert result.ok, result
    verify = credentials_pb2.VerifyRequest(jws="A" * (MAX_JWS_BYTES + 1))
    result = h.unary(
        "sc.hrss", "510000", VERIFY, credentials_pb2.ValidationReport, verify, timeout=30
    )
    assert (result.code, result.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    batch = exchange_pb2.BatchQueryRequest(items=[valid_query(h)] * 21, request_id="big-batch")
    result = h.unary(
        "sc.hrss",
        "510000",
        "/tongban.v1.DataExchange/BatchQuery",
        exchange_pb2.BatchQueryResponse,
        batch,
        bearer(h.token("sc.hrss")),
    )
    assert (result.code, result.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    h.assert_healthy()


def test_metadata_over_the_hard_limit_is_refused_by_grpc(harness: Harness) -> None:
    h = harness
    stub = h.exchange("sc.hrss")
    query = valid_query(h)
    result = h.call(
        lambda: stub.Query(
            query, metadata=(("authorization", "Bearer " + "A" * 20_000),), timeout=5
        )
    )
    assert result.code is grpc.StatusCode.RESOURCE_EXHAUSTED, result
    h.assert_healthy()


# -- deadlines ---------------------------------------------------------------------------------
def test_a_tiny_client_deadline_ends_the_call_and_the_gateway_stays_healthy(
    harness: Harness,
) -> None:
    h = harness
    for timeout in (0.0001, 0.001, 0.01):
        for _ in range(10):
            token = bearer(h.token("sc.hrss"))
            result = h.unary(
                "sc.hrss",
                "510000",
                QUERY,
                exchange_pb2.QueryResponse,
                valid_query(h),
                token,
                timeout,
            )
            # Either the deadline passed first (client-side, no reason) or the answer came.
            assert result.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK), result
    h.assert_healthy()


def test_a_peer_that_never_answers_costs_the_client_its_deadline_and_no_more(
    harness: Harness,
) -> None:
    h = harness
    stub = h.exchange("sc.hrss")
    subject = h.cluster.subject("330000", "si.participation")

    async def many() -> list[BaseException | exchange_pb2.QueryResponse]:
        calls = [
            stub.Query(
                request("330000", "si.participation", "SI-TRANSFER", subject),
                metadata=bearer(h.token("sc.hrss")),
                timeout=1.0,
            )
            for _ in range(20)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = h.run(many())
    for outcome in outcomes:  # each call ended at its own deadline, the gateway none the worse
        assert isinstance(outcome, grpc.aio.AioRpcError), outcome
        assert outcome.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    h.assert_healthy()


def test_without_a_client_deadline_the_gateway_applies_its_own(harness: Harness) -> None:
    h = harness
    stub = h.exchange("sc.hrss")
    query = request(
        "330000", "si.participation", "SI-TRANSFER", h.cluster.subject("330000", "si.participation")
    )
    result = h.call(lambda: stub.Query(query, metadata=bearer(h.token("sc.hrss"))))  # no timeout
    # The gateway gives up by itself: at its own bound on the peer call (UNAVAILABLE), or at once
    # once the peer's breaker has opened on the timeouts before (issue 14: nothing waits for a
    # frozen dependency); DEADLINE_EXCEEDED only for its own default deadline. Never a hang.
    assert result.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), result
    assert result.reason == "PEER_UNAVAILABLE", result
    assert result.has_error_info  # the gateway's own refusal: a rich status, not the client's
    h.assert_healthy()


# -- regressions found by the fuzzing ----------------------------------------------------------
@pytest.mark.parametrize(
    ("owner", "region", "method", "response", "stream"),
    [
        ("sc.hrss", "510000", "/tongban.v1.DataExchange/Query", exchange_pb2.QueryResponse, False),
        ("510000", "330000", "/tongban.v1.Peer/Forward", exchange_pb2.ForwardResponse, False),
        ("sc.hrss", "510000", VERIFY, credentials_pb2.ValidationReport, False),
        ("zj.data", "330000", "/tongban.v1.Oversight/QueryAudit", oversight_pb2.AuditRecord, True),
        ("sc.hrss", "510000", HEALTH_CHECK, health_pb2.HealthCheckResponse, False),
        ("sc.hrss", "510000", HEALTH_WATCH, health_pb2.HealthCheckResponse, True),
    ],
)
@pytest.mark.parametrize(
    "data",
    [b"\x0a\x02\xff\xfe", b"\xff\xff\xff", b"\x0a\x10abc", b"\x0b" * 200 + b"\x0c" * 200],
    ids=["invalid-utf8-string", "corrupt", "length-past-end", "deep-groups"],
)
def test_a_request_that_does_not_parse_is_invalid_argument_not_unknown(
    harness: Harness,
    owner: str,
    region: str,
    method: str,
    response: type,
    stream: bool,
    data: bytes,
) -> None:
    """Was UNKNOWN ("Unexpected DecodeError") for every RPC, the standard health service's
    too: gRPC's deserializer raised."""
    h = harness
    call = h.stream if stream else h.unary
    result = call(owner, region, method, response, Raw(data), bearer(h.token("sc.hrss")))
    assert (result.code, result.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT_FORMAT",
    ), result


def test_the_open_health_service_still_answers_and_watches(harness: Harness) -> None:
    h = harness

    async def first_watch_message() -> int:
        stub = health_pb2_grpc.HealthStub(h.channel("sc.hrss", "510000"))
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        async for reply in call:
            call.cancel()
            return int(reply.status)
        raise AssertionError("Watch ended without a message")

    assert h.run(first_watch_message()) == health_pb2.HealthCheckResponse.SERVING
    h.assert_healthy()


@pytest.mark.parametrize(
    "stamp",
    [
        Timestamp(seconds=0, nanos=-1),
        Timestamp(seconds=2**62),
        Timestamp(seconds=-(2**63)),
        Timestamp(seconds=1, nanos=10**9),
    ],
    ids=["negative-nanos", "year-past-9999", "year-before-1", "nanos-overflow"],
)
def test_out_of_range_times_are_invalid_argument(harness: Harness, stamp: Timestamp) -> None:
    """Was UNKNOWN (ValueError from Timestamp.ToDatetime) in QueryAudit and SubjectAccess."""
    h = harness
    result = h.stream(
        "zj.data",
        "330000",
        "/tongban.v1.Oversight/QueryAudit",
        oversight_pb2.AuditRecord,
        oversight_pb2.QueryAuditRequest(until=stamp),
    )
    assert (result.code, result.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT_FORMAT",
    ), result
    result = h.unary(
        "zj.data",
        "330000",
        "/tongban.v1.Oversight/SubjectAccess",
        oversight_pb2.SubjectAccessResponse,
        oversight_pb2.SubjectAccessRequest(subject_id="x", since=stamp),
    )
    assert (result.code, result.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT_FORMAT",
    ), result


@pytest.mark.parametrize(
    ("token", "ok"),
    [
        ("²", False),  # str.isdigit() is true, int() raised
        ("٣", False),  # Arabic-Indic three: int() accepted it
        ("9" * 5000, False),  # int() refuses more than 4300 digits
        (str(2**63), False),  # too large for SQLite's INTEGER (OverflowError)
        (str(2**63 - 1), True),
        ("0", True),
    ],
    ids=["superscript", "arabic-digit", "5000-digits", "2**63", "2**63-1", "zero"],
)
def test_page_tokens_are_ascii_indexes(harness: Harness, token: str, ok: bool) -> None:
    """Was UNKNOWN (ValueError, OverflowError) for the first, third and fourth."""
    h = harness
    result = h.stream(
        "zj.data",
        "330000",
        "/tongban.v1.Oversight/QueryAudit",
        oversight_pb2.AuditRecord,
        oversight_pb2.QueryAuditRequest(page_token=token),
    )
    if ok:
        assert result.ok, result
    else:
        assert (result.code, result.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT_FORMAT",
        ), result


@pytest.mark.parametrize(
    "proof",
    [
        oversight_pb2.GetProofRequest(
            inclusion=oversight_pb2.InclusionProofRequest(index=0, tree_size=10**12)
        ),
        oversight_pb2.GetProofRequest(
            consistency=oversight_pb2.ConsistencyProofRequest(first_size=1, second_size=2**63)
        ),
        oversight_pb2.GetProofRequest(
            inclusion=oversight_pb2.InclusionProofRequest(index=0, tree_size=10**6)
        ),
    ],
    ids=["inclusion-10**12", "consistency-2**63", "inclusion-10**6"],
)
def test_a_proof_for_a_tree_larger_than_the_log_is_refused_at_once(
    harness: Harness, proof: oversight_pb2.GetProofRequest
) -> None:
    """Was a hang (the tree was rebuilt one empty 10,000-row chunk at a time up to the asked
    size) or, for sizes the store could scan quickly, UNAVAILABLE AUDIT_UNAVAILABLE."""
    h = harness
    result = h.unary(  # a hang would end in the call's deadline: DEADLINE_EXCEEDED, not this
        "zj.data", "330000", "/tongban.v1.Oversight/GetProof", oversight_pb2.GetProofResponse, proof
    )
    assert (result.code, result.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT_FORMAT",
    ), result
    h.assert_healthy()


@pytest.mark.parametrize("kind", ["list", "object"])
def test_a_seal_with_a_deeply_nested_header_is_a_format_failure_report(
    harness: Harness, kind: str
) -> None:
    """Was UNKNOWN (RecursionError from the JSON decoder in signer's header parsing)."""
    h = harness
    header = b64url(Deep(100_000, kind).text().encode())
    verify = credentials_pb2.VerifyRequest(jws=f"{header}.{b64url(b'{}')}.AAAA")
    result = h.unary("sc.hrss", "510000", VERIFY, credentials_pb2.ValidationReport, verify)
    assert result.ok, result
    assert result.response.indication == credentials_pb2.TOTAL_FAILED
    assert result.response.sub_indication == credentials_pb2.FORMAT_FAILURE
    # A header that is deep but parses is an ordinary failure too.
    shallow = credentials_pb2.VerifyRequest(jws=f"{json_header({'a': [[[1]]]})}.e30.AAAA")
    result = h.unary("sc.hrss", "510000", VERIFY, credentials_pb2.ValidationReport, shallow)
    assert result.ok
    assert result.response.indication == credentials_pb2.TOTAL_FAILED


def test_a_huge_value_quoted_in_an_error_keeps_the_error_info(harness: Harness) -> None:
    """Was RESOURCE_EXHAUSTED without ErrorInfo: Peer.Forward quoted a 400 kB provider_region
    in its status message, and the trailers then exceeded the client's metadata limit. (Since
    T16 the owner checks the request's shape first: the value is refused as too large, named
    by argument, and quoted nowhere.)"""
    h = harness
    forward = exchange_pb2.ForwardRequest(
        query=exchange_pb2.QueryRequest(provider_region="\x80" * 200_000, request_id="r"),
        caller=common_pb2.CallerIdentity(agency_id="sc.hrss", region="510000"),
        requesting_region="510000",
    )
    forward = sign_forward_message(h.fed, forward)
    result = h.unary(
        "510000", "330000", "/tongban.v1.Peer/Forward", exchange_pb2.ForwardResponse, forward
    )
    assert (result.code, result.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    assert len(result.details.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert "\x80" not in result.details
    h.assert_healthy()


def test_status_messages_are_bounded_in_utf8_bytes() -> None:
    assert bounded_message("short") == "short"
    cut = bounded_message("浙" * 1000)
    assert len(cut.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert cut.endswith("…")
    assert cut.startswith("浙" * 300)


def test_call_timeout_is_the_fuzzing_deadline() -> None:
    assert CALL_TIMEOUT <= DEFAULT_DEADLINE_SECONDS
