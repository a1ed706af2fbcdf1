"""Metrics: the gRPC interceptors against a real grpc.aio server on loopback, the helpers the
request path calls, the certificate gauges from a real dev federation, and the HTTP endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import eventually, make_federation

from gateway.admission import DEFAULT_LIMITS, CallAdmission, Limits, Pool
from gateway.breaker import CircuitBreaker
from gateway.errors import abort
from gateway.metrics import (
    GRPC_LATENCY_BUCKETS,
    PEER_LOCAL,
    GatewayMetrics,
    MetricsInterceptor,
    MetricsServer,
    client_interceptors,
    grpc_code_name,
)
from registry import (
    KeyState,
    Registry,
    RegistryStore,
    SnapshotError,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import Indication, SubIndication, x5t_s256_of_der

HEALTH = "grpc.health.v1.Health"
TEST = "test.v1.Probe"
CITIZEN_ID = "110101199003071234"  # the shape of a resident identity number (18 characters)
ID_LIKE = re.compile(r"\d{17}[\dXx]|\d{15}")


# a real grpc.aio server: health, plus a raw-bytes probe service ------------------------------------
async def _boom(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    raise RuntimeError("a bug in a handler")


async def _denied(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await abort(context, grpc.StatusCode.PERMISSION_DENIED, "PURPOSE_NOT_APPROVED", "no")


async def _set_code(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    return b""


async def _slow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await asyncio.sleep(0.03)
    return request


async def _three(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    for i in range(3):
        yield bytes([i])


async def _one_then_abort(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    yield b"first"
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")


async def _echo(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _sum(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> bytes:
    total = 0
    async for request in requests:
        total += len(request)
    return bytes([total])


async def _chat(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    while (message := await context.read()) is not grpc.aio.EOF:
        await context.write(message + b"!")


def _probe_service() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        TEST,
        {
            "Boom": grpc.unary_unary_rpc_method_handler(_boom),
            "Denied": grpc.unary_unary_rpc_method_handler(_denied),
            "SetCode": grpc.unary_unary_rpc_method_handler(_set_code),
            "Slow": grpc.unary_unary_rpc_method_handler(_slow),
            "Three": grpc.unary_stream_rpc_method_handler(_three),
            "OneThenAbort": grpc.unary_stream_rpc_method_handler(_one_then_abort),
            "Echo": grpc.stream_stream_rpc_method_handler(_echo),
            "Sum": grpc.stream_unary_rpc_method_handler(_sum),
            "Chat": grpc.stream_stream_rpc_method_handler(_chat),
        },
    )


@dataclasses.dataclass
class Served:
    metrics: GatewayMetrics
    health: health.aio.HealthServicer
    channel: grpc.aio.Channel
    port: int

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def server(self, name: str, kind: str, service: str, method: str, **more: str) -> float:
        labels = {"grpc_type": kind, "grpc_service": service, "grpc_method": method, **more}
        return self.sample(name, **labels)

    def health_stub(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    def metrics_text(self) -> str:
        return MetricsServer(self.metrics.registry).exposition().decode()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    metrics = GatewayMetrics()
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_probe_service(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(metrics, servicer, channel, port)
    finally:
        await channel.close()
        await server.stop(0)


def _raw(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(f"/{TEST}/{method}")


# server interceptor ------------------------------------------------------------------------------
async def test_unary_calls_are_counted_by_the_code_they_ended_with(served: Served) -> None:
    stub = served.health_stub()
    await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND

    def at(name: str, **more: str) -> float:
        return served.server(name, "unary", HEALTH, "Check", **more)

    # An aborted call's status can reach the client just before the server's bookkeeping ends.
    await eventually(lambda: at("grpc_server_handling_seconds_count") == 3, "three calls")
    assert at("grpc_server_started_total") == 3
    assert at("grpc_server_handled_total", grpc_code="OK") == 2
    assert at("grpc_server_handled_total", grpc_code="NotFound") == 1
    assert at("grpc_server_msg_received_total") == 3
    assert at("grpc_server_msg_sent_total") == 2  # no answer went with the NOT_FOUND
    assert at("grpc_server_handling_seconds_count") == 3
    assert at("grpc_server_handling_seconds_bucket", le="+Inf") == 3


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("Boom", "Unknown"),  # an unexpected exception: UNKNOWN, and re-raised (the client sees it)
        ("Denied", "PermissionDenied"),  # abort_with_status, as gateway.errors.abort sends it
        ("SetCode", "NotFound"),  # a handler that sets the code and returns
    ],
)
async def test_failures_are_counted_with_their_code(served: Served, method: str, code: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _raw(served.channel, method)(b"x", timeout=5)
    assert grpc_code_name(raised.value.code()) == code
    await eventually(
        lambda: served.server("grpc_server_handling_seconds_count", "unary", TEST, method) == 1,
        "the call's end",
    )
    assert served.server("grpc_server_handled_total", "unary", TEST, method, grpc_code=code) == 1
    assert served.server("grpc_server_started_total", "unary", TEST, method) == 1
    assert served.server("grpc_server_msg_sent_total", "unary", TEST, method) == 0
    assert served.server("grpc_server_handling_seconds_count", "unary", TEST, method) == 1


async def test_latency_lands_in_the_right_buckets(served: Served) -> None:
    assert await _raw(served.channel, "Slow")(b"x", timeout=5) == b"x"

    def bucket(le: str) -> float:
        return served.server("grpc_server_handling_seconds_bucket", "unary", TEST, "Slow", le=le)

    exported = {
        s.labels["le"]
        for family in text_string_to_metric_families(served.metrics_text())
        if family.name == "grpc_server_handling_seconds"
        for s in family.samples
        if s.name.endswith("_bucket")
    }
    assert exported == {str(float(b)) for b in GRPC_LATENCY_BUCKETS} | {"+Inf"}
    assert bucket("0.001") == 0
    assert bucket("0.025") == 0  # it slept 30 ms
    assert bucket("10.0") == 1
    assert served.server("grpc_server_handling_seconds_sum", "unary", TEST, "Slow") >= 0.03


async def test_streamed_answers_are_counted_as_messages_sent(served: Served) -> None:
    answers = [a async for a in served.channel.unary_stream(f"/{TEST}/Three")(b"", timeout=5)]
    assert answers == [b"\x00", b"\x01", b"\x02"]

    def at(name: str, **more: str) -> float:
        return served.server(name, "server_stream", TEST, "Three", **more)

    assert at("grpc_server_msg_sent_total") == 3
    assert at("grpc_server_msg_received_total") == 1
    assert at("grpc_server_handled_total", grpc_code="OK") == 1
    assert at("grpc_server_handling_seconds_count") == 1


async def test_a_stream_that_aborts_counts_what_it_sent_and_its_code(served: Served) -> None:
    call = served.channel.unary_stream(f"/{TEST}/OneThenAbort")(b"", timeout=5)
    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    labels = ("server_stream", TEST, "OneThenAbort")
    await eventually(
        lambda: served.server("grpc_server_handling_seconds_count", *labels) == 1, "its end"
    )
    assert served.server("grpc_server_msg_sent_total", *labels) == 1
    assert served.server("grpc_server_handled_total", *labels, grpc_code="ResourceExhausted") == 1


async def test_a_written_stream_cancelled_by_its_client(served: Served) -> None:
    """Health.Watch streams with `context.write` and runs until the client cancels."""
    call = served.health_stub().Watch(health_pb2.HealthCheckRequest(), timeout=5)
    first = await call.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    await served.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    second = await call.read()
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING

    def at(name: str, **more: str) -> float:
        return served.server(name, "server_stream", HEALTH, "Watch", **more)

    # A message counts once the server's write returns, which may be just after the client has it.
    await eventually(lambda: at("grpc_server_msg_sent_total") == 2, "the second write")
    call.cancel()
    await eventually(lambda: at("grpc_server_handling_seconds_count") == 1, "the Watch to end")
    assert at("grpc_server_started_total") == 1
    assert at("grpc_server_msg_sent_total") == 2
    assert at("grpc_server_handled_total", grpc_code="Canceled") == 1


async def test_bidi_stream_counts_both_directions(served: Served) -> None:
    async def three() -> AsyncIterator[bytes]:
        for item in (b"a", b"b", b"c"):
            yield item

    call = served.channel.stream_stream(f"/{TEST}/Echo")(three(), timeout=5)
    assert [a async for a in call] == [b"a", b"b", b"c"]

    def at(name: str, **more: str) -> float:
        return served.server(name, "bidi_stream", TEST, "Echo", **more)

    assert at("grpc_server_msg_received_total") == 3
    assert at("grpc_server_msg_sent_total") == 3
    assert at("grpc_server_handled_total", grpc_code="OK") == 1


async def test_client_streaming_and_a_read_write_handler(served: Served) -> None:
    async def three() -> AsyncIterator[bytes]:
        for item in (b"a", b"bb", b"ccc"):
            yield item

    assert await served.channel.stream_unary(f"/{TEST}/Sum")(three(), timeout=5) == b"\x06"
    chat = served.channel.stream_stream(f"/{TEST}/Chat")(timeout=5)
    await chat.write(b"hi")
    assert await chat.read() == b"hi!"
    await chat.write(b"there")
    assert await chat.read() == b"there!"
    await chat.done_writing()
    assert await chat.code() is grpc.StatusCode.OK

    def at(name: str, kind: str, method: str, **more: str) -> float:
        return served.server(name, kind, TEST, method, **more)

    assert at("grpc_server_msg_received_total", "client_stream", "Sum") == 3
    assert at("grpc_server_msg_sent_total", "client_stream", "Sum") == 1
    assert at("grpc_server_handled_total", "client_stream", "Sum", grpc_code="OK") == 1
    await eventually(
        lambda: at("grpc_server_handling_seconds_count", "bidi_stream", "Chat") == 1, "Chat"
    )
    assert at("grpc_server_msg_received_total", "bidi_stream", "Chat") == 2
    assert at("grpc_server_msg_sent_total", "bidi_stream", "Chat") == 2
    assert at("grpc_server_handled_total", "bidi_stream", "Chat", grpc_code="OK") == 1


async def test_unimplemented_methods_make_no_series(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.channel.unary_unary(f"/made.up.{CITIZEN_ID}/Method")(b"", timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert CITIZEN_ID not in served.metrics_text()


# client interceptors -----------------------------------------------------------------------------
async def test_client_calls_are_counted_per_peer_region(served: Served) -> None:
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{served.port}", interceptors=client_interceptors(served.metrics, "510000")
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        call = stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        assert await call.code() is grpc.StatusCode.NOT_FOUND  # the caller's call, untouched
        answers = [a async for a in channel.unary_stream(f"/{TEST}/Three")(b"", timeout=5)]
        assert len(answers) == 3

    def at(name: str, kind: str, method: str, service: str = HEALTH, **more: str) -> float:
        labels = {"peer_region": "510000", **more}
        return served.server(name, kind, service, method, **labels)

    assert at("grpc_client_started_total", "unary", "Check") == 2
    assert at("grpc_client_handled_total", "unary", "Check", grpc_code="OK") == 1
    assert at("grpc_client_handled_total", "unary", "Check", grpc_code="NotFound") == 1
    assert at("grpc_client_handling_seconds_count", "unary", "Check") == 2
    assert at("grpc_client_started_total", "server_stream", "Three", TEST) == 1
    await eventually(  # a stream is recorded when gRPC reports it done
        lambda: at("grpc_client_handled_total", "server_stream", "Three", TEST, grpc_code="OK"),
        "the stream's status",
    )
    assert at("grpc_client_handling_seconds_count", "server_stream", "Three", TEST) == 1


async def test_a_long_lived_channel_labels_each_call_by_the_registry_then_held(
    served: Served, federation_store: tuple[RegistryStore, Path]
) -> None:
    # A peer channel outlives registry versions: a region the registry names only from a later
    # version is labelled by its code from then on, not by what was known when it was opened.
    store, _ = federation_store
    assert store.snapshot is not None
    registry = store.snapshot.registry
    without = dataclasses.replace(
        registry, regions=tuple(r for r in registry.regions if r.code != "510000")
    )
    served.metrics.observe_registry(without, store.status())
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{served.port}", interceptors=client_interceptors(served.metrics, "510000")
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        served.metrics.observe_registry(registry, store.status())
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    for region in ("other", "510000"):
        labels = {"peer_region": region}
        assert served.server("grpc_client_started_total", "unary", HEALTH, "Check", **labels) == 1


async def test_client_streams_that_fail_or_are_abandoned(served: Served) -> None:
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{served.port}", interceptors=client_interceptors(served.metrics, "500000")
    )
    async with channel:
        failing = channel.unary_stream(f"/{TEST}/OneThenAbort")(b"", timeout=5)
        assert await failing.read() == b"first"
        with pytest.raises(grpc.aio.AioRpcError):
            await failing.read()
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

        def at(name: str, service: str, method: str, **more: str) -> float:
            labels = {"peer_region": "500000", **more}
            return served.server(name, "server_stream", service, method, **labels)

        await eventually(
            lambda: at("grpc_client_handling_seconds_count", HEALTH, "Watch") == 1, "the Watch"
        )
    assert at("grpc_client_handled_total", HEALTH, "Watch", grpc_code="Canceled") == 1
    exhausted = {"grpc_code": "ResourceExhausted"}
    assert at("grpc_client_handled_total", TEST, "OneThenAbort", **exhausted) == 1


async def test_the_local_data_system_is_peer_region_local(served: Served) -> None:
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{served.port}", interceptors=client_interceptors(served.metrics, PEER_LOCAL)
    )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{TEST}/Boom")(b"", timeout=5)
    assert (
        served.server(
            "grpc_client_handled_total",
            "unary",
            TEST,
            "Boom",
            peer_region="local",
            grpc_code="Unknown",
        )
        == 1
    )


# helpers ---------------------------------------------------------------------------------------------
def _value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_instance_has_its_own_registry() -> None:
    one, two = GatewayMetrics(), GatewayMetrics()
    one.audit_append(ok=True)
    assert _value(one, "tongban_audit_appends_total") == 1
    assert _value(two, "tongban_audit_appends_total") == 0
    shared = CollectorRegistry()
    assert GatewayMetrics(shared).registry is shared


def test_decisions_verifications_audit_and_quota() -> None:
    metrics = GatewayMetrics()
    metrics.decision("allowed")
    metrics.decision("denied", "FIELD_NOT_ALLOWED")
    metrics.decision("denied", f"subject {CITIZEN_ID} not found")  # not a reason: never a label
    with pytest.raises(ValueError, match="allowed or denied"):
        metrics.decision("maybe")  # type: ignore[arg-type]
    metrics.verification(Indication.TOTAL_PASSED)
    metrics.verification(Indication.TOTAL_FAILED, SubIndication.HASH_FAILURE)
    metrics.verification("INDETERMINATE", "REVOKED_NO_POE")
    metrics.verification(CITIZEN_ID, CITIZEN_ID)
    metrics.audit_append(ok=True)
    metrics.audit_append(ok=True)
    metrics.audit_append(ok=False)
    signed = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    metrics.checkpoint(1234, signed)
    metrics.quota_rejected("CY-SI-2026")
    metrics.peer_call("510000", grpc.StatusCode.OK, 0.02)
    metrics.peer_call(PEER_LOCAL, "UNAVAILABLE", 1.5)
    metrics.peer_call(CITIZEN_ID, 14, 0.1)

    def v(name: str, **labels: str) -> float | None:
        return _value(metrics, name, **labels)

    assert v("tongban_authorisation_decisions_total", outcome="allowed", reason="") == 1
    assert v("tongban_authorisation_decisions_total", outcome="denied", reason="FIELD_NOT_ALLOWED")
    assert v("tongban_authorisation_decisions_total", outcome="denied", reason="OTHER") == 1
    passed = {"indication": "TOTAL_PASSED", "sub_indication": ""}
    assert v("tongban_seal_verifications_total", **passed) == 1
    failed = {"indication": "TOTAL_FAILED", "sub_indication": "HASH_FAILURE"}
    assert v("tongban_seal_verifications_total", **failed) == 1
    other = {"indication": "OTHER", "sub_indication": "OTHER"}
    assert v("tongban_seal_verifications_total", **other) == 1
    assert v("tongban_audit_appends_total") == 2
    assert v("tongban_audit_append_failures_total") == 1
    assert v("tongban_audit_checkpoint_size") == 1234
    assert v("tongban_audit_checkpoint_timestamp_seconds") == signed.timestamp()
    assert v("tongban_quota_rejections_total", agreement="CY-SI-2026") == 1
    assert v("tongban_peer_calls_total", peer_region="510000", code="OK") == 1
    assert v("tongban_peer_calls_total", peer_region="local", code="Unavailable") == 1
    assert v("tongban_peer_calls_total", peer_region="other", code="Unavailable") == 1
    assert v("tongban_peer_call_seconds_bucket", peer_region="local", le="2.5") == 1
    assert v("tongban_peer_call_seconds_bucket", peer_region="local", le="1.0") == 0
    _assert_no_id_like_label(metrics)


def test_cache_follows_the_breaker() -> None:
    metrics = GatewayMetrics()
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=2.0, clock=lambda: now[0])
    breaker.hits, breaker.misses = 5, 2
    metrics.observe_cache(breaker)
    assert _value(metrics, "tongban_cache_circuit_open") == 0
    breaker.failure(connection=True)  # opens at once
    assert not breaker.allow()  # bypassed
    breaker.hits, breaker.misses = 7, 3
    metrics.observe_cache(breaker)
    metrics.observe_cache(breaker)  # observing again adds nothing

    def lookups(result: str) -> float | None:
        return _value(metrics, "tongban_cache_lookups_total", result=result)

    assert _value(metrics, "tongban_cache_circuit_open") == 1
    assert (lookups("hit"), lookups("miss"), lookups("error"), lookups("bypassed")) == (7, 3, 1, 1)
    now[0] = 3.0
    assert breaker.allow()  # half-open: one trial call
    breaker.success()
    metrics.observe_cache(breaker)
    assert _value(metrics, "tongban_cache_circuit_open") == 0
    metrics.observe_cache(CircuitBreaker())  # a new breaker counts from 0: nothing goes down
    assert lookups("hit") == 7


# registry and certificates ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def federation_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[RegistryStore, Path]:
    fed = make_federation(tmp_path_factory.mktemp("federation"))
    fed.publish()
    authority = load_trusted_root(fed.pki / "authority" / "root.json")
    store = RegistryStore(SnapshotVerifier(authority))
    assert store.offer(fed.current.read_bytes())
    return store, fed.current


def _certificate_series(metrics: GatewayMetrics, name: str) -> dict[tuple[str, str, str], float]:
    (family,) = (m for m in metrics.registry.collect() if m.name == name)
    return {
        (s.labels["kid"], s.labels["usage"], s.labels["owner"]): s.value for s in family.samples
    }


def _expected_certificates(registry: Registry) -> dict[tuple[str, str, str], float]:
    expected = {
        (k.kid, k.usage.value, k.owner): k.not_after.timestamp()
        for k in registry.keys
        if k.state is not KeyState.REVOKED
    }
    for region in registry.regions:
        for der in region.ca_certificates:
            not_after = x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
            expected[(x5t_s256_of_der(der), "ca", region.code)] = not_after
    return expected


def test_registry_gauges_and_one_expiry_series_per_key_and_region_ca(
    federation_store: tuple[RegistryStore, Path],
) -> None:
    store, _ = federation_store
    snapshot = store.snapshot
    assert snapshot is not None
    registry = snapshot.registry
    metrics = GatewayMetrics()
    metrics.observe_registry(registry, store.status())

    assert _value(metrics, "tongban_registry_version") == registry.version
    issued = _value(metrics, "tongban_registry_issued_timestamp_seconds")
    assert issued == registry.issued_at.timestamp()
    expiry = _value(metrics, "tongban_registry_expiry_timestamp_seconds")
    assert expiry == registry.expires_at.timestamp()

    expiry_series = _certificate_series(metrics, "tongban_certificate_expiry_timestamp_seconds")
    expected = _expected_certificates(registry)
    assert expiry_series == expected
    cas = {labels for labels in expected if labels[1] == "ca"}
    assert {owner for _, _, owner in cas} == {r.code for r in registry.regions}
    assert len(registry.keys) + len(cas) == len(expiry_series)  # none revoked in a new federation
    not_before = _certificate_series(metrics, "tongban_certificate_not_before_timestamp_seconds")
    assert not_before.keys() == expiry_series.keys()
    key = registry.keys[0]
    assert not_before[(key.kid, key.usage.value, key.owner)] == key.not_before.timestamp()


def test_a_rotated_out_or_revoked_key_loses_its_series(
    federation_store: tuple[RegistryStore, Path],
) -> None:
    store, _ = federation_store
    assert store.snapshot is not None
    registry = store.snapshot.registry
    metrics = GatewayMetrics()
    metrics.observe_registry(registry, store.status())
    gone, revoked, *kept = registry.keys
    smaller = dataclasses.replace(
        registry,
        version=registry.version + 1,
        keys=(dataclasses.replace(revoked, state=KeyState.REVOKED), *kept),
    )
    metrics.observe_registry(smaller, store.status())

    series = _certificate_series(metrics, "tongban_certificate_expiry_timestamp_seconds")
    for dropped in (gone, revoked):
        labels = {"kid": dropped.kid, "usage": dropped.usage.value, "owner": dropped.owner}
        assert _value(metrics, "tongban_certificate_expiry_timestamp_seconds", **labels) is None
        assert _value(metrics, "tongban_certificate_not_before_timestamp_seconds", **labels) is None
    assert series == _expected_certificates(smaller)
    assert len(series) == len(_expected_certificates(registry)) - 2


def test_no_registry_held_yet_and_refusals_counted_once() -> None:
    metrics = GatewayMetrics()
    store = RegistryStore(SnapshotVerifier(_any_authority_key()))
    for _ in range(2):
        with pytest.raises(SnapshotError):
            store.offer(b"not a snapshot")
    metrics.observe_registry(None, store.status())
    metrics.observe_registry(None, store.status())  # the same totals: nothing added
    assert _value(metrics, "tongban_registry_version") == 0
    assert _value(metrics, "tongban_registry_expiry_timestamp_seconds") == 0
    assert _value(metrics, "tongban_registry_refused_total", reason="FORMAT") == 2
    with pytest.raises(SnapshotError):
        store.offer(b"still not one")
    metrics.observe_refusals(store.status().refusals)
    assert _value(metrics, "tongban_registry_refused_total", reason="FORMAT") == 3
    assert not _certificate_series(metrics, "tongban_certificate_expiry_timestamp_seconds")


def test_calls_in_flight_and_refusals_follow_the_admission() -> None:
    """tongban_calls_in_flight by pool, tongban_calls_refused_total by pool and limit reached;
    no certificate in any label."""
    metrics = GatewayMetrics()
    limits = dict(DEFAULT_LIMITS)
    limits[Pool.AGENCIES] = Limits(per_certificate=2, pool=3)
    admission = CallAdmission(MappingProxyType(limits))
    for certificate in ("a", "a", "a", "b", "c"):  # a: 2 admitted, 1 refused; b in; c: pool full
        admission.admit(Pool.AGENCIES, certificate)
    admission.admit(Pool.PEERS, "g")
    metrics.observe_admission(admission)
    metrics.observe_admission(admission)  # the same totals: nothing added
    assert _value(metrics, "tongban_calls_in_flight", pool="agencies") == 3
    assert _value(metrics, "tongban_calls_in_flight", pool="peers") == 1
    assert _value(metrics, "tongban_calls_in_flight", pool="others") == 0
    refused = "tongban_calls_refused_total"
    assert _value(metrics, refused, pool="agencies", limit="certificate") == 1
    assert _value(metrics, refused, pool="agencies", limit="pool") == 1
    admission.release(Pool.AGENCIES, "a")
    admission.admit(Pool.AGENCIES, "a")
    admission.admit(Pool.AGENCIES, "c")
    metrics.observe_admission(admission)
    assert _value(metrics, refused, pool="agencies", limit="pool") == 2
    assert _value(metrics, "tongban_calls_in_flight", pool="agencies") == 3


def test_agreements_and_regions_are_those_of_the_registry(
    federation_store: tuple[RegistryStore, Path],
) -> None:
    store, _ = federation_store
    assert store.snapshot is not None
    registry = store.snapshot.registry
    metrics = GatewayMetrics()
    metrics.observe_registry(registry, store.status())
    agreement = registry.agreements[0].id
    metrics.quota_rejected(agreement)
    metrics.quota_rejected("NOT-AN-AGREEMENT")
    metrics.peer_call(registry.regions[0].code, "OK", 0.01)
    metrics.peer_call("999999", "OK", 0.01)
    assert _value(metrics, "tongban_quota_rejections_total", agreement=agreement) == 1
    assert _value(metrics, "tongban_quota_rejections_total", agreement="other") == 1
    peer = {"peer_region": registry.regions[0].code, "code": "OK"}
    assert _value(metrics, "tongban_peer_calls_total", **peer) == 1
    assert _value(metrics, "tongban_peer_calls_total", peer_region="other", code="OK") == 1
    _assert_no_id_like_label(metrics)


def _any_authority_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().public_key()


def _assert_no_id_like_label(metrics: GatewayMetrics) -> None:
    text = MetricsServer(metrics.registry).exposition().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name, value in sample.labels.items():
                assert not ID_LIKE.search(value), f"{sample.name}{{{name}={value!r}}}"


# HTTP endpoint -------------------------------------------------------------------------------------
async def _http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)  # the server closes after answering
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return int(status_line.split(" ")[1]), headers, body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


@pytest.fixture
async def endpoint(served: Served) -> AsyncIterator[tuple[MetricsServer, list[str | None]]]:
    why: list[str | None] = ["registry version 0: none loaded yet"]

    def ready() -> tuple[bool, str]:
        return why[0] is None, why[0] or ""

    server = MetricsServer(served.metrics.registry, ready=ready)
    await server.start("127.0.0.1", 0)
    try:
        yield server, why
    finally:
        await server.stop()


async def test_metrics_parse_as_prometheus_text(
    served: Served, endpoint: tuple[MetricsServer, list[str | None]]
) -> None:
    server, _ = endpoint
    await served.health_stub().Check(health_pb2.HealthCheckRequest(), timeout=5)
    status, headers, body = await _http(server.port, _get("/metrics"))
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    started = families["grpc_server_started"]
    assert started.type == "counter"
    assert families["grpc_server_handling_seconds"].type == "histogram"
    assert families["tongban_certificate_expiry_timestamp_seconds"].type == "gauge"
    (sample,) = (s for s in started.samples if s.name == "grpc_server_started_total")
    assert sample.labels == {
        "grpc_type": "unary",
        "grpc_service": HEALTH,
        "grpc_method": "Check",
    }
    assert sample.value == 1
    query_string = await _http(server.port, _get("/metrics?name[]=x"))
    assert query_string[0] == 200


async def test_readyz_follows_the_ready_callable(
    endpoint: tuple[MetricsServer, list[str | None]],
) -> None:
    server, why = endpoint
    status, _, body = await _http(server.port, _get("/readyz"))
    assert (status, body) == (503, b"registry version 0: none loaded yet\n")
    why[0] = None
    status, _, body = await _http(server.port, _get("/readyz"))
    assert (status, body) == (200, b"ready\n")


async def test_health_unknown_paths_and_methods(
    endpoint: tuple[MetricsServer, list[str | None]],
) -> None:
    server, _ = endpoint
    status, _, body = await _http(server.port, _get("/healthz"))
    assert (status, body) == (200, b"ok\n")
    status, _, _ = await _http(server.port, _get("/metrics/../secret"))
    assert status == 404
    status, headers, _ = await _http(
        server.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    )
    assert status == 405
    assert headers["allow"] == "GET"
    status, _, _ = await _http(server.port, b"nonsense\r\n\r\n")
    assert status == 400
    huge = b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n"
    status, _, _ = await _http(server.port, huge)
    assert status == 431


async def test_a_client_that_never_finishes_its_request_is_dropped() -> None:
    server = MetricsServer(CollectorRegistry(), read_timeout_seconds=0.1)
    port = await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()


async def test_a_failing_ready_callable_is_a_503() -> None:
    def broken() -> bool:
        raise OSError("disk")

    server = MetricsServer(CollectorRegistry(), ready=broken)
    port = await server.start()
    try:
        status, _, body = await _http(port, _get("/readyz"))
    finally:
        await server.stop()
    assert (status, body) == (503, b"readiness check failed (OSError)\n")


async def test_multiprocess_mode_aggregates_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()  # emptied (here: new) before the first worker starts
    worker = (
        "import sys\n"
        "from prometheus_client import Counter\n"
        "Counter('tongban_test_worker_requests', 'a worker counts').inc(int(sys.argv[1]))\n"
    )
    for amount in (2, 3):
        subprocess.run(
            [sys.executable, "-c", worker, str(amount)],
            env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "PATH": "/usr/bin:/bin"},
            check=True,
        )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc_dir))
    server = MetricsServer(CollectorRegistry())
    port = await server.start()
    try:
        status, _, body = await _http(port, _get("/metrics"))
    finally:
        await server.stop()
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    (total,) = (
        s
        for s in families["tongban_test_worker_requests"].samples
        if s.name == "tongban_test_worker_requests_total"
    )
    assert total.value == 5


_WORKER_WITH_A_ROTATION = """
import dataclasses, sys
from datetime import UTC, datetime
from pathlib import Path
from gateway.metrics import GatewayMetrics, MetricsServer
from registry import RegistryStore, SnapshotVerifier, load_trusted_root
store = RegistryStore(SnapshotVerifier(load_trusted_root(Path(sys.argv[2]))))
store.offer(Path(sys.argv[1]).read_bytes())
registry = store.snapshot.registry
metrics = GatewayMetrics()
metrics.observe_registry(registry, store.status())
dropped = registry.keys[0]
later = dataclasses.replace(registry, keys=registry.keys[1:])  # a key leaves the registry
metrics.observe_registry(later, store.status())
sys.stdout.write(dropped.kid + "\\n")
server = MetricsServer(metrics.registry, collectors=metrics.scrape_collectors)
sys.stdout.write(server.exposition().decode())
"""


def test_with_workers_a_key_that_left_the_registry_loses_its_series(
    federation_store: tuple[RegistryStore, Path], tmp_path: Path
) -> None:
    # In multi-process mode prometheus_client keeps each value in a file and cannot remove a
    # series: the certificate series are made at scrape time from the registry held instead.
    _, snapshot_file = federation_store
    authority = snapshot_file.parents[1] / "pki" / "authority" / "root.json"
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", _WORKER_WITH_A_ROTATION, str(snapshot_file), str(authority)],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    dropped, _, text = out.partition("\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "tongban_certificate_expiry_timestamp_seconds",
        "tongban_certificate_not_before_timestamp_seconds",
    ):
        kids = {s.labels["kid"] for s in families[name].samples}
        assert kids, name
        assert dropped not in kids, name


def test_a_code_has_one_name_however_it_is_given() -> None:
    """As a `grpc.StatusCode`, its number, its Python name or its contract name (the contract
    spelling itself is checked against docs/monitoring.md in test_monitoring_config.py)."""
    names = [grpc_code_name(c) for c in grpc.StatusCode]
    assert len(set(names)) == len(names) == 17
    assert [grpc_code_name(c.value[0]) for c in grpc.StatusCode] == names
    assert [grpc_code_name(c.name) for c in grpc.StatusCode] == names
    assert [grpc_code_name(name) for name in names] == names
    assert grpc_code_name("NOT_A_CODE") == grpc_code_name(99) == "Unknown"
