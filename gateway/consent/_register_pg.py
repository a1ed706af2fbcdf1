"""The home gateway's consent register in the PostgreSQL audit schema (table ``consents``,
migration 7: gateway/audit/_postgres_consents.py), shared by every replica of the region.

Each change is one statement on the audit store's autocommit reader connection: committed
before it is answered, and seen by every replica as soon as it is answered. A consent is
inserted once (a later registration of the same id changes nothing, a revocation included);
a revocation sets ``revoked_at`` where there is none and nothing else, so it is idempotent, the
first time stays, and a concurrent revocation on another replica waits for this one and then
leaves it be (the database's trigger refuses any other change, and the application role may
update nothing else). Each call goes through `AuditLog.read`: bounded by the audit log's read
timeout and the store's statement timeout, and refused at once while the audit store's breaker
is open, so a frozen database fails the call with `AuditUnavailable` (the RPC's
AUDIT_UNAVAILABLE), never holds it. A call given up on after its statement was sent may still
have been committed; registering and revoking again is harmless.

The subject is the gateway's pseudonym (64 hex digits) and nothing else: anything else is
refused before the database is asked (and by a CHECK in it).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

from psycopg.rows import TupleRow

from gateway.audit import AuditLog, PostgresAuditStore, holds_nul, run_in_schema
from gateway.consent._register import RegisteredConsent

__all__ = ["PostgresConsentRegister"]

_PSEUDONYM: Final = re.compile(r"[0-9a-f]{64}")
_COLUMNS: Final = (
    "consent_id, subject, agencies, regions, purpose, datasets, valid_from, valid_until,"
    " max_uses, issued_at, revoked_at"
)
_INSERT: Final = (
    f"INSERT INTO {{s}}.consents ({_COLUMNS})"  # noqa: S608 (fixed column names)
    " VALUES (%s, %s, %s::text[], %s::text[], %s, %s::text[], %s, %s, %s, %s, %s)"
    f" ON CONFLICT (consent_id) DO NOTHING RETURNING {_COLUMNS}"
)
_SELECT: Final = f"SELECT {_COLUMNS} FROM {{s}}.consents"  # noqa: S608 (fixed column names)
_REVOKE: Final = (
    "UPDATE {s}.consents SET revoked_at = %s"  # noqa: S608 (fixed column names)
    f" WHERE consent_id = %s AND revoked_at IS NULL RETURNING {_COLUMNS}"
)


def _utc(value: Any) -> datetime:
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def _consent(row: TupleRow) -> RegisteredConsent:
    consent_id, subject, agencies, regions, purpose, datasets = row[:6]
    valid_from, valid_until, max_uses, issued_at, revoked_at = row[6:]
    return RegisteredConsent(
        consent_id=str(consent_id),
        subject=str(subject),
        agencies=tuple(agencies),
        regions=tuple(regions),
        purpose=str(purpose),
        datasets=tuple(datasets),
        valid_from=_utc(valid_from),
        valid_until=_utc(valid_until),
        max_uses=int(max_uses),
        issued_at=_utc(issued_at),
        revoked_at=_utc(revoked_at) if revoked_at is not None else None,
    )


def _texts(c: RegisteredConsent) -> list[str]:
    return [c.consent_id, c.subject, c.purpose, *c.agencies, *c.regions, *c.datasets]


class PostgresConsentRegister:
    """A `ConsentRegister` in the schema of `audit`'s `PostgresAuditStore`."""

    def __init__(self, audit: AuditLog) -> None:
        if not isinstance(audit.store, PostgresAuditStore):
            raise TypeError("a PostgreSQL consent register is kept beside a PostgreSQL audit store")
        self.audit = audit

    async def register(self, consent: RegisteredConsent) -> RegisteredConsent:
        if not _PSEUDONYM.fullmatch(consent.subject):
            raise ValueError("a consent is registered under the gateway's pseudonym of its subject")
        if holds_nul(_texts(consent)):
            raise ValueError("a consent's ids and purpose hold no NUL character")
        found = await run_in_schema(
            self.audit,
            _INSERT,
            [
                consent.consent_id,
                consent.subject,
                list(consent.agencies),
                list(consent.regions),
                consent.purpose,
                list(consent.datasets),
                consent.valid_from,
                consent.valid_until,
                consent.max_uses,
                consent.issued_at,
                consent.revoked_at,
            ],
        )
        if found:
            return _consent(found[0])
        kept = await self.get(consent.consent_id)  # kept already (here or by another replica)
        if kept is None:  # pragma: no cover - consents are never deleted (a trigger refuses it)
            raise AssertionError(f"consent {consent.consent_id} was kept, then not found")
        return kept

    async def get(self, consent_id: str) -> RegisteredConsent | None:
        found = await run_in_schema(self.audit, f"{_SELECT} WHERE consent_id = %s", [consent_id])
        return _consent(found[0]) if found else None

    async def of_subject(self, subject: str) -> list[RegisteredConsent]:
        if not _PSEUDONYM.fullmatch(subject):
            return []
        found = await run_in_schema(
            self.audit,
            f"{_SELECT} WHERE subject = %s ORDER BY issued_at DESC, consent_id DESC",
            [subject],
        )
        return [_consent(row) for row in found]

    async def revoke(self, consent_id: str, at: datetime) -> RegisteredConsent | None:
        found = await run_in_schema(self.audit, _REVOKE, [at, consent_id])
        if found:
            return _consent(found[0])
        return await self.get(consent_id)  # revoked already (the first time stays), or unknown
