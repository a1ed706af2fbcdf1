"""`tongban audit verify|query|proof`, driven through `main(argv)` on SQLite stores filled by the
gateway's own `AuditLog` (signed with a dev PKI's 510000 audit key), tampered with by hand, and
once on the real PostgreSQL: exit codes, output, privacy of raw subject ids, proofs that
re-verify from the printed JSON, and a missing store that is never created."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_contract import KEY, T0, make_record
from cli_support import Run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pg_support import pg_roles, superuser
from support import Federation, make_federation

from gateway.audit import (
    AuditLog,
    AuditRecord,
    AuditStore,
    Outcome,
    PostgresAuditStore,
    SqliteAuditStore,
    leaf_hash,
    pseudonymize,
    sign_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit._merkle import CompactRange
from gateway.cli import AUDIT_OUTCOMES
from registry import KeyState, KeyUsage

REGION = "510000"
ORIGIN = f"audit.tongban/{REGION}"
KEY_NAME = f"audit-{REGION}"
RAW_ID = "110105194912310021"  # make_record's default subject
OTHER_ID = "510104198001010011"
N = 30  # records in a filled log: record i at index i, subject RAW_ID unless i % 3 == 0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return make_federation(tmp_path_factory.mktemp("audit-cli"))


@pytest.fixture(scope="module")
def signing_key(fed: Federation) -> ed25519.Ed25519PrivateKey:
    """The private half of region 510000's active audit key (the gateway's, in a deployment)."""
    (record,) = fed.inventory().find(REGION, KeyUsage.AUDIT, KeyState.ACTIVE)
    key = serialization.load_pem_private_key((fed.pki / record.private_key).read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


@pytest.fixture(scope="module")
def audit_cert(fed: Federation) -> Path:
    (record,) = fed.inventory().find(REGION, KeyUsage.AUDIT, KeyState.ACTIVE)
    return fed.pki / record.certificate


@pytest.fixture
def pki_args(fed: Federation) -> list[str | Path]:
    return ["--pki", fed.pki, "--region", REGION]


@pytest.fixture
def pseudonym_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(KEY + b"\n")  # read like a passphrase file: the newline is not the key
    return path


def _record(i: int) -> AuditRecord:
    return make_record(
        i,
        subject=OTHER_ID if i % 3 == 0 else RAW_ID,
        outcome=Outcome.DENIED if i % 5 == 0 else Outcome.ALLOWED,
    )


async def _fill_store(
    store: AuditStore, key: ed25519.Ed25519PrivateKey, n: int, *, checkpoint: bool
) -> None:
    await store.open()
    try:
        for i in range(n):
            assert (await store.append(_record(i))).index == i
        if checkpoint:
            await AuditLog(store, origin=ORIGIN, key=key, key_name=KEY_NAME).checkpoint()
    finally:
        await store.close()


@pytest.fixture
def make_db(
    tmp_path: Path, signing_key: ed25519.Ed25519PrivateKey
) -> Callable[..., tuple[Path, list[str | Path]]]:
    """A SQLite audit log of `n` records, signed (`checkpoint`) as the gateway would; returns
    the file and the store option for the command line."""

    def make(n: int = N, *, checkpoint: bool = True) -> tuple[Path, list[str | Path]]:
        path = tmp_path / "audit-510000.db"
        asyncio.run(_fill_store(SqliteAuditStore(path), signing_key, n, checkpoint=checkpoint))
        return path, ["--sqlite", path]

    return make


@pytest.fixture
def db(make_db: Callable[..., tuple[Path, list[str | Path]]]) -> list[str | Path]:
    return make_db()[1]


@contextlib.contextmanager
def _raw(path: Path) -> Iterator[sqlite3.Connection]:
    """The file opened by someone who can edit it at will: the triggers dropped first."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
        for (name,) in names:
            conn.execute(f"DROP TRIGGER {name}")
        yield conn
    finally:
        conn.close()


def _edit(conn: sqlite3.Connection, index: int, **changes: object) -> None:
    (blob,) = conn.execute("SELECT canonical FROM audit_records WHERE idx = ?", (index,)).fetchone()
    record = AuditRecord.from_canonical(blob)
    edited = dataclasses.replace(record, **changes).canonical  # type: ignore[arg-type]
    conn.execute("UPDATE audit_records SET canonical = ? WHERE idx = ?", (edited, index))


def _truncate(conn: sqlite3.Connection, keep: int) -> None:
    """Delete the tail and rewind the head so that the file agrees with itself."""
    conn.execute("DELETE FROM audit_records WHERE idx >= ?", (keep,))
    compact = CompactRange()
    for (leaf,) in conn.execute("SELECT leaf_hash FROM audit_records ORDER BY idx"):
        compact.append(leaf)
    conn.execute("UPDATE audit_head SET size = ?, compact = ?", (keep, compact.to_bytes()))


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _indices(text: str) -> list[int]:
    return [int(str(doc["index"])) for doc in _lines(text)]


