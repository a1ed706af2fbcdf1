"""Channels to peer gateways: one pooled mTLS channel per peer region.

A peer's endpoint comes from the current registry (or from the configuration's overrides, for
development); its TLS identity is checked against the registry's region CAs by the handshake,
and the server side checks ours the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import grpc

from registry import RegistryStore
from tongban.v1 import exchange_pb2_grpc

__all__ = ["PeerPool", "UnknownPeer"]


class UnknownPeer(Exception):
    """The registry names no gateway endpoint for that region."""


class PeerPool:
    def __init__(
        self,
        store: RegistryStore,
        credentials: Callable[[str], grpc.ChannelCredentials],  # per peer region
        *,
        overrides: Mapping[str, str] | None = None,
        interceptors: Callable[[str], Sequence[grpc.aio.ClientInterceptor]] | None = None,
    ) -> None:
        self._store = store
        self._credentials = credentials
        self._overrides = dict(overrides or {})
        self._interceptors = interceptors  # per peer region: the gateway's grpc_client_* metrics
        self._channels: dict[tuple[str, str, int], grpc.aio.Channel] = {}
        self._retired: list[grpc.aio.Channel] = []  # replaced by `renew`, closed with the pool

    def endpoint(self, region: str) -> str:
        if region in self._overrides:
            return self._overrides[region]
        found = self._store.current().region(region)
        if found is None or not found.endpoint:
            raise UnknownPeer(f"the registry names no gateway for region {region}")
        return found.endpoint

    def stub(self, region: str) -> exchange_pb2_grpc.PeerAsyncStub:
        """A Peer stub for `region`; the channel is rebuilt when the endpoint or registry changes
        (new trust anchors need new credentials)."""
        target = self.endpoint(region)
        version = self._store.current().version
        key = (region, target, version)
        channel = self._channels.get(key)
        if channel is None:
            for stale in [k for k in self._channels if k[0] == region]:
                self._channels.pop(stale)  # closed when the pool closes; in-flight calls finish
            channel = grpc.aio.secure_channel(
                target,
                self._credentials(region),
                options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
                interceptors=list(self._interceptors(region)) if self._interceptors else None,
            )
            self._channels[key] = channel
        return exchange_pb2_grpc.PeerStub(channel)  # typed as the async stub for an aio channel

    def renew(self) -> None:
        """New channels from now on (our own TLS certificate changed): the next call to each peer
        handshakes with the new credentials; channels in use finish and close with the pool."""
        self._retired.extend(self._channels.values())
        self._channels.clear()

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._retired]:
            await channel.close()
        self._channels.clear()
        self._retired.clear()
