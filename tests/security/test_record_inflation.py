"""Record inflation and forged identifiers (docs/threats.md T16), through real channels to three
gateways: request values that would make an audit record a weapon (megabytes that break the
citizen's data tracker, a citizen id slipped into a field that is not the subject) are refused
and recorded as length and digest, never raw, on the requesting and on the owning gateway."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import Federation, credentials_as, error_info, region_root

from gateway.audit import Outcome
from tongban.v1 import (
    credentials_pb2,
    credentials_pb2_grpc,
    exchange_pb2,
    oversight_pb2,
    oversight_pb2_grpc,
)

pytestmark = pytest.mark.integration

REDIS = "redis://127.0.0.1:6379/0"
REQUESTER, OWNER = "510000", "330000"
# A valid GB 11643 number (the standard's own example), not the subject of any query here.
CITIZEN_ID = "11010519491231002X"
HUGE_CHARS = 9 * 1024 * 1024  # a case id of 9 MiB, as in the issue


def digest_form(value: str) -> str:
    data = value.encode()
    return f"sha256:{hashlib.sha256(data).hexdigest()};len={len(data)}"


async def tracker(cluster: Cluster, region: str, subject: str) -> list[Any]:
    """`Oversight.SubjectAccess(subject)` on `region`'s gateway, as its data bureau."""
    oversight = {"330000": "zj.data", "510000": "sc.data"}[region]
    async with grpc.aio.secure_channel(
        f"localhost:{cluster.ports[region]}", credentials_as(cluster.fed, oversight, region)
    ) as channel:
        answer = await oversight_pb2_grpc.OversightStub(channel).SubjectAccess(
            oversight_pb2.SubjectAccessRequest(subject_id=subject), timeout=CALL_TIMEOUT * 2
        )
    return list(answer.entries)


