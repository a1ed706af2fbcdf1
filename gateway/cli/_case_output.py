"""How `tongban case` shows a case: rich tables for a person (the case, its parts, its materials,
its history; a page of cases), and JSON documents for machines. The applicant's id is shown
masked (region and check character) in both; materials' bytes never reach the terminal."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gateway._tables import whole

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from tongban.v1 import cases_pb2

__all__ = [
    "CASE_FIELDS",
    "LIST_FIELDS",
    "case_document",
    "mask",
    "print_case",
    "print_cases",
    "summary_document",
]

# The --json field names, as --help lists them.
CASE_FIELDS: Final = (
    "case_id",
    "matter_code",
    "matter_name",
    "window_region",
    "window_agency",
    "state",
    "overdue",
    "applicant_id (masked)",
    "submitted_at",
    "due_at",
    "updated_at",
    "note",
    "parts",
    "materials",
    "history",
    "audit_id",
)
LIST_FIELDS: Final = (
    "case_id",
    "matter_code",
    "matter_name",
    "window_region",
    "window_agency",
    "state",
    "overdue",
    "submitted_at",
    "due_at",
    "updated_at",
    "parts (index, region, role, state, agency)",
)
_STATE_STYLES: Final = {
    "open": "cyan",
    "completed": "green",
    "rejected": "red",
    "done": "green",
    "in_progress": "cyan",
    "awaiting_material": "yellow",
}


def mask(applicant_id: str) -> str:
    """An applicant's id as the terminal shows it: its region (first six characters) and its
    check character; an id too short for that is all stars."""
    if len(applicant_id) < 8:
        return "*" * len(applicant_id)
    return applicant_id[:6] + "*" * (len(applicant_id) - 7) + applicant_id[-1:]


def _name(value: int, enum: Any, prefix: str) -> str:
    """An enum value's name as the case model writes it ("open", "in_progress", "accept")."""
    try:
        text: str = enum.Name(value)
    except ValueError:
        return str(value)
    return text.removeprefix(prefix).lower()


def _time(stamp: Timestamp) -> str:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _material_document(m: cases_pb2.MaterialSummary) -> dict[str, Any]:
    from tongban.v1 import credentials_pb2

    return {
        "material_id": m.material_id,
        "sha256": m.sha256,
        "size": m.size,
        "format": _name(m.format, credentials_pb2.SealFormat, "SEAL_FORMAT_"),
        "signer_region": m.signer_region,
        "signer": m.signer,
        "verified_by_region": m.verified_by_region,
        "verified_at": _time(m.verified_at),
    }


def _part_document(p: cases_pb2.CasePart, *, full: bool) -> dict[str, Any]:
    from tongban.v1 import cases_pb2

    document: dict[str, Any] = {
        "index": p.index,
        "region": p.region,
        "role": p.role,
        "state": _name(p.state, cases_pb2.PartState, "PART_STATE_"),
        "agency": p.agency,
    }
    if full:
        document["description"] = p.description
        document["note"] = p.note
        document["requested_material_ids"] = list(p.requested_material_ids)
        document["result"] = _material_document(p.result) if p.HasField("result") else None
    return document


def summary_document(case: cases_pb2.Case) -> dict[str, Any]:
    """A case as `case list --json` gives it (a listing has no history nor materials)."""
    from tongban.v1 import cases_pb2

    return {
        "case_id": case.case_id,
        "matter_code": case.matter_code,
        "matter_name": case.matter_name,
        "window_region": case.window_region,
        "window_agency": case.window_agency,
        "state": _name(case.state, cases_pb2.CaseState, "CASE_STATE_"),
        "overdue": case.overdue,
        "submitted_at": _time(case.submitted_at),
        "due_at": _time(case.due_at),
        "updated_at": _time(case.updated_at),
        "parts": [_part_document(p, full=False) for p in case.parts],
    }


def case_document(case: cases_pb2.Case) -> dict[str, Any]:
    """A case as `case show|submit|act --json` give it."""
    document = summary_document(case)
    document["applicant_id"] = mask(case.applicant_id) if case.applicant_id else ""
    document["note"] = case.note
    document["parts"] = [_part_document(p, full=True) for p in case.parts]
    document["materials"] = [_material_document(m) for m in case.materials]
    document["history"] = [
        {
            "event_id": e.event_id,
            "kind": e.kind,
            "region": e.region,
            "agency": e.agency,
            "part": e.part,
            "at": _time(e.at),
            "note": e.note,
            "applied": e.applied,
        }
        for e in case.history
    ]
    document["audit_id"] = case.audit_id
    return document


