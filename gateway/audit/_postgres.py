"""The audit store in PostgreSQL, shared by the gateway replicas of one region.

Appends are queued in-process and committed in groups by one writer task. Each group is ONE
transaction that starts from the locked head row (``SELECT ... FROM head WHERE id = 1 FOR
UPDATE``), so replicas writing to the same schema are serialised by the database and never trust
a head they remember: indices are assigned from the locked row, leaf hashes and per-row roots
are computed with a `CompactRange`, the rows are copied in and the head is updated before the
commit. Any database error fails the group's appends with `AuditUnavailable` (fail closed); the
store reconnects by itself for the next group. An append whose commit was cut off may still have
been written (the database decides): the caller then releases nothing for a record the log
holds, never the other way round.

Tables (in ``schema``, created and migrated by the store, version in ``schema_version``):

``records``
    one row per record: its index ``idx``, its ``time``, the fields oversight filters on, the
    canonical bytes, the leaf hash and the log's root once it was appended. Partitioned by
    RANGE (time), one partition per calendar month (UTC), created ahead (this month and the
    next, on open) and on demand for a record whose month has none, by ``ensure_month()``, a
    SECURITY DEFINER function owned by the owner role that the application role may EXECUTE.
    The primary key is (idx, time): a unique index on a partitioned table must contain the
    partition key, so ``idx`` alone cannot be declared unique. Gapless unique indices are
    enforced through the head row instead: every append holds its lock, and a trigger on the
    head refuses a new size unless exactly one row exists for each index added.
``head``
    the single row ``id = 1``: the log's size and its compact range. Its trigger also refuses a
    size that shrinks.
``checkpoints``
    the signed checkpoints (C2SP notes), in signing order.
``prunes``
    one marker per retention prune: the records below ``before`` are gone, ``compact`` is the
    log's compact range at that size (verification resumes from it), with when, by whom, why.
    Written only by ``prune_below()``, a SECURITY DEFINER function owned by the owner role that
    the application role may EXECUTE: it checks the cut (within the log, above the previous
    one, the compact range folding to the root stored with the last record removed), switches
    the append-only trigger off only on the partitions it deletes from and back on (ENABLE
    ALWAYS) in the same transaction, drops the partitions that fall wholly below the cut, and
    inserts the marker. Indices never restart: after a prune the records start at ``before``.

Append-only: on every table a BEFORE UPDATE OR DELETE row trigger that raises (the head allows
an UPDATE that grows the log) and a BEFORE TRUNCATE statement trigger that raises, also on every
partition (TRUNCATE of a partition does not fire the parent's statement triggers), all ``ENABLE
ALWAYS`` so ``session_replication_role = replica`` does not silence them. The application role
gets SELECT and INSERT (and UPDATE of the head row), never UPDATE, DELETE or TRUNCATE, and owns
nothing; it removes records only through ``prune_below()``. What privileges cannot prevent (a superuser disabling the triggers, a dropped
partition) the Merkle structure and the signed checkpoints detect: `AuditLog.verify()`.

Deployment, once per region, as a superuser (or a role with CREATEROLE)::

    CREATE ROLE tongban_audit_owner LOGIN PASSWORD '...';  -- owns the schema, runs migrations
    CREATE ROLE tongban_gateway LOGIN PASSWORD '...';      -- what the replicas connect as
    CREATE SCHEMA tongban_audit AUTHORIZATION tongban_audit_owner;
    -- neither role is a superuser, and tongban_gateway must not own anything in the schema

then open the store once with ``owner_dsn`` (the owner role; a deploy step or one replica):
it creates or migrates the tables and grants the ``dsn`` role exactly what it needs. Replicas
then run with ``dsn`` alone: they check the schema version and never hold the owner's
credentials (a table owner may disable its triggers). Without ``owner_dsn`` on a schema that
does not exist yet, the ``dsn`` role creates and owns everything: fine for development, not
append-only against that role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from gateway.audit._checkpoint import Checkpoint
from gateway.audit._merkle import CompactRange, ProofError, leaf_hash
from gateway.audit._record import AuditRecord
from gateway.audit._store import (
    MAX_PENDING_APPENDS,
    Appended,
    AuditQuery,
    Outbound,
    Pending,
    PruneMarker,
    StoredRow,
    TreeHead,
)
from gateway.audit.errors import AuditIntegrityError, AuditOutcomeUnknown, AuditUnavailable

__all__ = ["SCHEMA_VERSION", "PostgresAuditStore"]

log = logging.getLogger("tongban.audit.postgres")

_Connection = psycopg.AsyncConnection[TupleRow]
_Pending = tuple[AuditRecord, Outbound | None, "asyncio.Future[Appended]"]

DISCARD_SECONDS = 1.0  # closing a connection to a server that does not answer
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PARTITION_NAME = re.compile(r"records_y(\d{4})m(\d{2})")

# The columns copied in for each record, in order, and their types (binary COPY).
_COLUMNS = (
    ("idx", "bigint"),
    ("time", "timestamptz"),
    ("gateway", "text"),
    ("region", "text"),
    ("rpc", "text"),
    ("request_id", "text"),
    ("caller_agency", "text"),
    ("caller_operator", "text"),
    ("caller_region", "text"),
    ("provider_region", "text"),
    ("dataset", "text"),
    ("purpose", "text"),
    ("case_id", "text"),
    ("subject", "text"),
    ("outcome", "text"),
    ("canonical", "bytea"),
    ("leaf_hash", "bytea"),
    ("root", "bytea"),
)

# Migrations, in order: version N is _MIGRATIONS[N - 1]. {s} is the schema, {schema} its name
# as a literal. Never edit one that has shipped: add the next.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE FUNCTION {s}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the audit log is append-only: % on %.% refused',
            TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END $$;

    CREATE TABLE {s}.records (
        idx bigint NOT NULL CHECK (idx >= 0),
        time timestamptz NOT NULL,
        gateway text NOT NULL,
        region text NOT NULL,
        rpc text NOT NULL,
        request_id text NOT NULL,
        caller_agency text NOT NULL,
        caller_operator text NOT NULL,
        caller_region text NOT NULL,
        provider_region text NOT NULL,
        dataset text NOT NULL,
        purpose text NOT NULL,
        case_id text NOT NULL,
        subject text NOT NULL,
        outcome text NOT NULL,
        canonical bytea NOT NULL,
        leaf_hash bytea NOT NULL CHECK (octet_length(leaf_hash) = 32),
        root bytea NOT NULL CHECK (octet_length(root) = 32),
        PRIMARY KEY (idx, time)
    ) PARTITION BY RANGE (time);
    CREATE INDEX records_subject ON {s}.records (subject, idx);
    CREATE INDEX records_caller_agency_time ON {s}.records (caller_agency, time);
    CREATE INDEX records_provider_region_time ON {s}.records (provider_region, time);
    CREATE INDEX records_purpose ON {s}.records (purpose, idx);
    CREATE INDEX records_dataset ON {s}.records (dataset, idx);
    CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON {s}.records
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON {s}.records
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    ALTER TABLE {s}.records ENABLE ALWAYS TRIGGER records_append_only;
    ALTER TABLE {s}.records ENABLE ALWAYS TRIGGER records_no_truncate;

    -- Monthly partitions [first of the month, first of the next) in UTC. SECURITY DEFINER:
    -- runs as the owner, so the application role can create a month's partition without
    -- being allowed to create (or own) anything else.
    CREATE FUNCTION {s}.ensure_month(month date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DECLARE
        sch text := {schema};
        lo date := date_trunc('month', month)::date;
        hi date := (date_trunc('month', month) + interval '1 month')::date;
        part text := format('records_y%sm%s', to_char(lo, 'YYYY'), to_char(lo, 'MM'));
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('tongban_audit.ddl:' || sch));
        IF to_regclass(format('%I.%I', sch, part)) IS NOT NULL THEN
            RETURN false;
        END IF;
        EXECUTE format(
            'CREATE TABLE %I.%I PARTITION OF %I.records FOR VALUES FROM (%L) TO (%L)',
            sch, part, sch, lo::text || ' 00:00:00+00', hi::text || ' 00:00:00+00');
        -- Row triggers are cloned from the parent (ENABLE ALWAYS included); statement
        -- triggers are not: TRUNCATE of the partition itself must be refused here.
        EXECUTE format(
            'CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON %I.%I '
            'FOR EACH STATEMENT EXECUTE FUNCTION %I.refuse_change()', sch, part, sch);
        EXECUTE format('ALTER TABLE %I.%I ENABLE ALWAYS TRIGGER records_no_truncate', sch, part);
        EXECUTE format('ALTER TABLE %I.%I ENABLE ALWAYS TRIGGER records_append_only', sch, part);
        EXECUTE format('REVOKE ALL ON %I.%I FROM PUBLIC', sch, part);
        RETURN true;
    END $$;
    REVOKE ALL ON FUNCTION {s}.ensure_month(date) FROM PUBLIC;

    CREATE TABLE {s}.head (
        id smallint PRIMARY KEY CHECK (id = 1),
        size bigint NOT NULL CHECK (size >= 0),
        compact bytea NOT NULL CHECK (octet_length(compact) % 32 = 0),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO {s}.head (id, size, compact) VALUES (1, 0, ''::bytea);

    -- The head only grows, and only over rows that exist: exactly one per index added. This
    -- is what makes indices unique and gapless (records cannot declare idx UNIQUE).
    CREATE FUNCTION {s}.head_grows() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        n bigint;
        d bigint;
    BEGIN
        IF NEW.id <> OLD.id OR NEW.size < OLD.size THEN
            RAISE EXCEPTION 'the audit head only grows (size % to %)', OLD.size, NEW.size;
        END IF;
        SELECT count(*), count(DISTINCT idx) INTO n, d
            FROM {s}.records WHERE idx >= OLD.size AND idx < NEW.size;
        IF n <> NEW.size - OLD.size OR d <> n THEN
            RAISE EXCEPTION 'the audit head grows from % to % over % rows (% indices)',
                OLD.size, NEW.size, n, d;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER head_grows BEFORE UPDATE ON {s}.head
        FOR EACH ROW EXECUTE FUNCTION {s}.head_grows();
    CREATE TRIGGER head_append_only BEFORE DELETE ON {s}.head
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER head_no_truncate BEFORE TRUNCATE ON {s}.head
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    ALTER TABLE {s}.head ENABLE ALWAYS TRIGGER head_grows;
    ALTER TABLE {s}.head ENABLE ALWAYS TRIGGER head_append_only;
    ALTER TABLE {s}.head ENABLE ALWAYS TRIGGER head_no_truncate;

    CREATE TABLE {s}.checkpoints (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        origin text NOT NULL,
        size bigint NOT NULL CHECK (size >= 0),
        root bytea NOT NULL CHECK (octet_length(root) = 32),
        key_name text NOT NULL,
        note text NOT NULL,
        signed_at timestamptz NOT NULL
    );
    CREATE INDEX checkpoints_size ON {s}.checkpoints (size, seq);
    CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON {s}.checkpoints
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON {s}.checkpoints
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    ALTER TABLE {s}.checkpoints ENABLE ALWAYS TRIGGER checkpoints_append_only;
    ALTER TABLE {s}.checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_truncate;

    CREATE TRIGGER schema_version_append_only BEFORE UPDATE OR DELETE ON {s}.schema_version
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER schema_version_no_truncate BEFORE TRUNCATE ON {s}.schema_version
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    ALTER TABLE {s}.schema_version ENABLE ALWAYS TRIGGER schema_version_append_only;
    ALTER TABLE {s}.schema_version ENABLE ALWAYS TRIGGER schema_version_no_truncate;
    """,
    """
    -- Retention prunes: one marker per prune, append-only like the rest. The application role
    -- may read them; it writes one only through prune_below().
    CREATE TABLE {s}.prunes (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        before bigint NOT NULL UNIQUE CHECK (before > 0),
        compact bytea NOT NULL CHECK (octet_length(compact) % 32 = 0),
        pruned_at timestamptz NOT NULL,
        operator text NOT NULL CHECK (btrim(operator) <> ''),
        reason text NOT NULL CHECK (btrim(reason) <> '')
    );
    CREATE TRIGGER prunes_append_only BEFORE UPDATE OR DELETE ON {s}.prunes
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER prunes_no_truncate BEFORE TRUNCATE ON {s}.prunes
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    ALTER TABLE {s}.prunes ENABLE ALWAYS TRIGGER prunes_append_only;
    ALTER TABLE {s}.prunes ENABLE ALWAYS TRIGGER prunes_no_truncate;

    -- Remove every record below new_before and keep the marker. SECURITY DEFINER: runs as the
    -- owner, the one role that may switch a partition's append-only trigger off, and does so
    -- only here, only on the partitions it deletes from, and switches it back on (ENABLE
    -- ALWAYS) in the same transaction: DDL is transactional, so no other session ever sees
    -- the trigger off, and the partition's lock keeps every other writer out meanwhile.
    -- Partitions whose records all fall below the cut are dropped whole, last (dropping
    -- locks the parent, so appends wait only for the commit that follows). It removes exactly
    -- the records between the previous cut and this one, or nothing.
    CREATE FUNCTION {s}.prune_below(
        new_before bigint, new_compact bytea, new_pruned_at timestamptz,
        new_operator text, new_reason text
    ) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DECLARE
        sch text := {schema};
        head_size bigint;
        last_before bigint;
        hashes integer;
        root bytea;
        stored bytea;
        part record;
        lo bigint;
        hi bigint;
        n bigint;
        removed bigint := 0;
        whole regclass[] := '{{}}';
    BEGIN
        -- One prune at a time, and no partition created meanwhile (ensure_month's lock).
        PERFORM pg_advisory_xact_lock(hashtext('tongban_audit.ddl:' || sch));
        SELECT h.size INTO head_size FROM {s}.head h WHERE h.id = 1;
        SELECT max(p.before) INTO last_before FROM {s}.prunes p;
        IF new_before IS NULL OR new_before < 1 OR new_before > head_size THEN
            RAISE EXCEPTION 'a prune below % is outside the audit log (size %)',
                new_before, head_size;
        END IF;
        IF new_before <= coalesce(last_before, 0) THEN
            RAISE EXCEPTION 'the audit log was already pruned below %: not again below %',
                last_before, new_before;
        END IF;
        -- The marker is the log's own compact range at the cut: one hash per set bit of the
        -- size, folding (RFC 6962 node hashes) to the root stored with the last record removed.
        hashes := length(replace(new_before::bit(64)::text, '0', ''));
        IF new_compact IS NULL OR octet_length(new_compact) <> 32 * hashes THEN
            RAISE EXCEPTION 'a compact range at size % holds % hashes', new_before, hashes;
        END IF;
        root := substring(new_compact FROM (hashes - 1) * 32 + 1 FOR 32);
        FOR i IN REVERSE hashes - 2 .. 0 LOOP
            root := sha256(decode('01', 'hex') || substring(new_compact FROM i * 32 + 1 FOR 32)
                           || root);
        END LOOP;
        SELECT r.root INTO stored FROM {s}.records r WHERE r.idx = new_before - 1;
        IF stored IS DISTINCT FROM root THEN
            RAISE EXCEPTION 'the compact range does not give the root stored with record %',
                new_before - 1;
        END IF;
        FOR part IN
            SELECT i.inhrelid::regclass AS rel FROM pg_inherits i
            WHERE i.inhparent = to_regclass(format('%I.records', sch)) ORDER BY 1
        LOOP
            EXECUTE format('SELECT min(idx), max(idx) FROM %s', part.rel) INTO lo, hi;
            IF hi IS NOT NULL AND hi < new_before THEN
                EXECUTE format('SELECT count(*) FROM %s', part.rel) INTO n;
                removed := removed + n;
                whole := whole || part.rel;
            ELSIF lo IS NOT NULL AND lo < new_before THEN
                EXECUTE format('ALTER TABLE %s DISABLE TRIGGER records_append_only', part.rel);
                EXECUTE format('DELETE FROM %s WHERE idx < $1', part.rel) USING new_before;
                GET DIAGNOSTICS n = ROW_COUNT;
                removed := removed + n;
                EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER records_append_only',
                               part.rel);
            END IF;
        END LOOP;
        IF removed <> new_before - coalesce(last_before, 0) THEN
            RAISE EXCEPTION 'a prune below % would remove % records, not %',
                new_before, removed, new_before - coalesce(last_before, 0);
        END IF;
        FOR i IN 1 .. coalesce(array_length(whole, 1), 0) LOOP
            EXECUTE format('DROP TABLE %s', whole[i]);
        END LOOP;
        IF EXISTS (SELECT 1 FROM {s}.records r WHERE r.idx < new_before) THEN
            RAISE EXCEPTION 'records below % remain after the prune', new_before;
        END IF;
        IF EXISTS (
            SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            WHERE c.relnamespace = to_regnamespace(quote_ident(sch))
                AND NOT t.tgisinternal AND t.tgenabled <> 'A'
        ) THEN
            RAISE EXCEPTION 'an append-only trigger of % is not enabled always', sch;
        END IF;
        INSERT INTO {s}.prunes (before, compact, pruned_at, operator, reason)
            VALUES (new_before, new_compact, new_pruned_at, new_operator, new_reason);
        RETURN removed;
    END $$;
    REVOKE ALL ON FUNCTION {s}.prune_below(bigint, bytea, timestamptz, text, text) FROM PUBLIC;
    """,
    """
    -- The access reports owed to other regions, written in the same transaction as their
    -- records (the outbox), and the last index each destination acknowledged. Not evidence
    -- (the records are): delivered ones are deleted, so these are not append-only.
    CREATE TABLE {s}.outbox (
        idx bigint PRIMARY KEY CHECK (idx >= 0),
        destination text NOT NULL,
        payload bytea NOT NULL
    );
    CREATE INDEX outbox_destination ON {s}.outbox (destination, idx);
    CREATE TABLE {s}.outbox_cursor (
        destination text PRIMARY KEY,
        through bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

# What the application role may do: read, insert, grow the head, prune through prune_below(),
# and keep the outbox (add, acknowledge, delete delivered messages). Nothing else.
_GRANTS = """
    REVOKE ALL ON {s}.records, {s}.head, {s}.checkpoints, {s}.schema_version, {s}.prunes,
        {s}.outbox, {s}.outbox_cursor FROM PUBLIC;
    REVOKE ALL ON {s}.records, {s}.head, {s}.checkpoints, {s}.schema_version, {s}.prunes,
        {s}.outbox, {s}.outbox_cursor FROM {app};
    GRANT USAGE ON SCHEMA {s} TO {app};
    GRANT SELECT, INSERT ON {s}.records, {s}.checkpoints TO {app};
    GRANT SELECT, UPDATE (size, compact, updated_at) ON {s}.head TO {app};
    GRANT SELECT ON {s}.schema_version, {s}.prunes TO {app};
    GRANT SELECT, INSERT, DELETE ON {s}.outbox TO {app};
    GRANT SELECT, INSERT, UPDATE ON {s}.outbox_cursor TO {app};
    GRANT EXECUTE ON FUNCTION {s}.ensure_month(date) TO {app};
    GRANT EXECUTE ON FUNCTION {s}.prune_below(bigint, bytea, timestamptz, text, text) TO {app};