async def test_megabyte_case_ids_do_not_break_the_data_tracker_on_either_gateway(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    huge = "C" * HUGE_CHARS
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        subject = cluster.subject(OWNER, "si.participation")
        for n in range(2):
            # through the requesting gateway, as an agency ...
            query = request(OWNER, "si.participation", "SI-TRANSFER", subject, case_id=huge)
            async with cluster.exchange("sc.hrss") as stub:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Query(
                        query, metadata=bearer(cluster.token("sc.hrss")), timeout=CALL_TIMEOUT
                    )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, n
            assert error_info(caught.value).reason == "REQUEST_TOO_LARGE"
            # ... and straight to the owner, as a compromised requesting gateway would
            forward = kit.forward_request(
                request(OWNER, "si.participation", "SI-TRANSFER", subject, case_id=huge),
                agency="sc.hrss",
                agency_region=REQUESTER,
                requesting_region=REQUESTER,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await kit.forward(cluster, OWNER, forward, as_owner=REQUESTER)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, n
            assert error_info(caught.value).reason == "REQUEST_TOO_LARGE"

        for region in (REQUESTER, OWNER):
            entries = await tracker(cluster, region, subject)
            assert [e.case_id for e in entries] == [digest_form(huge)] * 2, region
            assert all(e.outcome == 2 for e in entries)  # OUTCOME_DENIED
            audited = await kit.audited(cluster, region)
            # the tracker's own read is an access too, recorded as such (T19)
            assert [r.rpc for r in audited if r.rpc.startswith("/tongban.v1.Oversight/")] == [
                "/tongban.v1.Oversight/SubjectAccess"
            ]
            records = [r for r in audited if not r.rpc.startswith("/tongban.v1.Oversight/")]
            assert len(records) == 2
            assert all(len(r.canonical) < 4096 for r in records)
            assert all(r.reason == "REQUEST_TOO_LARGE" for r in records)


def _with_citizen_id(field: str, subject: str) -> exchange_pb2.QueryRequest:
    values: dict[str, Any] = {
        "purpose": "SI-TRANSFER",
        "dataset": "si.participation",
        "case_id": "CASE-2026-0001",
        "fields": (),
        "request_id": None,
    }
    values[field] = (CITIZEN_ID,) if field == "fields" else CITIZEN_ID
    return request(
        OWNER,
        values["dataset"],
        values["purpose"],
        subject,
        fields=values["fields"],
        case_id=values["case_id"],
        request_id=values["request_id"],
    )


@pytest.mark.parametrize("field", ["purpose", "dataset", "case_id", "fields", "request_id"])
async def test_a_citizen_id_in_a_field_that_is_not_the_subject_is_refused_and_never_recorded(
    federation: Federation,
    tmp_path: Path,
    kit: Any,
    caplog: pytest.LogCaptureFixture,
    field: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        subject = cluster.subject(OWNER, "si.participation")
        assert subject != CITIZEN_ID
        async with cluster.exchange("sc.hrss") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    _with_citizen_id(field, subject),
                    metadata=bearer(cluster.token("sc.hrss")),
                    timeout=CALL_TIMEOUT,
                )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info.reason == "INVALID_ARGUMENT_FORMAT"
        assert info.metadata["field"] == field
        assert CITIZEN_ID not in (caught.value.details() or "")
        (record,) = await kit.audited(cluster, REQUESTER)
        assert (record.outcome, record.reason) == (Outcome.DENIED, "INVALID_ARGUMENT_FORMAT")
        recorded = {
            "purpose": record.purpose,
            "dataset": record.dataset,
            "case_id": record.case_id,
            "request_id": record.request_id,
        }
        if field in recorded:
            assert recorded[field] == digest_form(CITIZEN_ID)
        for region in (REQUESTER, OWNER):
            for stored in await kit.audited(cluster, region):
                assert CITIZEN_ID not in stored.canonical.decode(), region
    assert CITIZEN_ID not in caplog.text
    for entry in caplog.records:
        assert CITIZEN_ID not in entry.getMessage()


TRUNCATED = b"\x0a\x05ab"  # field 1 says 5 bytes, 2 follow: no message parses it
NOT_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (provider_region), a string that is not UTF-8


async def _raw_call(
    cluster: Cluster, owner: str, region: str, method: str, body: bytes, metadata: tuple[Any, ...]
) -> grpc.aio.AioRpcError:
    async with grpc.aio.secure_channel(
        f"localhost:{cluster.ports[region]}", credentials_as(cluster.fed, owner, region)
    ) as channel:
        call = channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(body, metadata=metadata, timeout=CALL_TIMEOUT)
    return caught.value


# (caller, its gateway's region or the peer's, method, rpc recorded, request bytes)
MALFORMED_CALLS = [
    ("sc.hrss", REQUESTER, "/tongban.v1.DataExchange/Query", NOT_UTF8),
    ("sc.hrss", REQUESTER, "/tongban.v1.DataExchange/Query"),
    ("sc.hrss", REQUESTER, "/tongban.v1.DataExchange/BatchQuery"),
    ("sc.hrss", REQUESTER, "/tongban.v1.Credentials/Fetch"),
    ("sc.hrss", REQUESTER, "/tongban.v1.Credentials/Seal"),
    ("sc.hrss", REQUESTER, "/tongban.v1.Credentials/Verify"),
    (REQUESTER, OWNER, "/tongban.v1.Peer/Forward"),
    (REQUESTER, OWNER, "/tongban.v1.Peer/ReportAccess"),
    # reading the audit log is an access too (T19): a request that does not parse is recorded
    ("sc.data", REQUESTER, "/tongban.v1.Oversight/SubjectAccess"),
    ("sc.data", REQUESTER, "/tongban.v1.Oversight/QueryAudit"),
    # so is a citizen's trail, and their consents
    ("sc.data", REQUESTER, "/tongban.v1.Tracker/Trail"),
    (REQUESTER, OWNER, "/tongban.v1.Peer/SubjectTrail"),
    ("sc.hrss", REQUESTER, "/tongban.v1.Consents/Revoke"),
    (REQUESTER, OWNER, "/tongban.v1.Peer/ConsentStatus"),
]


async def test_a_malformed_request_of_a_known_caller_is_refused_and_audited(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        for caller, region, method, *body in MALFORMED_CALLS:
            token = bearer(cluster.token(caller)) if caller != REQUESTER else ()
            refused = await _raw_call(
                cluster, caller, region, method, body[0] if body else TRUNCATED, token
            )
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert error_info(refused).reason == "INVALID_ARGUMENT_FORMAT", method
            record = (await kit.audited(cluster, region))[-1]
            assert record.rpc == method  # the full gRPC method name
            assert (record.outcome, record.reason) == (Outcome.DENIED, "INVALID_ARGUMENT_FORMAT")
            assert (record.caller_agency, record.caller_region) == (
                "" if caller == REQUESTER else caller,
                REQUESTER,
            )
            assert (record.request_id, record.dataset, record.purpose, record.case_id) == (
                "",
                "",
                "",
                "",
            )
        for region in (REQUESTER, OWNER):
            audit = cluster.gateways[region].audit
            assert audit is not None
            assert (await audit.verify()).intact


def _gateway_log(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged but by the test's own raw client (the h2 and hpack libraries)."""
    handler = logging.Formatter()
    return "\n".join(
        handler.format(r) for r in caplog.records if not r.name.startswith(("h2", "hpack"))
    )


def _h2_call(
    cluster: Cluster,
    owner: str,
    region: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    calls: int = 1,
) -> list[dict[bytes, bytes]]:
    """`calls` DataExchange.Query calls on one raw HTTP/2 connection over mTLS, with `headers`
    sent exactly as given (the h2 library, no validation): what a grpc channel refuses to send.
    Returns each call's response headers and trailers, merged."""
    chain, key = cluster.fed.tls_files(owner)
    context = ssl.create_default_context(cadata=region_root(cluster.fed, region).decode())
    context.load_cert_chain(chain, key)
    context.set_alpn_protocols(["h2"])
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    answers: list[dict[bytes, bytes]] = []
    with (
        socket.create_connection(("localhost", cluster.ports[region]), timeout=CALL_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        connection = h2.connection.H2Connection(config=config)
        connection.initiate_connection()
        tls.sendall(connection.data_to_send())
        for n in range(calls):
            stream = 1 + 2 * n
            connection.send_headers(
                stream,
                [
                    (b":method", b"POST"),
                    (b":scheme", b"https"),
                    (b":path", b"/tongban.v1.DataExchange/Query"),
                    (b":authority", b"localhost"),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                    *(headers if n == 0 else [h for h in headers if h[0] == b"authorization"]),
                ],
            )
            connection.send_data(
                stream, b"\x00" + struct.pack(">I", len(body)) + body, end_stream=True
            )
            tls.sendall(connection.data_to_send())
            answer: dict[bytes, bytes] = {}
            while not answer.get(b"done"):
                data = tls.recv(65536)
                assert data, "the gateway closed the connection"
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        answer.update(dict(event.headers))
                    if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        answer[b"done"] = b"1"
                tls.sendall(connection.data_to_send())
            answers.append(answer)
            body = request(OWNER, "si.participation", "SI-TRANSFER", "-").SerializeToString()
    return answers


async def test_a_metadata_value_that_is_not_utf8_is_withheld_from_the_log(
    federation: Federation, tmp_path: Path, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """grpc reads such a value as Latin-1 (our code then sees a bad token, or ignores the key);
    what it logs about it names neither the value nor a token in it."""
    caplog.set_level(logging.DEBUG)
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        token = cluster.token("sc.hrss")
        subject = cluster.subject(OWNER, "si.participation")
        query = request(OWNER, "si.participation", "SI-TRANSFER", subject).SerializeToString()
        (noted,) = await asyncio.to_thread(
            _h2_call,
            cluster,
            "sc.hrss",
            REQUESTER,
            [
                (b"authorization", f"Bearer {token}".encode()),
                (b"x-note", CITIZEN_ID.encode() + b"\xff\xfe"),
            ],
            query,
        )
        assert noted[b"grpc-status"] == b"0"  # an unknown key is ignored, whatever its value
        (unreadable,) = await asyncio.to_thread(
            _h2_call,
            cluster,
            "sc.hrss",
            REQUESTER,
            [(b"authorization", f"Bearer {token[:-4]}".encode() + b"\xff\xfe")],
            request(OWNER, "si.participation", "SI-TRANSFER", subject).SerializeToString(),
        )
        assert unreadable[b"grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0]).encode()
        assert b"TOKEN_INVALID" in base64.b64decode(unreadable[b"grpc-status-details-bin"] + b"==")
    logged = _gateway_log(caplog)
    assert "not UTF-8" in logged
    assert CITIZEN_ID not in logged
    assert token[:-4] not in logged
    assert all(r.exc_info is None for r in caplog.records if r.name == "grpc._cython.cygrpc")


async def test_a_metadata_key_that_is_not_utf8_is_refused_by_grpc_before_the_gateway(
    federation: Federation, tmp_path: Path, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """grpc core's HPACK parser refuses a header key outside gRPC's grammar (lower-case ASCII
    letters, digits, '-', '_', '.') with INTERNAL, hard-coded (hpack_parse_result.cc), before
    any of the gateway's code runs: nothing is audited or logged by the gateway, and the
    connection goes on serving. docs/threats.md T16 records this as a residual behaviour; if
    this test fails, grpc changed it, and the docs must say what it does now."""
    caplog.set_level(logging.DEBUG)
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        token = cluster.token("sc.hrss")
        subject = cluster.subject(OWNER, "si.participation")
        refused, next_call = await asyncio.to_thread(
            _h2_call,
            cluster,
            "sc.hrss",
            REQUESTER,
            [
                (b"authorization", f"Bearer {token}".encode()),
                (b"x-" + CITIZEN_ID.encode() + b"\xff\xfe", b"v"),
            ],
            request(OWNER, "si.participation", "SI-TRANSFER", subject).SerializeToString(),
            calls=2,
        )
        assert refused[b"grpc-status"] == b"13"
        assert next_call[b"grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]).encode()
        assert await kit.audited(cluster, OWNER) == []
    assert CITIZEN_ID not in _gateway_log(caplog)


async def test_credentials_fetch_checks_its_arguments_as_a_query_does(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    huge = "C" * HUGE_CHARS
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        business = cluster.subject(OWNER, "market.business_licence")
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports[REQUESTER]}",
            credentials_as(cluster.fed, "sc.amr", REQUESTER),
        ) as channel:
            stub = credentials_pb2_grpc.CredentialsStub(channel)
            for field, changes in (
                ("purpose", {"purpose": CITIZEN_ID}),
                ("case_id", {"case_id": huge}),
                ("request_id", {"request_id": f"r-{CITIZEN_ID}"}),
            ):
                fetch = credentials_pb2.FetchCredentialRequest(
                    issuing_region=OWNER,
                    credential_type="business_licence",
                    subject_id=business,
                    request_id="cred-1",
                )
                for name, value in changes.items():
                    setattr(fetch, name, value)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Fetch(
                        fetch, metadata=bearer(cluster.token("sc.amr")), timeout=CALL_TIMEOUT
                    )
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
                assert error_info(caught.value).metadata["field"] == field
        records = await kit.audited(cluster, REQUESTER)
        assert [r.rpc for r in records] == ["/tongban.v1.Credentials/Fetch"] * 3
        assert records[0].purpose == digest_form(CITIZEN_ID)
        assert records[1].case_id == digest_form(huge)
        assert records[2].request_id == digest_form(f"r-{CITIZEN_ID}")
        assert all(CITIZEN_ID not in r.canonical.decode() for r in records)


async def test_a_batch_of_the_wrong_size_is_refused_and_audited(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS) as cluster:
        subject = cluster.subject(OWNER, "si.participation")
        items = [
            request(OWNER, "si.participation", "SI-TRANSFER", subject, case_id="C" * 100_000)
            for _ in range(21)
        ]
        async with cluster.exchange("sc.hrss") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.BatchQuery(
                    exchange_pb2.BatchQueryRequest(items=items),
                    metadata=bearer(cluster.token("sc.hrss")),
                    timeout=CALL_TIMEOUT,
                )
        assert error_info(caught.value).reason == "REQUEST_TOO_LARGE"
        (record,) = await kit.audited(cluster, REQUESTER)
        assert (record.rpc, record.outcome, record.reason) == (
            "DataExchange.BatchQuery",
            Outcome.DENIED,
            "REQUEST_TOO_LARGE",
        )
        assert (record.caller_agency, record.caller_region, record.case_id) == (
            "sc.hrss",
            REQUESTER,
            "",
        )
