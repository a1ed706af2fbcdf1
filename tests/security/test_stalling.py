"""Stalled streams (issue 13, docs/threats.md T15): a holder of one agency certificate opens many
HTTP/2 streams of `DataExchange/Query`, sends HEADERS and a DATA frame whose gRPC length prefix
promises more bytes than it sends, and never ends them. The gateway must keep answering a
legitimate agency and a peer gateway all the same.

The attacker speaks raw HTTP/2 (the `h2` library) over real TLS with ALPN `h2` and the agency's
real client certificate: a gRPC client library would not send such frames."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import struct
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from google.rpc import error_details_pb2, status_pb2
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import Federation, error_info, eventually, region_root

from gateway.admission import DEFAULT_LIMITS, Limits, Pool
from gateway.identity import REQUEST_RECEIVE_SECONDS
from gateway.server import MAX_STREAMS_PER_CONNECTION

pytestmark = pytest.mark.integration

TARGET = "510000"  # the gateway under attack: sc.hrss's own, and the provider cq.hrss reaches
ATTACKER = "zj.data"  # any federation certificate will do; this one names an agency
CONNECTIONS = 21
STREAMS_PER_CONNECTION = 100
QUERIES_PER_CALLER = 100
QUERY_CONCURRENCY = 4
QUERY = "/tongban.v1.DataExchange/Query"
GRPC_STATUS = {
    "0": "OK",
    "1": "CANCELLED",
    "3": "INVALID_ARGUMENT",
    "4": "DEADLINE_EXCEEDED",
    "8": "RESOURCE_EXHAUSTED",
}
# A gRPC message prefix (uncompressed, 1,000 bytes to come) and only the first 10 of them.
STALLED_DATA = b"\x00" + struct.pack(">I", 1000) + b"\x0a\x08" + b"1" * 8


class StallingConnection:
    """One raw HTTP/2 connection that opens `Query` streams and never finishes their requests.
    Each stream's end is recorded: the gRPC status name, or "RESET" for a RST_STREAM. While
    `retake` holds, a stream that ended other than RESOURCE_EXHAUSTED is opened again: a slot the
    gateway held until the request was overdue is taken back, and a stream the transport shed
    under the burst is tried again; an outright refusal is taken as final."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.settings = asyncio.Event()
        self.open: set[int] = set()
        self.ended: dict[int, str] = {}
        self.reasons: Counter[str] = Counter()
        self.reason: dict[int, str] = {}
        self.retake = True
        self.to_retake = 0  # streams ended, to be opened again
        self.closed = asyncio.Event()  # the server closed the connection

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext) -> StallingConnection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        connection = cls(reader, writer)
        connection.h2.initiate_connection()
        await connection.flush()
        return connection

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    def stall(self, count: int, path: str = QUERY) -> None:
        for _ in range(count):
            self.send(path, STALLED_DATA)

    def send(self, path: str, data: bytes | None) -> int:
        """Open a stream of `path` and send `data`, never ending it; with None, end the stream
        right after its HEADERS (a call without a request message)."""
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
            end_stream=data is None,
        )
        if data is not None:
            self.h2.send_data(stream, data)
        self.open.add(stream)
        return stream

    def _ended(self, stream: int, outcome: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        if stream in self.ended:
            return
        self.open.discard(stream)
        self.ended[stream] = outcome
        if outcome != "RESOURCE_EXHAUSTED":
            self.to_retake += 1
        for name, value in headers:
            if name == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(base64.b64decode(value + "=="))
                for detail in status.details:
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info):
                        self.reasons[info.reason] += 1
                        self.reason[stream] = info.reason

    async def pump(self) -> None:
        """Read and answer the server until the connection closes."""
        try:
            while data := await self.reader.read(65536):
                for event in self.h2.receive_data(data):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        self.settings.set()
                    elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        headers = [(str(k), str(v)) for k, v in event.headers]
                        status = dict(headers).get("grpc-status")
                        if status is not None:
                            self._ended(event.stream_id, GRPC_STATUS.get(status, status), headers)
                    elif isinstance(event, h2.events.StreamReset):
                        self._ended(event.stream_id, "RESET")
                    elif isinstance(event, h2.events.DataReceived):
                        self.h2.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                if self.retake and self.to_retake:
                    self.stall(self.to_retake)
                    self.to_retake = 0
                await self.flush()
        except (ConnectionError, ssl.SSLError):
            pass
        self.closed.set()

    def close(self) -> None:
        self.writer.close()


