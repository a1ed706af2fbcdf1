"""The PostgreSQL audit store's schema: its tables, migrations, grants and monthly partitions.

Tables (in ``schema``, created and migrated by `PostgresAuditStore`, version in ``schema_version``):

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

Beside them, the outbox of access reports, witnessing (`gateway.audit._witness_store`), cases
(``case_events``, ``case_attachments``, ``cases``, ``case_outbox``, ``case_requests``:
`gateway.cases._postgres`) and the consent register (``consents``: `_postgres_consents`),
migrated with the log.

Append-only: on every table of the log a BEFORE UPDATE OR DELETE row trigger that raises (the head allows
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

import re
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

from gateway.audit._postgres_consents import CONSENTS_GRANTS, CONSENTS_MIGRATION
from gateway.audit._record import AuditRecord
from gateway.audit._store import AuditQuery

__all__ = [
    "COLUMNS",
    "GRANTS",
    "MIGRATIONS",
    "PARTITION_NAME",
    "SCHEMA_VERSION",
    "first_mismatch_sql",
    "month_of",
    "next_month",
    "no_partition",
    "query_filter",
    "record_row",
]

PARTITION_NAME = re.compile(r"records_y(\d{4})m(\d{2})")

# The columns copied in for each record, in order, and their types (binary COPY).
COLUMNS = (
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

# Migrations, in order: version N is MIGRATIONS[N - 1]. {s} is the schema, {schema} its name
# as a literal. Never edit one that has shipped: add the next.
MIGRATIONS: tuple[str, ...] = (
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
    """
    -- Witnessing (gateway.audit._witness_store): what this gateway last cosigned per log (moved
    -- by compare-and-swap), the forks it refused and the cosignatures of its own log (both
    -- append-only: they are evidence).
    CREATE TABLE {s}.witness_state (
        origin text PRIMARY KEY,
        size bigint NOT NULL CHECK (size >= 0),
        root bytea NOT NULL CHECK (octet_length(root) = 32),
        note text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE {s}.witness_forks (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        origin text NOT NULL,
        held_note text NOT NULL,
        offered_note text NOT NULL,
        old_size bigint NOT NULL,
        proof bytea NOT NULL,
        reason text NOT NULL,
        detected_at timestamptz NOT NULL
    );
    CREATE TABLE {s}.cosignatures (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        size bigint NOT NULL,
        root bytea NOT NULL,
        witness text NOT NULL,
        line text NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (size, root, witness)
    );
    CREATE TRIGGER witness_forks_append_only BEFORE UPDATE OR DELETE ON {s}.witness_forks
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER witness_forks_no_truncate BEFORE TRUNCATE ON {s}.witness_forks
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER cosignatures_append_only BEFORE UPDATE OR DELETE ON {s}.cosignatures
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER cosignatures_no_truncate BEFORE TRUNCATE ON {s}.cosignatures
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    ALTER TABLE {s}.witness_forks ENABLE ALWAYS TRIGGER witness_forks_append_only;
    ALTER TABLE {s}.witness_forks ENABLE ALWAYS TRIGGER witness_forks_no_truncate;
    ALTER TABLE {s}.cosignatures ENABLE ALWAYS TRIGGER cosignatures_append_only;
    ALTER TABLE {s}.cosignatures ENABLE ALWAYS TRIGGER cosignatures_no_truncate;
    """,
    """
    -- An RFC 3161 time-stamp token over each checkpoint's note, when [timestamp] is configured.
    ALTER TABLE {s}.checkpoints ADD COLUMN time_stamp bytea;
    """,
    """
    -- Cases (gateway.cases._postgres), each change written in its audit record's transaction,
    -- which holds the head's lock: `position` (the arrival order here) is the largest so far
    -- plus one, so positions are gapless and commit in their order across replicas. The
    -- events held (`audit_idx`: the record each came with), the sealed materials, one summary
    -- row per case, the events owed to other regions (deleted once delivered), and the local
    -- calls already answered (by agency and request id).
    CREATE TABLE {s}.case_events (
        event_id text PRIMARY KEY,
        case_id text NOT NULL,
        origin text NOT NULL,
        seq bigint NOT NULL,
        sealed_jws text NOT NULL,
        attachments jsonb NOT NULL,
        received_at timestamptz NOT NULL,
        position bigint NOT NULL UNIQUE,
        audit_idx bigint NOT NULL
    );
    CREATE INDEX case_events_case ON {s}.case_events (case_id, position);
    CREATE TABLE {s}.case_attachments (
        sha256 text PRIMARY KEY,
        sealed bytea NOT NULL
    );
    CREATE TABLE {s}.cases (
        case_id text PRIMARY KEY,
        matter_code text NOT NULL,
        window_region text NOT NULL,
        window_agency text NOT NULL,
        applicant text NOT NULL,
        state text NOT NULL,
        submitted_at timestamptz NOT NULL,
        due_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        agencies jsonb NOT NULL,
        ready_regions jsonb NOT NULL,
        handling jsonb NOT NULL
    );
    CREATE INDEX cases_updated ON {s}.cases (updated_at, case_id);
    CREATE INDEX cases_applicant ON {s}.cases (applicant, updated_at, case_id);
    CREATE INDEX cases_state_due ON {s}.cases (state, due_at);
    CREATE INDEX cases_matter ON {s}.cases (matter_code, updated_at, case_id);
    CREATE TABLE {s}.case_outbox (
        event_id text NOT NULL,
        destination text NOT NULL,
        position bigint NOT NULL,
        PRIMARY KEY (event_id, destination)
    );
    CREATE INDEX case_outbox_destination ON {s}.case_outbox (destination, position);
    CREATE TABLE {s}.case_requests (
        agency text NOT NULL,
        request_id text NOT NULL,
        event_id text NOT NULL,
        case_id text NOT NULL,
        digest text NOT NULL,
        PRIMARY KEY (agency, request_id)
    );
    """,
    CONSENTS_MIGRATION,  # 7: the consent register
)
SCHEMA_VERSION = len(MIGRATIONS)

# What the application role may do: read, insert, grow the head, prune through prune_below(),
# keep the outbox (add, acknowledge, delete delivered messages), keep witnessing, and keep cases
# (events, materials and requests only added; summaries replaced; delivered outbox rows deleted),
# and keep the consent register (consents added, revoked once). Nothing else.
GRANTS = (
    """
    REVOKE ALL ON {s}.records, {s}.head, {s}.checkpoints, {s}.schema_version, {s}.prunes,
        {s}.outbox, {s}.outbox_cursor, {s}.witness_state, {s}.witness_forks, {s}.cosignatures,
        {s}.case_events, {s}.case_attachments, {s}.cases, {s}.case_outbox, {s}.case_requests
        FROM PUBLIC;
    REVOKE ALL ON {s}.records, {s}.head, {s}.checkpoints, {s}.schema_version, {s}.prunes,
        {s}.outbox, {s}.outbox_cursor, {s}.witness_state, {s}.witness_forks, {s}.cosignatures,
        {s}.case_events, {s}.case_attachments, {s}.cases, {s}.case_outbox, {s}.case_requests
        FROM {app};
    GRANT USAGE ON SCHEMA {s} TO {app};
    GRANT SELECT, INSERT ON {s}.records, {s}.checkpoints TO {app};
    GRANT SELECT, UPDATE (size, compact, updated_at) ON {s}.head TO {app};
    GRANT SELECT ON {s}.schema_version, {s}.prunes TO {app};
    GRANT SELECT, INSERT, DELETE ON {s}.outbox TO {app};
    GRANT SELECT, INSERT, UPDATE ON {s}.outbox_cursor TO {app};
    GRANT SELECT, INSERT, UPDATE (size, root, note, updated_at) ON {s}.witness_state TO {app};
    GRANT SELECT, INSERT ON {s}.witness_forks, {s}.cosignatures TO {app};
    GRANT SELECT, INSERT ON {s}.case_events, {s}.case_attachments, {s}.case_requests TO {app};
    GRANT SELECT, INSERT, UPDATE ON {s}.cases TO {app};
    GRANT SELECT, INSERT, DELETE ON {s}.case_outbox TO {app};
    GRANT EXECUTE ON FUNCTION {s}.ensure_month(date) TO {app};
    GRANT EXECUTE ON FUNCTION {s}.prune_below(bigint, bytea, timestamptz, text, text) TO {app};
"""
    + CONSENTS_GRANTS
)


def no_partition(exc: psycopg.Error) -> bool:
    """A row routed to a month whose partition is not there (dropped by a prune since)."""
    return isinstance(exc, psycopg.errors.CheckViolation) and "no partition" in str(exc)


def month_of(moment: datetime) -> date:
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def record_row(index: int, record: AuditRecord, leaf: bytes, root: bytes) -> tuple[Any, ...]:
    """The row copied in for `record` at `index`, in the order of COLUMNS."""
    return (
        index,
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
        root,
    )


def query_filter(query: AuditQuery) -> tuple[sql.Composed, list[Any]]:
    """The WHERE clause (on the filter columns) selecting `query`'s records, and its params."""
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
    return sql.SQL(" AND ").join(where), params


def first_mismatch_sql(schema: str) -> sql.Composed:
    """The lowest index whose filter columns differ from its canonical bytes (NULL if none)."""
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
    return sql.SQL(
        "SELECT min(idx) FROM (SELECT idx, time, caller_agency, provider_region, purpose, dataset,"
        " subject, outcome, convert_from(canonical, 'UTF8')::jsonb AS j FROM {}.records) AS r"
        " WHERE {} OR time IS DISTINCT FROM (j ->> 'time')::timestamptz"
    ).format(sql.Identifier(schema), checks)
