"""What a receiving gateway checks of a delivered case event beyond its signature (`CaseBook.
receive`): a region's signature says who made the event, not that the event may exist. Each
failure is CASE_EVENT_INVALID with a plain sentence (never a value of the event).

- **Order**: a gateway delivers its region's events of a case in order (`seq` 1, 2, 3, …): an
  event whose predecessor of its region is not held here is refused (it would wait unapplied
  for an event that its sender already calls delivered).
- **Bound**: a case holds at most MAX_EVENTS_PER_CASE events.
- **The submission**: once per case, its region's first event, under a case number of that
  region ("<region>-…"), by an agency of that region, for a well-formed applicant id, and of a
  matter this gateway's own registry catalogues with exactly those parts, that name and time
  limit, and materials among the matter's with every required one: a window region cannot make
  another region a part of a case the catalogue does not give it (a forged matter). A submission
  of a registry version newer than this gateway's is REGISTRY_STALE (retried once the registry
  reaches here).
- **Every other event**: by an agency of its region, on a part of the case that its region may
  ever act on (its own part; a supplement: the window's region), carrying what its kind
  carries (`_check_shape`). An event that only races another region's change is still kept,
  unapplied (`gateway.cases._fold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from gateway.applicant_ids import is_applicant_id
from gateway.cases._fold import CaseView
from gateway.cases._model import (
    MAX_EVENTS_PER_CASE,
    MAX_NOTE_CHARS,
    CaseEvent,
    EventKind,
    Submission,
)
from gateway.errors import Refusal
from registry import Registry

__all__ = ["check_arrival", "check_reach", "check_submission"]


def _invalid(message: str) -> Refusal:
    return Refusal("CASE_EVENT_INVALID", message)


def check_arrival(registry: Registry, event: CaseEvent, held: Sequence[CaseEvent]) -> None:
    """The order, bound, agency and (for a submission) matter checks of the module docstring;
    `held`: the case's events held here (the event itself not among them)."""
    if len(held) >= MAX_EVENTS_PER_CASE:
        raise _invalid(f"a case holds at most {MAX_EVENTS_PER_CASE} events")
    last = max((e.seq for e in held if e.origin == event.origin), default=0)
    if event.seq != last + 1:
        raise _invalid(
            f"region {event.origin}'s case events arrive in order: this one is not the next"
        )
    _check_texts(event)
    agency = registry.agency(event.agency)
    if agency is None or agency.region != event.origin:
        raise _invalid(f"the event's agency is not an agency of region {event.origin}")
    if event.kind is EventKind.SUBMITTED:
        if any(e.kind is EventKind.SUBMITTED for e in held):
            raise _invalid("a case is submitted once: this case is held already")
        check_submission(registry, event)
    elif event.submission is not None:
        raise _invalid("only a submission carries the case's matter")


def _plain(text: str, limit: int) -> bool:
    return len(text) <= limit and all(c.isprintable() or c == "\n" for c in text)


def _check_texts(event: CaseEvent) -> None:
    """The texts an agency reads in the case (note, operator, material ids) are printable, as `CaseBook` takes them from its own callers: no control character, no
    bidirectional override, no NUL."""
    refs = [*event.materials, *([event.result] if event.result is not None else [])]
    texts = [
        (event.note, MAX_NOTE_CHARS),
        (event.operator, 256),  # a token's claim: at most 256 printable characters
        *((r, 256) for r in event.requested),
        *((r.material_id, 256) for r in refs),
    ]
    if not all(_plain(text, limit) for text, limit in texts):
        raise _invalid("the event's note, operator or material ids are not plain text")


def check_submission(registry: Registry, event: CaseEvent) -> None:
    """A submission's case number, window agency, applicant id and matter (module docstring)."""
    sub = event.submission
    if sub is None or not event.case_id.startswith(f"{event.origin}-"):
        raise _invalid("a submission's case number is one of its own region (<region>-…)")
    if sub.window_agency != event.agency:
        raise _invalid("a submission is made by its window agency")
    if not is_applicant_id(sub.applicant_id):
        raise _invalid("the submission's applicant id is not a citizen id or credit code")
    if sub.registry_version > registry.version:
        raise Refusal(
            "REGISTRY_STALE",
            f"the submission is of registry version {sub.registry_version}; this gateway "
            f"holds version {registry.version}: retry once it follows",
        )
    _check_matter(registry, event, sub)


def _check_matter(registry: Registry, event: CaseEvent, sub: Submission) -> None:
    matter = registry.matter(sub.matter_code)
    if matter is None:
        raise _invalid(f"the submission's matter is not in registry version {registry.version}")
    parts = tuple((p.region, p.role.value, p.description) for p in matter.parts)
    if tuple((p.region, p.role, p.description) for p in sub.parts) != parts:
        raise _invalid(
            f"the submission's parts are not its matter's in registry version {registry.version}"
        )
    if sub.matter_name != matter.name or sub.due_at != event.at + timedelta(
        days=matter.time_limit_days
    ):
        raise _invalid(
            "the submission's matter name or time limit is not its matter's in registry "
            f"version {registry.version}"
        )
    given = [m.material_id for m in event.materials]
    known = {m.id for m in matter.materials}
    required = {m.id for m in matter.materials if m.required}
    if len(set(given)) != len(given) or not set(given) <= known or not required <= set(given):
        raise _invalid("the submission's materials are not the ones its matter asks for")


def check_reach(view: CaseView, event: CaseEvent) -> None:
    """An event other than the submission is on a part its region may ever act on."""
    if event.kind is EventKind.SUBMITTED:
        return
    if not 0 <= event.part < len(view.submission.parts):
        raise _invalid("the event is on a part the case does not have")
    if event.kind is EventKind.SUPPLEMENTED:
        if event.origin != view.window_region:
            raise _invalid("only the window's region supplements material")
    elif view.submission.parts[event.part].region != event.origin:
        raise _invalid(f"region {event.origin} acts only on its own parts of the case")
    _check_shape(event, view.submission.parts[event.part].role)


def _check_shape(event: CaseEvent, role: str) -> None:
    """What each kind carries, as `CaseBook.act` makes it: materials only in a supplement (at
    least one), a result only in an approval (always, of a handling part), material ids only
    in a request for material (at least one, each once), a note with a request or rejection."""
    kind = event.kind
    if (kind is EventKind.SUPPLEMENTED) != bool(event.materials):
        raise _invalid("only a supplement gives materials, and it gives at least one")
    if event.result is not None and kind is not EventKind.APPROVED:
        raise _invalid("only an approval gives a result")
    if kind is EventKind.APPROVED and role == "handle" and event.result is None:
        raise _invalid("approving a handling part gives its result")
    requested = event.requested
    if (kind is EventKind.MATERIAL_REQUESTED) != bool(requested) or len(set(requested)) != len(
        requested
    ):
        raise _invalid("only a request for material names materials, each once")
    if kind in (EventKind.MATERIAL_REQUESTED, EventKind.REJECTED) and not event.note:
        raise _invalid("a request for material or a rejection says why (note)")
