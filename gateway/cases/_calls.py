"""What the case book is asked and answers (plain values: `gateway.services.cases` converts
them from and to protobuf), and the small rules it applies to them: who sees a case, a case's
summary, the page token of a listing, a case id, the digest of a call."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from gateway.audit import is_case_id
from gateway.cases._fold import CaseView
from gateway.cases._materials import MaterialInput
from gateway.cases._model import CaseEvent, EventKind, PartState, format_time, parse_time
from gateway.cases._store import CaseSummary
from gateway.errors import Refusal
from signer import b64url_decode, b64url_encode, canonical_json

__all__ = [
    "ACTIONS",
    "ActCall",
    "CaseAnswer",
    "CaseCaller",
    "CasePage",
    "Outgoing",
    "SubmitCall",
    "call_digest",
    "check_matter_filter",
    "event_fields",
    "may_see",
    "new_case_id",
    "read_page_token",
    "summary_of",
    "write_page_token",
]

# The actions `CaseBook.act` takes: the event each makes.
ACTIONS: Final = frozenset(
    {
        EventKind.ACCEPTED,
        EventKind.MATERIAL_REQUESTED,
        EventKind.SUPPLEMENTED,
        EventKind.APPROVED,
        EventKind.REJECTED,
    }
)
MAX_PAGE_TOKEN_CHARS: Final = 512
# The registry's matter-code grammar (registry._source_matters.is_matter_code): ASCII only.
_MATTER_CODE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")


@dataclass(frozen=True, slots=True)
class CaseCaller:
    """Who calls: an agency of this gateway's region (its operator from the request token), or
    an applicant through the region's citizen portal (`applicant`: this gateway's pseudonym of
    the applicant's id, from the token's `applicant` claim; never the raw id)."""

    region: str
    agency: str
    operator: str = ""
    applicant: str = ""


@dataclass(frozen=True, slots=True)
class SubmitCall:
    request_id: str
    matter_code: str
    applicant_id: str
    materials: tuple[MaterialInput, ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class ActCall:
    request_id: str
    case_id: str
    part: int
    action: EventKind  # one of ACTIONS
    note: str = ""
    material_ids: tuple[str, ...] = ()  # MATERIAL_REQUESTED
    materials: tuple[MaterialInput, ...] = ()  # SUPPLEMENTED
    result: MaterialInput | None = None  # APPROVED


@dataclass(frozen=True, slots=True)
class CaseAnswer:
    """A case as this gateway holds it, with the audit id of the call's record; `contents`
    (sha256 -> (content, signed_data)) only when asked for."""

    view: CaseView
    audit_id: str
    overdue: bool
    contents: Mapping[str, tuple[bytes, bytes]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CasePage:
    cases: tuple[CaseView, ...]
    next_page_token: str
    audit_id: str
    now: datetime


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event made here, to deliver: its id, its JWS, and the bytes of the materials and
    result it names, as (content, signed_data), each once."""

    event_id: str
    jws: str
    attachments: list[tuple[bytes, bytes]]


def summary_of(view: CaseView, applicant: str) -> CaseSummary:
    """What the store keeps for listing the case (`applicant`: its pseudonym here)."""
    return CaseSummary(
        case_id=view.case_id,
        matter_code=view.submission.matter_code,
        window_region=view.window_region,
        window_agency=view.submission.window_agency,
        applicant=applicant,
        state=view.state.value,
        submitted_at=view.submitted_at,
        due_at=view.submission.due_at,
        updated_at=view.updated_at,
        agencies=tuple(sorted(view.agencies)),
        ready_regions=tuple(
            dict.fromkeys(p.region for p in view.parts if p.state is PartState.READY)
        ),
        handling=tuple(
            (p.region, p.agency)
            for p in view.parts
            if p.state in (PartState.IN_PROGRESS, PartState.AWAITING_MATERIAL)
        ),
    )


def may_see(summary: CaseSummary, caller: CaseCaller) -> bool:
    """An applicant sees their own cases; an agency the cases it submitted or accepted a part
    of, and those with a part READY in its region (its inbox)."""
    if caller.applicant:
        return summary.applicant == caller.applicant
    return caller.agency in summary.agencies or caller.region in summary.ready_regions


def new_case_id(region: str, now: datetime) -> str:
    """办件编号: "<region>-<yyyymmdd>-<10 random hex digits>" (an audit case id)."""
    while True:
        made = f"{region}-{now.astimezone(UTC):%Y%m%d}-{secrets.token_hex(5).upper()}"
        if is_case_id(made):
            return made


def call_digest(kind: str, document: dict[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of what a call asked (kind and content)."""
    return hashlib.sha256(canonical_json({"call": kind, **document})).hexdigest()


def write_page_token(summary: CaseSummary) -> str:
    """The opaque token of the page after `summary`: unpadded base64url (RFC 4648 section 5)
    of the JSON [updated_at, case_id]."""
    raw = json.dumps([format_time(summary.updated_at), summary.case_id], ensure_ascii=False)
    return b64url_encode(raw.encode("utf-8"))


def read_page_token(token: str) -> tuple[datetime, str] | None:
    """(updated_at, case_id) of a token `write_page_token` made; None for ""; for anything else
    INVALID_ARGUMENT_FORMAT naming the field. The base64url is read strictly (signer's
    `b64url_decode`): a token with padding, '+', '/' or stray characters was not issued here,
    where a lenient decoder would skip them and read another token's position."""
    if not token:
        return None
    bad = Refusal(
        "INVALID_ARGUMENT_FORMAT",
        "page_token is not one this service issued: pass next_page_token unchanged",
        metadata={"field": "page_token"},
    )
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise bad
    try:
        at, case_id = json.loads(b64url_decode(token))
        if not isinstance(case_id, str) or not is_case_id(case_id):
            raise bad  # a case id no case has (a NUL, a citizen id): never handed to the store
        return parse_time(at, "page_token"), case_id
    except (ValueError, TypeError, RecursionError):  # JwsFormatError, UnicodeDecodeError too
        raise bad from None


def check_matter_filter(matter_code: str) -> None:
    """INVALID_ARGUMENT_FORMAT for a listing's matter filter that no matter code can be (a NUL,
    control characters, 1 MB): never handed to the store."""
    if matter_code and not _MATTER_CODE.fullmatch(matter_code):
        raise Refusal(
            "INVALID_ARGUMENT_FORMAT",
            "matter_code is a matter's national code (1 to 64 letters, digits, '.' or '-')",
            metadata={"field": "matter_code"},
        )


def event_fields(event: CaseEvent) -> tuple[str, ...]:
    """The material ids an event involves (an audit record's fields)."""
    ids = [m.material_id for m in event.materials] + list(event.requested)
    if event.result is not None:
        ids.append(event.result.material_id)
    return tuple(sorted(set(ids)))
