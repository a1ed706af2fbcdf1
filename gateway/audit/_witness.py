"""A witness of other logs (C2SP tlog-witness): it cosigns a log's checkpoint only when the
checkpoint is consistent with the last one it cosigned for that log, and keeps a fork as proof.

`Witness.add_checkpoint(old_size, proof, note)` follows tlog-witness's add-checkpoint:

| what is offered                                            | answer                          |
| ---------------------------------------------------------- | ------------------------------- |
| a log the witness has no key for                           | `UnknownLog` (404)              |
| a note no key of the log signs                             | `CheckpointError` (403)         |
| old size above the size, or a proof with old size 0       | `WitnessRequestInvalid` (400)   |
| old size other than the size last cosigned (0: none yet)  | `WitnessConflict` + its size (409) |
| same size as held, another root                            | `CheckpointFork` (kept, counted) |
| a consistency proof that does not lead from the held root  | `CheckpointFork` (kept, counted) |
| same size and root as held, or a proof that holds          | a cosignature, state persisted first |

The check and the move of the held state happen under one lock and a compare-and-swap in the
store (`advance_witness` succeeds only from the size checked), so two submissions racing can
never roll the state back. Both checkpoints of a fork, the proof and why are kept
(`ForkEvidence`): they are signed by the log, so they prove to anyone that it showed two
histories.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit._checkpoint import Checkpoint, CheckpointError, verify_checkpoint
from gateway.audit._cosignature import Cosignature
from gateway.audit._merkle import ProofError, verify_consistency
from gateway.audit.errors import AuditError

__all__ = [
    "MAX_PROOF_HASHES",
    "CheckpointFork",
    "ForkEvidence",
    "MemoryWitnessStore",
    "UnknownLog",
    "Witness",
    "WitnessConflict",
    "WitnessError",
    "WitnessObserver",
    "WitnessRequestInvalid",
    "WitnessState",
    "WitnessStore",
]

log = logging.getLogger("tongban.audit.witness")

MAX_PROOF_HASHES = 63  # a consistency proof of a log below 2**63 records is never longer
LogKeys = Callable[[str], Sequence[tuple[str, ed25519.Ed25519PublicKey]]]


class WitnessError(AuditError):
    """A checkpoint the witness does not cosign."""


class UnknownLog(WitnessError):
    """The witness knows no key for the checkpoint's origin."""


class WitnessRequestInvalid(WitnessError):
    """The submission contradicts itself (old size above the size, a proof from size 0)."""


class WitnessConflict(WitnessError):
    """The old size is not the size the witness last cosigned: `size` is that one."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class CheckpointFork(WitnessError):
    """The checkpoint contradicts one the witness cosigned: a fork, kept as `evidence`."""

    def __init__(self, message: str, evidence: ForkEvidence) -> None:
        super().__init__(message)
        self.evidence = evidence


@dataclass(frozen=True, slots=True)
class WitnessState:
    """What the witness last cosigned for one log."""

    origin: str
    size: int
    root: bytes
    note: str


@dataclass(frozen=True, slots=True)
class ForkEvidence:
    """Two checkpoints of one log, both signed by it, that cannot both be true."""

    origin: str
    held_note: str  # the checkpoint the witness had cosigned
    offered_note: str  # the one refused
    old_size: int
    proof: tuple[bytes, ...]
    reason: str
    detected_at: datetime = field(compare=False)


class WitnessStore(Protocol):
    """The witness's durable state: per log what it cosigned, and the forks it refused."""

    async def witness_state(self, origin: str) -> WitnessState | None: ...

    async def advance_witness(self, from_size: int, state: WitnessState) -> bool:
        """Hold `state` for its log if the held size is still `from_size` (0: none held)."""
        ...

    async def add_fork(self, evidence: ForkEvidence) -> None: ...

    async def forks(self) -> list[ForkEvidence]: ...


class WitnessObserver(Protocol):
    def witness_cosigned(self, origin: str) -> None: ...

    def witness_fork(self, origin: str) -> None: ...


class MemoryWitnessStore:
    """A `WitnessStore` in memory (tests, and gateways with a memory audit store)."""

    def __init__(self) -> None:
        self.states: dict[str, WitnessState] = {}
        self.kept: list[ForkEvidence] = []

    async def witness_state(self, origin: str) -> WitnessState | None:
        return self.states.get(origin)

    async def advance_witness(self, from_size: int, state: WitnessState) -> bool:
        held = self.states.get(state.origin)
        if (held.size if held else 0) != from_size:
            return False
        self.states[state.origin] = state
        return True

    async def add_fork(self, evidence: ForkEvidence) -> None:
        self.kept.append(evidence)

    async def forks(self) -> list[ForkEvidence]:
        return list(self.kept)