"""


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a task waiting on the database. psycopg answers a cancellation by asking the
    server to cancel the query (up to 5 s, and 5 s more for it to end), which a server that
    does not answer never does: cancelled again after DISCARD_SECONDS, it closes the connection
    at once."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=DISCARD_SECONDS)
    if not done:
        task.cancel()


def _no_partition(exc: psycopg.Error) -> bool:
    """A row routed to a month whose partition is not there (dropped by a prune since)."""
    return isinstance(exc, psycopg.errors.CheckViolation) and "no partition" in str(exc)


def _month(moment: datetime) -> date:
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


class PostgresAuditStore:
    """An `AuditStore` in a PostgreSQL schema that several gateway replicas share."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "tongban_audit",
        max_batch: int = 512,
        owner_dsn: str | None = None,
        timeout: float = 10.0,
        max_pending: int = MAX_PENDING_APPENDS,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"the audit schema name {schema!r} is not a plain lower-case name")
        if max_batch < 1:
            raise ValueError("max_batch is at least 1")
        self._dsn = dsn
        self._owner_dsn = owner_dsn
        self.schema = schema
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._timeout = timeout
        self._s = sql.Identifier(schema)
        self._writer: _Connection | None = None
        self._reader: _Connection | None = None
        self._read_lock = asyncio.Lock()
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._months: set[date] = set()  # months known to have a partition
        self._committing = False  # the writer's current group is being committed
        self.commits = 0  # committed groups, for tests and metrics
        self.appended = 0  # records committed by this instance

    def _sql(self, text: str, **more: sql.Composable) -> sql.Composed:
        return sql.SQL(text).format(s=self._s, schema=sql.Literal(self.schema), **more)

    # -- connections -------------------------------------------------------------------------

    async def _connect(self, dsn: str) -> _Connection:
        conn = await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            connect_timeout=max(1, round(self._timeout)),
            application_name="tongban-audit",
        )
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, false)",
            [f"{int(self._timeout * 1000)}ms"],
        )
        return conn

    @staticmethod
    def _dead(conn: _Connection | None) -> bool:
        return conn is None or conn.closed or conn.broken

    @staticmethod
    async def _discard(conn: _Connection | None) -> None:
        """Close a connection; one whose server does not answer is given a second at most."""
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DISCARD_SECONDS):
                    await conn.close()

    # -- open, migrate, close ----------------------------------------------------------------

    async def open(self) -> None:
        if self._task is not None:
            return
        try:
            reader = await self._connect(self._dsn)
            self._reader = reader
            cur = await reader.execute("SELECT current_user")
            app_role = str((await cur.fetchone() or ("",))[0])
            if self._owner_dsn is not None:
                async with await self._connect(self._owner_dsn) as owner:
                    await self._migrate(owner, app_role)
            elif await self._version(reader) != SCHEMA_VERSION:
                log.warning(
                    "audit schema %s migrated by the application role %s itself: it owns the "
                    "tables, so the log is not append-only against it (pass owner_dsn)",
                    self.schema,
                    app_role,
                )
                await self._migrate(reader, None)
            this_month = _month(datetime.now(UTC))
            await self._ensure_months(reader, {this_month, _next_month(this_month)})
            self._writer = await self._connect(self._dsn)
        except BaseException as exc:
            await self._discard(self._reader)
            await self._discard(self._writer)
            self._reader = self._writer = None
            if isinstance(exc, psycopg.Error):
                raise AuditUnavailable(f"the audit database is not available: {exc}") from exc
            raise
        self._closing = False
        self._task = asyncio.create_task(self._write_loop(), name="audit-postgres-writer")

    async def _version(self, conn: _Connection) -> int:
        exists = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [f'"{self.schema}".schema_version']
        )
        if not (await exists.fetchone() or (False,))[0]:
            return 0
        cur = await conn.execute(
            self._sql("SELECT coalesce(max(version), 0) FROM {s}.schema_version")
        )
        return int((await cur.fetchone() or (0,))[0])

    async def _migrate(self, conn: _Connection, app_role: str | None) -> None:
        """Create or migrate the schema (as the owner when there is one); grant the app role."""
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",  # the lock ensure_month() takes
                [f"tongban_audit.ddl:{self.schema}"],
            )
            cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema])
            if await cur.fetchone() is None:  # CREATE ... IF NOT EXISTS needs CREATE on the db
                await conn.execute(self._sql("CREATE SCHEMA {s}"))
            await conn.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {s}.schema_version ("
                    " version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            version = await self._version(conn)
            if version > SCHEMA_VERSION:
                raise AuditUnavailable(
                    f"the audit schema {self.schema} is at version {version}, newer than this "
                    f"gateway's {SCHEMA_VERSION}"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(self._sql(_MIGRATIONS[number - 1]))
                await conn.execute(
                    self._sql("INSERT INTO {s}.schema_version (version) VALUES (%s)"), [number]
                )
                log.info("audit schema %s migrated to version %d", self.schema, number)
            cur = await conn.execute("SELECT current_user")
            owner_role = str((await cur.fetchone() or ("",))[0])
            if app_role is not None and app_role != owner_role:
                await conn.execute(self._sql(_GRANTS, app=sql.Identifier(app_role)))
            elif app_role is not None:
                log.warning(
                    "owner_dsn connects as the application role %s: the log is not "
                    "append-only against it",
                    app_role,
                )

    async def _ensure_months(self, conn: _Connection, months: set[date]) -> None:
        """Create the missing monthly partitions, each in its own short transaction."""
        for month in sorted(months - self._months):
            await conn.execute(self._sql("SELECT {s}.ensure_month(%s)"), [month])
            self._months.add(month)

    async def months(self) -> list[date]:
        """The months that have a partition."""
        rows = await self._run(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s)",
            [f'"{self.schema}".records'],
        )
        out = []
        for (name,) in rows:
            if match := _PARTITION_NAME.fullmatch(name):
                out.append(date(int(match[1]), int(match[2]), 1))
        return sorted(out)

    async def close(self) -> None:
        """Commit what is queued, within the store's timeout: a database that does not answer
        (frozen, or a network that silently drops packets) does not hold the stop. What it did
        not commit by then is refused (`AuditUnavailable`, so nothing is released for it)."""
        if self._task is not None:
            self._closing = True
            self._queue.put_nowait(None)
            done, _ = await asyncio.wait({self._task}, timeout=self._timeout)
            if not done:
                log.error(
                    "audit: PostgreSQL did not commit the appends still queued within %g s of "
                    "the stop; they are refused",
                    self._timeout,
                )
                await _cancel(self._task)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._refuse_queued(AuditUnavailable("the audit store was closed before it took them"))
        await self._discard(self._writer)
        await self._discard(self._reader)
        self._writer = self._reader = None

    def _refuse_queued(self, error: AuditUnavailable) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item[2].done():
                item[2].set_exception(error)

    # -- appends -------------------------------------------------------------------------------

    async def append(self, record: AuditRecord, outbound: Outbound | None = None) -> Appended:
        if self._task is None or self._closing:
            raise AuditUnavailable("the PostgreSQL audit store is not open")
        if self._queue.qsize() >= self._max_pending:
            raise AuditUnavailable(
                f"{self._queue.qsize()} audit records are waiting for PostgreSQL to take them"
            )
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, outbound, future))
        return await future

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                appended = await self._write([(record, out) for record, out, _ in batch])
            except asyncio.CancelledError:  # close() gave up on a database that does not answer
                error = (
                    AuditOutcomeUnknown(
                        "the audit store was closed while its commit was on its way"
                    )
                    if self._committing
                    else AuditUnavailable("the audit store was closed before it answered")
                )
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                raise
            except Exception as exc:
                if not isinstance(exc, AuditUnavailable):
                    log.exception("audit batch failed")
                    exc = AuditUnavailable(f"the audit batch failed: {exc}")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, _, future), result in zip(batch, appended, strict=True):
                    if not future.done():
                        future.set_result(result)

    async def _write(
        self, records: Sequence[tuple[AuditRecord, Outbound | None]]
    ) -> list[Appended]:
        """Commit one group; retry once on a fresh connection if the old one was found dead
        before anything was committed."""
        for attempt in (1, 2):
            committing = self._committing = False
            try:
                if self._dead(self._writer):
                    await self._discard(self._writer)
                    self._writer = None
                    self._writer = await self._connect(self._dsn)
                conn = self._writer
                assert conn is not None
                await self._ensure_months(conn, {_month(r.time) for r, _ in records})
                async with conn.transaction():
                    appended = await self._insert(conn, records)
                    committing = self._committing = True  # leaving the block commits: the
                    # outcome may be unknown
            except psycopg.Error as exc:
                self._months.clear()  # a partition may have gone (retention): ask again
                dead = self._dead(self._writer)
                if dead:
                    await self._discard(self._writer)
                    self._writer = None
                if attempt == 1 and dead and not committing:
                    log.warning("audit database connection lost, reconnecting: %s", exc)
                    continue
                if attempt == 1 and _no_partition(exc):  # rolled back: nothing was stored
                    log.info("audit partition gone (a retention prune), recreating: %s", exc)
                    continue
                if committing:
                    raise AuditOutcomeUnknown(
                        f"the audit commit got no answer, it may have been stored: {exc}"
                    ) from exc
                raise AuditUnavailable(f"the audit records were not stored: {exc}") from exc
            except ProofError as exc:
                raise AuditUnavailable(f"the stored audit head is malformed: {exc}") from exc
            else:
                self._committing = False
                self.commits += 1
                self.appended += len(records)
                return appended
        raise AssertionError("unreachable")  # pragma: no cover

    async def _insert(
        self, conn: _Connection, records: Sequence[tuple[AuditRecord, Outbound | None]]
    ) -> list[Appended]:
        cur = conn.cursor()
        await cur.execute(self._sql("SELECT size, compact FROM {s}.head WHERE id = 1 FOR UPDATE"))
        head = await cur.fetchone()
        if head is None:
            raise AuditUnavailable("the audit head row is missing")
        start = int(head[0])
        compact = CompactRange.from_bytes(start, bytes(head[1]))
        rows: list[tuple[Any, ...]] = []
        appended: list[Appended] = []
        outbound: list[tuple[Any, ...]] = []
        for offset, (record, out) in enumerate(records):
            if out is not None:
                outbound.append((start + offset, out.destination, out.payload))
            leaf = leaf_hash(record.canonical)
            compact.append(leaf)
            appended.append(Appended(start + offset, leaf))
            rows.append(
                (
                    start + offset,
                    record.time,
                    record.gateway,
                    record.region,
                    record.rpc,
                    record.request_id,
                    record.caller_agency,
                    record.caller_operator,
                    record.caller_region,
                    record.provider_region,
                    record.dataset,
                    record.purpose,
                    record.case_id,
                    record.subject,
                    record.outcome.value,
                    record.canonical,
                    leaf,
                    compact.root(),
                )
            )
        copy_sql = self._sql(
            "COPY {s}.records ({columns}) FROM STDIN (FORMAT BINARY)",
            columns=sql.SQL(", ").join(sql.Identifier(name) for name, _ in _COLUMNS),
        )
        async with cur.copy(copy_sql) as copy:
            copy.set_types([kind for _, kind in _COLUMNS])
            for row in rows:
                await copy.write_row(row)
        if outbound:
            await cur.executemany(
                self._sql("INSERT INTO {s}.outbox (idx, destination, payload) VALUES (%s, %s, %s)"),
                outbound,
            )
        await cur.execute(
            self._sql(
                "UPDATE {s}.head SET size = %s, compact = %s, updated_at = now() WHERE id = 1"
            ),
            [compact.size, compact.to_bytes()],
        )
        return appended

    # -- reads -------------------------------------------------------------------------------

    async def _run(self, query: str | sql.Composed, params: Sequence[Any] = ()) -> list[TupleRow]:
        """Run one statement on the reader connection (reads, checkpoints); reconnect and retry
        once if the connection was found dead."""
        async with self._read_lock:
            for attempt in (1, 2):
                try:
                    if self._dead(self._reader):
                        await self._discard(self._reader)
                        self._reader = None
                        self._reader = await self._connect(self._dsn)
                    conn = self._reader
                    assert conn is not None
                    cur = await conn.execute(query, params)
                    return await cur.fetchall() if cur.description is not None else []
                except psycopg.Error as exc:
                    if self._dead(self._reader):
                        await self._discard(self._reader)
                        self._reader = None
                        if attempt == 1:
                            continue
                    raise AuditUnavailable(f"the audit database is not available: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def head(self) -> TreeHead:
        rows = await self._run(self._sql("SELECT size, compact FROM {s}.head WHERE id = 1"))
        if not rows:
            raise AuditIntegrityError("the audit head row is missing")
        size = int(rows[0][0])
        try:
            return TreeHead(size, CompactRange.from_bytes(size, bytes(rows[0][1])).root())
        except ProofError as exc:
            raise AuditIntegrityError(f"the stored audit head is malformed: {exc}") from exc

    async def column_mismatches(self) -> int | None:
        checks = sql.SQL(" OR ").join(
            sql.SQL("{} IS DISTINCT FROM (j ->> {})").format(sql.Identifier(c), sql.Literal(c))
            for c in (
                "caller_agency",
                "provider_region",
                "purpose",
                "dataset",
                "subject",
                "outcome",
            )
        )
        found = await self._run(
            sql.SQL(
                "SELECT min(idx) FROM (SELECT idx, time, caller_agency, provider_region, purpose, dataset,"
                " subject, outcome, convert_from(canonical, 'UTF8')::jsonb AS j FROM {}.records) AS r"
                " WHERE {} OR time IS DISTINCT FROM (j ->> 'time')::timestamptz"
            ).format(sql.Identifier(self.schema), checks),
            [],
        )
        return None if not found or found[0][0] is None else int(found[0][0])

    async def rows(self, start: int, end: int) -> list[StoredRow]:
        found = await self._run(
            self._sql(
                "SELECT idx, canonical, leaf_hash, root FROM {s}.records"
                " WHERE idx >= %s AND idx < %s ORDER BY idx"
            ),
            [max(start, 0), max(end, 0)],
        )
        return [StoredRow(int(i), bytes(c), bytes(h), bytes(r)) for i, c, h, r in found]

    async def query(self, query: AuditQuery) -> list[tuple[int, AuditRecord]]:
        where: list[sql.Composable] = [sql.SQL("idx > %s")]
        params: list[Any] = [query.after_index]
        for column, value in (
            ("subject", query.subject),
            ("caller_agency", query.caller_agency),
            ("provider_region", query.provider_region),
            ("purpose", query.purpose),
            ("dataset", query.dataset),
            ("outcome", None if query.outcome is None else query.outcome.value),
        ):
            if value is not None:
                where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if query.since is not None:
            where.append(sql.SQL("time >= %s"))
            params.append(query.since)
        if query.until is not None:
            where.append(sql.SQL("time < %s"))
            params.append(query.until)
        params.append(max(query.limit, 0))
        found = await self._run(
            self._sql(
                "SELECT idx, canonical FROM {s}.records WHERE {where} ORDER BY idx LIMIT %s",
                where=sql.SQL(" AND ").join(where),
            ),
            params,
        )
        out: list[tuple[int, AuditRecord]] = []
        for index, canonical in found:
            # The filter columns are copies: answer from the canonical bytes, and refuse to
            # answer from a row whose copies were edited to say something else.
            try:
                record = AuditRecord.from_canonical(bytes(canonical))
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditIntegrityError(
                    f"record {index} is not a canonical audit record (run verify)"
                ) from exc
            if not query.matches(record):
                raise AuditIntegrityError(
                    f"record {index}'s columns do not match its canonical bytes (run verify)"
                )
            out.append((int(index), record))
        return out

    async def first_index_at_or_after(self, time: datetime) -> int:
        found = await self._run(
            self._sql(
                "SELECT coalesce((SELECT min(idx) FROM {s}.records WHERE time >= %s),"
                " (SELECT size FROM {s}.head WHERE id = 1))"
            ),
            [time],
        )
        if not found or found[0][0] is None:
            raise AuditIntegrityError("the audit head row is missing")
        return int(found[0][0])

    # -- the outbox ----------------------------------------------------------------------------

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

    async def pruned(self) -> PruneMarker | None:
        found = await self._run(
            self._sql(
                "SELECT before, compact, pruned_at, operator, reason FROM {s}.prunes"
                " ORDER BY before DESC, id DESC LIMIT 1"
            )
        )
        if not found:
            return None
        before, compact, pruned_at, operator, reason = found[0]
        return PruneMarker(int(before), bytes(compact), pruned_at, str(operator), str(reason))

    async def prune(self, marker: PruneMarker) -> None:
        """Remove the records below the marker through ``prune_below()``, in one transaction on
        a connection of its own. Appends to other months go on meanwhile; dropping a whole
        month's partition waits for the parent's lock at most half the store's timeout (appends
        queue behind it), while the deletion itself may take as long as it needs."""
        try:
            async with await self._connect(self._dsn) as conn, conn.transaction():
                await conn.execute(
                    "SELECT set_config('statement_timeout', '0', true),"
                    " set_config('lock_timeout', %s, true)",
                    [f"{max(1, int(self._timeout * 500))}ms"],
                )
                cur = await conn.execute(
                    self._sql("SELECT {s}.prune_below(%s, %s, %s, %s, %s)"),
                    [
                        marker.before,
                        marker.compact,
                        marker.pruned_at,
                        marker.operator,
                        marker.reason,
                    ],
                )
                removed = (await cur.fetchone() or (0,))[0]
        except psycopg.Error as exc:
            raise AuditUnavailable(f"the audit records were not pruned: {exc}") from exc
        self._months.clear()  # whole months may have gone: ask before the next append
        log.info(
            "audit schema %s pruned below %d (%s records removed)",
            self.schema,
            marker.before,
            removed,
        )

    async def add_checkpoint(self, checkpoint: Checkpoint, signed_at: datetime) -> None:
        await self._run(
            self._sql(
                "INSERT INTO {s}.checkpoints (origin, size, root, key_name, note, signed_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
            ),
            [
                checkpoint.origin,
                checkpoint.size,
                checkpoint.root,
                checkpoint.key_name,
                checkpoint.note,
                signed_at,
            ],
        )

    async def checkpoints(self) -> list[Checkpoint]:
        found = await self._run(
            self._sql(
                "SELECT origin, size, root, note, key_name, signed_at FROM {s}.checkpoints"
                " ORDER BY size, seq"
            )
        )
        return [
            Checkpoint(
                str(origin),
                int(size),
                bytes(root),
                str(note),
                str(key_name),
                signed_at.astimezone(UTC),
            )
            for origin, size, root, note, key_name, signed_at in found
        ]