# help ------------------------------------------------------------------------------------------
def test_audit_help_lists_the_three_verbs(run: Run) -> None:
    code, out, err = run("audit", "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: tongban audit")
    for verb in ("query", "verify", "proof"):
        assert verb in out
    code, out, _ = run("--help")
    assert "audit" in out


@pytest.mark.parametrize(
    ("verb", "description"),
    [("verify", "Recompute the log"), ("query", "List the audit records"), ("proof", "Compute")],
)
def test_each_verb_has_its_help(run: Run, verb: str, description: str) -> None:
    code, out, err = run("audit", verb, "--help")
    assert (code, err) == (0, "")
    assert out.startswith(f"usage: tongban audit {verb}")
    assert description in " ".join(out.split())
    assert "--sqlite" in out
    assert "--postgres-env" in out


def test_the_outcome_choices_are_the_logs_outcomes() -> None:
    assert tuple(o.value for o in Outcome) == AUDIT_OUTCOMES


# verify ----------------------------------------------------------------------------------------
def test_an_intact_log_verifies(run: Run, db: list[str | Path], pki_args: list[str | Path]) -> None:
    code, out, err = run("audit", "verify", *db, *pki_args)
    assert (code, err) == (0, "")
    assert out.startswith(
        f"INTACT — {N} records, 1 checkpoints checked, latest checkpoint size {N}"
    )


def test_the_key_can_be_given_as_a_certificate_with_origin_and_key_name(
    run: Run, db: list[str | Path], audit_cert: Path
) -> None:
    names = ["--origin", ORIGIN, "--key-name", KEY_NAME]
    code, out, _ = run("audit", "verify", *db, "--audit-cert", audit_cert, *names)
    assert code == 0
    assert out.startswith("INTACT")
    # The same certificate with the region's defaults.
    assert run("audit", "verify", *db, "--audit-cert", audit_cert, "--region", REGION)[0] == 0
    # Another log's name: its checkpoints are not this log's.
    code, out, err = run(
        "audit", "verify", *db, "--audit-cert", audit_cert, "--origin", "x", "--key-name", KEY_NAME
    )
    assert (code, out) == (2, "")  # not a verdict on the log: the command line named another
    assert f"this store holds the audit log {ORIGIN}, not x" in err


def test_another_regions_key_does_not_verify_the_log(
    run: Run, db: list[str | Path], fed: Federation
) -> None:
    (other,) = fed.inventory().find("330000", KeyUsage.AUDIT, KeyState.ACTIVE)
    code, out, _ = run(
        "audit", "verify", *db, "--audit-cert", fed.pki / other.certificate, "--region", REGION
    )
    assert code == 1
    assert "BROKEN" in out
    assert "not signed by audit.tongban/510000" in out  # the key's C2SP name: the origin


def test_verify_as_json(run: Run, db: list[str | Path], pki_args: list[str | Path]) -> None:
    code, out, err = run("audit", "verify", *db, *pki_args, "--json")
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert set(result) == {
        "intact",
        "records_checked",
        "checkpoints_checked",
        "first_bad_index",
        "problem",
        "latest_checkpoint",
        "time_stamps",  # added with checkpoint time-stamps (issue 18)
    }
    assert result["time_stamps"] == {"stamped": 0, "checked": False, "problems": [], "latest": None}
    assert result["intact"] is True
    assert (result["records_checked"], result["checkpoints_checked"]) == (N, 1)
    assert (result["first_bad_index"], result["problem"]) == (-1, "")
    latest = result["latest_checkpoint"]
    assert latest["size"] == N
    assert len(base64.b64decode(latest["root"])) == 32
    assert latest["note"].startswith(f"{ORIGIN}\n{N}\n{latest['root']}\n\n— {KEY_NAME} ")


def test_an_edited_record_is_named(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    pki_args: list[str | Path],
) -> None:
    path, db = make_db()
    with _raw(path) as conn:
        _edit(conn, 12, purpose="MED-REG")
    code, out, err = run("audit", "verify", *db, *pki_args)
    assert (code, err) == (1, "")
    assert out.startswith("BROKEN at record 12 — record 12 was changed after it was written")
    code, out, _ = run("audit", "verify", *db, *pki_args, "--json")
    assert code == 1
    result = json.loads(out)
    assert (result["intact"], result["first_bad_index"]) == (False, 12)
    assert "record 12" in result["problem"]


def test_truncation_with_the_checkpoints_deleted_needs_the_kept_checkpoint(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    pki_args: list[str | Path],
    tmp_path: Path,
) -> None:
    path, db = make_db()
    kept = tmp_path / "kept.checkpoint"
    code, out, _ = run("audit", "verify", *db, *pki_args, "--save-checkpoint", kept)
    assert code == 0
    assert f"Checkpoint of size {N} saved to {kept}" in out
    assert kept.read_text(encoding="utf-8").startswith(f"{ORIGIN}\n{N}\n")
    # The kept checkpoint agrees with the log as it is.
    code, out, _ = run("audit", "verify", *db, *pki_args, "--checkpoint", kept)
    assert code == 0
    assert out.startswith(f"INTACT — {N} records, 2 checkpoints checked")
    with _raw(path) as conn:
        _truncate(conn, 20)
        conn.execute("DELETE FROM audit_checkpoints")
    code, out, _ = run("audit", "verify", *db, *pki_args)
    assert code == 0  # the file alone agrees with itself...
    assert out.startswith("INTACT — 20 records, 0 checkpoints checked, no checkpoint signed yet")
    code, out, err = run(
        "audit", "verify", *db, *pki_args, "--checkpoint", kept, "--save-checkpoint", kept
    )
    assert code == 1  # ...but not with what was signed and kept
    assert out.startswith("BROKEN at record 20 — record 20 is missing")
    assert "no checkpoint saved" in err
    assert kept.read_text(encoding="utf-8").startswith(f"{ORIGIN}\n{N}\n")  # not overwritten