class Witness:
    """Cosigns other logs' checkpoints as `name` (e.g. ``witness.tongban/510000``).

    `log_keys(origin)` gives the (key name, public key) pairs that may sign that log's
    checkpoints (none: an unknown log); `cosign(body, timestamp)` makes this witness's
    cosignature (its key stays with whoever holds it)."""

    def __init__(
        self,
        name: str,
        cosign: Callable[[str, int], Cosignature],
        store: WitnessStore,
        log_keys: LogKeys,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observer: WitnessObserver | None = None,
    ) -> None:
        self.name = name
        self._cosign = cosign
        self.store = store
        self._log_keys = log_keys
        self._clock = clock
        self.observer = observer
        self._lock = asyncio.Lock()

    def _verified(self, note: str) -> Checkpoint:
        origin = note.partition("\n")[0]
        keys = self._log_keys(origin)
        if not keys:
            raise UnknownLog(f"this witness knows no log named {origin!r}")
        problem: CheckpointError | None = None
        for key_name, public_key in keys:
            try:
                return verify_checkpoint(note, public_key, key_name, origin=origin)
            except CheckpointError as exc:
                problem = problem or exc
        assert problem is not None
        raise problem

    async def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: str) -> Cosignature:
        """Cosign `note` if it is consistent with what this witness cosigned for its log.

        (1) the checkpoint is signed by a key of a log the witness knows
        (2) the request is coherent: old size at most the size, no proof from size 0
        (3) under the lock: the old size is the size held (else a conflict naming it)
        (4) the same size must have the same root; a larger one needs a proof that holds
        (5) the new state is persisted (compare-and-swap) before the cosignature is made
        """
        checkpoint = self._verified(note)  # (1)
        if old_size < 0 or old_size > checkpoint.size:  # (2)
            raise WitnessRequestInvalid(
                f"the old size {old_size} is above the checkpoint's size {checkpoint.size}"
            )
        if old_size == 0 and proof:
            raise WitnessRequestInvalid("a submission from size 0 carries no proof")
        if len(proof) > MAX_PROOF_HASHES:
            raise WitnessRequestInvalid(
                f"a consistency proof has at most {MAX_PROOF_HASHES} hashes"
            )
        async with self._lock:
            held = await self.store.witness_state(checkpoint.origin)
            held_size = held.size if held is not None else 0
            if old_size != held_size:  # (3)
                raise WitnessConflict(
                    f"this witness last cosigned {checkpoint.origin} at size {held_size}, "
                    f"not {old_size}",
                    held_size,
                )
            if held is not None and (held.size > 0 or checkpoint.size == 0):  # (4)
                await self._check_consistent(held, checkpoint, old_size, proof)
            state = WitnessState(checkpoint.origin, checkpoint.size, checkpoint.root, note)
            if not await self.store.advance_witness(held_size, state):  # (5)
                now = await self.store.witness_state(checkpoint.origin)
                raise WitnessConflict(
                    f"{checkpoint.origin} moved on meanwhile", now.size if now else 0
                )
        if self.observer is not None:
            self.observer.witness_cosigned(checkpoint.origin)
        return self._cosign(checkpoint.body, int(self._clock().timestamp()))

    async def _check_consistent(
        self, held: WitnessState, offered: Checkpoint, old_size: int, proof: Sequence[bytes]
    ) -> None:
        if held.size == offered.size and held.root == offered.root and not proof:
            return
        if held.size == offered.size and held.root != offered.root:
            reason = f"two checkpoints of size {held.size} with different roots"
        else:
            try:
                verify_consistency(held.size, offered.size, proof, held.root, offered.root)
            except ProofError as exc:
                reason = f"no consistency from size {held.size} to {offered.size}: {exc}"
            else:
                return
        evidence = ForkEvidence(
            offered.origin, held.note, offered.note, old_size, tuple(proof), reason, self._clock()
        )
        await self.store.add_fork(evidence)
        if self.observer is not None:
            self.observer.witness_fork(offered.origin)
        log.error("FORK of %s refused and kept: %s", offered.origin, reason)
        raise CheckpointFork(f"{offered.origin}: {reason} (kept as evidence)", evidence)
