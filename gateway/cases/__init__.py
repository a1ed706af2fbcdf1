"""Cross-region cases (跨省通办 办件): a case's events and their signed form (`_model`), the
state machine and the order every region applies them in (`_fold`), and where a gateway keeps
them (`_store`). docs/cases.md is the guide."""

from gateway.cases._binding import CaseBinding
from gateway.cases._config import DEFAULT_MATERIAL_BYTES, MAX_MATERIAL_BYTES, CasesConfig
from gateway.cases._fold import CaseRefused, CaseView, Part, causal_order, fold, transition
from gateway.cases._model import (
    CASE_EVENT_VERSION,
    MAX_EVENTS_PER_CASE,
    MAX_NOTE_CHARS,
    CaseEvent,
    CaseState,
    EventKind,
    MalformedEvent,
    MaterialRef,
    PartSpec,
    PartState,
    Submission,
    format_time,
    parse_time,
)
from gateway.cases._store import (
    CaseChange,
    CaseQuery,
    CaseStore,
    CaseSummary,
    MemoryCaseStore,
    StoredAttachment,
    StoredEvent,
    StoredRequest,
)

__all__ = [
    "CASE_EVENT_VERSION",
    "DEFAULT_MATERIAL_BYTES",
    "MAX_EVENTS_PER_CASE",
    "MAX_MATERIAL_BYTES",
    "MAX_NOTE_CHARS",
    "CaseBinding",
    "CaseChange",
    "CaseEvent",
    "CaseQuery",
    "CaseRefused",
    "CaseState",
    "CaseStore",
    "CaseSummary",
    "CaseView",
    "CasesConfig",
    "EventKind",
    "MalformedEvent",
    "MaterialRef",
    "MemoryCaseStore",
    "Part",
    "PartSpec",
    "PartState",
    "StoredAttachment",
    "StoredEvent",
    "StoredRequest",
    "Submission",
    "causal_order",
    "fold",
    "format_time",
    "parse_time",
    "transition",
]
