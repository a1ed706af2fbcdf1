"""Where a gateway keeps witnessing, beside its audit log in the same store (same file, same
schema, migrated with it):

``witness_state``
    per witnessed log (origin): the size, root and note of the checkpoint last cosigned. Moved
    only by a compare-and-swap on the size (`advance_witness`).
``witness_forks``
    append-only: each fork refused, both signed checkpoints, the proof offered and why.
``audit_cosignatures``
    append-only: the cosignatures other regions' witnesses gave this log's checkpoints, by the
    checkpoint's size and root and the witness's name; the line exactly as it goes on the note.

`witness_store_for(audit_store)` gives the one matching the audit store (memory, SQLite,
PostgreSQL).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.audit._cosignature import Cosignature
from gateway.audit._merkle import HASH_SIZE
from gateway.audit._postgres import PostgresAuditStore
from gateway.audit._sqlite import SqliteAuditStore
from gateway.audit._sqlite_schema import blob
from gateway.audit._store import AuditStore
from gateway.audit._witness import ForkEvidence, MemoryWitnessStore, WitnessState, WitnessStore

__all__ = [
    "CosignatureStore",
    "MemoryWitnessing",
    "PostgresWitnessing",
    "SqliteWitnessing",
    "WitnessingStore",
    "witness_store_for",
]


class CosignatureStore(Protocol):
    async def add_cosignature(self, size: int, root: bytes, cosignature: Cosignature) -> None:
        """Keep a cosignature of this log's checkpoint (size, root); one per witness."""
        ...

    async def cosignatures(self, size: int, root: bytes) -> list[str]:
        """The cosignature lines kept for the checkpoint (size, root), by witness name."""
        ...


class WitnessingStore(WitnessStore, CosignatureStore, Protocol):
    """Both halves: what this gateway witnessed, and the cosignatures of its own log."""


def _proof_bytes(proof: Sequence[bytes]) -> bytes:
    return b"".join(proof)


def _proof(data: bytes) -> tuple[bytes, ...]:
    return tuple(data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE))


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)


class MemoryWitnessing(MemoryWitnessStore):
    def __init__(self) -> None:
        super().__init__()
        self.cosigned: dict[tuple[int, bytes], dict[str, str]] = {}

    async def add_cosignature(self, size: int, root: bytes, cosignature: Cosignature) -> None:
        self.cosigned.setdefault((size, root), {}).setdefault(cosignature.witness, cosignature.line)

    async def cosignatures(self, size: int, root: bytes) -> list[str]:
        kept = self.cosigned.get((size, root), {})
        return [kept[name] for name in sorted(kept)]


_SQLITE_STATE = "SELECT size, root, note FROM witness_state WHERE origin = ?"
_SQLITE_FORKS = (
    "SELECT origin, held_note, offered_note, old_size, proof, reason, detected_at"
    " FROM witness_forks ORDER BY id"
)


