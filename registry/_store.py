"""The live registry: the last good snapshot, swapped atomically, never replaced by a bad one.

A gateway holds one `RegistryStore`. Sources (a file that is published to, a peer gateway's
`Registry.Watch`) offer it snapshots; it verifies each against the newest root it has accepted
(at first the one installed: a restart walks the chain again from it) and the version it holds, swaps the new one in with a single reference assignment, and wakes whoever
waits for a newer version. A refused snapshot changes nothing but the refusal counters.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from registry._envelope import SignedSnapshot, SnapshotVerifier
from registry._model import Registry
from registry._root import Root
from registry._snapshot import MAX_SNAPSHOT_BYTES
from registry.errors import RegistryStale, RegistryUnavailable, SnapshotError, SnapshotRollback

__all__ = ["FileSnapshotSource", "RegistryStatus", "RegistryStore"]

log = logging.getLogger("tongban.registry")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RegistryStatus:
    """What a gateway can say about its registry, for health checks and metrics."""

    version: int | None
    issued_at: datetime | None
    expires_at: datetime | None
    age_seconds: float | None
    stale: bool  # true when nothing is held or what is held has expired
    refusals: dict[str, int]  # refused snapshots by reason
    last_refusal: str  # the message of the last refusal, for a person
    root_version: int = 1  # the newest trusted root accepted


SwapListener = Callable[[SignedSnapshot], None]


class RegistryStore:
    """Holds the current snapshot of one gateway. Call `offer()` from the event loop's thread."""

    def __init__(self, verifier: SnapshotVerifier, *, clock: Clock = utc_now) -> None:
        self._verifier = verifier
        self._clock = clock
        self._snapshot: SignedSnapshot | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._listeners: list[SwapListener] = []
        self._refusals: Counter[str] = Counter()
        self._last_refusal = ""

    @property
    def authority_key_id(self) -> str:
        return self._verifier.authority_key_id

    @property
    def root(self) -> Root:
        """The newest root accepted (it travels with the held snapshot: one swap for both)."""
        snapshot = self._snapshot
        return snapshot.root if snapshot is not None and snapshot.root else self._verifier.root

    def offer(self, jws: str | bytes) -> bool:
        """Verify and apply a snapshot. True if it was applied, False if it is the one held.

        Raises the `SnapshotError` that explains a refusal; the held snapshot stays in force.
        """
        held = self._snapshot
        text = jws.decode("ascii", "replace").strip() if isinstance(jws, bytes) else jws.strip()
        if held is not None and text == held.jws:
            return False
        try:
            snapshot = self._verifier.verify(
                text,
                held_version=held.registry.version if held else None,
                now=self._clock(),
                root=self.root,
            )
        except SnapshotError as exc:
            self._refusals[exc.reason] += 1
            self._last_refusal = str(exc)
            raise
        previous_root = self.root.version
        self._snapshot = snapshot  # the swap: one reference assignment, root included
        log.info(
            "registry version %d applied (issued %s, expires %s; signed by %s)",
            snapshot.registry.version,
            snapshot.registry.issued_at.isoformat(),
            snapshot.registry.expires_at.isoformat(),
            ", ".join(snapshot.signers),
        )
        if snapshot.root is not None and snapshot.root.version != previous_root:
            log.warning(
                "registry trusted root version %d accepted (was %d): %d keys, threshold %d",
                snapshot.root.version,
                previous_root,
                len(snapshot.root.keys),
                snapshot.root.threshold,
            )
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        for listener in list(self._listeners):
            listener(snapshot)
        return True

    def on_swap(self, listener: SwapListener) -> Callable[[], None]:
        """Call `listener` with each snapshot applied from now on, until the function returned
        is called (whoever stops listening must say so: a store outlives its listeners)."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    @property
    def snapshot(self) -> SignedSnapshot | None:
        """The last good snapshot, expired or not (what a peer asking for it is given)."""
        return self._snapshot

    def current(self) -> Registry:
        """The registry to decide with; raises when there is none or it has expired."""
        snapshot = self._snapshot
        if snapshot is None:
            raise RegistryUnavailable("no registry snapshot has been loaded yet")
        registry = snapshot.registry
        if self._clock() >= registry.expires_at:
            raise RegistryStale(
                f"registry version {registry.version} expired at "
                f"{registry.expires_at:%Y-%m-%dT%H:%M:%SZ} and no newer snapshot has arrived"
            )
        return registry

    def status(self) -> RegistryStatus:
        snapshot = self._snapshot
        refusals = dict(self._refusals)
        if snapshot is None:
            return RegistryStatus(
                None, None, None, None, True, refusals, self._last_refusal, self.root.version
            )
        registry = snapshot.registry
        now = self._clock()
        return RegistryStatus(
            version=registry.version,
            issued_at=registry.issued_at,
            expires_at=registry.expires_at,
            age_seconds=(now - registry.issued_at).total_seconds(),
            stale=now >= registry.expires_at,
            refusals=refusals,
            last_refusal=self._last_refusal,
            root_version=self.root.version,
        )

    async def wait_newer(self, version: int) -> SignedSnapshot:
        """Return the first held snapshot whose version is above `version`, waiting if needed."""
        while True:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.registry.version > version:
                return snapshot
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)


class FileSnapshotSource:
    """Offers the store the snapshot in a file whenever the file changes (publish writes it)."""

    def __init__(self, path: Path, store: RegistryStore, *, poll_seconds: float = 2.0) -> None:
        self.path = path
        self.store = store
        self.poll_seconds = poll_seconds
        self._seen: tuple[int, int] | None = None

    def poll(self) -> bool:
        """Check the file once; True if a new snapshot was applied. Refusals are logged."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature == self._seen:
            return False
        self._seen = signature
        if stat.st_size > MAX_SNAPSHOT_BYTES:
            log.warning(
                "registry file %s is larger than %d bytes; ignored", self.path, MAX_SNAPSHOT_BYTES
            )
            return False
        try:
            return self.store.offer(self.path.read_bytes())
        except SnapshotRollback as exc:
            log.info("registry file %s not applied: %s", self.path, exc)
        except SnapshotError as exc:
            log.warning("registry file %s refused: %s", self.path, exc)
        except OSError as exc:
            log.warning("registry file %s cannot be read: %s", self.path, exc.__class__.__name__)
            self._seen = None
        return False

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            self.poll()
            await asyncio.sleep(self.poll_seconds)
