"""The SQLite audit store's schema: its migrations and the helpers both of its connections use."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from gateway.audit.errors import AuditUnavailable

__all__ = [
    "EQUALITY",
    "MIGRATIONS",
    "QUERY_COLUMNS",
    "RECORDS_NO_DELETE",
    "SCHEMA_VERSION",
    "WRITER",
    "blob",
    "migrate",
    "time_text",
]

log = logging.getLogger("tongban.audit")

SCHEMA_VERSION = 6

# The PRAGMAs of the writing connection. `synchronous = FULL`: a WAL commit is durable when it
# returns. `wal_autocheckpoint`: the commit that takes the WAL past this many pages (16 MB at
# 4 KB) copies it into the database file; SQLite's default, 1000, checkpointed every few
# batches when each batch dirties a page per index entry (records appended out of time order),
# copying the same hot pages (each index's newest) again each time. 4000 cut the commit's CPU
# per record by ~15 % in `bench/audit.py` (bench/RESULTS.md, issue 20); durability is the WAL's.
WRITER = ("synchronous = FULL", "foreign_keys = ON", "wal_autocheckpoint = 4000")


def _generated(key: str) -> str:
    # CAST: SQLite 3.45+ reads a BLOB argument of the JSON functions as JSONB, not JSON text.
    return f"GENERATED ALWAYS AS (json_extract(CAST(canonical AS TEXT), '$.{key}')) STORED"


def _append_only(table: str, key: str) -> list[str]:
    """Refuse UPDATE, DELETE, and an INSERT over an existing row (INSERT OR REPLACE deletes
    without firing delete triggers unless the connection turned recursive triggers on)."""
    refuse = f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} {refuse}",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} {refuse}",
        f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} "  # noqa: S608 (constants)
        f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {key} = NEW.{key}) {refuse}",
    ]


# MIGRATIONS[v] takes a database at version v - 1 to version v (0: an empty file).
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
        """CREATE TABLE audit_records (
            idx INTEGER PRIMARY KEY CHECK (idx >= 0),
            time TEXT NOT NULL,
            caller_agency TEXT NOT NULL,
            provider_region TEXT NOT NULL,
            purpose TEXT NOT NULL,
            dataset TEXT NOT NULL,
            subject TEXT NOT NULL,
            outcome TEXT NOT NULL,
            canonical BLOB NOT NULL,
            leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
            root BLOB NOT NULL CHECK (length(root) = 32)
        )""",
        "CREATE INDEX audit_records_subject ON audit_records (subject)",
        "CREATE INDEX audit_records_caller_time ON audit_records (caller_agency, time)",
        "CREATE INDEX audit_records_provider_time ON audit_records (provider_region, time)",
        "CREATE INDEX audit_records_purpose ON audit_records (purpose)",
        "CREATE INDEX audit_records_time ON audit_records (time)",
        "CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, compact BLOB NOT NULL)",
        "INSERT INTO audit_head (id, size, compact) VALUES (1, 0, x'')",
        """CREATE TABLE audit_checkpoints (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            size INTEGER NOT NULL,
            root BLOB NOT NULL,
            note TEXT NOT NULL,
            key_name TEXT NOT NULL,
            signed_at TEXT NOT NULL
        )""",
        "CREATE INDEX audit_checkpoints_size ON audit_checkpoints (size, id)",
        *_append_only("audit_records", "idx")[
            :2
        ],  # idx is the rowid: a plain INSERT cannot overwrite
        *_append_only("audit_checkpoints", "id"),
    ],
    2: [
        """CREATE TABLE audit_prunes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            before INTEGER NOT NULL CHECK (before > 0),
            compact BLOB NOT NULL,
            pruned_at TEXT NOT NULL,
            operator TEXT NOT NULL,
            reason TEXT NOT NULL
        )""",
        *_append_only("audit_prunes", "id"),
    ],
    3: [
        # The access reports owed to other regions, written with their records (the outbox),
        # and what each destination acknowledged. Not append-only: delivered ones are deleted.
        """CREATE TABLE audit_outbox (
            idx INTEGER PRIMARY KEY,
            destination TEXT NOT NULL,
            payload BLOB NOT NULL
        )""",
        "CREATE INDEX audit_outbox_destination ON audit_outbox (destination, idx)",
        """CREATE TABLE audit_outbox_cursor (
            destination TEXT PRIMARY KEY,
            through INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        )""",
    ],
    4: [
        # Witnessing (gateway.audit._witness_store): what this gateway last cosigned per log
        # (moved by compare-and-swap), the forks it refused, the cosignatures of its own log.
        """CREATE TABLE witness_state (
            origin TEXT PRIMARY KEY,
            size INTEGER NOT NULL CHECK (size >= 0),
            root BLOB NOT NULL CHECK (length(root) = 32),
            note TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE witness_forks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            origin TEXT NOT NULL,
            held_note TEXT NOT NULL,
            offered_note TEXT NOT NULL,
            old_size INTEGER NOT NULL,
            proof BLOB NOT NULL,
            reason TEXT NOT NULL,
            detected_at TEXT NOT NULL
        )""",
        """CREATE TABLE audit_cosignatures (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            size INTEGER NOT NULL,
            root BLOB NOT NULL,
            witness TEXT NOT NULL,
            line TEXT NOT NULL,
            received_at TEXT NOT NULL,
            UNIQUE (size, root, witness)
        )""",
        *_append_only("witness_forks", "id"),
        *_append_only("audit_cosignatures", "id"),
    ],
    # An RFC 3161 time-stamp token over each checkpoint's note, when [timestamp] is configured.
    5: ["ALTER TABLE audit_checkpoints ADD COLUMN time_stamp BLOB"],
    # Cases (gateway.cases._sqlite), each change written in its audit record's transaction:
    # the events held (`position`: the arrival order here; `audit_idx`: the record it came
    # with), the sealed materials, one summary row per case, the events owed to other regions
    # (deleted once delivered) and the local calls already answered (by agency and request id).
    6: [
        """CREATE TABLE case_events (
            event_id TEXT PRIMARY KEY,
            case_id TEXT NOT NULL,
            origin TEXT NOT NULL,
            seq INTEGER NOT NULL,
            sealed_jws TEXT NOT NULL,
            attachments TEXT NOT NULL,
            received_at TEXT NOT NULL,
            position INTEGER NOT NULL UNIQUE,
            audit_idx INTEGER NOT NULL
        )""",
        "CREATE INDEX case_events_case ON case_events (case_id, position)",
        "CREATE TABLE case_attachments (sha256 TEXT PRIMARY KEY, sealed BLOB NOT NULL)",
        """CREATE TABLE cases (
            case_id TEXT PRIMARY KEY,
            matter_code TEXT NOT NULL,
            window_region TEXT NOT NULL,
            window_agency TEXT NOT NULL,
            applicant TEXT NOT NULL,
            state TEXT NOT NULL,
            submitted_at TEXT NOT NULL,
            due_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            agencies TEXT NOT NULL,
            ready_regions TEXT NOT NULL,
            handling TEXT NOT NULL
        )""",
        "CREATE INDEX cases_updated ON cases (updated_at, case_id)",
        "CREATE INDEX cases_applicant ON cases (applicant, updated_at, case_id)",
        "CREATE INDEX cases_state_due ON cases (state, due_at)",
        "CREATE INDEX cases_matter ON cases (matter_code, updated_at, case_id)",
        """CREATE TABLE case_outbox (
            event_id TEXT NOT NULL,
            destination TEXT NOT NULL,
            position INTEGER NOT NULL,
            PRIMARY KEY (event_id, destination)
        )""",
        "CREATE INDEX case_outbox_destination ON case_outbox (destination, position)",
        """CREATE TABLE case_requests (
            agency TEXT NOT NULL,
            request_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            case_id TEXT NOT NULL,
            digest TEXT NOT NULL,
            PRIMARY KEY (agency, request_id)
        )""",
    ],
}
# Put back by a prune after it lifted it, exactly as migration 1 created it.
RECORDS_NO_DELETE = _append_only("audit_records", "idx")[1]

QUERY_COLUMNS = (
    "time",
    "caller_agency",
    "provider_region",
    "purpose",
    "dataset",
    "subject",
    "outcome",
)
# AuditQuery attribute -> column; a fixed list, never caller input, is all that reaches the SQL.
EQUALITY = ("subject", "caller_agency", "provider_region", "purpose", "dataset")


def time_text(value: datetime) -> str:
    """The canonical encoding's time text (fixed width, so text order is time order)."""
    if value.tzinfo is None:
        raise ValueError("query times are timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def blob(value: object) -> bytes:
    """A stored value as bytes, whatever type someone editing the file gave it."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return b"" if value is None else str(value).encode()


def migrate(conn: sqlite3.Connection, path: Path, target: int = SCHEMA_VERSION) -> None:
    """Bring the file's schema to `target` (the store's SCHEMA_VERSION), in one transaction
    (the writer's, at open)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _schema_version(conn, path, target)
        for version in range(current + 1, target + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (version,),
            )
            log.info("audit database %s migrated to schema version %d", path, version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _schema_version(conn: sqlite3.Connection, path: Path, target: int) -> int:
    """The file's schema version (0: nothing yet); refuse a newer one or a foreign file."""
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "schema_version" not in tables:
        if any(name.startswith("audit_") for name in tables):
            raise AuditUnavailable(
                f"{path} holds audit tables but no schema_version: not a Tongban audit store"
            )
        return 0
    row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
    current = int(row[0]) if row else 0
    if current > target:
        raise AuditUnavailable(
            f"the audit database {path} has schema version {current}, newer than "
            f"this gateway's {target}: run a gateway that knows it"
        )
    return current
