"""The home gateway's register of its citizens' consents: which it knows (registered through
`Consents.Register`, or on first check at this gateway), and which the citizen revoked.

Durable beside the gateway's audit store, so that a revocation survives a restart: a SQLite
file of its own beside a SQLite audit file (`SqliteConsentRegister`, WAL), or the table
`consents` in a PostgreSQL audit schema, shared by the region's replicas
(`gateway.consent._register_pg.PostgresConsentRegister`); each change committed before it is
answered. Redis keeps nothing on disk and is not used for it. In memory
(`MemoryConsentRegister`) only for tests and for an audit log kept in memory itself. Each
Revoke is also an audit record. The subject is kept as the gateway's pseudonym (HMAC), never
as the raw id.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from gateway.consent._artefact import ConsentClaims

__all__ = [
    "ConsentRegister",
    "MemoryConsentRegister",
    "RegisteredConsent",
    "SqliteConsentRegister",
    "registered",
]


@dataclass(frozen=True, slots=True)
class RegisteredConsent:
    """A consent as the register keeps it (and `Consents.List` shows it): never the subject."""

    consent_id: str
    subject: str  # the gateway's pseudonym of the citizen
    agencies: tuple[str, ...]
    regions: tuple[str, ...]
    purpose: str
    datasets: tuple[str, ...]  # "<region>/<dataset>"
    valid_from: datetime
    valid_until: datetime
    max_uses: int
    issued_at: datetime
    revoked_at: datetime | None = None


def registered(claims: ConsentClaims, subject_pseudonym: str) -> RegisteredConsent:
    return RegisteredConsent(
        consent_id=claims.consent_id,
        subject=subject_pseudonym,
        agencies=tuple(sorted(claims.agencies)),
        regions=tuple(sorted(claims.regions)),
        purpose=claims.purpose,
        datasets=tuple(d.name for d in claims.datasets),
        valid_from=claims.not_before,
        valid_until=claims.expires_at,
        max_uses=claims.max_uses,
        issued_at=claims.issued_at,
    )


class ConsentRegister(Protocol):
    async def register(self, consent: RegisteredConsent) -> RegisteredConsent:
        """Keep `consent` unless kept already; the kept one."""
        ...

    async def get(self, consent_id: str) -> RegisteredConsent | None: ...

    async def of_subject(self, subject: str) -> list[RegisteredConsent]:
        """The subject's consents, newest first."""
        ...

    async def revoke(self, consent_id: str, at: datetime) -> RegisteredConsent | None:
        """Mark revoked (once: the first time stays); None when not kept."""
        ...


class MemoryConsentRegister:
    """The register in this process: tests, and a gateway whose audit log is in memory too
    (`[audit] store = "memory"`); a revocation is lost on a restart."""

    def __init__(self) -> None:
        self._kept: dict[str, RegisteredConsent] = {}

    async def register(self, consent: RegisteredConsent) -> RegisteredConsent:
        return self._kept.setdefault(consent.consent_id, consent)

    async def get(self, consent_id: str) -> RegisteredConsent | None:
        return self._kept.get(consent_id)

    async def of_subject(self, subject: str) -> list[RegisteredConsent]:
        found = [c for c in self._kept.values() if c.subject == subject]
        return sorted(found, key=lambda c: (c.issued_at, c.consent_id), reverse=True)

    async def revoke(self, consent_id: str, at: datetime) -> RegisteredConsent | None:
        kept = self._kept.get(consent_id)
        if kept is not None and kept.revoked_at is None:
            kept = self._kept[consent_id] = replace(kept, revoked_at=at)
        return kept


_SCHEMA = """
CREATE TABLE IF NOT EXISTS consents (
    consent_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    document TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS consents_subject ON consents (subject, issued_at);
"""


def _document(c: RegisteredConsent) -> str:
    return json.dumps(
        {
            "agencies": c.agencies,
            "regions": c.regions,
            "purpose": c.purpose,
            "datasets": c.datasets,
            "valid_from": c.valid_from.isoformat(),
            "valid_until": c.valid_until.isoformat(),
            "max_uses": c.max_uses,
        },
        sort_keys=True,
    )


def _row(row: tuple[str, str, str, str, str | None]) -> RegisteredConsent:
    consent_id, subject, issued_at, document, revoked_at = row
    d = json.loads(document)
    return RegisteredConsent(
        consent_id=consent_id,
        subject=subject,
        agencies=tuple(d["agencies"]),
        regions=tuple(d["regions"]),
        purpose=d["purpose"],
        datasets=tuple(d["datasets"]),
        valid_from=datetime.fromisoformat(d["valid_from"]),
        valid_until=datetime.fromisoformat(d["valid_until"]),
        max_uses=int(d["max_uses"]),
        issued_at=datetime.fromisoformat(issued_at),
        revoked_at=datetime.fromisoformat(revoked_at) if revoked_at else None,
    )


_COLUMNS = "consent_id, subject, issued_at, document, revoked_at"


class SqliteConsentRegister:
    """The register in a SQLite file (WAL, synchronous FULL): each change committed before it
    is answered. One connection, used by one worker thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _get(self, consent_id: str) -> RegisteredConsent | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM consents WHERE consent_id = ?",  # noqa: S608 (fixed columns)
            (consent_id,),
        ).fetchone()
        return _row(row) if row else None

    def _register(self, c: RegisteredConsent) -> RegisteredConsent:
        with self._lock:
            self._conn.execute(
                "INSERT INTO consents (consent_id, subject, issued_at, document) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (consent_id) DO NOTHING",
                (c.consent_id, c.subject, c.issued_at.astimezone(UTC).isoformat(), _document(c)),
            )
            kept = self._get(c.consent_id)
        assert kept is not None
        return kept

    def _locked_get(self, consent_id: str) -> RegisteredConsent | None:
        with self._lock:
            return self._get(consent_id)

    def _of_subject(self, subject: str) -> list[RegisteredConsent]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM consents WHERE subject = ?"  # noqa: S608 (fixed columns)
                " ORDER BY issued_at DESC, consent_id DESC",
                (subject,),
            ).fetchall()
        return [_row(r) for r in rows]

    def _revoke(self, consent_id: str, at: datetime) -> RegisteredConsent | None:
        with self._lock:
            self._conn.execute(
                "UPDATE consents SET revoked_at = ? WHERE consent_id = ? AND revoked_at IS NULL",
                (at.astimezone(UTC).isoformat(), consent_id),
            )
            return self._get(consent_id)

    async def register(self, consent: RegisteredConsent) -> RegisteredConsent:
        return await asyncio.to_thread(self._register, consent)

    async def get(self, consent_id: str) -> RegisteredConsent | None:
        return await asyncio.to_thread(self._locked_get, consent_id)

    async def of_subject(self, subject: str) -> list[RegisteredConsent]:
        return await asyncio.to_thread(self._of_subject, subject)

    async def revoke(self, consent_id: str, at: datetime) -> RegisteredConsent | None:
        return await asyncio.to_thread(self._revoke, consent_id, at)
