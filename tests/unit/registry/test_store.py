"""The live registry store: atomic swap of verified snapshots, nothing bad ever applied,
staleness reported, waiters woken; the file source."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import DEMO_SOURCE

from registry import (
    FileSnapshotSource,
    Registry,
    RegistryStale,
    RegistryStore,
    RegistryUnavailable,
    SignedSnapshot,
    SnapshotRollback,
    SnapshotSignatureInvalid,
    SnapshotUntrustedSigner,
    SnapshotVerifier,
    load_source,
    sign_snapshot,
)

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
AUTHORITY = ed25519.Ed25519PrivateKey.generate()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _signed(
    version: int,
    *,
    lifetime: timedelta = timedelta(hours=1),
    key: ed25519.Ed25519PrivateKey = AUTHORITY,
) -> SignedSnapshot:
    source = load_source(DEMO_SOURCE)
    registry = Registry(
        source.name, version, T0, T0 + lifetime, 60, source.regions, source.agencies
    )
    return sign_snapshot(registry, key)


def _store(clock: Clock) -> RegistryStore:
    return RegistryStore(SnapshotVerifier(AUTHORITY.public_key()), clock=clock)


def test_nothing_held_is_unavailable_and_stale() -> None:
    store = _store(Clock(T0))
    with pytest.raises(RegistryUnavailable):
        store.current()
    status = store.status()
    assert status.version is None
    assert status.stale


def test_newer_snapshots_are_swapped_in_bad_ones_never() -> None:
    clock = Clock(T0)
    store = _store(clock)
    swapped: list[int] = []
    store.on_swap(lambda s: swapped.append(s.registry.version))
    assert store.offer(_signed(1).jws) is True
    assert store.offer(_signed(1).jws.encode()) is False  # the one held: not a refusal
    assert store.offer(_signed(3).jws) is True
    refusals = [
        (_signed(2).jws, SnapshotRollback),  # older
        (
            _signed(3, lifetime=timedelta(hours=2)).jws,
            SnapshotRollback,
        ),  # same version, other bytes
        (_signed(4, key=ed25519.Ed25519PrivateKey.generate()).jws, SnapshotUntrustedSigner),
    ]
    envelope = json.loads(_signed(5).jws)
    envelope["signatures"][0]["signature"] = envelope["signatures"][0]["signature"][:-4] + "AAAA"
    refusals.append((json.dumps(envelope), SnapshotSignatureInvalid))
    for jws, error in refusals:
        with pytest.raises(error):
            store.offer(jws)
    assert store.current().version == 3
    assert swapped == [1, 3]
    status = store.status()
    assert status.refusals == {"ROLLBACK": 2, "UNTRUSTED_SIGNER": 1, "BAD_SIGNATURE": 1}
    assert "does not verify" in status.last_refusal
    clock.now = T0 + timedelta(minutes=30)
    assert store.status().age_seconds == 1800


def test_an_expired_snapshot_fails_closed_but_is_still_served_to_peers() -> None:
    clock = Clock(T0)
    store = _store(clock)
    store.offer(_signed(1).jws)
    clock.now = T0 + timedelta(hours=1)
    with pytest.raises(RegistryStale, match="expired at 2026-11-21T09:00:00Z"):
        store.current()
    assert store.status().stale
    assert store.snapshot is not None  # what GetSnapshot gives: the peer decides
    assert store.snapshot.registry.version == 1


async def test_waiters_wake_on_a_newer_snapshot() -> None:
    store = _store(Clock(T0))
    store.offer(_signed(1).jws)
    assert (await store.wait_newer(0)).registry.version == 1
    waiter = asyncio.create_task(store.wait_newer(1))
    await asyncio.sleep(0)
    assert not waiter.done()
    store.offer(_signed(2).jws)
    snapshot = await asyncio.wait_for(waiter, timeout=2)
    assert snapshot.registry.version == 2


def test_file_source_applies_changes_and_survives_bad_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(Clock(T0))
    path = tmp_path / "current.jws"
    source = FileSnapshotSource(path, store, poll_seconds=0.01)
    assert source.poll() is False  # no file yet
    path.write_text(_signed(1).jws)
    assert source.poll() is True
    assert source.poll() is False  # unchanged
    path.write_text("garbage")
    os.utime(path, ns=(1, 1))
    assert source.poll() is False
    assert "refused" in caplog.text
    path.write_text(_signed(2).jws + "\n")
    os.utime(path, ns=(2, 2))
    assert source.poll() is True
    assert store.current().version == 2


async def test_file_source_runs_until_cancelled(tmp_path: Path) -> None:
    store = _store(Clock(T0))
    path = tmp_path / "current.jws"
    path.write_text(_signed(1).jws)
    task = asyncio.create_task(FileSnapshotSource(path, store, poll_seconds=0.01).run())
    try:
        assert (await asyncio.wait_for(store.wait_newer(0), timeout=2)).registry.version == 1
        path.write_text(_signed(2).jws)
        assert (await asyncio.wait_for(store.wait_newer(1), timeout=2)).registry.version == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_listener_that_stops_listening_is_forgotten() -> None:
    store = _store(Clock(T0))
    heard: list[int] = []
    store.on_swap(lambda s: heard.append(s.registry.version))
    for _ in range(1000):  # listeners that come and go (gateways started and stopped)
        stop = store.on_swap(lambda s: heard.append(-s.registry.version))
        stop()
        stop()  # a second call changes nothing
    assert store.offer(_signed(1).jws)
    assert heard == [1]