def test_a_checkpoint_signed_by_another_key_is_refused(
    run: Run, db: list[str | Path], pki_args: list[str | Path], tmp_path: Path
) -> None:
    forged = sign_checkpoint(
        ORIGIN, 5, b"\x00" * 32, ed25519.Ed25519PrivateKey.generate(), KEY_NAME
    )
    path = tmp_path / "forged.checkpoint"
    path.write_text(forged.note, encoding="utf-8")
    code, out, err = run("audit", "verify", *db, *pki_args, "--checkpoint", path)
    assert (code, out) == (1, "")
    assert err == f"tongban: {path}: the checkpoint is not signed by {ORIGIN}\n"
    path.write_text("not a checkpoint\n", encoding="utf-8")
    code, _, err = run("audit", "verify", *db, *pki_args, "--checkpoint", path)
    assert code == 1
    assert "not a signed note" in err
    code, _, err = run("audit", "verify", *db, *pki_args, "--checkpoint", tmp_path / "none")
    assert code == 1
    assert "cannot be read" in err


def test_records_not_yet_signed_are_pointed_out_and_nothing_is_saved_without_a_checkpoint(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    pki_args: list[str | Path],
    tmp_path: Path,
) -> None:
    _, db = make_db(5, checkpoint=False)
    kept = tmp_path / "kept.checkpoint"
    code, out, err = run("audit", "verify", *db, *pki_args, "--save-checkpoint", kept)
    assert code == 0  # intact: what was asked for could not be done, said on stderr
    assert out.startswith("INTACT — 5 records, 0 checkpoints checked, no checkpoint signed yet")
    assert "records 0 to 4 are not covered by a signed checkpoint" in out
    assert "nothing saved" in err
    assert not kept.exists()


# query -----------------------------------------------------------------------------------------
def test_query_by_subject_id_hashes_it_and_never_prints_it(
    run: Run, db: list[str | Path], pseudonym_key_file: Path
) -> None:
    subject = ["--subject-id", RAW_ID, "--pseudonym-key-file", pseudonym_key_file]
    expected = [i for i in range(N) if i % 3][:50]
    code, out, err = run("audit", "query", *db, *subject, "--json")
    assert (code, err) == (0, "")
    assert _indices(out) == expected
    pseudonym = pseudonymize(RAW_ID, KEY)
    assert all(doc["subject"] == pseudonym for doc in _lines(out))
    code, table, err = run("audit", "query", *db, *subject)
    assert code == 0
    assert f"Audit records ({len(expected)})" in table
    for text in (out, err, table):
        assert RAW_ID not in text
    # The pseudonym itself finds the same records.
    code, again, _ = run("audit", "query", *db, "--subject", pseudonym.upper(), "--json")
    assert (code, again) == (0, out)
    # Another id has other records; an unknown one none.
    code, out, _ = run(
        "audit",
        "query",
        *db,
        "--subject-id",
        OTHER_ID,
        "--pseudonym-key-file",
        pseudonym_key_file,
        "--json",
    )
    assert _indices(out) == list(range(0, N, 3))
    code, out, _ = run(
        "audit", "query", *db, "--subject-id", "nobody", "--pseudonym-key-file", pseudonym_key_file
    )
    assert (code, out) == (0, "No audit record matches.\n")


def test_a_short_pseudonym_key_is_refused_without_echoing_the_id(
    run: Run, db: list[str | Path], tmp_path: Path
) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"k" * 15 + b"\n")
    code, out, err = run(
        "audit", "query", *db, "--subject-id", RAW_ID, "--pseudonym-key-file", short
    )
    assert (code, out) == (1, "")
    assert "at least 16 bytes" in err
    assert RAW_ID not in err


def test_query_filters(run: Run, db: list[str | Path]) -> None:
    def indices(*filters: str) -> list[int]:
        code, out, err = run("audit", "query", *db, *filters, "--json")
        assert (code, err) == (0, ""), err
        return _indices(out)

    assert indices("--agency", "sc.hrss") == list(range(1, N, 2))
    assert indices("--outcome", "denied") == list(range(0, N, 5))
    assert indices("--outcome", "failed") == []
    assert indices("--provider-region", "330000") == list(range(0, N, 3))
    assert indices("--agency", "sc.hsa", "--outcome", "denied") == [0, 10, 20]
    since = (T0 + timedelta(seconds=10)).isoformat()
    until = (T0 + timedelta(seconds=13)).astimezone().isoformat()  # any offset
    assert indices("--since", since, "--until", until) == [10, 11, 12]
    assert indices("--purpose", "SI-TRANSFER", "--dataset", "si.participation") == list(range(N))
    assert indices("--purpose", "other") == []


