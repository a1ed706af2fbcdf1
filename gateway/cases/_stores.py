"""The case store beside an audit log: the one of its audit store's kind, in the same memory,
SQLite file or PostgreSQL schema, made once per log."""

from __future__ import annotations

from gateway.audit import AuditLog, MemoryAuditStore, PostgresAuditStore, SqliteAuditStore
from gateway.cases._postgres import PostgresCaseStore
from gateway.cases._sqlite import SqliteCaseStore
from gateway.cases._store import CaseStore, MemoryCaseStore

__all__ = ["case_store_for"]

_KIND = "cases"


def case_store_for(audit: AuditLog) -> CaseStore:
    """The case store kept beside `audit` (memory, SQLite or PostgreSQL, as its store is): the
    same instance for the same log every call, so that every part of the gateway shares it."""
    found = audit.companions.get(_KIND)
    if isinstance(found, MemoryCaseStore | SqliteCaseStore | PostgresCaseStore):
        return found
    store = audit.store
    made: MemoryCaseStore | SqliteCaseStore | PostgresCaseStore
    if isinstance(store, SqliteAuditStore):
        made = SqliteCaseStore(audit)
    elif isinstance(store, PostgresAuditStore):
        made = PostgresCaseStore(audit)
    elif isinstance(store, MemoryAuditStore):
        made = MemoryCaseStore(audit)
    else:
        raise TypeError(f"no case store is kept beside a {type(store).__name__}")
    audit.companions[_KIND] = made
    return made
