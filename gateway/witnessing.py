"""Witnessing between regions (docs/audit.md "Witnessing"): each region's gateway witnesses the
other regions' audit logs, and submits its own checkpoints to them.

Names: region R's log is ``audit.tongban/R`` (its checkpoints signed by R's audit key under that
name, or ``audit-R`` before), and R's witness is ``witness.tongban/R``, cosigning with the same
audit key (type 0x04 and the "cosignature/v1" prefix keep the two kinds of signature apart). Both
keys come from the registry: every audit key of R that may verify a signature made now.

`CheckpointSubmitter` runs in the background: told of each new checkpoint (only the newest one
waits: bounded), it offers it to every other region's witness (tlog-witness: from the size each
witness last cosigned, learnt from its WITNESS_SIZE_MISMATCH answer, with a consistency proof),
checks each cosignature against the registry and keeps it beside the checkpoint. A failure is
retried with backoff; nothing on the query path ever waits for it.

`cosignature_report` is what oversight checks: the valid cosignatures of a checkpoint by the
registry's witnesses, against the registry's `witness_threshold`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import (
    AuditError,
    AuditLog,
    Checkpoint,
    CheckpointError,
    CosignatureStore,
    ProofError,
    signature_lines,
    verify_cosignature,
)
from gateway.breaker import BreakerOpen
from gateway.errors import error_info_of
from gateway.peers import PeerPool, UnknownPeer
from registry import KeyState, KeyUsage, Registry, RegistryError, RegistryStore
from tongban.v1 import exchange_pb2

__all__ = [
    "RETRY_SECONDS",
    "SUBMIT_TIMEOUT_SECONDS",
    "CheckpointSubmitter",
    "CosignatureReport",
    "Witnessed",
    "audit_keys",
    "cosignature_report",
    "log_keys",
    "log_origin",
    "witness_name",
    "witnessed",
]

log = logging.getLogger("tongban.witnessing")

SUBMIT_TIMEOUT_SECONDS = 5.0  # one AddCheckpoint call
RETRY_SECONDS = (1.0, 2.0, 5.0, 15.0, 60.0)  # backoff between rounds that left a witness out


def log_origin(region: str) -> str:
    return f"audit.tongban/{region}"


def witness_name(region: str) -> str:
    return f"witness.tongban/{region}"


def audit_keys(registry: Registry, region: str, at: datetime) -> list[ed25519.Ed25519PublicKey]:
    """The Ed25519 keys of `region`'s audit certificates that may verify a signature made at
    `at` (pending, active, retiring; revoked only for what they signed before)."""
    found: list[ed25519.Ed25519PublicKey] = []
    for entry in registry.keys_of(region, KeyUsage.AUDIT):
        if entry.state is KeyState.REVOKED and (entry.revoked_at is None or at >= entry.revoked_at):
            continue
        key = x509.load_der_x509_certificate(entry.certificate).public_key()
        if isinstance(key, ed25519.Ed25519PublicKey):
            found.append(key)
    return found


def log_keys(
    store: RegistryStore, clock: Callable[[], datetime]
) -> Callable[[str], Sequence[tuple[str, ed25519.Ed25519PublicKey]]]:
    """For a `Witness`: the (key name, key) pairs that may sign the checkpoints of `origin`."""

    def lookup(origin: str) -> Sequence[tuple[str, ed25519.Ed25519PublicKey]]:
        prefix, _, region = origin.partition("/")
        if prefix != "audit.tongban" or not region:
            return []
        registry = store.current()
        if registry.region(region) is None:
            return []
        keys = audit_keys(registry, region, clock())
        return [(name, key) for key in keys for name in (origin, f"audit-{region}")]

    return lookup


@dataclass(frozen=True, slots=True)
class CosignatureReport:
    """The cosignatures of one checkpoint that count: valid, by a witness of another region."""

    threshold: int
    witnesses: tuple[str, ...]  # names of the valid cosigners, sorted
    problems: tuple[str, ...]  # lines that claim a registry witness's key and fail

    @property
    def enough(self) -> bool:
        return len(self.witnesses) >= self.threshold


def cosignature_report(
    body: str, lines: Sequence[str], registry: Registry, log_region: str, at: datetime
) -> CosignatureReport:
    """Which of `lines` (signature lines, "— name base64") validly cosign the checkpoint whose
    note text is `body`, by the witnesses of the registry's other regions."""
    valid: set[str] = set()
    problems: list[str] = []
    keys = {
        witness_name(r.code): audit_keys(registry, r.code, at)
        for r in registry.regions
        if r.code != log_region
    }
    for line in lines:
        parts = line.rstrip("\n").split(" ")
        if len(parts) != 3 or parts[1] not in keys:
            continue
        for key in keys[parts[1]]:
            try:
                if verify_cosignature(parts[2], body, key, parts[1]) is not None:
                    valid.add(parts[1])
                    break
            except CheckpointError as exc:
                problems.append(str(exc))
                break
    return CosignatureReport(registry.witness_threshold, tuple(sorted(valid)), tuple(problems))