def test_query_table(run: Run, db: list[str | Path]) -> None:
    code, out, err = run("audit", "query", *db, "--agency", "sc.hsa", "--outcome", "denied")
    assert (code, err) == (0, "")
    for heading in (
        "index",
        "time (UTC)",
        "caller agency",
        "caller region",
        "provider region",
        "dataset",
        "purpose",
        "case id",
        "outcome",
        "fields",
        "cache hit",
    ):
        assert heading in out
    row = next(line for line in out.splitlines() if "CASE-10 " in line)
    for value in ("2026-11-21T08:00:10", "sc.hsa", "500000", "si.participation", "SI-TRANSFER"):
        assert value in row
    assert "denied: FIELD_NOT_ALLOWED" in row
    assert "name, status" in row
    assert "More records may match" not in out


def test_query_pages_with_after(run: Run, db: list[str | Path]) -> None:
    code, out, err = run("audit", "query", *db, "--agency", "sc.hrss", "--limit", "5", "--json")
    assert code == 0
    assert _indices(out) == [1, 3, 5, 7, 9]
    assert err == "More records may match: add --after 9 for the next page, or --all.\n"
    code, out, err = run(
        "audit", "query", *db, "--agency", "sc.hrss", "--limit", "5", "--after", "9"
    )
    assert code == 0
    assert "More records may match: add --after 19 for the next page, or --all." in out
    assert err == ""
    code, out, err = run(
        "audit", "query", *db, "--agency", "sc.hrss", "--limit", "10", "--after", "19", "--json"
    )
    assert _indices(out) == [21, 23, 25, 27, 29]
    assert err == ""  # the last page: no hint


def test_query_all_follows_the_pages_to_the_end(run: Run, db: list[str | Path]) -> None:
    code, out, err = run(
        "audit", "query", *db, "--agency", "sc.hrss", "--limit", "4", "--all", "--json"
    )
    assert (code, err) == (0, "")
    assert _indices(out) == list(range(1, N, 2))  # 15 records over 4 pages
    code, out, err = run("audit", "query", *db, "--agency", "sc.hrss", "--limit", "10", "--all")
    assert (code, err) == (0, "")
    assert "Audit records 1 to 10" in out
    assert "Audit records 11 to 15" in out
    assert "--after" not in out


def test_default_limit_is_50(
    run: Run, make_db: Callable[..., tuple[Path, list[str | Path]]]
) -> None:
    _, db = make_db(60, checkpoint=False)
    code, out, err = run("audit", "query", *db, "--json")
    assert code == 0
    assert _indices(out) == list(range(50))
    assert "--after 49" in err


# proof -----------------------------------------------------------------------------------------
def test_an_inclusion_proof_verifies_from_the_printed_json(
    run: Run, db: list[str | Path], pki_args: list[str | Path]
) -> None:
    code, out, err = run("audit", "proof", *db, *pki_args, "--index", "7")
    assert (code, err) == (0, "")
    proof = json.loads(out)
    assert (proof["kind"], proof["index"], proof["size"], proof["verified"]) == (
        "inclusion",
        7,
        N,
        True,
    )
    assert proof["leaf_hash"] == base64.b64encode(leaf_hash(_record(7).canonical)).decode()
    hashes = [base64.b64decode(h) for h in proof["hashes"]]
    root = base64.b64decode(proof["root"])
    verify_inclusion(base64.b64decode(proof["leaf_hash"]), 7, N, hashes, root)
    assert proof["checkpoint"].startswith(f"{ORIGIN}\n{N}\n{proof['root']}\n")
    # Against an earlier tree size, which no checkpoint signed.
    code, out, _ = run("audit", "proof", *db, *pki_args, "--index", "7", "--size", "8")
    assert code == 0
    proof = json.loads(out)
    assert (proof["size"], proof["checkpoint"]) == (8, None)
    verify_inclusion(
        base64.b64decode(proof["leaf_hash"]),
        7,
        8,
        [base64.b64decode(h) for h in proof["hashes"]],
        base64.b64decode(proof["root"]),
    )


def test_a_proof_is_for_the_latest_signed_checkpoint_unless_a_size_is_given(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    pki_args: list[str | Path],
) -> None:
    path, db = make_db()  # signed at size N

    async def grow() -> None:
        store = SqliteAuditStore(path)
        await store.open()
        for i in range(N, N + 5):
            await store.append(_record(i))
        await store.close()

    asyncio.run(grow())  # the log grows past its latest checkpoint
    code, out, err = run("audit", "proof", *db, *pki_args, "--index", "7")
    assert (code, err) == (0, "")
    proof = json.loads(out)
    assert proof["size"] == N  # as GetProof's tree_size 0: the latest checkpoint's size
    assert proof["checkpoint"].startswith(f"{ORIGIN}\n{N}\n")
    code, out, _ = run("audit", "proof", *db, *pki_args, "--consistency", "3")
    assert json.loads(out)["size"] == N
    code, out, _ = run("audit", "proof", *db, *pki_args, "--index", "7", "--size", str(N + 5))
    assert json.loads(out)["size"] == N + 5


