"""The gateway server over real mutual TLS on loopback: the CLI process, health, reflection,
the registry service, the dynamic trust store, per-call identity and the live registry.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from support import (
    CALL_TIMEOUT,
    Federation,
    ManualClock,
    channel,
    credentials_as,
    dev_config,
    error_info,
    eventually,
    make_federation,
    region_root,
    running,
    without_agency,
)

import gateway.server
from gateway._wiring_cases import CASES_SERVICE
from gateway._wiring_tracker import TRACKER_SERVICE
from gateway.demo.config import config_for_dev_pki
from gateway.server import (
    EXCHANGE_SERVICE,
    OVERSIGHT_SERVICE,
    PEER_SERVICE,
    SERVED_SERVICES,
    WITNESS_SERVICE,
)
from gateway.services.consents import CONSENTS
from registry import SnapshotVerifier, load_trusted_root
from tongban.v1 import registry_pb2, registry_pb2_grpc

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REGISTRY_SERVICE = "tongban.v1.Registry"
CREDENTIALS_SERVICE = "tongban.v1.Credentials"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DEADLINE = 5.0  # seconds: waiting for something the gateway does in the background


# helpers -------------------------------------------------------------------------------------
async def health_status(ch: grpc.aio.Channel, service: str = "") -> int:
    response = await health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT
    )
    status: int = response.status
    return status


async def health_becomes(ch: grpc.aio.Channel, expected: int, service: str = "") -> None:
    deadline = time.monotonic() + DEADLINE
    while (status := await health_status(ch, service)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"health of {service!r} stayed {status}, expected {expected}")
        await asyncio.sleep(0.02)


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, as a publish does."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# the acceptance test: `tongban gateway serve` as a real process ----------------------------------
async def test_cli_gateway_serves_registry_health_and_reflection_then_stops_on_sigint(
    federation: Federation, free_port: Callable[[], int], tmp_path: Path
) -> None:
    port = free_port()
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "gateway",
        "serve",
        "--pki",
        str(federation.pki),
        "--region",
        "330000",
        "--snapshot",
        str(federation.current),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    grace = config_for_dev_pki(
        federation.pki, "330000", listen="127.0.0.1:0", snapshot_file=federation.current
    ).grace_seconds
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO)
    try:
        async with channel(port, credentials_as(federation, "sc.hrss", "330000")) as ch:
            # Ready: the health check answers SERVING (deadline 15 s).
            deadline = time.monotonic() + 15
            while True:
                assert process.poll() is None, f"gateway exited early: {stderr.read_text()}"
                try:
                    if await health_status(ch) == SERVING:
                        break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                assert time.monotonic() < deadline, f"not ready in 15 s: {stderr.read_text()}"
                await asyncio.sleep(0.1)
            assert await health_status(ch, REGISTRY_SERVICE) == SERVING
            assert await health_status(ch, CREDENTIALS_SERVICE) == SERVING

            # Reflection: exactly the built services, health and reflection.
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            responses = [
                r
                async for r in stub.ServerReflectionInfo(
                    iter(
                        [
                            reflection_pb2.ServerReflectionRequest(list_services=""),
                            reflection_pb2.ServerReflectionRequest(
                                file_containing_symbol=REGISTRY_SERVICE
                            ),
                        ]
                    ),
                    timeout=CALL_TIMEOUT,
                )
            ]
            assert len(responses) == 2
            listed = {s.name for s in responses[0].list_services_response.service}
            # A dev-PKI gateway keeps an audit log and a cache key: Oversight, the query
            # path (DataExchange, Peer), the cases, the tracker and the consents are served too.
            assert listed == {
                *SERVED_SERVICES,
                OVERSIGHT_SERVICE,
                EXCHANGE_SERVICE,
                PEER_SERVICE,
                WITNESS_SERVICE,
                CASES_SERVICE,
                TRACKER_SERVICE,
                CONSENTS,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            }
            assert {REGISTRY_SERVICE, CREDENTIALS_SERVICE} <= listed
            assert {s for s in listed if s.startswith("tongban.v1.")} == {
                REGISTRY_SERVICE,
                CREDENTIALS_SERVICE,
                OVERSIGHT_SERVICE,
                EXCHANGE_SERVICE,
                PEER_SERVICE,
                WITNESS_SERVICE,
                CASES_SERVICE,
                TRACKER_SERVICE,
                CONSENTS,
            }
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in responses[1].file_descriptor_response.file_descriptor_proto
            ]
            served = {
                f"{f.package}.{s.name}": [m.name for m in s.method]
                for f in files
                for s in f.service
            }
            assert {"GetSnapshot", "Watch"} <= set(served[REGISTRY_SERVICE])

            # The registry: version 1, signed by the installed authority.
            registry = registry_pb2_grpc.RegistryStub(ch)
            response = await registry.GetSnapshot(
                registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT
            )
            assert response.HasField("snapshot")
            assert not response.not_modified
            assert response.snapshot.version == 1
            authority = load_trusted_root(federation.pki / "authority" / "root.json")
            verified = SnapshotVerifier(authority).verify(
                response.snapshot.jws, held_version=None, now=datetime.now(UTC)
            )
            assert verified.registry.version == 1
            assert response.snapshot.authority_key_id == verified.authority_key_id
            again = await registry.GetSnapshot(
                registry_pb2.GetSnapshotRequest(known_version=1), timeout=CALL_TIMEOUT
            )
            assert again.not_modified
            assert not again.HasField("snapshot")

        # SIGINT: a graceful stop, exit status 0, within the grace period.
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=grace + 1) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert "Traceback" not in stderr.read_text(), stderr.read_text()
    assert re.search(rf"listening on port\s+{port}", stdout.read_text()), stdout.read_text()


# in process ---------------------------------------------------------------------------------------
async def test_watch_receives_the_next_published_version(federation: Federation) -> None:
    async with (
        running(dev_config(federation, poll_seconds=0.1)) as (gw, port),
        channel(port, credentials_as(federation, "sc.hrss", "330000")) as ch,
    ):
        call = registry_pb2_grpc.RegistryStub(ch).Watch(
            registry_pb2.WatchRequest(known_version=1), timeout=CALL_TIMEOUT * 2
        )
        try:
            await asyncio.sleep(0.1)  # the stream is open before the publish
            federation.publish()
            snapshot = await asyncio.wait_for(call.read(), DEADLINE)
            assert isinstance(snapshot, registry_pb2.SignedSnapshot)
            assert snapshot.version == 2
            assert gw.store.status().version == 2
        finally:
            call.cancel()


async def test_a_stopped_gateway_no_longer_follows_its_registry(federation: Federation) -> None:
    async with running(dev_config(federation)) as (gw, _):
        pass
    federation.publish()
    assert gw.store.offer(federation.current.read_bytes())
    assert not gw._swap_tasks  # no health update scheduled for a gateway that has stopped


async def test_client_without_certificate_cannot_handshake(federation: Federation) -> None:
    async with (
        running(dev_config(federation)) as (_, port),
        channel(port, grpc.ssl_channel_credentials(region_root(federation, "330000"))) as ch,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_status(ch)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_of_another_federation_is_refused_at_handshake(
    federation: Federation, tmp_path: Path
) -> None:
    other = make_federation(tmp_path / "other")
    chain, key = other.tls_files("sc.hrss")
    credentials = grpc.ssl_channel_credentials(
        region_root(federation, "330000"), key.read_bytes(), chain.read_bytes()
    )
    async with running(dev_config(federation)) as (_, port), channel(port, credentials) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_status(ch)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_agency_unknown_to_the_registry_is_refused_per_call(tmp_path: Path) -> None:
    # issue_key refuses owners the PKI does not know, so the PKI is made for the whole demo
    # source and the registry published from a copy without sc.data: sc.data's certificate
    # chains to 510000's CA but names an agency the registry does not know.
    fed = without_agency(make_federation(tmp_path / "fed"), tmp_path / "source", "sc.data")
    fed.publish()

    async with (
        running(dev_config(fed)) as (gw, port),
        channel(port, credentials_as(fed, "sc.data", "330000")) as ch,
    ):
        snapshot = gw.store.snapshot
        assert snapshot is not None
        assert snapshot.registry.agency("sc.data") is None
        assert await health_status(ch) == SERVING  # the handshake succeeds
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry_pb2_grpc.RegistryStub(ch).GetSnapshot(
                registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = error_info(caught.value)
        assert info.reason == "CERTIFICATE_NOT_TRUSTED"
        assert info.domain == "tongban"


async def test_expired_registry_turns_health_not_serving_and_calls_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.server, "HEALTH_CHECK_SECONDS", 0.05)
    fed = make_federation(tmp_path)
    fed.publish(lifetime_seconds=2)
    clock = ManualClock()
    async with (
        running(dev_config(fed), clock=clock) as (gw, port),
        channel(port, credentials_as(fed, "sc.hrss", "330000")) as ch,
    ):
        registry = registry_pb2_grpc.RegistryStub(ch)
        assert await health_status(ch) == SERVING
        assert await health_status(ch, REGISTRY_SERVICE) == SERVING
        first = await registry.GetSnapshot(registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT)
        assert first.snapshot.version == 1

        clock.advance(3)
        await health_becomes(ch, NOT_SERVING)
        assert await health_status(ch, REGISTRY_SERVICE) == NOT_SERVING
        assert gw.store.status().stale
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry.GetSnapshot(registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(caught.value)
        assert info.reason == "REGISTRY_STALE"
        assert info.domain == "tongban"


async def test_snapshot_signed_by_another_authority_is_not_applied(
    federation: Federation, tmp_path: Path
) -> None:
    other = make_federation(tmp_path / "other")
    for _ in range(3):  # a "newer" version number, from the wrong authority
        other.publish()
    async with (
        running(dev_config(federation, poll_seconds=0.1)) as (gw, port),
        channel(port, credentials_as(federation, "sc.hrss", "330000")) as ch,
    ):
        assert gw.store.status().version == 1
        replace_file(federation.current, other.current.read_bytes())
        await eventually(lambda: gw.store.status().refusals, "the refusal to be counted")
        status = gw.store.status()
        assert status.refusals == {"UNTRUSTED_SIGNER": 1}
        assert status.version == 1
        response = await registry_pb2_grpc.RegistryStub(ch).GetSnapshot(
            registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT
        )
        assert response.snapshot.version == 1
        assert await health_status(ch) == SERVING


async def test_open_watch_stream_ends_when_the_caller_leaves_the_registry(tmp_path: Path) -> None:
    # sc.data opens a Watch while the registry knows it; the next version drops the agency.
    # The stream must not deliver that version (or any later one) to a party no longer trusted.
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    without = without_agency(fed, tmp_path / "source", "sc.data")

    async with (
        running(dev_config(fed, poll_seconds=0.05)) as (gw, port),
        channel(port, credentials_as(fed, "sc.data", "330000")) as ch,
    ):
        stream = registry_pb2_grpc.RegistryStub(ch).Watch(
            registry_pb2.WatchRequest(known_version=0), timeout=CALL_TIMEOUT
        )
        first = await stream.read()
        assert first.version == 1
        without.publish()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(caught.value).reason == "CERTIFICATE_NOT_TRUSTED"
        assert gw.store.status().version == 2