@dataclass(frozen=True, slots=True)
class Witnessed:
    """What oversight reads: the latest checkpoint's cosignatures, and the newest checkpoint
    with enough of them (None: none counts yet)."""

    latest: CosignatureReport | None
    checkpoint: Checkpoint | None
    report: CosignatureReport | None

    @property
    def cosigned_note(self) -> str | None:
        """The counting checkpoint's note with its cosignatures appended."""
        return None if self.checkpoint is None else self.checkpoint.note + "".join(self.lines)

    lines: tuple[str, ...] = ()


async def witnessed(
    checkpoints: Sequence[Checkpoint],
    cosignatures: CosignatureStore,
    registry: Registry,
    log_region: str,
    at: datetime,
) -> Witnessed:
    """Check the stored cosignatures of `checkpoints` (in size order), newest first, against
    the registry's witnesses and threshold."""
    latest_report: CosignatureReport | None = None
    for checkpoint in reversed(checkpoints):
        lines = await cosignatures.cosignatures(checkpoint.size, checkpoint.root)
        report = cosignature_report(checkpoint.body, lines, registry, log_region, at)
        latest_report = latest_report or report
        if report.enough:
            kept = tuple(
                line for line in lines if line.rstrip("\n").split(" ")[1] in report.witnesses
            )
            return Witnessed(latest_report, checkpoint, report, kept)
    return Witnessed(latest_report, None, None)


class SubmissionObserver(Protocol):
    def cosignatures_held(self, count: int) -> None: ...

    def witness_submission_failed(self, region: str) -> None: ...