def test_a_proof_of_a_log_never_signed_needs_a_size(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    pki_args: list[str | Path],
) -> None:
    _, db = make_db(checkpoint=False)
    code, out, err = run("audit", "proof", *db, *pki_args, "--index", "3")
    assert (code, out) == (1, "")
    assert err == "tongban: no checkpoint of this log is signed yet: give the tree size\n"
    code, out, _ = run("audit", "proof", *db, *pki_args, "--index", "3", "--size", "5")
    assert json.loads(out)["size"] == 5


def test_a_consistency_proof_verifies_from_the_printed_json(
    run: Run, db: list[str | Path], pki_args: list[str | Path]
) -> None:
    code, out, err = run("audit", "proof", *db, *pki_args, "--consistency", "11")
    assert (code, err) == (0, "")
    proof = json.loads(out)
    assert (proof["kind"], proof["from"], proof["size"], proof["verified"]) == (
        "consistency",
        11,
        N,
        True,
    )
    verify_consistency(
        11,
        N,
        [base64.b64decode(h) for h in proof["hashes"]],
        base64.b64decode(proof["from_root"]),
        base64.b64decode(proof["root"]),
    )
    code, out, _ = run("audit", "proof", *db, *pki_args, "--consistency", "4", "--to", "9")
    assert code == 0
    proof = json.loads(out)
    assert (proof["from"], proof["size"]) == (4, 9)
    verify_consistency(
        4,
        9,
        [base64.b64decode(h) for h in proof["hashes"]],
        base64.b64decode(proof["from_root"]),
        base64.b64decode(proof["root"]),
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--index", "30"], "record 30 is not in a tree of size 30"),
        (["--index", "3", "--size", "31"], "the log holds 30 records: there is no tree of size 31"),
        (["--consistency", "31"], "no consistency proof from size 31 to the smaller size 30"),
        (["--consistency", "10", "--to", "5"], "no consistency proof from size 10"),
        (
            ["--consistency", "3", "--to", "40"],
            "the log holds 30 records: there is no tree of size 40",
        ),
    ],
)
def test_a_proof_outside_the_log_is_refused(
    run: Run, db: list[str | Path], pki_args: list[str | Path], argv: list[str], message: str
) -> None:
    code, out, err = run("audit", "proof", *db, *pki_args, *argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"tongban: {message}")
    assert err.count("\n") == 1


def test_a_proof_of_an_edited_record_is_refused(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    pki_args: list[str | Path],
) -> None:
    path, db = make_db()
    with _raw(path) as conn:
        _edit(conn, 4, case_id="CASE-X")
    code, out, err = run("audit", "proof", *db, *pki_args, "--index", "4")
    assert (code, out) == (1, "")
    assert "record 4 is not what its leaf hash says" in err


