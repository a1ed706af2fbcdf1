"""Statements and tasks against a PostgreSQL that may stop answering (frozen, or a network that
silently drops packets): each is bounded, and giving up on one costs its connection at once.

psycopg answers the cancellation of a statement by asking the server to cancel it (up to 5 s)
and waiting for it to end (5 s more), which a server that does not answer never does; and a
connection left in the middle of a statement serves nothing after it. So a statement that is
given up on ends its connection (the next use reconnects), and a task given up on is
cancelled twice (the second cancellation makes psycopg close the connection at once).

A connection is ended by shutting its socket down, not by closing it: the statement waiting
on it is registered in the event loop's selector, and a descriptor closed while registered
stays in asyncio's map after epoll has dropped it, so the next socket given the same number
(the reconnection, often) cannot be registered ("FileNotFoundError" from epoll_ctl, seen with
psycopg 3.2.1). A shut-down socket wakes its waiter at once with end-of-file; psycopg then
marks the connection broken, and the descriptor is closed once nothing waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from gateway.audit.errors import AuditUnavailable

__all__ = ["DISCARD_SECONDS", "cancel_twice", "run_bounded", "shut_down"]

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
    shut_down(conn)  # the statement waiting on it ends at once, with end-of-file

    def ended(t: asyncio.Future[list[TupleRow]]) -> None:
        if not t.cancelled():
            t.exception()  # retrieved
        conn.pgconn.finish()  # nothing waits on the socket any more: it may close

    task.add_done_callback(ended)


def shut_down(conn: _Connection) -> None:
    """End the connection's socket without closing its descriptor (see the module's doc): a
    statement waiting on it fails at once, and the connection is broken for any later use."""
    with contextlib.suppress(OSError, psycopg.Error):
        fd = conn.pgconn.socket  # raises once the connection is closed
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()  # the duplicate only; the connection's own descriptor stays open


async def cancel_twice(task: asyncio.Task[None]) -> None:
    """Cancel a task waiting on the database. psycopg answers a cancellation by asking the
    server to cancel the query (up to 5 s, and 5 s more for it to end), which a server that
    does not answer never does: cancelled again after DISCARD_SECONDS, it closes the connection
    at once."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=DISCARD_SECONDS)
    if not done:
        task.cancel()
