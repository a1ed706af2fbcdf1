"""Statements and tasks against a PostgreSQL that may stop answering (frozen, or a network that
silently drops packets): each is bounded, and giving up on one costs its connection at once.

psycopg answers the cancellation of a statement by asking the server to cancel it (up to 5 s)
and waiting for it to end (5 s more), which a server that does not answer never does; and a
connection left in the middle of a statement serves nothing after it. So a statement that is
given up on closes its connection (the next use reconnects), and a task given up on is
cancelled twice (the second cancellation makes psycopg close the connection at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from gateway.audit.errors import AuditUnavailable

__all__ = ["DISCARD_SECONDS", "cancel_twice", "run_bounded"]

DISCARD_SECONDS: Final = 1.0  # closing a connection, or a cancelled task, that does not answer

_Connection = psycopg.AsyncConnection[TupleRow]


async def run_bounded(
    conn: _Connection, query: str | sql.Composed, params: Sequence[Any], timeout: float
) -> list[TupleRow]:
    """The rows of one statement on `conn`, within `timeout` seconds; raises AuditUnavailable
    (the connection then closed) when the server does not answer in time. A caller that gives
    up (a cancellation) closes it too."""

    async def run() -> list[TupleRow]:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description is not None else []

    task = asyncio.ensure_future(run())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        _abandon(conn, task)
        raise
    if not done:
        _abandon(conn, task)
        raise AuditUnavailable(f"the audit database did not answer within {timeout:g} s")
    return task.result()


def _abandon(conn: _Connection, task: asyncio.Future[list[TupleRow]]) -> None:
    conn.pgconn.finish()  # the socket closes: the statement waiting on it ends at once
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved


async def cancel_twice(task: asyncio.Task[None]) -> None:
    """Cancel a task waiting on the database. psycopg answers a cancellation by asking the
    server to cancel the query (up to 5 s, and 5 s more for it to end), which a server that
    does not answer never does: cancelled again after DISCARD_SECONDS, it closes the connection
    at once."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=DISCARD_SECONDS)
    if not done:
        task.cancel()
