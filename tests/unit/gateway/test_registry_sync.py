"""Following a peer: snapshots offered to the store, refusals logged, backoff that restarts
after every connection that worked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from gateway.registry_sync import PeerSnapshotSource


class _Stop(Exception):
    pass


async def test_backoff_restarts_after_a_connection_that_worked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = PeerSnapshotSource(
        "localhost:1",
        store=None,  # type: ignore[arg-type]  # never reached: follow_once is replaced
        credentials=grpc.local_channel_credentials,
        retry_seconds=1.0,
        max_retry_seconds=30.0,
    )
    outcomes = iter(["fail", "fail", "fail", "connect", "fail", "connect", "stop"])

    async def follow_once(connected: Callable[[], None] = lambda: None) -> None:
        outcome = next(outcomes)
        if outcome == "stop":
            raise _Stop
        if outcome == "connect":
            connected()  # a peer that answered, then dropped the stream
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
        )

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(source, "follow_once", follow_once)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    with pytest.raises(_Stop):
        await source.run()
    # Doubling while the peer is down; back to the start after each connection that worked.
    assert delays == [1.0, 2.0, 4.0, 1.0, 2.0, 1.0]
