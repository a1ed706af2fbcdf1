"""Channels to peer gateways: one pooled mTLS channel per peer region.

A peer's endpoint comes from the current registry (or from the configuration's overrides, for
development); its TLS identity is checked against the registry's region CAs by the handshake,
and the server side checks ours the same way.

A channel lives as long as what shapes it: the peer's endpoint and the root CA it must chain
to (the channel's credentials trust that root only). A new registry version that changes
neither keeps the channel; one that changes either, a region that leaves the registry, or our
own new TLS certificate (`renew`) replaces it, and the replaced channel drains: it is closed
once the calls in flight on it have finished, at most `drain_seconds` later. So the pool holds
one live channel per peer region it has called, plus the few still draining, however many
registry versions it follows.

Each peer region has one circuit breaker (`breaker(region)`), shared by every call to it (a
query's forward, a batch of access reports): calls that time out or find the peer unavailable
open it, and while it is open that region is not called (PEER_UNAVAILABLE at once) while other
regions are unaffected; after `open_seconds` one trial call decides. `call` makes a call through
it, bounded by `timeout_seconds`. With `certificates` (gateway.peer_certificates), the server
certificate each peer presents is checked for revocation before it is called.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc

from gateway._errors import GatewayError
from gateway.breaker import CircuitBreaker
from gateway.errors import error_info_of
from gateway.peer_certificates import PeerCertificates
from registry import Registry, RegistryStore
from tongban.v1 import exchange_pb2_grpc

__all__ = [
    "DRAIN_SECONDS",
    "MAX_DRAINING",
    "PEER_CALL_SECONDS",
    "PeerPool",
    "UnknownPeer",
    "peer_failed",
]

_T = TypeVar("_T")

log = logging.getLogger("tongban.peers")

# Calls to a peer end within their deadline (a query's forward is capped at 5 s, a report
# batch at 5 s): a replaced channel gets this long for them before it is closed.
DRAIN_SECONDS: Final = 10.0
MAX_DRAINING: Final = 64  # replaced channels draining at once; beyond, the oldest is closed now
PEER_CALL_SECONDS: Final = 5.0  # one call to a peer gateway, at most (the caller's deadline too)
# A peer that answers UNAVAILABLE with one of these reasons is up: its own dependency is down.
_PEER_UP_REASONS: Final = frozenset(
    {"AUDIT_UNAVAILABLE", "PROVIDER_UNAVAILABLE", "REGISTRY_STALE", "SEAL_KEY_UNAVAILABLE"}
)


def peer_failed(exc: BaseException) -> bool:
    """Does `exc`, raised by a call to a peer gateway, count against the peer in its breaker?
    It did not answer in time, or could not be reached, and did not name a reason of its own."""
    if isinstance(exc, TimeoutError):
        return True
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return False
    info, _ = error_info_of(exc)
    return info is None or info.reason not in _PEER_UP_REASONS


class UnknownPeer(GatewayError):
    """The registry names no gateway endpoint for that region."""


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a channel to one region is made of: a change of either needs a new channel."""

    target: str
    root: bytes  # DER of the region's root CA in the registry (b"" when none is published)


@dataclass(slots=True)
class _Live:
    shape: _Shape
    channel: grpc.aio.Channel
    stub: exchange_pb2_grpc.PeerAsyncStub
    version: int  # the registry version the shape was last checked against


