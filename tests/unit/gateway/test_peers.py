"""The peer channel pool: one live channel per peer region, replaced only when its endpoint or
the region's root CA changes, and a replaced channel closed once its calls have finished."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import gateway.peers
from gateway.breaker import BreakerOpen
from gateway.peers import PeerPool, UnknownPeer, peer_failed
from registry import Region, Registry
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class _Snapshot:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry


class _Store:
    """What the pool reads of a `RegistryStore`: the held snapshot and the current registry."""

    def __init__(self, registry: Registry) -> None:
        self.snapshot = _Snapshot(registry)

    def current(self) -> Registry:
        return self.snapshot.registry

    def publish(self, **changes: Any) -> None:
        held = self.snapshot.registry
        self.snapshot = _Snapshot(dataclasses.replace(held, version=held.version + 1, **changes))


def _registry(*regions: Region) -> Registry:
    return Registry(
        name="test",
        version=1,
        issued_at=NOW,
        expires_at=NOW + timedelta(days=1),
        refresh_seconds=60,
        regions=regions,
    )


class _Recorded:
    """A real aio channel that remembers whether it was closed."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)
        self.closed = True


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[_Recorded]:
    channels: list[_Recorded] = []
    real = grpc.aio.secure_channel

    def secure_channel(target: str, credentials: grpc.ChannelCredentials, **kwargs: Any) -> Any:
        channels.append(_Recorded(real(target, credentials, **kwargs)))
        return channels[-1]

    monkeypatch.setattr(gateway.peers.grpc.aio, "secure_channel", secure_channel)
    return channels


def _pool(store: _Store, **kwargs: Any) -> PeerPool:
    return PeerPool(
        store,  # type: ignore[arg-type]  # the two members the pool reads
        lambda region: grpc.local_channel_credentials(),
        **kwargs,
    )


async def test_a_thousand_registry_versions_keep_one_channel_per_peer(
    opened: list[_Recorded],
) -> None:
    store = _Store(_registry(Region("500000", "CQ", "127.0.0.1:1", (b"root-cq",))))
    pool = _pool(store)
    for _ in range(1000):
        store.publish()
        pool.stub("500000")
    assert len(opened) == 1  # nothing that shapes the channel changed
    assert pool.live == 1
    await pool.close()
    assert all(channel.closed for channel in opened)


async def test_replaced_channels_are_closed_and_never_pile_up(opened: list[_Recorded]) -> None:
    store = _Store(_registry(Region("500000", "CQ", "127.0.0.1:1", (b"root-0",))))
    pool = _pool(store, drain_seconds=0.5)
    for version in range(1, 1001):
        # every version moves the endpoint or re-keys the region's CA: a new channel each time
        changed = (
            {"endpoint": f"127.0.0.1:{version % 7 + 2}"}
            if version % 2
            else {"ca": f"root-{version}"}
        )
        region = store.snapshot.registry.regions[0]
        store.publish(
            regions=(
                dataclasses.replace(
                    region,
                    endpoint=changed.get("endpoint", region.endpoint),
                    ca_certificates=(changed.get("ca", "").encode() or region.ca_certificates[0],),
                ),
            )
        )
        pool.stub("500000")
        if version % 10 == 0:
            await asyncio.sleep(0)  # the event loop turns now and then, as between calls
        assert pool.live == 1
        assert pool.draining <= gateway.peers.MAX_DRAINING
    assert len(opened) == 1000
    for _ in range(200):  # no call is in flight: each closes at once, not after its grace
        if pool.draining == pool.closing == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.draining == pool.closing == 0
    assert sum(not channel.closed for channel in opened) == 1  # only the live one is open
    await pool.close()
    assert all(channel.closed for channel in opened)


async def test_too_many_draining_channels_close_the_oldest_at_once(
    opened: list[_Recorded],
) -> None:
    store = _Store(_registry(Region("500000", "CQ", "127.0.0.1:1", (b"root-cq",))))
    pool = _pool(store, max_draining=3)
    for _ in range(20):  # the loop never turns: no drain task even starts
        pool.stub("500000")
        pool.renew()
        assert pool.draining <= 3
    await asyncio.sleep(0.05)
    assert pool.draining == pool.closing == 0
    assert len(opened) == 20
    assert all(channel.closed for channel in opened)
    await pool.close()


