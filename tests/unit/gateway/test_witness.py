"""Witnessing (C2SP tlog-witness / tlog-cosignature): the cosignature format, cross-checked with
OpenSSL; the witness's state machine, one row per case; its state and fork evidence kept durably
in the SQLite and PostgreSQL audit stores."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_contract import make_record
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pg_support import PgRoles, pg_roles

from gateway.audit import (
    CheckpointError,
    CheckpointFork,
    MerkleTree,
    PostgresAuditStore,
    SqliteAuditStore,
    UnknownLog,
    Witness,
    WitnessConflict,
    WitnessingStore,
    WitnessRequestInvalid,
    cosign,
    sign_checkpoint,
    verify_cosignature,
    witness_store_for,
)
from gateway.audit._cosignature import cosigned_message, signature_lines
from gateway.audit._witness_store import MemoryWitnessing

ORIGIN = "audit.tongban/510000"
LOG_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WITNESS_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
WITNESS = "witness.tongban/440000"
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def _raw(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _tree(n: int, salt: str = "") -> MerkleTree:
    return MerkleTree([hashlib.sha256(f"{salt}{i}".encode()).digest() for i in range(n)])


def _note(
    tree: MerkleTree, size: int | None = None, key: ed25519.Ed25519PrivateKey = LOG_KEY
) -> str:
    size = tree.size if size is None else size
    return sign_checkpoint(ORIGIN, size, tree.root(size), key, ORIGIN).note


# -- the cosignature format ---------------------------------------------------------------------


def test_a_cosignature_is_a_note_line_with_key_id_timestamp_and_signature() -> None:
    note = _note(_tree(5))
    body = note.partition("\n\n")[0] + "\n"
    made = cosign(body, WITNESS_KEY, WITNESS, 1_765_000_000)
    assert made.line.startswith(f"\u2014 {WITNESS} ")
    assert made.line.endswith("\n")
    blob = base64.b64decode(made.line.split(" ")[2].strip())
    # key id: SHA-256(name || 0x0A || 0x04 || raw key)[:4], computed here independently
    expected_id = hashlib.sha256(
        WITNESS.encode() + b"\n\x04" + _raw(WITNESS_KEY.public_key())
    ).digest()[:4]
    assert blob[:4] == expected_id
    assert int.from_bytes(blob[4:12], "big") == 1_765_000_000
    assert len(blob) == 76
    # The note with the cosignature appended still parses; the line verifies with the key.
    text, lines = signature_lines(note + made.line)
    assert text == body
    assert [name for name, _ in lines] == [ORIGIN, WITNESS]
    checked = verify_cosignature(lines[1][1], body, WITNESS_KEY.public_key(), WITNESS)
    assert checked is not None
    assert checked.timestamp == 1_765_000_000


def test_openssl_verifies_the_cosignature_over_the_exact_bytes(tmp_path: Path) -> None:
    body = _note(_tree(7)).partition("\n\n")[0] + "\n"
    made = cosign(body, WITNESS_KEY, WITNESS, 1_765_000_123)
    blob = base64.b64decode(made.line.split(" ")[2].strip())
    message = b"cosignature/v1\ntime 1765000123\n" + body.encode()
    assert cosigned_message(body, 1_765_000_123) == message
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(blob[12:])
    (tmp_path / "pub.pem").write_bytes(
        WITNESS_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin"]
    ok = subprocess.run(
        [*command, "-in", "msg", "-sigfile", "sig"], cwd=tmp_path, capture_output=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "msg").write_bytes(message.replace(b"time 1765000123", b"time 1765000124"))
    moved = subprocess.run(
        [*command, "-in", "msg", "-sigfile", "sig"], cwd=tmp_path, capture_output=True, check=False
    )
    assert moved.returncode != 0  # the timestamp is signed


def test_a_cosignature_of_another_key_is_ignored_and_a_bad_one_refused() -> None:
    body = _note(_tree(3)).partition("\n\n")[0] + "\n"
    value = cosign(body, WITNESS_KEY, WITNESS, 1).line.split(" ")[2].strip()
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    assert verify_cosignature(value, body, other, WITNESS) is None
    assert verify_cosignature(value, body, WITNESS_KEY.public_key(), "witness.tongban/1") is None
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_cosignature(value, body.replace("3\n", "4\n", 1), WITNESS_KEY.public_key(), WITNESS)
    with pytest.raises(CheckpointError, match="not base64"):
        verify_cosignature("!!", body, WITNESS_KEY.public_key(), WITNESS)


# -- the witness's state machine ---------------------------------------------------------------


def _witness(store: WitnessingStore, forks: list[str] | None = None) -> Witness:
    class Observer:
        def witness_cosigned(self, origin: str) -> None: ...

        def witness_fork(self, origin: str) -> None:
            if forks is not None:
                forks.append(origin)

    return Witness(
        WITNESS,
        lambda body, at: cosign(body, WITNESS_KEY, WITNESS, at),
        store,
        lambda origin: [(ORIGIN, LOG_KEY.public_key())] if origin == ORIGIN else [],
        clock=lambda: NOW,
        observer=Observer(),
    )


async def test_first_checkpoint_then_growth_with_a_proof_are_cosigned() -> None:
    store = MemoryWitnessing()
    witness = _witness(store)
    tree = _tree(20)
    first = await witness.add_checkpoint(0, [], _note(tree, 8))
    body8 = _note(tree, 8).partition("\n\n")[0] + "\n"
    assert verify_cosignature(
        first.line.split(" ")[2].strip(), body8, WITNESS_KEY.public_key(), WITNESS
    )
    assert first.timestamp == int(NOW.timestamp())
    await witness.add_checkpoint(8, tree.consistency_proof(8, 20), _note(tree, 20))
    held = await store.witness_state(ORIGIN)
    assert held is not None
    assert (held.size, held.root) == (20, tree.root())
    # The same checkpoint again (a lost answer): cosigned again, nothing moves.
    await witness.add_checkpoint(20, [], _note(tree, 20))
    assert not await store.forks()


async def test_a_stale_old_size_is_a_conflict_naming_the_size_held() -> None:
    witness = _witness(MemoryWitnessing())
    tree = _tree(10)
    await witness.add_checkpoint(0, [], _note(tree, 6))
    with pytest.raises(WitnessConflict) as caught:
        await witness.add_checkpoint(0, [], _note(tree, 10))
    assert caught.value.size == 6
    with pytest.raises(WitnessConflict):
        await witness.add_checkpoint(4, tree.consistency_proof(4, 10), _note(tree, 10))


@pytest.mark.parametrize(
    ("old_size", "proof_from", "size", "problem"),
    [
        (12, None, 10, "above the checkpoint's size"),
        (0, 4, 10, "carries no proof"),
    ],
)
async def test_an_incoherent_submission_is_refused(
    old_size: int, proof_from: int | None, size: int, problem: str
) -> None:
    tree = _tree(size)
    proof = tree.consistency_proof(proof_from, size) if proof_from else []
    with pytest.raises(WitnessRequestInvalid, match=problem):
        await _witness(MemoryWitnessing()).add_checkpoint(old_size, proof, _note(tree))


async def test_an_unknown_log_and_a_foreign_signature_are_refused() -> None:
    witness = _witness(MemoryWitnessing())
    other = sign_checkpoint("audit.tongban/999999", 1, _tree(1).root(), LOG_KEY, "x").note
    with pytest.raises(UnknownLog):
        await witness.add_checkpoint(0, [], other)
    forged = _note(_tree(3), key=ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(CheckpointError):
        await witness.add_checkpoint(0, [], forged)


async def test_same_size_with_another_root_is_a_fork_refused_and_kept() -> None:
    store, forks = MemoryWitnessing(), []
    witness = _witness(store, forks)
    honest, forked = _tree(10), _tree(10, salt="rewritten")
    await witness.add_checkpoint(0, [], _note(honest))
    with pytest.raises(CheckpointFork, match="different roots"):
        await witness.add_checkpoint(10, [], _note(forked))
    [kept] = await store.forks()
    assert (kept.held_note, kept.offered_note) == (_note(honest), _note(forked))
    assert forks == [ORIGIN]
    held = await store.witness_state(ORIGIN)
    assert held is not None
    assert held.root == honest.root()


async def test_a_proof_that_does_not_lead_from_the_held_root_is_a_fork() -> None:
    store = MemoryWitnessing()
    witness = _witness(store)
    honest = _tree(8)
    await witness.add_checkpoint(0, [], _note(honest))
    # History rewritten below 8 and grown: its own proof from 8 cannot start at the held root.
    forked = MerkleTree([*(_tree(8, salt="x").node(0, i) for i in range(8)), b"\x01" * 32])
    with pytest.raises(CheckpointFork, match="no consistency from size 8 to 9"):
        await witness.add_checkpoint(8, forked.consistency_proof(8, 9), _note(forked))
    [kept] = await store.forks()
    assert kept.proof == tuple(forked.consistency_proof(8, 9))
    assert kept.old_size == 8


# -- persistence -------------------------------------------------------------------------------


async def _exercise(store: WitnessingStore) -> None:
    """The state moves only by compare-and-swap; forks and cosignatures are kept."""
    witness = _witness(store)
    tree = _tree(12)
    await witness.add_checkpoint(0, [], _note(tree, 5))
    await witness.add_checkpoint(5, tree.consistency_proof(5, 12), _note(tree, 12))
    state = await store.witness_state(ORIGIN)
    assert state is not None
    assert state.size == 12
    assert not await store.advance_witness(5, state)  # from a size no longer held
    with pytest.raises(CheckpointFork):
        await witness.add_checkpoint(12, [], _note(_tree(12, salt="y")))
    made = cosign("x\n1\nAAAA\n", WITNESS_KEY, WITNESS, 7)
    await store.add_cosignature(12, tree.root(), made)
    await store.add_cosignature(12, tree.root(), made)  # again: kept once
    assert await store.cosignatures(12, tree.root()) == [made.line]


async def test_sqlite_keeps_the_witness_state_and_forks_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    await store.append(make_record(0))
    await _exercise(witness_store_for(store))
    await store.close()
    reopened = SqliteAuditStore(path)
    await reopened.open()
    try:
        again = witness_store_for(reopened)
        held = await again.witness_state(ORIGIN)
        assert held is not None
        assert held.size == 12
        [fork] = await again.forks()
        assert fork.reason == "two checkpoints of size 12 with different roots"
    finally:
        await reopened.close()
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM witness_forks")


@pytest.fixture(scope="module")
def roles() -> Iterator[PgRoles]:
    with pg_roles() as made:
        yield made


@pytest.fixture
async def pg_store(roles: PgRoles) -> AsyncIterator[PostgresAuditStore]:
    schema = roles.fresh_schema()
    store = PostgresAuditStore(roles.app_dsn, schema=schema, owner_dsn=roles.owner_dsn)
    await store.open()
    yield store
    await store.close()
    roles.drop_schema(schema)


async def test_postgres_keeps_the_witness_state_and_forks(pg_store: PostgresAuditStore) -> None:
    store = witness_store_for(pg_store)
    await _exercise(store)
    [fork] = await store.forks()
    assert fork.origin == ORIGIN
    assert fork.detected_at == NOW