class PeerPool:
    def __init__(
        self,
        store: RegistryStore,
        credentials: Callable[[str], grpc.ChannelCredentials],  # per peer region
        *,
        overrides: Mapping[str, str] | None = None,
        interceptors: Callable[[str], Sequence[grpc.aio.ClientInterceptor]] | None = None,
        drain_seconds: float = DRAIN_SECONDS,
        max_draining: int = MAX_DRAINING,
        make_breaker: Callable[[str], CircuitBreaker] | None = None,
        certificates: PeerCertificates | None = None,
    ) -> None:
        if drain_seconds < 0:
            raise ValueError("drain_seconds is not negative")
        if max_draining < 1:
            raise ValueError("max_draining is at least 1")
        self._store = store
        self._credentials = credentials
        self._overrides = dict(overrides or {})
        self._certificates = certificates  # the peers' server certificates' revocation check
        self._interceptors = interceptors  # per peer region: the gateway's grpc_client_* metrics
        self._drain_seconds = drain_seconds
        self._max_draining = max_draining
        self._live: dict[str, _Live] = {}  # peer region -> its channel
        self._swept_version = -1  # the registry version the live channels were last swept for
        # Replaced channels, closing once their calls have finished (the task removes itself).
        self._draining: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._closing: dict[asyncio.Task[None], grpc.aio.Channel] = {}  # cut short: closing now
        # Replaced outside an event loop (nothing can be in flight on them): closed by `close`.
        self._orphans: list[grpc.aio.Channel] = []
        self._make_breaker = make_breaker or (
            lambda region: CircuitBreaker(
                name=f"peer gateway {region}",
                open_note="queries to it fail fast with PEER_UNAVAILABLE",
            )
        )
        self.breakers: dict[str, CircuitBreaker] = {}  # peer region -> its breaker
        self.opened = 0  # channels opened since the pool was made
        self.retired = 0  # channels replaced (closed, or closing after their grace)

    @property
    def live(self) -> int:
        """Channels in use: at most one per peer region."""
        return len(self._live)

    @property
    def draining(self) -> int:
        """Replaced channels whose calls in flight may still be finishing (at most
        `max_draining`; beyond, the oldest is closed at once)."""
        return len(self._draining)

    @property
    def closing(self) -> int:
        """Replaced channels cut short, closing at once (gone by the loop's next turns)."""
        return len(self._closing)

    def breaker(self, region: str) -> CircuitBreaker:
        """The breaker of `region`'s gateway, made on first use (one per region called)."""
        found = self.breakers.get(region)
        if found is None:
            found = self.breakers[region] = self._make_breaker(region)
        return found

    async def call(
        self,
        region: str,
        make: Callable[[exchange_pb2_grpc.PeerAsyncStub], Awaitable[_T]],
        *,
        timeout_seconds: float,
    ) -> _T:
        """`await make(stub)` through `region`'s breaker; `make` passes `timeout_seconds` to the
        call as its gRPC deadline (this bound is a backstop just after it). Raises
        `UnknownPeer`, `BreakerOpen` (the peer is not called; `PeerCertificateRefused`: its
        server certificate is revoked), or the call's error."""
        stub = self.stub(region)
        if self._certificates is not None:
            snapshot = self._store.snapshot
            await self._certificates.check(
                region,
                self._live[region].shape.target,
                snapshot.registry if snapshot is not None else None,
                budget_seconds=timeout_seconds,
            )
            # The check may have waited (a probe): a registry swap meanwhile replaces the
            # channel and may close the old one, so the call takes the channel live now.
            stub = self.stub(region)
        return await self.breaker(region).call(
            lambda: make(stub), timeout_seconds=timeout_seconds + 0.5, failed=peer_failed
        )

    def endpoint(self, region: str) -> str:
        if region in self._overrides:
            return self._overrides[region]
        found = self._store.current().region(region)
        if found is None or not found.endpoint:
            raise UnknownPeer(f"the registry names no gateway for region {region}")
        return found.endpoint

    def _shape(self, region: str, registry: Registry | None) -> _Shape:
        target = self.endpoint(region)
        found = registry.region(region) if registry is not None else None
        root = found.ca_certificates[0] if found is not None and found.ca_certificates else b""
        return _Shape(target, root)

    def stub(self, region: str) -> exchange_pb2_grpc.PeerAsyncStub:
        """A Peer stub for `region`, on the region's pooled channel; the channel is replaced
        only when its endpoint or the region's root CA changed (see the module docstring)."""
        snapshot = self._store.snapshot
        version = snapshot.registry.version if snapshot is not None else -1
        live = self._live.get(region)
        if live is not None and live.version == version:
            return live.stub
        registry = snapshot.registry if snapshot is not None else None
        if version != self._swept_version:
            self._sweep(registry, version)
            live = self._live.get(region)
        try:
            shape = self._shape(region, registry)
        except UnknownPeer:
            if live is not None:
                self._retire(self._live.pop(region).channel)
            raise
        if live is not None and live.shape == shape:
            live.version = version
            return live.stub
        if live is not None:
            self._retire(live.channel)
        channel = grpc.aio.secure_channel(
            shape.target,
            self._credentials(region),
            options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
            interceptors=list(self._interceptors(region)) if self._interceptors else None,
        )
        self.opened += 1
        stub = exchange_pb2_grpc.PeerStub(channel)  # typed as the async stub for an aio channel
        self._live[region] = _Live(shape, channel, stub, version)
        return stub

    def witness_stub(self, region: str) -> exchange_pb2_grpc.WitnessAsyncStub:
        """A Witness stub on `region`'s pooled channel (the one `stub` keeps)."""
        self.stub(region)
        return exchange_pb2_grpc.WitnessStub(self._live[region].channel)

    def _sweep(self, registry: Registry | None, version: int) -> None:
        """Once per registry version: retire the channels of regions the registry no longer
        names a gateway for (a region that is never called again must not keep its channel)."""
        self._swept_version = version
        for region in list(self._live):
            if region in self._overrides:
                continue
            found = registry.region(region) if registry is not None else None
            if found is None or not found.endpoint:
                self._retire(self._live.pop(region).channel)

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Close `channel` once its calls in flight have finished (at most `drain_seconds`)."""
        self.retired += 1
        if len(self._draining) >= self._max_draining:
            oldest = next(iter(self._draining))
            log.warning(
                "%d peer channels are draining: the oldest is closed before its calls finish",
                len(self._draining),
            )
            oldest.cancel()  # it may not have started: its channel is closed by another task
            self._spawn(self._draining.pop(oldest), None, self._closing)
        self._spawn(channel, self._drain_seconds, self._draining)

    def _spawn(
        self,
        channel: grpc.aio.Channel,
        grace: float | None,
        into: MutableMapping[asyncio.Task[None], grpc.aio.Channel],
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: nothing can be in flight on it
            self._orphans.append(channel)
            return
        task = loop.create_task(channel.close(grace))
        into[task] = channel
        task.add_done_callback(lambda done: _forget(into, done))

    def renew(self) -> None:
        """New channels from now on (our own TLS certificate changed): the next call to each peer
        handshakes with the new credentials; channels in use drain and close."""
        for live in self._live.values():
            self._retire(live.channel)
        self._live.clear()
        if self._certificates is not None:
            self._certificates.forget()

    async def close(self) -> None:
        """Close every channel now (the gateway's server has stopped: nothing is in flight)."""
        channels = [*(live.channel for live in self._live.values()), *self._orphans]
        self._live.clear()
        self._orphans.clear()
        for channel in channels:
            await channel.close()
        draining = dict(self._draining)
        for task in draining:
            task.cancel()
        await asyncio.gather(*draining, *self._closing, return_exceptions=True)
        for channel in draining.values():
            await channel.close()  # a no-op when its own close finished first
        if self._certificates is not None:
            await self._certificates.close()


def _forget(tasks: MutableMapping[asyncio.Task[None], Any], task: asyncio.Task[None]) -> None:
    tasks.pop(task, None)
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing a peer channel failed: %s", task.exception())