def attacker_tls(
    fed: Federation, owner: str = ATTACKER, files: tuple[Path, Path] | None = None
) -> ssl.SSLContext:
    """TLS with ALPN h2 as `owner`, or with the (chain, key) `files`, trusting TARGET's root."""
    chain, key = files or fed.tls_files(owner)
    root = fed.root / "target-root.pem"
    root.write_bytes(region_root(fed, TARGET))
    context = ssl.create_default_context(cafile=str(root))
    context.load_cert_chain(chain, key)
    context.set_alpn_protocols(["h2"])
    return context


@contextlib.asynccontextmanager
async def raw_connections(
    fed: Federation,
    port: int,
    count: int,
    owner: str = ATTACKER,
    *,
    context: ssl.SSLContext | None = None,
) -> AsyncIterator[list[StallingConnection]]:
    """`count` raw HTTP/2 connections as `owner` (or with `context`), each past the server's
    SETTINGS."""
    context = context or attacker_tls(fed, owner)
    connections = [await StallingConnection.connect(port, context) for _ in range(count)]
    pumps = [asyncio.ensure_future(c.pump()) for c in connections]
    try:
        for connection in connections:
            await asyncio.wait_for(connection.settings.wait(), timeout=10)
        yield connections
    finally:
        for connection in connections:
            connection.close()
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def settled(attack: list[StallingConnection], seconds: float) -> int:
    """The attacker's streams still open once none is, or after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (held := sum(len(c.open) for c in attack)) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    return held


async def ended(connection: StallingConnection, streams: set[int], seconds: float) -> None:
    """Once each of `streams` of `connection` has ended (or after `seconds`): what a test of
    those streams waits for, not the rest of what the connection may hold open."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline and not streams <= connection.ended.keys():
        await asyncio.sleep(0.05)


