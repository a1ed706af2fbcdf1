"""The consent register's table in the PostgreSQL audit schema (migration 7) and what the
application role may do with it; the register itself is `gateway.consent._register_pg`.

``consents``
    one row per consent the home gateway knows: its claims (never the citizen: ``subject`` is
    the gateway's pseudonym, 64 hex digits, and a CHECK refuses anything else), when it was
    registered, and ``revoked_at`` once the citizen revoked it. A revocation is never undone:
    a BEFORE UPDATE trigger lets an UPDATE only set ``revoked_at`` on a row that has none, and
    change nothing else; rows are never deleted (DELETE and TRUNCATE refused). The application
    role may SELECT, INSERT and UPDATE ``revoked_at`` only.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CONSENTS_GRANTS", "CONSENTS_MIGRATION"]

CONSENTS_MIGRATION: Final = """
    -- The home gateway's consent register (gateway.consent._register_pg), shared by the
    -- replicas: each change is one statement, committed before it is answered.
    CREATE TABLE {s}.consents (
        consent_id text PRIMARY KEY,
        subject text NOT NULL CHECK (subject ~ '^[0-9a-f]{{64}}$'),
        agencies text[] NOT NULL,
        regions text[] NOT NULL,
        purpose text NOT NULL,
        datasets text[] NOT NULL,
        valid_from timestamptz NOT NULL,
        valid_until timestamptz NOT NULL,
        max_uses integer NOT NULL,
        issued_at timestamptz NOT NULL,
        registered_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz
    );
    CREATE INDEX consents_subject ON {s}.consents (subject, issued_at, consent_id);

    -- A revocation is final: an UPDATE may only set revoked_at where there was none.
    CREATE FUNCTION {s}.consent_revoked_once() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.revoked_at IS NOT NULL OR NEW.revoked_at IS NULL
            OR (NEW.consent_id, NEW.subject, NEW.agencies, NEW.regions, NEW.purpose,
                NEW.datasets, NEW.valid_from, NEW.valid_until, NEW.max_uses, NEW.issued_at,
                NEW.registered_at)
            IS DISTINCT FROM (OLD.consent_id, OLD.subject, OLD.agencies, OLD.regions,
                OLD.purpose, OLD.datasets, OLD.valid_from, OLD.valid_until, OLD.max_uses,
                OLD.issued_at, OLD.registered_at)
        THEN
            RAISE EXCEPTION 'consent %: only a revocation is recorded, and only once',
                OLD.consent_id;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER consents_revoked_once BEFORE UPDATE ON {s}.consents
        FOR EACH ROW EXECUTE FUNCTION {s}.consent_revoked_once();
    CREATE TRIGGER consents_kept BEFORE DELETE ON {s}.consents
        FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
    CREATE TRIGGER consents_no_truncate BEFORE TRUNCATE ON {s}.consents
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
    ALTER TABLE {s}.consents ENABLE ALWAYS TRIGGER consents_revoked_once;
    ALTER TABLE {s}.consents ENABLE ALWAYS TRIGGER consents_kept;
    ALTER TABLE {s}.consents ENABLE ALWAYS TRIGGER consents_no_truncate;
"""

CONSENTS_GRANTS: Final = """
    REVOKE ALL ON {s}.consents FROM PUBLIC;
    REVOKE ALL ON {s}.consents FROM {app};
    GRANT SELECT, INSERT, UPDATE (revoked_at) ON {s}.consents TO {app};
"""
