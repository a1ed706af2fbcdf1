"""The outbox of the PostgreSQL audit store: access reports owed to other regions, stored in
the same transaction as their records (table `outbox`, written by the store's appends), and the
last index each destination acknowledged (`outbox_cursor`). See gateway/audit/_store.py."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from psycopg import sql
from psycopg.rows import TupleRow

from gateway.audit._store import Pending

__all__ = ["PostgresOutbox"]


class PostgresOutbox(ABC):
    """The outbox half of `PostgresAuditStore`, which says how to name its schema's tables
    (`_sql`) and how to run one statement on its reader connection (`_run`)."""

    @abstractmethod
    def _sql(self, text: str, **more: sql.Composable) -> sql.Composed: ...

    @abstractmethod
    async def _run(
        self, query: str | sql.Composed, params: Sequence[Any] = ()
    ) -> list[TupleRow]: ...

    async def outbox(self, destination: str, limit: int) -> list[Pending]:
        rows = await self._run(
            self._sql(
                "SELECT idx, payload FROM {s}.outbox WHERE destination = %s AND idx > coalesce("
                "(SELECT through FROM {s}.outbox_cursor WHERE destination = %s), -1)"
                " ORDER BY idx LIMIT %s"
            ),
            [destination, destination, max(limit, 0)],
        )
        return [Pending(int(idx), bytes(payload)) for idx, payload in rows]

    async def outbox_backlog(self) -> dict[str, int]:
        rows = await self._run(
            self._sql(
                "SELECT destination, count(*) FROM {s}.outbox GROUP BY destination"
                " ORDER BY destination"
            )
        )
        return {str(destination): int(count) for destination, count in rows}

    async def acknowledge(self, destination: str, through: int) -> None:
        """Move the cursor (never back: replicas may acknowledge out of order) and forget what
        it passed, in one statement (one transaction)."""
        await self._run(
            self._sql(
                "WITH moved AS (INSERT INTO {s}.outbox_cursor AS c (destination, through)"
                " VALUES (%s, %s) ON CONFLICT (destination) DO UPDATE"
                " SET through = greatest(c.through, excluded.through), updated_at = now()"
                " RETURNING through)"
                " DELETE FROM {s}.outbox WHERE destination = %s"
                " AND idx <= (SELECT through FROM moved)"
            ),
            [destination, through, destination],
        )

    async def withdraw(self, index: int) -> bool:
        rows = await self._run(
            self._sql("DELETE FROM {s}.outbox WHERE idx = %s RETURNING idx"), [index]
        )
        return bool(rows)