async def test_a_region_that_leaves_the_registry_loses_its_channel(
    opened: list[_Recorded],
) -> None:
    cq = Region("500000", "CQ", "127.0.0.1:1", (b"root-cq",))
    zj = Region("330000", "ZJ", "127.0.0.1:2", (b"root-zj",))
    store = _Store(_registry(cq, zj))
    pool = _pool(store)
    pool.stub("500000")
    pool.stub("330000")
    store.publish(regions=(zj,))
    with pytest.raises(UnknownPeer):
        pool.stub("500000")
    pool.stub("330000")
    assert pool.live == 1
    await asyncio.sleep(0.05)
    assert [channel.closed for channel in opened] == [True, False]
    await pool.close()


async def test_renew_drains_the_channels_in_use(opened: list[_Recorded]) -> None:
    store = _Store(_registry(Region("500000", "CQ", "127.0.0.1:1", (b"root-cq",))))
    pool = _pool(store)
    for _ in range(50):
        pool.stub("500000")
        pool.renew()  # our own certificate changed: every channel handshakes anew
    await asyncio.sleep(0.05)
    assert len(opened) == 50
    assert all(channel.closed for channel in opened)
    assert pool.live == 0
    await pool.close()


class _SlowPeer(exchange_pb2_grpc.PeerServicer):
    async def Forward(
        self, request: exchange_pb2.ForwardRequest, context: Any
    ) -> exchange_pb2.ForwardResponse:
        await asyncio.sleep(0.3)
        return exchange_pb2.ForwardResponse()


async def test_a_call_in_flight_on_a_replaced_channel_finishes(opened: list[_Recorded]) -> None:
    server = grpc.aio.server()
    exchange_pb2_grpc.add_PeerServicer_to_server(_SlowPeer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials())
    await server.start()
    try:
        store = _Store(_registry(Region("500000", "CQ", f"127.0.0.1:{port}", (b"root-1",))))
        pool = _pool(store, drain_seconds=5.0)
        call = asyncio.ensure_future(pool.stub("500000").Forward(exchange_pb2.ForwardRequest()))
        await asyncio.sleep(0.1)  # the call is on its way
        region = store.snapshot.registry.regions[0]
        store.publish(regions=(dataclasses.replace(region, ca_certificates=(b"root-2",)),))
        pool.stub("500000")  # a new channel; the first one drains
        assert isinstance(await call, exchange_pb2.ForwardResponse)
        for _ in range(100):
            if opened[0].closed:
                break
            await asyncio.sleep(0.01)
        assert opened[0].closed
        assert not opened[1].closed
        await pool.close()
    finally:
        await server.stop(None)


# -- what counts against a peer in its breaker ---------------------------------------------------
def _peer_error(code: grpc.StatusCode, reason: str = "") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tongban"))
        status = status_pb2.Status(code=code.value[0], message="why", details=[detail])
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="why")


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (TimeoutError(), True),  # our bound ended it
        (_peer_error(grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (_peer_error(grpc.StatusCode.UNAVAILABLE), True),  # unreachable, or no answer
        (_peer_error(grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE"), True),
        (_peer_error(grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE"), False),  # it is up
        (_peer_error(grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"), False),
        (_peer_error(grpc.StatusCode.UNAVAILABLE, "REGISTRY_STALE"), False),
        (_peer_error(grpc.StatusCode.PERMISSION_DENIED, "NO_AGREEMENT"), False),  # it decided
        (_peer_error(grpc.StatusCode.NOT_FOUND, "SUBJECT_NOT_FOUND"), False),
        (ValueError("not a call's error"), False),
    ],
    ids=lambda value: value if isinstance(value, bool) else None,
)
def test_what_counts_against_a_peer(error: BaseException, counts: bool) -> None:
    assert peer_failed(error) is counts


async def test_each_peer_region_has_one_breaker_and_an_open_one_is_not_called() -> None:
    pool = _pool(_Store(_registry()), overrides={"330000": "127.0.0.1:1"})
    assert pool.breaker("330000") is pool.breaker("330000")
    assert pool.breaker("330000") is not pool.breaker("500000")
    breaker = pool.breaker("330000")
    for _ in range(breaker.failure_threshold):
        breaker.failure(timeout=True)
    called = False

    async def forward(stub: object) -> None:
        nonlocal called
        called = True

    with pytest.raises(BreakerOpen):
        await pool.call("330000", forward, timeout_seconds=1)
    assert not called
    assert pool.breaker("500000").state == "closed"
    await pool.close()