async def keep_querying(
    cluster: Cluster, agency: str, provider: str, *, queries: int = QUERIES_PER_CALLER
) -> Counter[str]:
    """`queries` queries of `provider`'s si.participation as `agency`, a few at a
    time; the outcome of each by gRPC status name."""
    outcomes: Counter[str] = Counter()
    token = cluster.token(agency)
    subjects = [cluster.subject(provider, "si.participation", n=n) for n in range(5)]
    async with cluster.exchange(agency) as stub:

        async def one(n: int) -> None:
            try:
                await stub.Query(
                    request(provider, "si.participation", "SI-TRANSFER", subjects[n % 5]),
                    metadata=bearer(token),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1
            else:
                outcomes["OK"] += 1

        for first in range(0, queries, QUERY_CONCURRENCY):
            await asyncio.gather(*(one(n) for n in range(first, first + QUERY_CONCURRENCY)))
    return outcomes


async def test_stalled_streams_of_one_certificate_do_not_stall_anyone_else(
    federation: Federation, tmp_path: Path
) -> None:
    """21 connections x 100 stalled `Query` streams from one agency certificate: the gateway
    holds the certificate's budget of them (never more) and refuses the rest at once
    (RESOURCE_EXHAUSTED, TOO_MANY_CALLS; or the transport's own refusal under the burst); those
    held end when their request is overdue (DEADLINE_EXCEEDED, REQUEST_INCOMPLETE) and the
    attacker takes the slots back; one connection carries at most MAX_STREAMS_PER_CONNECTION
    streams (HTTP/2 SETTINGS). Meanwhile an agency of the attacked region, and a peer gateway
    forwarding to it, keep >= 99 % success."""
    budget = DEFAULT_LIMITS[Pool.AGENCIES].per_certificate
    async with running_cluster(federation, tmp_path) as cluster:
        async with raw_connections(federation, cluster.ports[TARGET], CONNECTIONS) as attack:
            for connection in attack:
                connection.stall(STREAMS_PER_CONNECTION)
                await connection.flush()
            for connection in attack:
                advertised = connection.h2.remote_settings.max_concurrent_streams
                assert advertised == MAX_STREAMS_PER_CONNECTION
            # The attacker holds all the calls its certificate may hold, and no more.
            admission = cluster.gateways[TARGET].admission
            attacker = cluster.thumbprint(ATTACKER)
            await eventually(
                lambda: admission.in_flight(Pool.AGENCIES, attacker) == budget,
                "the attacker's budget held",
                timeout=REQUEST_RECEIVE_SECONDS - 1,
            )
            agency, peer = await asyncio.gather(
                keep_querying(cluster, "sc.hrss", "330000"),  # an agency of the attacked region
                keep_querying(cluster, "cq.hrss", TARGET),  # Peer.Forward into it
            )
            for connection in attack:
                connection.retake = False
            still_open = await settled(attack, seconds=REQUEST_RECEIVE_SECONDS + 10)
            gateway = cluster.gateways[TARGET]
            gateway.observe()
            refused = gateway.metrics.registry.get_sample_value(
                "tongban_calls_refused_total", {"pool": "agencies", "limit": "certificate"}
            )
        ended: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        for connection in attack:
            ended.update(connection.ended.values())
            reasons.update(connection.reasons)

    assert agency["OK"] >= 0.99 * QUERIES_PER_CALLER, agency
    assert peer["OK"] >= 0.99 * QUERIES_PER_CALLER, peer
    assert still_open == 0, f"{still_open} attacker streams outlived the receive deadline"
    initial = CONNECTIONS * STREAMS_PER_CONNECTION
    assert set(ended) <= {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED", "RESET"}, ended
    assert ended["RESOURCE_EXHAUSTED"] + ended["CANCELLED"] + ended["RESET"] >= initial - budget
    assert ended["RESOURCE_EXHAUSTED"] >= 1
    assert reasons["TOO_MANY_CALLS"] == ended["RESOURCE_EXHAUSTED"], (reasons, ended)
    assert refused == ended["RESOURCE_EXHAUSTED"]  # and the operators see them
    assert ended["DEADLINE_EXCEEDED"] >= 1
    assert reasons["REQUEST_INCOMPLETE"] == ended["DEADLINE_EXCEEDED"], (reasons, ended)


@pytest.mark.parametrize(
    "path",
    [
        "/tongban.v1.Credentials/Verify",
        "/tongban.v1.Oversight/QueryAudit",  # server streaming
        "/tongban.v1.Registry/Watch",  # server streaming, long-lived once its request is in
        "/grpc.health.v1.Health/Check",  # an open service: no identity needed
        "/grpc.health.v1.Health/Watch",  # open, streaming with context.write
    ],
)
async def test_every_unary_request_rpc_bounds_the_time_to_receive_its_request(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A request that never arrives in full ends the call with DEADLINE_EXCEEDED
    (REQUEST_INCOMPLETE) once REQUEST_RECEIVE_SECONDS (0.5 s here) have passed; a call that
    ends without any request message is INVALID_ARGUMENT (INVALID_ARGUMENT_FORMAT)."""
    monkeypatch.setattr("gateway.identity.REQUEST_RECEIVE_SECONDS", 0.5)
    async with (
        running_cluster(federation, tmp_path) as cluster,
        raw_connections(federation, cluster.ports[TARGET], 1) as (connection,),
    ):
        stalled = connection.send(path, STALLED_DATA)
        empty = connection.send(path, None)
        await connection.flush()
        await ended(connection, {stalled, empty}, seconds=5)
    assert connection.ended[stalled] == "DEADLINE_EXCEEDED"
    assert connection.reason[stalled] == "REQUEST_INCOMPLETE"
    assert connection.ended[empty] == "INVALID_ARGUMENT"
    assert connection.reason[empty] == "INVALID_ARGUMENT_FORMAT"


async def test_an_open_service_holds_at_most_a_certificates_budget(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Health checks need no identity, but their calls are still admitted by certificate: past
    the budget (2 here) a stalled one is refused at once."""
    small = dict(DEFAULT_LIMITS)
    small[Pool.AGENCIES] = Limits(per_certificate=2, pool=10)
    monkeypatch.setattr("gateway.admission.DEFAULT_LIMITS", MappingProxyType(small))
    async with (
        running_cluster(federation, tmp_path) as cluster,
        raw_connections(federation, cluster.ports[TARGET], 1) as (connection,),
    ):
        connection.stall(5, "/grpc.health.v1.Health/Check")
        await connection.flush()
        await settled([connection], seconds=1)
        assert len(connection.open) == 2  # held until their requests are overdue
    assert Counter(connection.ended.values()) == {"RESOURCE_EXHAUSTED": 3}
    assert connection.reasons == {"TOO_MANY_CALLS": 3}


async def test_a_certificate_that_names_no_party_has_a_small_budget(
    federation: Federation, tmp_path: Path, kit: Any
) -> None:
    """A certificate a region's CA issued for no party the registry knows passes the TLS
    handshake and may ask the open health service, from the `OTHERS` pool only: past its
    budget (20) a stalled call is refused at once."""
    chain, key = kit.certificate(federation, "urn:tongban:agency:nobody", issued_by="330000")
    files = (tmp_path / "nobody.pem", tmp_path / "nobody.key")
    files[0].write_bytes(chain)
    files[1].write_bytes(key)
    budget = DEFAULT_LIMITS[Pool.OTHERS].per_certificate
    async with (
        running_cluster(federation, tmp_path) as cluster,
        raw_connections(
            federation,
            cluster.ports[TARGET],
            1,
            context=attacker_tls(federation, files=files),
        ) as (connection,),
    ):
        connection.stall(budget + 5, "/grpc.health.v1.Health/Check")
        await connection.flush()
        await settled([connection], seconds=1)
        assert len(connection.open) == budget
        assert cluster.gateways[TARGET].admission.in_flight(Pool.OTHERS) == budget
    assert Counter(connection.ended.values()) == {"RESOURCE_EXHAUSTED": 5}
    assert connection.reasons == {"TOO_MANY_CALLS": 5}


async def test_agencies_together_cannot_take_the_peers_calls(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two agencies hold the agencies' whole pool (2 x 4 calls here) with stalled streams: a
    third agency is refused (RESOURCE_EXHAUSTED, TOO_MANY_CALLS), but a peer gateway forwarding
    into the region is answered, from the peers' own pool."""
    small = dict(DEFAULT_LIMITS)
    small[Pool.AGENCIES] = Limits(per_certificate=QUERY_CONCURRENCY, pool=2 * QUERY_CONCURRENCY)
    monkeypatch.setattr("gateway.admission.DEFAULT_LIMITS", MappingProxyType(small))
    async with running_cluster(federation, tmp_path) as cluster:
        port = cluster.ports[TARGET]
        async with (
            raw_connections(federation, port, 1, "zj.data") as (first,),
            raw_connections(federation, port, 1, "zj.hrss") as (second,),
        ):
            for connection in (first, second):
                connection.stall(QUERY_CONCURRENCY)
                await connection.flush()
            admission = cluster.gateways[TARGET].admission
            await eventually(
                lambda: admission.in_flight(Pool.AGENCIES) == 2 * QUERY_CONCURRENCY, "the pool held"
            )
            async with cluster.exchange("sc.hrss") as stub:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Query(
                        request(
                            "330000",
                            "si.participation",
                            "SI-TRANSFER",
                            cluster.subject("330000", "si.participation"),
                        ),
                        metadata=bearer(cluster.token("sc.hrss")),
                        timeout=CALL_TIMEOUT,
                    )
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(caught.value).reason == "TOO_MANY_CALLS"
            peer = await keep_querying(cluster, "cq.hrss", TARGET, queries=QUERY_CONCURRENCY)
    assert peer == {"OK": QUERY_CONCURRENCY}


async def test_a_connection_that_never_finishes_its_tls_handshake_is_closed(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that opens TCP connections and never completes the TLS handshake holds them no
    longer than HANDSHAKE_TIMEOUT_SECONDS (1 s here)."""
    monkeypatch.setattr("gateway.server.HANDSHAKE_TIMEOUT_SECONDS", 1)
    async with running_cluster(federation, tmp_path) as cluster:
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.ports[TARGET])
        try:
            writer.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        finally:
            writer.close()


async def test_an_idle_connection_is_closed(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection with no call open for MAX_CONNECTION_IDLE_SECONDS (1 s here) is closed
    (HTTP/2 GOAWAY): connections without calls cost the gateway memory and descriptors too."""
    monkeypatch.setattr("gateway.server.MAX_CONNECTION_IDLE_SECONDS", 1)
    async with (
        running_cluster(federation, tmp_path) as cluster,
        raw_connections(federation, cluster.ports[TARGET], 1) as (connection,),
    ):
        await asyncio.wait_for(connection.closed.wait(), timeout=10)