# the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [
                "verify",
                "--sqlite",
                "a.db",
                "--postgres-env",
                "DSN",
                "--region",
                "510000",
                "--pki",
                "p",
            ],
            "not allowed with argument",
        ),
        (
            ["verify", "--pki", "p", "--region", "510000"],
            "one of the arguments --sqlite --postgres-env is required",
        ),
        (["verify", "--sqlite", "a.db"], "one of the arguments --audit-cert --pki is required"),
        (["verify", "--sqlite", "a.db", "--pki", "p"], "--pki needs --region"),
        (["verify", "--sqlite", "a.db", "--audit-cert", "c.pem"], "give --origin"),
        (
            ["verify", "--sqlite", "a.db", "--audit-cert", "c.pem", "--origin", "o p"],
            "give --key-name",
        ),
        (["verify", "--sqlite", "a.db", "--pki", "p", "--region", "999999"], "not GB/T 2260"),
        (
            ["verify", "--sqlite", "a.db", "--schema", "s", "--pki", "p", "--region", "510000"],
            "--schema is for --postgres-env",
        ),
        (
            [
                "verify",
                "--postgres-env",
                "DSN",
                "--schema",
                "Bad-Name",
                "--pki",
                "p",
                "--region",
                "510000",
            ],
            "not a plain lower-case schema name",
        ),
        (
            ["verify", "--sqlite", "a.db", "--pki", "p", "--region", "510000", "--key-name", "a b"],
            "no spaces",
        ),
        (
            ["query", "--sqlite", "a.db", "--limit", "0"],
            "the limit is a whole number from 1 to 10000",
        ),
        (["query", "--sqlite", "a.db", "--limit", "10001"], "from 1 to 10000"),
        (["query", "--sqlite", "a.db", "--limit", "many"], "from 1 to 10000"),
        (["query", "--sqlite", "a.db", "--outcome", "maybe"], "invalid choice: 'maybe'"),
        (
            ["query", "--sqlite", "a.db", "--after", "-1"],
            "a record index is a whole number from 0 up",
        ),
        (["query", "--sqlite", "a.db", "--since", "2026-11-21T10:00:00"], "with an offset"),
        (
            [
                "query",
                "--sqlite",
                "a.db",
                "--since",
                "2026-11-21T10:00:00Z",
                "--until",
                "2026-11-21T09:00:00Z",
            ],
            "--since is before --until",
        ),
        (["query", "--sqlite", "a.db", "--subject", "abc"], "64 hex digits"),
        (
            ["query", "--sqlite", "a.db", "--subject", "a" * 64, "--subject-id", "x"],
            "not allowed with argument",
        ),
        (
            ["query", "--sqlite", "a.db", "--subject-id", "x"],
            "--subject-id needs --pseudonym-key-file",
        ),
        (
            ["query", "--sqlite", "a.db", "--pseudonym-key-file", "k"],
            "--pseudonym-key-file goes with --subject-id",
        ),
        (
            ["query", "--sqlite", "a.db", "--subject-id", "", "--pseudonym-key-file", "k"],
            "--subject-id is empty",
        ),
        (
            ["proof", "--sqlite", "a.db", "--pki", "p", "--region", "510000"],
            "one of the arguments --index --consistency is required",
        ),
        (
            [
                "proof",
                "--sqlite",
                "a.db",
                "--pki",
                "p",
                "--region",
                "510000",
                "--index",
                "1",
                "--consistency",
                "2",
            ],
            "not allowed with argument",
        ),
        (
            ["proof", "--sqlite", "a.db", "--pki", "p", "--region", "510000", "--consistency", "0"],
            "a tree size is a whole number from 1 up",
        ),
        (
            [
                "proof",
                "--sqlite",
                "a.db",
                "--pki",
                "p",
                "--region",
                "510000",
                "--consistency",
                "2",
                "--size",
                "3",
            ],
            "--size goes with --index",
        ),
        (
            [
                "proof",
                "--sqlite",
                "a.db",
                "--pki",
                "p",
                "--region",
                "510000",
                "--index",
                "2",
                "--to",
                "3",
            ],
            "--to goes with --consistency",
        ),
    ],
)
def test_a_wrong_command_line_is_one_line_and_exit_code_2(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)  # relative names: nothing is read, nothing may be created
    code, out, err = run("audit", *argv)
    assert (code, out) == (2, "")
    assert err.startswith("tongban audit ")
    assert message in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", ["verify", "query", "proof"])
def test_a_missing_sqlite_file_is_refused_and_not_created(
    run: Run, tmp_path: Path, pki_args: list[str | Path], verb: str
) -> None:
    missing = tmp_path / "nowhere.db"
    extra = {"verify": pki_args, "query": [], "proof": [*pki_args, "--index", "0"]}[verb]
    code, out, err = run("audit", verb, "--sqlite", missing, *extra)
    assert (code, out) == (1, "")
    assert err == f"tongban: {missing}: no such file (an audit database is never created here)\n"
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_an_audit_database_is_refused_and_left_alone(
    run: Run, tmp_path: Path, pki_args: list[str | Path]
) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    code, _, err = run("audit", "verify", "--sqlite", empty, *pki_args)
    assert code == 1
    assert "not a Tongban audit database" in err
    assert empty.read_bytes() == b""
    text = tmp_path / "notes.txt"
    text.write_bytes(b"this is not a database, it is a text file of some length" * 20)
    code, _, err = run("audit", "query", "--sqlite", text)
    assert code == 1
    assert "cannot be read as an SQLite database" in err
    code, _, err = run("audit", "query", "--sqlite", tmp_path)
    assert code == 1
    assert "not a file" in err


def test_an_unset_dsn_variable_is_refused(
    run: Run, monkeypatch: pytest.MonkeyPatch, pki_args: list[str | Path]
) -> None:
    monkeypatch.delenv("TONGBAN_TEST_NO_DSN", raising=False)
    code, out, err = run("audit", "verify", "--postgres-env", "TONGBAN_TEST_NO_DSN", *pki_args)
    assert (code, out) == (1, "")
    assert (
        err
        == "tongban: environment variable TONGBAN_TEST_NO_DSN (the audit database DSN) is not set\n"
    )


def test_a_malformed_dsn_is_not_echoed(
    run: Run, monkeypatch: pytest.MonkeyPatch, pki_args: list[str | Path]
) -> None:
    monkeypatch.setenv("TONGBAN_TEST_DSN", "host=x password=s3cret bogus_option")
    code, _, err = run("audit", "verify", "--postgres-env", "TONGBAN_TEST_DSN", *pki_args)
    assert code == 1
    assert "TONGBAN_TEST_DSN: not a PostgreSQL DSN" in err
    assert "s3cret" not in err


