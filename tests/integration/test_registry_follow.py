"""Gateways following each other's registry over real mutual TLS on loopback.

Gateway A (330000) reads the published snapshot file; gateway B (510000) follows A with
`Registry.GetSnapshot` then `Registry.Watch`, and applies only what verifies against its own
installed authority key and is newer than what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import Federation, eventually, make_federation

from gateway.config import GatewayConfig
from gateway.demo.config import config_for_dev_pki
from gateway.server import Gateway, create_gateway
from tongban.v1 import registry_pb2, registry_pb2_grpc

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
CALL_TIMEOUT = 5.0  # seconds: any single RPC in these tests
DEADLINE = 5.0  # seconds: waiting for something the gateways do in the background


# helpers -------------------------------------------------------------------------------------
def region_root(fed: Federation, region: str) -> Path:
    return fed.pki / "regions" / region / "ca" / "root.pem"


def config_for(
    fed: Federation, region: str, *, snapshot_file: Path | None, follow: str = "", **changes: Any
) -> GatewayConfig:
    config = config_for_dev_pki(
        fed.pki, region, listen="127.0.0.1:0", snapshot_file=snapshot_file, follow=follow
    )
    return dataclasses.replace(config, poll_seconds=0.1, grace_seconds=0.5, **changes)


@contextlib.asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[tuple[Gateway, int]]:
    gw, port = await create_gateway(config)
    try:
        yield gw, port
    finally:
        await gw.stop(0)


def version_of(gw: Gateway) -> int | None:
    return gw.store.status().version


def own_copy(fed: Federation, version: int, path: Path) -> Path:
    """A snapshot file of B's own that no later publish touches."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((fed.published / f"registry-{version}.jws").read_bytes())
    return path


# tests ---------------------------------------------------------------------------------------
async def test_follower_receives_each_new_version_from_its_peer(
    federation: Federation, tmp_path: Path
) -> None:
    b_file = own_copy(federation, 1, tmp_path / "b" / "current.jws")
    async with running(config_for(federation, "330000", snapshot_file=federation.current)) as (
        a,
        a_port,
    ):
        b_config = config_for(
            federation, "510000", snapshot_file=b_file, follow=f"localhost:{a_port}"
        )
        async with running(b_config) as (b, _):
            assert version_of(a) == version_of(b) == 1
            federation.publish()
            await eventually(lambda: version_of(b) == 2, "B to receive version 2 from A")
            assert version_of(a) == 2
            federation.publish()
            await eventually(lambda: version_of(b) == 3, "B to receive version 3 from A")
            assert b.store.status().refusals == {}
            assert b_file.read_bytes() == (federation.published / "registry-1.jws").read_bytes()


async def test_follower_without_a_snapshot_file_bootstraps_from_its_peer(
    federation: Federation,
) -> None:
    async with running(config_for(federation, "330000", snapshot_file=federation.current)) as (
        _,
        a_port,
    ):
        b_config = config_for(
            federation,
            "510000",
            snapshot_file=None,
            follow=f"localhost:{a_port}",
            bootstrap_ca_file=region_root(federation, "330000"),
        )
        async with running(b_config) as (b, b_port):
            await eventually(lambda: version_of(b) == 1, "B to receive version 1 from A")
            # B now trusts the registry's CAs: an agency of B's own region can connect.
            chain, key = federation.tls_files("sc.hrss")
            credentials = grpc.ssl_channel_credentials(
                region_root(federation, "510000").read_bytes(), key.read_bytes(), chain.read_bytes()
            )
            async with grpc.aio.secure_channel(f"localhost:{b_port}", credentials) as ch:
                health = health_pb2_grpc.HealthStub(ch)
                deadline = time.monotonic() + DEADLINE
                while True:
                    response = await health.Check(
                        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
                    )
                    if response.status == SERVING:
                        break
                    assert time.monotonic() < deadline, "B did not become SERVING"
                    await asyncio.sleep(0.02)
                got = await registry_pb2_grpc.RegistryStub(ch).GetSnapshot(
                    registry_pb2.GetSnapshotRequest(), timeout=CALL_TIMEOUT
                )
                assert got.snapshot.version == 1


