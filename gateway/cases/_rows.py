"""The rows of the case tables, as both durable case stores write and read them (SQLite keeps
times as fixed-width UTC text and lists as JSON text; PostgreSQL as timestamptz and jsonb), and
the filter of a listing (`CaseQuery`) in SQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.audit import AuditIntegrityError
from gateway.cases._model import CaseState
from gateway.cases._store import CaseChange, CaseQuery, CaseSummary, StoredEvent, check_change

__all__ = [
    "EVENT_COLUMNS",
    "OUTBOX_EVENT_COLUMNS",
    "SUMMARY_COLUMNS",
    "Dialect",
    "Prepared",
    "case_filter",
    "count",
    "event_from_row",
    "json_text",
    "prepare",
    "summary_from_row",
    "time_text",
    "utc",
]

_EVENT_NAMES = (
    "event_id",
    "case_id",
    "origin",
    "seq",
    "sealed_jws",
    "attachments",
    "received_at",
    "position",
)
EVENT_COLUMNS = ", ".join(_EVENT_NAMES)
OUTBOX_EVENT_COLUMNS = ", ".join(f"e.{name}" for name in _EVENT_NAMES)  # case_events AS e
_MAX_INTEGER = 2**63 - 1


def count(value: int) -> int:
    """A position or limit asked for, within what the stores' integers hold."""
    return min(max(value, 0), _MAX_INTEGER)


SUMMARY_COLUMNS = (
    "case_id, matter_code, window_region, window_agency, applicant, state, submitted_at,"
    " due_at, updated_at, agencies, ready_regions, handling"
)


def time_text(moment: datetime) -> str:
    """A time as SQLite keeps it: fixed-width UTC text, so that text order is time order."""
    if moment.utcoffset() is None:
        raise ValueError("case times are timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc(moment: datetime) -> datetime:
    """A time as PostgreSQL takes it (refusing a naive one, which it would read as local)."""
    if moment.utcoffset() is None:
        raise ValueError("case times are timezone-aware")
    return moment.astimezone(UTC)


def json_text(values: Iterable[Any]) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


def _when(value: object) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def _list(value: object) -> list[Any]:
    found = json.loads(value) if isinstance(value, str | bytes) else value
    if not isinstance(found, list):
        raise TypeError("not a JSON list")
    return found


def _texts(value: object) -> tuple[str, ...]:
    return tuple(str(item) for item in _list(value))


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _list(value):
        region, agency = item
        pairs.append((str(region), str(agency)))
    return tuple(pairs)


def event_from_row(row: Sequence[Any]) -> StoredEvent:
    """A `StoredEvent` from a row of EVENT_COLUMNS; `AuditIntegrityError` if it is not one."""
    try:
        event_id, case_id, origin, seq, sealed, attachments, received_at, position = row
        return StoredEvent(
            str(event_id),
            str(case_id),
            str(origin),
            int(seq),
            str(sealed),
            _texts(attachments),
            _when(received_at),
            int(position),
        )
    except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise AuditIntegrityError(f"a stored case event is malformed: {exc}") from exc


def summary_from_row(row: Sequence[Any]) -> CaseSummary:
    """A `CaseSummary` from a row of SUMMARY_COLUMNS; `AuditIntegrityError` if it is not one."""
    try:
        (case_id, matter, region, agency, applicant, state, submitted, due, updated) = row[:9]
        agencies, ready, handling = row[9:]
        return CaseSummary(
            str(case_id),
            str(matter),
            str(region),
            str(agency),
            str(applicant),
            str(state),
            _when(submitted),
            _when(due),
            _when(updated),
            _texts(agencies),
            _texts(ready),
            _pairs(handling),
        )
    except (TypeError, ValueError) as exc:
        raise AuditIntegrityError(f"a stored case summary is malformed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Prepared:
    """A change as the parameters of its statements, made before its record is appended (so
    that nothing about it can fail inside the record's transaction)."""

    event: tuple[Any, ...]  # EVENT_COLUMNS but position, for the statement to add
    event_id: str
    destinations: tuple[str, ...]  # each once
    attachments: tuple[tuple[str, bytes], ...]
    summary: tuple[Any, ...]  # SUMMARY_COLUMNS
    request: tuple[str, str, str, str, str] | None  # agency, request id, event, case, digest


def prepare(change: CaseChange, when: Callable[[datetime], object]) -> Prepared:
    """Check `change` (`ValueError`) and give its parameters, times written by `when`."""
    check_change(change)
    event, summary = change.event, change.summary
    request = None
    if change.request is not None:
        agency, request_id = change.request
        request = (agency, request_id, event.event_id, event.case_id, change.request_digest)
    return Prepared(
        event=(
            event.event_id,
            event.case_id,
            event.origin,
            event.seq,
            event.sealed_jws,
            json_text(event.attachments),
            when(event.received_at),
        ),
        event_id=event.event_id,
        destinations=tuple(dict.fromkeys(change.destinations)),
        attachments=tuple((a.sha256, bytes(a.sealed)) for a in change.attachments),
        summary=(
            summary.case_id,
            summary.matter_code,
            summary.window_region,
            summary.window_agency,
            summary.applicant,
            summary.state,
            when(summary.submitted_at),
            when(summary.due_at),
            when(summary.updated_at),
            json_text(summary.agencies),
            json_text(summary.ready_regions),
            json_text(list(pair) for pair in summary.handling),
        ),
        request=request,
    )


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a store's SQL says what `case_filter` needs."""

    mark: str  # a parameter: "?" or "%s"
    contains: Callable[[str], str]  # "<JSON list column> holds the parameter", given the column
    when: Callable[[datetime], object]  # a time parameter


def case_filter(query: CaseQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    """The WHERE clause selecting `query`'s cases (fixed text: only parameters carry what was
    asked), its parameters, and the limit as the last one."""
    p = dialect.mark
    clauses: list[str] = []
    params: list[Any] = []
    if query.agency:
        clauses.append(f"({dialect.contains('agencies')} OR {dialect.contains('ready_regions')})")
        params += [query.agency, query.agency_region]
    for column, value in (
        ("applicant", query.applicant),
        ("state", query.state),
        ("matter_code", query.matter_code),
    ):
        if value:
            clauses.append(f"{column} = {p}")
            params.append(value)
    if query.overdue_at is not None:
        clauses.append(f"state = {p} AND due_at < {p}")
        params += [CaseState.OPEN.value, dialect.when(query.overdue_at)]
    if query.before is not None:
        updated_at, case_id = query.before
        clauses.append(f"(updated_at, case_id) < ({p}, {p})")
        params += [dialect.when(updated_at), case_id]
    params.append(count(query.limit))
    return " AND ".join(clauses) or "TRUE", params