# PostgreSQL ------------------------------------------------------------------------------------
@pytest.mark.integration
def test_verify_and_query_a_postgres_log(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    signing_key: ed25519.Ed25519PrivateKey,
    pki_args: list[str | Path],
    pseudonym_key_file: Path,
    audit_cert: Path,
) -> None:
    with pg_roles() as roles:
        schema = roles.fresh_schema()
        store = PostgresAuditStore(roles.app_dsn, schema=schema, owner_dsn=roles.owner_dsn)
        asyncio.run(_fill_store(store, signing_key, 12, checkpoint=True))
        monkeypatch.setenv("TONGBAN_TEST_AUDIT_DSN", roles.app_dsn)
        db = ["--postgres-env", "TONGBAN_TEST_AUDIT_DSN", "--schema", schema]
        code, out, err = run("audit", "verify", *db, *pki_args)
        assert (code, err) == (0, "")
        assert out.startswith(
            "INTACT — 12 records, 1 checkpoints checked, latest checkpoint size 12"
        )
        # As docs/operators.md shows it: the region's audit certificate instead of a PKI.
        code, out, err = run("audit", "verify", *db, "--audit-cert", audit_cert, "--region", REGION)
        assert (code, err) == (0, "")
        assert out.startswith("INTACT — 12 records")
        code, out, _ = run(
            "audit",
            "query",
            *db,
            "--subject-id",
            RAW_ID,
            "--pseudonym-key-file",
            pseudonym_key_file,
            "--json",
        )
        assert code == 0
        assert _indices(out) == [i for i in range(12) if i % 3]
        code, out, _ = run("audit", "proof", *db, *pki_args, "--index", "5")
        assert code == 0
        assert json.loads(out)["checkpoint"] is not None
        # A schema that holds no log is refused, and not created.
        code, out, err = run(
            "audit",
            "verify",
            "--postgres-env",
            "TONGBAN_TEST_AUDIT_DSN",
            "--schema",
            "tongban_audit_none",
            *pki_args,
        )
        assert (code, out) == (1, "")
        assert "schema tongban_audit_none holds no audit log" in err
        with superuser() as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = 'tongban_audit_none'"
            ).fetchone()
        assert found is None


# prune -----------------------------------------------------------------------------------------
@pytest.fixture
def aged_db(tmp_path: Path, signing_key: ed25519.Ed25519PrivateKey) -> Path:
    """400 records, one a day, the newest made now."""
    path = tmp_path / "aged.db"

    async def fill() -> None:
        store = SqliteAuditStore(path)
        await store.open()
        now = datetime.now(UTC)
        for i in range(400):
            age = timedelta(days=400 - i) - timedelta(hours=12)  # clear of every whole-day cut
            await store.append(dataclasses.replace(_record(i), time=now - age))
        await AuditLog(store, origin=ORIGIN, key=signing_key, key_name=KEY_NAME).checkpoint()
        await store.close()

    asyncio.run(fill())
    return path


def test_prune_reports_first_and_removes_only_with_yes(
    run: Run, aged_db: Path, pki_args: list[str | Path]
) -> None:
    base = [
        "audit",
        "prune",
        "--sqlite",
        aged_db,
        *pki_args,
        "--operator",
        "数据局 运维",
        "--reason",
        "ticket 42",
    ]
    code, out, err = run(*base)
    assert (code, err) == (0, "")
    assert "Would remove records 0 to 219" in out
    assert "add --yes" in out
    code, out, _ = run("audit", "verify", "--sqlite", aged_db, *pki_args, "--json")
    assert json.loads(out)["records_checked"] == 400  # the dry run changed nothing
    code, out, err = run(*base, "--older-than", "365d", "--yes")
    assert (code, err) == (0, "")
    assert "Removed records 0 to 34" in out
    code, out, _ = run("audit", "verify", "--sqlite", aged_db, *pki_args, "--json")
    result = json.loads(out)
    assert (code, result["intact"], result["records_checked"]) == (
        0,
        True,
        366,
    )  # 365 kept + the prune
    code, out, _ = run("audit", "query", "--sqlite", aged_db, "--limit", "10000", "--json")
    assert "数据局 运维" in out  # the prune is itself on the record
    code, out, _ = run("audit", "proof", "--sqlite", aged_db, *pki_args, "--index", "300")
    assert (code, json.loads(out)["verified"]) == (0, True)
    code, out, err = run("audit", "proof", "--sqlite", aged_db, *pki_args, "--index", "3")
    assert (code, out) == (1, "")  # a pruned record has no proof: said plainly, no traceback
    assert "no proof:" in err
    assert "Traceback" not in err
    code, out, err = run(*base, "--older-than", "365d", "--yes")
    assert (code, out.strip()) == (0, "Nothing is older than 365 days: nothing to remove.")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--older-than", "179d"], "at least 180 days"),
        (["--older-than", "2x"], "--older-than"),
    ],
)
def test_prune_refuses_a_retention_below_the_legal_minimum(
    run: Run, aged_db: Path, pki_args: list[str | Path], extra: list[str], fragment: str
) -> None:
    code, _out, err = run(
        "audit",
        "prune",
        "--sqlite",
        aged_db,
        *pki_args,
        "--operator",
        "o",
        "--reason",
        "r",
        "--yes",
        *extra,
    )
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1


