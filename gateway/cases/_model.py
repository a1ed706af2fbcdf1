"""A case's changes as plain values, and their signed form (`tongban.case-event/v1`).

A case is the list of its changes (events). Each is made by one region's gateway, which numbers
its own events of the case 1, 2, 3, … (`seq`) and says how many events of every other region it
had taken into account when it made it (`seen`): the causal past, so that every region that
holds the case applies the same events in an order that respects it (`gateway.cases._fold`).
The region signs each event (`gateway.cases._events`) over `CaseEvent.document()`, the canonical
JSON of::

    {"v": 1, "case_id": "...", "origin": "510000", "seq": 1, "seen": {"500000": 2},
     "kind": "submitted", "agency": "...", "operator": "...", "at": "2026-12-07T08:00:00.000000Z",
     "part": -1, "note": "", "requested": [], "materials": [ {material ref} ], "result": null,
     "submission": {"matter_code", "matter_name", "applicant_id", "window_agency",
                    "parts": [{"region", "role", "description"}], "due_at",
                    "registry_version"} | null}

A material ref is ``{"material_id", "sha256", "size", "format", "signer_region", "signer",
"verified_by_region", "verified_at"}``; the bytes travel beside the event, matched by sha256.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from gateway._errors import GatewayError

__all__ = [
    "CASE_EVENT_VERSION",
    "MAX_EVENTS_PER_CASE",
    "MAX_NOTE_CHARS",
    "CaseEvent",
    "CaseState",
    "EventKind",
    "MalformedEvent",
    "MaterialRef",
    "PartSpec",
    "PartState",
    "Submission",
    "format_time",
    "parse_time",
]

CASE_EVENT_VERSION: Final = 1
MAX_NOTE_CHARS: Final = 1000
MAX_EVENTS_PER_CASE: Final = 1000  # a case past this takes no more changes
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_REGION: Final = re.compile(r"[0-9]{6}")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


class MalformedEvent(GatewayError, ValueError):
    """A document is not a case event of this version (what is wrong, without its values)."""


class CaseState(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    REJECTED = "rejected"


class PartState(StrEnum):
    WAITING = "waiting"  # an earlier part is not done
    READY = "ready"  # an agency of the part's region may accept it
    IN_PROGRESS = "in_progress"
    AWAITING_MATERIAL = "awaiting_material"
    DONE = "done"
    REJECTED = "rejected"


class EventKind(StrEnum):
    SUBMITTED = "submitted"  # by the window's region
    ACCEPTED = "accepted"  # by the part's region
    MATERIAL_REQUESTED = "material_requested"  # by the part's region
    SUPPLEMENTED = "supplemented"  # by the window's region
    APPROVED = "approved"  # by the part's region
    REJECTED = "rejected"  # by the part's region


def format_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: Any, name: str) -> datetime:
    if not isinstance(text, str):
        raise MalformedEvent(f"{name} is not a time")
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise MalformedEvent(
            f"{name} is not a time in the form 2026-12-07T08:00:00.000000Z"
        ) from None


@dataclass(frozen=True, slots=True)
class MaterialRef:
    """A material (or a part's result) as verified by the region that received it."""

    material_id: str
    sha256: str  # hex SHA-256 of content, then of signed_data when there is one
    size: int
    format: str  # "jades", "gbt38540", "ofd"
    signer_region: str
    signer: str
    verified_by_region: str
    verified_at: datetime

    def document(self) -> dict[str, Any]:
        return {
            "material_id": self.material_id,
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
            "signer_region": self.signer_region,
            "signer": self.signer,
            "verified_by_region": self.verified_by_region,
            "verified_at": format_time(self.verified_at),
        }

    @classmethod
    def from_document(cls, doc: Any) -> MaterialRef:
        d = _object(doc, "a material", _REF_KEYS)
        sha = _text(d, "sha256")
        if not _SHA256.fullmatch(sha):
            raise MalformedEvent("a material's sha256 is not 64 lowercase hex digits")
        size = d["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MalformedEvent("a material's size is not a count of bytes")
        return cls(
            _text(d, "material_id"),
            sha,
            size,
            _text(d, "format"),
            _text(d, "signer_region"),
            _text(d, "signer"),
            _text(d, "verified_by_region"),
            parse_time(d["verified_at"], "verified_at"),
        )


@dataclass(frozen=True, slots=True)
class PartSpec:
    """A part of the case's matter, as the window's region read it from its registry."""

    region: str
    role: str  # "receive", "handle", "assist"
    description: str = ""


@dataclass(frozen=True, slots=True)
class Submission:
    """What the submitted event fixes for the case's life: the matter as it was then."""

    matter_code: str
    matter_name: str
    applicant_id: str
    window_agency: str
    parts: tuple[PartSpec, ...]
    due_at: datetime
    registry_version: int

    @property
    def regions(self) -> tuple[str, ...]:
        """Every region with a part, in the matter's order (each once)."""
        return tuple(dict.fromkeys(p.region for p in self.parts))

    def document(self) -> dict[str, Any]:
        return {
            "matter_code": self.matter_code,
            "matter_name": self.matter_name,
            "applicant_id": self.applicant_id,
            "window_agency": self.window_agency,
            "parts": [
                {"region": p.region, "role": p.role, "description": p.description}
                for p in self.parts
            ],
            "due_at": format_time(self.due_at),
            "registry_version": self.registry_version,
        }

    @classmethod
    def from_document(cls, doc: Any) -> Submission:
        d = _object(doc, "the submission", _SUBMISSION_KEYS)
        parts = d["parts"]
        if not isinstance(parts, list) or not parts or len(parts) > 16:
            raise MalformedEvent("the submission's parts are not a list of 1 to 16 parts")
        specs = []
        for item in parts:
            p = _object(item, "a part", frozenset({"region", "role", "description"}))
            region, role = _text(p, "region"), _text(p, "role")
            if not _REGION.fullmatch(region) or role not in ("receive", "handle", "assist"):
                raise MalformedEvent("a part's region or role is not one of the matter model's")
            specs.append(PartSpec(region, role, _text(p, "description")))
        version = d["registry_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise MalformedEvent("the submission's registry_version is not a version")
        return cls(
            _text(d, "matter_code"),
            _text(d, "matter_name"),
            _text(d, "applicant_id"),
            _text(d, "window_agency"),
            tuple(specs),
            parse_time(d["due_at"], "due_at"),
            version,
        )


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One change of a case, as the region that made it signs it."""

    case_id: str
    origin: str  # the region that made it
    seq: int  # its number among the origin's events of this case, from 1
    seen: tuple[tuple[str, int], ...]  # (region, events of it taken into account), sorted
    kind: EventKind
    agency: str
    operator: str
    at: datetime
    part: int = -1  # the part acted on; -1 for the submission
    note: str = ""
    requested: tuple[str, ...] = ()  # MATERIAL_REQUESTED: material ids
    materials: tuple[MaterialRef, ...] = ()  # SUBMITTED, SUPPLEMENTED
    result: MaterialRef | None = None  # APPROVED (optional for an assisting part)
    submission: Submission | None = None  # SUBMITTED only

    @property
    def event_id(self) -> str:
        return f"{self.case_id}/{self.origin}/{self.seq}"

    def document(self) -> dict[str, Any]:
        return {
            "v": CASE_EVENT_VERSION,
            "case_id": self.case_id,
            "origin": self.origin,
            "seq": self.seq,
            "seen": dict(self.seen),
            "kind": self.kind.value,
            "agency": self.agency,
            "operator": self.operator,
            "at": format_time(self.at),
            "part": self.part,
            "note": self.note,
            "requested": list(self.requested),
            "materials": [m.document() for m in self.materials],
            "result": None if self.result is None else self.result.document(),
            "submission": None if self.submission is None else self.submission.document(),
        }

    @classmethod
    def from_document(cls, doc: Any) -> CaseEvent:
        """The event a signed payload describes; `MalformedEvent` says what does not fit."""
        d = _object(doc, "the event", _EVENT_KEYS)
        if d["v"] != CASE_EVENT_VERSION:
            raise MalformedEvent(f"the event is not version {CASE_EVENT_VERSION}")
        origin, seq = _text(d, "origin"), d["seq"]
        if not _REGION.fullmatch(origin):
            raise MalformedEvent("the event's origin is not a region code")
        if not _count(seq) or seq < 1:
            raise MalformedEvent("the event's seq is not a positive count")
        seen = d["seen"]
        if not isinstance(seen, dict) or len(seen) > 16:
            raise MalformedEvent("the event's seen is not an object of at most 16 regions")
        for region, count in seen.items():
            if not _REGION.fullmatch(region) or region == origin or not _count(count):
                raise MalformedEvent("the event's seen names a region with a count")
        try:
            kind = EventKind(d["kind"])
        except ValueError:
            raise MalformedEvent("the event's kind is not one of the case model's") from None
        part = d["part"]
        if not isinstance(part, int) or isinstance(part, bool) or not -1 <= part < 16:
            raise MalformedEvent("the event's part is not a part index")
        requested = d["requested"]
        if not isinstance(requested, list) or not all(isinstance(r, str) for r in requested):
            raise MalformedEvent("the event's requested is not a list of material ids")
        materials = d["materials"]
        if not isinstance(materials, list) or len(materials) > 64:
            raise MalformedEvent("the event's materials are not a list of at most 64")
        note = _text(d, "note")
        if len(note) > MAX_NOTE_CHARS:
            raise MalformedEvent(f"the event's note is longer than {MAX_NOTE_CHARS} characters")
        return cls(
            case_id=_text(d, "case_id"),
            origin=origin,
            seq=seq,
            seen=tuple(sorted(seen.items())),
            kind=kind,
            agency=_text(d, "agency"),
            operator=_text(d, "operator"),
            at=parse_time(d["at"], "at"),
            part=part,
            note=note,
            requested=tuple(requested),
            materials=tuple(MaterialRef.from_document(m) for m in materials),
            result=None if d["result"] is None else MaterialRef.from_document(d["result"]),
            submission=(
                None if d["submission"] is None else Submission.from_document(d["submission"])
            ),
        )


_REF_KEYS: Final = frozenset(
    {
        "material_id",
        "sha256",
        "size",
        "format",
        "signer_region",
        "signer",
        "verified_by_region",
        "verified_at",
    }
)
_SUBMISSION_KEYS: Final = frozenset(
    {
        "matter_code",
        "matter_name",
        "applicant_id",
        "window_agency",
        "parts",
        "due_at",
        "registry_version",
    }
)
_EVENT_KEYS: Final = frozenset(
    {
        "v",
        "case_id",
        "origin",
        "seq",
        "seen",
        "kind",
        "agency",
        "operator",
        "at",
        "part",
        "note",
        "requested",
        "materials",
        "result",
        "submission",
    }
)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _object(doc: Any, what: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != keys:
        raise MalformedEvent(f"{what} does not have exactly the keys of the case model")
    return doc


def _text(d: dict[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str) or len(value) > 4096:
        raise MalformedEvent(f"{key} is not a text of at most 4,096 characters")
    return value
