"""PostgreSQL for tests (importable as `pg_support`): two roles per test run, a fresh schema per
test, all dropped at the end.

The server is the one `make services` starts (127.0.0.1:5432, trust auth, database `test`,
superuser `postgres`); `TONGBAN_TEST_PG` overrides the superuser's DSN. Roles mirror a
deployment: `owner` owns the audit schema and runs the migrations, `app` is what the gateway
replicas connect as.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

SUPERUSER_DSN = os.environ.get(
    "TONGBAN_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"
)

__all__ = ["SUPERUSER_DSN", "PgRoles", "disable_all_triggers", "pg_roles", "superuser"]


@contextmanager
def superuser() -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(SUPERUSER_DSN, autocommit=True) as conn:
        yield conn


@dataclass
class PgRoles:
    """The owner and application roles of one test run, and the schemas made for it."""

    owner: str
    app: str
    schemas: list[str] = field(default_factory=list)

    @property
    def owner_dsn(self) -> str:
        return make_conninfo(SUPERUSER_DSN, user=self.owner)

    @property
    def app_dsn(self) -> str:
        return make_conninfo(SUPERUSER_DSN, user=self.app)

    def dsn(self, role: str) -> str:
        return make_conninfo(SUPERUSER_DSN, user=role)

    def fresh_schema(self) -> str:
        """An empty schema owned by the owner role (as a deployment creates it)."""
        name = f"tongban_audit_t{secrets.token_hex(4)}"
        with superuser() as conn:
            conn.execute(
                sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    sql.Identifier(name), sql.Identifier(self.owner)
                )
            )
        self.schemas.append(name)
        return name

    def drop_schema(self, name: str) -> None:
        with superuser() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        if name in self.schemas:
            self.schemas.remove(name)


@contextmanager
def pg_roles() -> Iterator[PgRoles]:
    """Create `tongban_audit_owner_<random>` and `tongban_audit_app_<random>`; drop them (and any
    schema left behind) at the end."""
    suffix = secrets.token_hex(4)
    roles = PgRoles(owner=f"tongban_audit_owner_{suffix}", app=f"tongban_audit_app_{suffix}")
    with superuser() as conn:
        for role in (roles.owner, roles.app):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield roles
    finally:
        for name in list(roles.schemas):
            roles.drop_schema(name)
        with superuser() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN (%s, %s)",
                [roles.owner, roles.app],
            )
            for role in (roles.owner, roles.app):
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def disable_all_triggers(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> None:
    """What an attacker with full database rights does first: every trigger off, on every table
    and partition of the schema (as a superuser)."""
    tables = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        [schema],
    ).fetchall()
    for (table,) in tables:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER ALL").format(sql.SQL(str(table))))