class CheckpointSubmitter:
    """Offers this gateway's checkpoints to the other regions' witnesses, in the background."""

    def __init__(
        self,
        audit: AuditLog,
        cosignatures: CosignatureStore,
        registry: RegistryStore,
        peers: PeerPool,
        *,
        region: str,
        observer: SubmissionObserver | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_seconds: Sequence[float] = RETRY_SECONDS,
    ) -> None:
        self._audit = audit
        self.cosignatures = cosignatures
        self._registry = registry
        self._peers = peers
        self.region = region
        self._observer = observer
        self._clock = clock
        self._retry = tuple(retry_seconds)
        self._latest: Checkpoint | None = None
        self._wake = asyncio.Event()
        self.sizes: dict[str, int] = {}  # per witness region: the size it last cosigned
        self.rounds = 0

    def offer(self, checkpoint: Checkpoint) -> None:
        """A new checkpoint (an `AuditLog` listener): it replaces any still waiting."""
        self._latest = checkpoint
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        if self._latest is None:  # after a restart: the newest checkpoint may be uncosigned
            latest = await self._audit.latest_checkpoint()
            if latest is not None and self._latest is None:
                self.offer(latest)
        while True:
            await self._wake.wait()
            self._wake.clear()
            checkpoint = self._latest
            if checkpoint is None:
                continue
            if await self.submit(checkpoint):
                failures = 0
                continue
            delay = self._retry[min(failures, len(self._retry) - 1)]
            failures += 1
            try:  # a newer checkpoint ends the wait at once
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                self._wake.set()

    async def submit(self, checkpoint: Checkpoint) -> bool:
        """One round: offer `checkpoint` to every witness not holding its cosignature yet;
        True when none is left out."""
        self.rounds += 1
        try:
            registry = self._registry.current()
        except RegistryError as exc:
            log.warning("checkpoint %d not submitted to witnesses: %s", checkpoint.size, exc)
            return False
        held = await self._held(checkpoint, registry)
        missing = [
            r.code
            for r in registry.regions
            if r.code != self.region and witness_name(r.code) not in held
        ]
        results = await asyncio.gather(
            *(self._submit_to(region, checkpoint, registry) for region in missing)
        )
        held = await self._held(checkpoint, registry)
        if self._observer is not None:
            self._observer.cosignatures_held(len(held))
        return all(results)

    async def _held(self, checkpoint: Checkpoint, registry: Registry) -> tuple[str, ...]:
        lines = await self.cosignatures.cosignatures(checkpoint.size, checkpoint.root)
        return cosignature_report(
            checkpoint.body, lines, registry, self.region, self._clock()
        ).witnesses

    async def _proof(self, old: int, size: int) -> list[bytes]:
        if old in (0, size):
            return []
        proof, _, _ = await self._audit.consistency_proof(old, size)
        return proof

    async def _submit_to(self, region: str, checkpoint: Checkpoint, registry: Registry) -> bool:
        for _ in range(3):  # a size mismatch teaches the witness's size: ask again from it
            old = self.sizes.get(region, 0)
            if old > checkpoint.size:
                return True  # the witness already cosigned a later checkpoint of ours
            try:
                response = await self._call(region, old, checkpoint)
            except grpc.aio.AioRpcError as exc:
                info, _ = error_info_of(exc)
                size = info.metadata.get("size", "") if info is not None else ""
                if (
                    info is not None
                    and info.reason == "WITNESS_SIZE_MISMATCH"
                    and size.isascii()
                    and size.isdigit()
                ):
                    self.sizes[region] = int(size)
                    continue
                return self._failed(region, f"{exc.code().name}: {exc.details()}")
            except (UnknownPeer, BreakerOpen, TimeoutError, AuditError, ProofError) as exc:
                return self._failed(region, str(exc) or type(exc).__name__)
            return await self._keep(region, checkpoint, registry, list(response.cosignatures))
        return self._failed(region, "the witness's size kept changing")

    async def _call(
        self, region: str, old: int, checkpoint: Checkpoint
    ) -> exchange_pb2.AddCheckpointResponse:
        request = exchange_pb2.AddCheckpointRequest(
            old_size=old,
            consistency_proof=await self._proof(old, checkpoint.size),
            checkpoint=checkpoint.note,
        )
        witness = self._peers.witness_stub(region)
        return await self._peers.call(
            region,
            lambda _stub: witness.AddCheckpoint(request, timeout=SUBMIT_TIMEOUT_SECONDS),
            timeout_seconds=SUBMIT_TIMEOUT_SECONDS,
        )

    async def _keep(
        self, region: str, checkpoint: Checkpoint, registry: Registry, lines: list[str]
    ) -> bool:
        name = witness_name(region)
        try:
            _, found = signature_lines(checkpoint.body + "\n" + "".join(lines))
        except CheckpointError as exc:
            return self._failed(region, f"its answer is not signature lines: {exc}")
        for key in audit_keys(registry, region, self._clock()):
            for line_name, value in found:
                if line_name != name:
                    continue
                try:
                    made = verify_cosignature(value, checkpoint.body, key, name)
                except CheckpointError as exc:
                    return self._failed(region, str(exc))
                if made is not None:
                    await self.cosignatures.add_cosignature(checkpoint.size, checkpoint.root, made)
                    self.sizes[region] = checkpoint.size
                    return True
        return self._failed(region, "no valid cosignature by its registry key in its answer")

    def _failed(self, region: str, why: str) -> bool:
        log.warning("witness of region %s did not cosign our checkpoint: %s", region, why)
        if self._observer is not None:
            self._observer.witness_submission_failed(region)
        return False
