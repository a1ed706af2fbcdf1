"""Following a peer gateway's registry: `Registry.GetSnapshot`, then `Registry.Watch`.

Whatever a peer sends is only offered to the store, which verifies it against the installed
trusted root (a threshold of authority keys): a peer can delay a snapshot, never forge or roll one
back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from gateway.errors import peer_text
from registry import RegistryStore, SnapshotError, SnapshotRollback
from tongban.v1 import registry_pb2, registry_pb2_grpc

__all__ = ["PeerSnapshotSource"]

log = logging.getLogger("tongban.registry.peer")


class PeerSnapshotSource:
    """Keeps a Watch open on one peer, reconnecting with backoff; offers every snapshot it gets."""

    def __init__(
        self,
        target: str,
        store: RegistryStore,
        *,
        credentials: Callable[[], grpc.ChannelCredentials],
        retry_seconds: float = 1.0,
        max_retry_seconds: float = 30.0,
    ) -> None:
        self.target = target
        self.store = store
        self._credentials = credentials
        self._retry = retry_seconds
        self._max_retry = max_retry_seconds

    def _offer(self, jws: str) -> None:
        try:
            if self.store.offer(jws):
                log.info("registry version %d received from peer %s", self._held(), self.target)
        except SnapshotRollback as exc:
            log.info("peer %s sent a snapshot not newer than ours: %s", self.target, exc)
        except SnapshotError as exc:
            log.warning("peer %s sent a snapshot that was refused: %s", self.target, exc)

    def _held(self) -> int:
        snapshot = self.store.snapshot
        return snapshot.registry.version if snapshot else 0

    async def follow_once(self, connected: Callable[[], None] = lambda: None) -> None:
        """One connection: fetch what is newer, then watch until the stream ends.

        `connected` is called once the peer has answered, so that the caller's backoff starts
        again from the beginning after every connection that worked.
        """
        async with grpc.aio.secure_channel(self.target, self._credentials()) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            response = await stub.GetSnapshot(
                registry_pb2.GetSnapshotRequest(known_version=self._held()), timeout=10
            )
            connected()
            if response.HasField("snapshot"):
                self._offer(response.snapshot.jws)
            async for snapshot in stub.Watch(registry_pb2.WatchRequest(known_version=self._held())):
                self._offer(snapshot.jws)

    async def run(self) -> None:
        delay = self._retry

        def reset() -> None:
            nonlocal delay
            delay = self._retry

        while True:
            try:
                await self.follow_once(reset)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "following peer %s: %s (%s); retrying in %.0fs",
                    self.target,
                    exc.code().name,
                    peer_text(exc.details() or ""),
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry)
