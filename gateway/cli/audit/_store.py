"""The audit store named on the command line (an SQLite file or a PostgreSQL schema): its
options, the checks that it already holds an audit log (opening a store creates and migrates
one: never what someone reading a log means), and running work on it."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway._errors import GatewayError
from gateway.cli._arguments import whole_number
from gateway.cli._common import Failure, usage

if TYPE_CHECKING:
    from gateway.audit import AuditStore

__all__ = [
    "DEFAULT_AUDIT_SCHEMA",
    "WrongLog",
    "check_log_named",
    "check_store_options",
    "on_store",
    "parse_index",
    "parse_size",
    "store_options",
]

DEFAULT_AUDIT_SCHEMA = "tongban_audit"
_AUDIT_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
T = TypeVar("T")


def parse_schema_name(text: str) -> str:
    if not _AUDIT_SCHEMA_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain lower-case schema name (a-z, 0-9 and _, at most 63)"
        )
    return text


def parse_index(text: str) -> int:
    return whole_number(text, "a record index is a whole number", 0)


def parse_size(text: str) -> int:
    return whole_number(text, "a tree size is a whole number", 1)


def store_options(parser: argparse.ArgumentParser) -> None:
    store = parser.add_mutually_exclusive_group(required=True)
    store.add_argument("--sqlite", type=Path, metavar="PATH", help="the SQLite audit database")
    store.add_argument(
        "--postgres-env",
        metavar="VAR",
        help="environment variable holding the PostgreSQL DSN (never on the command line: "
        "it may hold a password)",
    )
    parser.add_argument(
        "--schema",
        type=parse_schema_name,
        metavar="NAME",
        help=f"PostgreSQL schema of the audit log (default {DEFAULT_AUDIT_SCHEMA})",
    )


def check_store_options(args: argparse.Namespace) -> None:
    if args.sqlite is not None and args.schema is not None:
        usage(args, "--schema is for --postgres-env (an SQLite file has no schemas)")


def _check_sqlite(path: Path) -> None:
    """Refuse a path that is not an existing Tongban audit database before the store opens it
    (opening creates and migrates a database: never what someone reading a log means)."""
    if not path.exists():
        raise Failure(f"{path}: no such file (an audit database is never created here)")
    if not path.is_file():
        raise Failure(f"{path}: not a file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise Failure(f"{path}: cannot be read as an SQLite database ({exc})") from exc
    if found is None:
        raise Failure(f"{path}: not a Tongban audit database (it has no schema_version table)")


def _check_postgres(dsn: str, variable: str, schema: str) -> None:
    """Refuse a schema that does not hold an audit log of this version before the store opens it
    (opening creates or migrates the schema: never what someone reading a log means)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    from gateway.audit._postgres import SCHEMA_VERSION

    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:  # its message may quote the DSN, password and all
        raise Failure(f"environment variable {variable}: not a PostgreSQL DSN") from exc
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            (exists,) = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}".schema_version']
            ).fetchone() or (False,)
            if not exists:
                raise Failure(
                    f"schema {schema} holds no audit log (or this role cannot see it): give --schema"
                )
            (version,) = conn.execute(
                sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(
                    sql.Identifier(schema)
                )
            ).fetchone() or (0,)
    except psycopg.Error as exc:
        raise Failure(f"the audit database is not available: {exc}".strip()) from exc
    if version != SCHEMA_VERSION:
        raise Failure(
            f"the audit schema {schema} is at version {version}, this tongban reads version "
            f"{SCHEMA_VERSION}: use the tongban of the gateways that write it"
        )


def _audit_store(args: argparse.Namespace) -> AuditStore:
    from gateway.audit import PostgresAuditStore, SqliteAuditStore

    if args.sqlite is not None:
        _check_sqlite(args.sqlite)
        return SqliteAuditStore(args.sqlite)
    dsn = os.environ.get(args.postgres_env)
    if not dsn:
        raise Failure(
            f"environment variable {args.postgres_env} (the audit database DSN) is not set"
        )
    schema = args.schema or DEFAULT_AUDIT_SCHEMA
    _check_postgres(dsn, args.postgres_env, schema)
    return PostgresAuditStore(dsn, schema=schema)


class WrongLog(GatewayError):
    """The store holds another log than the command line names: a usage error, not a verdict."""


async def check_log_named(store: AuditStore, origin: str, region: str | None) -> None:
    """Raise WrongLog unless the store holds the log `origin` (of `region`): the origins of its
    checkpoints, or while none is signed the region of its first record, name another log.
    Neither is trusted here; a log that is really this one is then checked in full."""
    from gateway.audit import AuditRecord

    held = {stored.note.split("\n", 1)[0] for stored in await store.checkpoints()}
    if held and origin not in held:
        names = ", ".join(n if n.isprintable() else repr(n) for n in sorted(held))
        raise WrongLog(
            f"this store holds the audit log {names}, not {origin}: check --region (and --origin)"
        )
    if held or region is None:
        return
    marker = await store.pruned()
    rows = await store.rows(marker.before if marker else 0, (marker.before if marker else 0) + 1)
    if not rows:
        return
    try:
        found = AuditRecord.from_canonical(rows[0].canonical).region
    except (ValueError, KeyError, TypeError):
        return  # not a record: the verification says so
    if found != region:
        raise WrongLog(
            f"the records in this store are region {found}'s, not {region}'s: check --region"
        )


def on_store(args: argparse.Namespace, work: Callable[[AuditStore], Coroutine[Any, Any, T]]) -> T:
    """Open the store named on the command line, run `work` on it, close it."""
    from gateway.audit import AuditError

    store = _audit_store(args)

    async def run() -> T:
        try:
            await store.open()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except AuditError as exc:
        raise Failure(str(exc)) from exc
    except WrongLog as exc:
        usage(args, str(exc))