def test_prune_needs_operator_reason_and_region(run: Run, aged_db: Path, fed: Federation) -> None:
    code, _, err = run(
        "audit", "prune", "--sqlite", aged_db, "--pki", fed.pki, "--region", REGION, "--reason", "r"
    )
    assert code == 2
    assert "--operator" in err
    code, _, err = run(
        "audit", "prune", "--sqlite", aged_db, "--pki", fed.pki, "--operator", "o", "--reason", "r"
    )
    assert code == 2
    assert "--region" in err


@pytest.mark.parametrize(
    ("operator", "reason"),
    [("o", "r" * 129), ("o", "a\tb"), ("11010519491231002X", "r")],
    ids=["a long reason", "a control character", "a citizen id as operator"],
)
def test_prune_refuses_an_operator_or_reason_its_record_could_not_hold_raw(
    run: Run, aged_db: Path, fed: Federation, operator: str, reason: str
) -> None:
    code, _, err = run(
        "audit",
        "prune",
        "--sqlite",
        aged_db,
        "--pki",
        fed.pki,
        "--region",
        REGION,
        "--operator",
        operator,
        "--reason",
        reason,
        "--yes",
    )
    assert code == 2
    assert "at most 128 printable characters" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("statements", "index", "problem"),
    [
        (["DELETE FROM audit_records WHERE idx = 7"], 7, "record 7 is missing"),
        (
            [
                "UPDATE audit_records SET idx = 1000000 WHERE idx = 4",
                "UPDATE audit_records SET idx = 4 WHERE idx = 9",
                "UPDATE audit_records SET idx = 9 WHERE idx = 1000000",
            ],
            4,
            "record 4 does not follow the records before it",
        ),
    ],
    ids=["a row deleted", "two rows swapped"],
)
def test_deleted_and_swapped_rows_are_named(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    pki_args: list[str | Path],
    statements: list[str],
    index: int,
    problem: str,
) -> None:
    path, db = make_db()
    with _raw(path) as conn:
        for statement in statements:
            conn.execute(statement)
    code, out, err = run("audit", "verify", *db, *pki_args)
    assert (code, err) == (1, "")
    assert out.startswith(f"BROKEN at record {index} — {problem}")


# a log named wrong: a usage error, never a verdict ----------------------------------------------
WRONG_REGION = "330000"


@pytest.mark.parametrize("checkpoint", [True, False], ids=["signed", "not-yet-signed"])
@pytest.mark.parametrize(
    "verb",
    [
        ["verify"],
        ["verify", "--json"],
        ["proof", "--index", "0"],
        ["proof", "--consistency", "1"],
        ["prune", "--operator", "o", "--reason", "r"],
    ],
    ids=["verify", "verify-json", "inclusion", "consistency", "prune"],
)
def test_a_region_whose_log_the_store_does_not_hold_is_a_usage_error(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    fed: Federation,
    verb: list[str],
    checkpoint: bool,
) -> None:
    path, db = make_db(checkpoint=checkpoint)
    before = path.read_bytes()
    code, out, err = run(
        "audit", verb[0], *db, "--pki", fed.pki, "--region", WRONG_REGION, *verb[1:]
    )
    assert (code, out) == (2, ""), out + err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"tongban audit {verb[0]}: error: ")
    assert "BROKEN" not in err
    if checkpoint:
        assert f"this store holds the audit log {ORIGIN}, not audit.tongban/{WRONG_REGION}" in err
    else:
        assert f"the records in this store are region {REGION}'s, not {WRONG_REGION}'s" in err
    assert path.read_bytes() == before  # prune changed nothing


def test_an_origin_the_store_does_not_hold_is_a_usage_error(
    run: Run, db: list[str | Path], audit_cert: Path
) -> None:
    names = ["--origin", "x", "--key-name", KEY_NAME]
    code, out, err = run("audit", "verify", *db, "--audit-cert", audit_cert, *names)
    assert (code, out) == (2, "")
    assert f"this store holds the audit log {ORIGIN}, not x" in err


def test_save_checkpoint_exits_as_the_verdict_it_printed(
    run: Run,
    make_db: Callable[..., tuple[Path, list[str | Path]]],
    pki_args: list[str | Path],
    tmp_path: Path,
) -> None:
    _, db = make_db(5, checkpoint=False)
    kept = tmp_path / "kept.checkpoint"
    code, out, err = run("audit", "verify", *db, *pki_args, "--save-checkpoint", kept)
    assert out.startswith("INTACT")
    assert code == 0
    assert err == f"tongban: warning: no checkpoint has been signed yet: nothing saved to {kept}\n"
    code, out, err = run("audit", "verify", *db, *pki_args, "--save-checkpoint", kept, "--json")
    assert json.loads(out)["intact"] is True
    assert code == 0
    assert not kept.exists()


def test_query_at_80_columns_keeps_every_needed_value_whole(
    run: Run, db: list[str | Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run("audit", "query", *db, "--limit", "5")
    assert (code, err) == (0, "")
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    code, text, _ = run("audit", "query", *db, "--limit", "5", "--json")
    assert code == 0
    documents = _lines(text)
    assert len(documents) == 5
    for document in documents:
        for name in ("time", "caller_agency", "caller_region", "provider_region", "case_id"):
            assert str(document[name]) in out, (name, document[name])
