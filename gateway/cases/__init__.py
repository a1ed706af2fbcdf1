"""Cross-region cases (跨省通办 办件): a case's events and their signed form (`_model`), the
state machine and the order every region applies them in (`_fold`), and where a gateway keeps
them (`_store`; durable beside the audit log: `case_store_for`); what a gateway does with them
(`_book`, `_local`, `_intake`: the `CaseBook`), their signed form (`_events`), their materials
(`_materials`), their sealing at rest (`_sealing`) and the one follower of a gateway's Watch
streams (`_watch`). docs/cases.md is the guide."""

from gateway.cases._binding import CaseBinding
from gateway.cases._book import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, RegistrySource
from gateway.cases._calls import (
    ACTIONS,
    ActCall,
    CaseAnswer,
    CaseCaller,
    CasePage,
    Outgoing,
    SubmitCall,
)
from gateway.cases._config import DEFAULT_MATERIAL_BYTES, CasesConfig
from gateway.cases._delivery import MAX_EVENTS_PER_DELIVERY
from gateway.cases._events import (
    EVENT_TYPE,
    MAX_EVENT_JWS_BYTES,
    EventSigner,
    sign_event,
    verify_event,
)
from gateway.cases._fold import CaseRefused, CaseView, Part, causal_order, fold, transition
from gateway.cases._intake import CaseBook
from gateway.cases._materials import (
    MAX_CALL_MATERIAL_BYTES,
    MAX_MATERIAL_BYTES,
    MaterialInput,
    MaterialVerifier,
    material_digest,
)
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
from gateway.cases._stores import case_store_for

__all__ = [
    "ACTIONS",
    "CASE_EVENT_VERSION",
    "DEFAULT_MATERIAL_BYTES",
    "DEFAULT_PAGE_SIZE",
    "EVENT_TYPE",
    "MAX_CALL_MATERIAL_BYTES",
    "MAX_EVENTS_PER_CASE",
    "MAX_EVENTS_PER_DELIVERY",
    "MAX_EVENT_JWS_BYTES",
    "MAX_MATERIAL_BYTES",
    "MAX_NOTE_CHARS",
    "MAX_PAGE_SIZE",
    "ActCall",
    "CaseAnswer",
    "CaseBinding",
    "CaseBook",
    "CaseCaller",
    "CaseChange",
    "CaseEvent",
    "CasePage",
    "CaseQuery",
    "CaseRefused",
    "CaseState",
    "CaseStore",
    "CaseSummary",
    "CaseView",
    "CasesConfig",
    "EventKind",
    "EventSigner",
    "MalformedEvent",
    "MaterialInput",
    "MaterialRef",
    "MaterialVerifier",
    "MemoryCaseStore",
    "Outgoing",
    "Part",
    "PartSpec",
    "PartState",
    "RegistrySource",
    "StoredAttachment",
    "StoredEvent",
    "StoredRequest",
    "Submission",
    "SubmitCall",
    "case_store_for",
    "causal_order",
    "fold",
    "format_time",
    "material_digest",
    "parse_time",
    "sign_event",
    "transition",
    "verify_event",
]