class SqliteWitnessing:
    """Witnessing in the SQLite audit file: writes on its writer thread, reads on its reader."""

    def __init__(self, store: SqliteAuditStore) -> None:
        self._store = store

    async def witness_state(self, origin: str) -> WitnessState | None:
        def read(conn: Any) -> WitnessState | None:
            row = conn.execute(_SQLITE_STATE, (origin,)).fetchone()
            if row is None:
                return None
            return WitnessState(origin, int(row[0]), blob(row[1]), str(row[2]))

        return await self._store._reads.read(read)

    async def advance_witness(self, from_size: int, state: WitnessState) -> bool:
        moved: list[bool] = []
        now = datetime.now(UTC).isoformat()

        def swap(conn: Any) -> None:  # the writer runs it in one transaction
            row = conn.execute(_SQLITE_STATE, (state.origin,)).fetchone()
            if (int(row[0]) if row else 0) != from_size:
                moved.append(False)
                return
            conn.execute(
                "INSERT INTO witness_state (origin, size, root, note, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET"
                " size = excluded.size, root = excluded.root, note = excluded.note,"
                " updated_at = excluded.updated_at",
                (state.origin, state.size, state.root, state.note, now),
            )
            moved.append(True)

        await self._store._submit(swap)
        return moved == [True]

    async def add_fork(self, evidence: ForkEvidence) -> None:
        row = (
            evidence.origin,
            evidence.held_note,
            evidence.offered_note,
            evidence.old_size,
            _proof_bytes(evidence.proof),
            evidence.reason,
            evidence.detected_at.astimezone(UTC).isoformat(),
        )

        def insert(conn: Any) -> None:
            conn.execute(
                "INSERT INTO witness_forks (origin, held_note, offered_note, old_size, proof,"
                " reason, detected_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._store._submit(insert)

    async def forks(self) -> list[ForkEvidence]:
        def read(conn: Any) -> list[ForkEvidence]:
            return [
                ForkEvidence(str(o), str(h), str(f), int(s), _proof(blob(p)), str(r), _when(d))
                for o, h, f, s, p, r, d in conn.execute(_SQLITE_FORKS)
            ]

        return await self._store._reads.read(read)

    async def add_cosignature(self, size: int, root: bytes, cosignature: Cosignature) -> None:
        row = (size, root, cosignature.witness, cosignature.line, datetime.now(UTC).isoformat())

        def insert(conn: Any) -> None:
            conn.execute(
                "INSERT INTO audit_cosignatures (size, root, witness, line, received_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (size, root, witness) DO NOTHING",
                row,
            )

        await self._store._submit(insert)

    async def cosignatures(self, size: int, root: bytes) -> list[str]:
        def read(conn: Any) -> list[str]:
            return [
                str(line)
                for (line,) in conn.execute(
                    "SELECT line FROM audit_cosignatures WHERE size = ? AND root = ?"
                    " ORDER BY witness",
                    (size, root),
                )
            ]

        return await self._store._reads.read(read)


class PostgresWitnessing:
    """Witnessing in the PostgreSQL audit schema; each write is one statement."""

    def __init__(self, store: PostgresAuditStore) -> None:
        self._store = store

    async def _run(self, text: str, params: Sequence[Any] = ()) -> list[Any]:
        store = self._store
        return await store._run(store._sql(text), params)

    async def witness_state(self, origin: str) -> WitnessState | None:
        found = await self._run(
            "SELECT size, root, note FROM {s}.witness_state WHERE origin = %s", [origin]
        )
        if not found:
            return None
        size, root, note = found[0]
        return WitnessState(origin, int(size), bytes(root), str(note))

    async def advance_witness(self, from_size: int, state: WitnessState) -> bool:
        # One statement: insert the first state, or move the held one only from `from_size`.
        found = await self._run(
            "INSERT INTO {s}.witness_state AS w (origin, size, root, note) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root,"
            " note = excluded.note, updated_at = now() WHERE w.size = %s RETURNING w.size",
            [state.origin, state.size, state.root, state.note, from_size],
        )
        return bool(found)

    async def add_fork(self, evidence: ForkEvidence) -> None:
        await self._run(
            "INSERT INTO {s}.witness_forks (origin, held_note, offered_note, old_size, proof,"
            " reason, detected_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [
                evidence.origin,
                evidence.held_note,
                evidence.offered_note,
                evidence.old_size,
                _proof_bytes(evidence.proof),
                evidence.reason,
                evidence.detected_at,
            ],
        )

    async def forks(self) -> list[ForkEvidence]:
        found = await self._run(
            "SELECT origin, held_note, offered_note, old_size, proof, reason, detected_at"
            " FROM {s}.witness_forks ORDER BY id"
        )
        return [
            ForkEvidence(str(o), str(h), str(f), int(s), _proof(bytes(p)), str(r), _when(d))
            for o, h, f, s, p, r, d in found
        ]

    async def add_cosignature(self, size: int, root: bytes, cosignature: Cosignature) -> None:
        await self._run(
            "INSERT INTO {s}.cosignatures (size, root, witness, line) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (size, root, witness) DO NOTHING",
            [size, root, cosignature.witness, cosignature.line],
        )

    async def cosignatures(self, size: int, root: bytes) -> list[str]:
        found = await self._run(
            "SELECT line FROM {s}.cosignatures WHERE size = %s AND root = %s ORDER BY witness",
            [size, root],
        )
        return [str(line) for (line,) in found]


_IN_MEMORY: weakref.WeakKeyDictionary[Any, MemoryWitnessing] = weakref.WeakKeyDictionary()


def witness_store_for(store: AuditStore) -> WitnessingStore:
    """The witnessing tables of `store`'s kind, in the same file or schema (for a store in
    memory, one `MemoryWitnessing` per store, however often asked)."""
    if isinstance(store, SqliteAuditStore):
        return SqliteWitnessing(store)
    if isinstance(store, PostgresAuditStore):
        return PostgresWitnessing(store)
    found = _IN_MEMORY.get(store)
    if found is None:
        found = _IN_MEMORY[store] = MemoryWitnessing()
    return found