class RoguePeer(registry_pb2_grpc.RegistryServicer):
    """A peer that ignores `known_version` and sends whatever snapshots it was given."""

    def __init__(self, snapshots: list[str]) -> None:
        self.snapshots = snapshots
        self.calls = 0

    async def GetSnapshot(
        self, request: registry_pb2.GetSnapshotRequest, context: Any
    ) -> registry_pb2.GetSnapshotResponse:
        self.calls += 1
        return registry_pb2.GetSnapshotResponse(
            snapshot=registry_pb2.SignedSnapshot(jws=self.snapshots[0])
        )

    async def Watch(
        self, request: registry_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[registry_pb2.SignedSnapshot]:
        self.calls += 1
        for jws in self.snapshots:
            yield registry_pb2.SignedSnapshot(jws=jws)
        await asyncio.Event().wait()  # then hold the stream open, as a real peer does


async def test_peer_serving_a_rollback_or_foreign_snapshot_cannot_make_follower_apply_it(
    federation: Federation, tmp_path: Path
) -> None:
    foreign = make_federation(tmp_path / "foreign")
    for _ in range(3):  # version 3: "newer" than B's, signed by another authority
        foreign.publish()
    a_config = config_for(federation, "330000", snapshot_file=federation.current)
    b_file = own_copy(federation, 1, tmp_path / "b" / "current.jws")
    async with running(a_config) as (a, a_port):
        b_config = config_for(
            federation, "510000", snapshot_file=b_file, follow=f"localhost:{a_port}"
        )
        async with running(b_config) as (b, _):
            federation.publish()
            await eventually(lambda: version_of(b) == 2, "B to receive version 2 from A")
            held = b.store.snapshot
            assert held is not None

            # A is restarted on the same address with registry-1.jws. An honest gateway
            # never sends an older version (B asks with known_version=2), so the restarted
            # A sends it anyway, and then a snapshot of another authority.
            await a.stop(0)
            rollback = (federation.published / "registry-1.jws").read_text().strip()
            rogue = RoguePeer([rollback, foreign.current.read_text().strip()])
            server = grpc.aio.server()
            registry_pb2_grpc.add_RegistryServicer_to_server(rogue, server)
            chain, key = federation.tls_files("330000")
            server.add_secure_port(
                f"127.0.0.1:{a_port}",
                grpc.ssl_server_credentials([(key.read_bytes(), chain.read_bytes())]),
            )
            await server.start()
            try:
                await eventually(
                    lambda: b.store.status().refusals.get("UNTRUSTED_SIGNER", 0) >= 1,
                    "B to refuse the restarted peer's snapshots",
                    timeout=DEADLINE + 3,  # B reconnects with a 1 s backoff
                )
                status = b.store.status()
                assert status.refusals.get("ROLLBACK", 0) >= 1
                assert status.version == 2
                assert b.store.snapshot is held
                assert rogue.calls >= 2
            finally:
                await server.stop(0)


async def test_dev_follower_bootstraps_from_the_pki_roots_bundle(federation: Federation) -> None:
    """`tongban gateway serve --pki DIR --region R --follow PEER` with no snapshot file: the dev
    PKI's roots.pem (every region's root) is the bootstrap trust, so a peer of another region
    can be reached before any registry is held."""
    async with running(config_for(federation, "500000", snapshot_file=federation.current)) as (
        _,
        a_port,
    ):
        b_config = config_for(
            federation, "330000", snapshot_file=None, follow=f"localhost:{a_port}"
        )
        assert b_config.bootstrap_ca_file == federation.pki / "roots.pem"
        async with running(b_config) as (b, _):
            await eventually(
                lambda: version_of(b) == 1, "B to receive version 1 from a 500000 peer"
            )
