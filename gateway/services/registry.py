"""`tongban.v1.Registry`: gateways fetch and follow each other's signed registry snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.errors import Refusal
from registry import RegistryStore, SignedSnapshot
from tongban.v1 import registry_pb2, registry_pb2_grpc

__all__ = ["RegistryService", "snapshot_message"]


def snapshot_message(snapshot: SignedSnapshot) -> registry_pb2.SignedSnapshot:
    issued, expires = Timestamp(), Timestamp()
    issued.FromDatetime(snapshot.registry.issued_at)
    expires.FromDatetime(snapshot.registry.expires_at)
    return registry_pb2.SignedSnapshot(
        jws=snapshot.jws,
        version=snapshot.registry.version,
        issued_at=issued,
        expires_at=expires,
        authority_key_id=snapshot.authority_key_id,
    )


class RegistryService(registry_pb2_grpc.RegistryServicer):
    """Serves the last good snapshot this gateway holds, expired or not: the receiver decides."""

    def __init__(self, store: RegistryStore) -> None:
        self._store = store

    async def GetSnapshot(
        self,
        request: registry_pb2.GetSnapshotRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> registry_pb2.GetSnapshotResponse:
        snapshot = self._store.snapshot
        if snapshot is None:
            raise Refusal("REGISTRY_STALE", "this gateway holds no registry snapshot yet")
        if request.known_version >= snapshot.registry.version:
            return registry_pb2.GetSnapshotResponse(not_modified=True)
        return registry_pb2.GetSnapshotResponse(snapshot=snapshot_message(snapshot))

    async def Watch(
        self,
        request: registry_pb2.WatchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[registry_pb2.SignedSnapshot]:
        known = request.known_version
        while True:
            snapshot = await self._store.wait_newer(known)
            known = snapshot.registry.version
            yield snapshot_message(snapshot)