def _styled(text: str) -> Text:
    return Text(text, style=_STATE_STYLES.get(text, ""))


def _parts_table(case: cases_pb2.Case) -> Table:
    table = Table(title="parts (in the order they complete)", title_justify="left")
    for column in ("#", "region", "role", "state", "agency", "asked for", "result", "note"):
        table.add_column(column)
    for p in _case_parts(case):
        result = p["result"]
        table.add_row(
            str(p["index"]),
            p["region"],
            p["role"],
            _styled(p["state"]),
            p["agency"],
            ", ".join(p["requested_material_ids"]),
            f"{result['format']} by {result['signer_region']}" if result else "",
            p["note"],
        )
    return table


def _case_parts(case: cases_pb2.Case) -> list[dict[str, Any]]:
    return [_part_document(p, full=True) for p in case.parts]


def _materials_table(case: cases_pb2.Case) -> Table:
    table = Table(title="materials (verified on arrival)", title_justify="left")
    for column in ("material", "format", "sealed by", "bytes", "sha256", "verified by"):
        table.add_column(column)
    for m in (_material_document(m) for m in case.materials):
        table.add_row(
            m["material_id"],
            m["format"],
            f"{m['signer_region']} {m['signer']}".strip(),
            str(m["size"]),
            m["sha256"][:16] + "…",
            f"{m['verified_by_region']} {m['verified_at']}".strip(),
        )
    return table


def _history_table(case: cases_pb2.Case) -> Table:
    table = Table(title="history (in the order applied)", title_justify="left")
    for column in ("at (UTC)", "event", "kind", "by", "part", "applied", "note"):
        table.add_column(column)
    for e in case.history:
        table.add_row(
            _time(e.at),
            e.event_id,
            e.kind,
            f"{e.region} {e.agency}".strip(),
            "" if e.part < 0 else str(e.part),
            "yes" if e.applied else Text("no (came too late)", style="yellow"),
            e.note,
        )
    return table


def print_case(case: cases_pb2.Case, out: Console, headline: str = "") -> None:
    """A case for a person: what it is, where it stands, its parts, materials and history."""
    doc = case_document(case)
    state = doc["state"] + (" (overdue)" if doc["overdue"] else "")
    if headline:
        out.print(headline, markup=False, soft_wrap=True)
    out.print(
        f"Case {doc['case_id']}: {doc['matter_code']} {doc['matter_name']}, {state}",
        markup=False,
        soft_wrap=True,
    )
    out.print(
        f"Received by {doc['window_agency']} ({doc['window_region']}) for applicant "
        f"{doc['applicant_id'] or '(not shown to this caller)'}; submitted "
        f"{doc['submitted_at']}, due {doc['due_at']}, last change {doc['updated_at']}",
        markup=False,
        soft_wrap=True,
    )
    if doc["note"]:
        out.print(f"Note: {doc['note']}", markup=False, soft_wrap=True)
    out.print(whole(_parts_table(case)))
    if case.materials:
        out.print(whole(_materials_table(case)))
    if case.history:
        out.print(whole(_history_table(case)))
    if doc["audit_id"]:
        out.print(f"Audit record of this call: {doc['audit_id']}", markup=False, soft_wrap=True)


def print_cases(cases: list[cases_pb2.Case], out: Console, more: bool) -> None:
    """A page of cases for a person, newest change first."""
    table = Table(title=f"{len(cases)} case(s), newest change first", title_justify="left")
    for column in ("case", "matter", "state", "window", "parts", "due (UTC)", "updated (UTC)"):
        table.add_column(column)
    for case in cases:
        doc = summary_document(case)
        state = doc["state"] + (" overdue" if doc["overdue"] else "")
        parts = " → ".join(f"{p['region']} {p['role']}: {p['state']}" for p in doc["parts"])
        table.add_row(
            doc["case_id"],
            f"{doc['matter_code']} {doc['matter_name']}",
            _styled(state) if not doc["overdue"] else Text(state, style="red"),
            f"{doc['window_region']} {doc['window_agency']}",
            parts,
            doc["due_at"],
            doc["updated_at"],
        )
    out.print(whole(table))
    if more:
        out.print("More cases match: give a larger --limit to see them.", soft_wrap=True)
