"""Reads and single statements of the tables kept beside the log in the PostgreSQL audit schema
(the case store, the consent register), made the way the log's own reads are made."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg.rows import TupleRow

from gateway.audit._postgres import PostgresAuditStore

if TYPE_CHECKING:
    from gateway.audit._log import AuditLog

__all__ = ["holds_nul", "run_in_schema"]


def holds_nul(params: Sequence[Any]) -> bool:
    """Does a text parameter (or a text in a list parameter) hold a NUL character?"""
    for value in params:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and "\x00" in t for t in texts):
            return True
    return False


async def run_in_schema(audit: AuditLog, text: str, params: Sequence[Any] = ()) -> list[TupleRow]:
    """`text` (its tables named `{s}.<table>`) on the store of `audit`, a `PostgresAuditStore`,
    through `AuditLog.read`: bounded by its read timeout and refused at once while the audit
    breaker is open (`AuditUnavailable`). A parameter holding a NUL matches no row (none holds
    one): [] without asking PostgreSQL, whose error would open the audit breaker."""
    if holds_nul(params):
        return []
    store = audit.store
    if not isinstance(store, PostgresAuditStore):
        raise TypeError("the tables beside the log are in a PostgreSQL audit store")
    statement = store._sql(text)
    return await audit.read(lambda: store._run(statement, params))
