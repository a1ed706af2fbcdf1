"""The audit log: every access recorded, durably, as leaves of an RFC 6962 Merkle tree with
signed C2SP checkpoints, so oversight can prove nothing was altered, reordered or removed."""

from gateway.audit._checkpoint import (
    Checkpoint,
    CheckpointError,
    sign_checkpoint,
    verify_checkpoint,
)
from gateway.audit._ids import audit_id, parse_audit_id
from gateway.audit._kept import (
    open_kept_request,
    request_digest,
    seal_kept_request,
)
from gateway.audit._log import MIN_RETENTION, AuditLog, Pruned, Verification
from gateway.audit._merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit._postgres import PostgresAuditStore
from gateway.audit._record import (
    ENCODING_VERSION,
    FIELD_GRAMMARS,
    MAX_RECORD_FIELDS,
    MAX_RECORD_TEXT_CHARS,
    AuditRecord,
    Outcome,
    digest_form,
    is_case_id,
    is_digest_form,
    is_request_id,
    pseudonymize,
    recordable,
)
from gateway.audit._sqlite import SqliteAuditStore
from gateway.audit._store import (
    Appended,
    AuditQuery,
    AuditStore,
    MemoryAuditStore,
    Outbound,
    Pending,
    StoredRow,
    TreeHead,
)
from gateway.audit.errors import (
    AuditError,
    AuditIntegrityError,
    AuditOutcomeUnknown,
    AuditUnavailable,
    KeptRequestError,
)

__all__ = [
    "EMPTY_ROOT",
    "ENCODING_VERSION",
    "FIELD_GRAMMARS",
    "MAX_RECORD_FIELDS",
    "MAX_RECORD_TEXT_CHARS",
    "MIN_RETENTION",
    "Appended",
    "AuditError",
    "AuditIntegrityError",
    "AuditLog",
    "AuditOutcomeUnknown",
    "AuditQuery",
    "AuditRecord",
    "AuditStore",
    "AuditUnavailable",
    "Checkpoint",
    "CheckpointError",
    "CompactRange",
    "KeptRequestError",
    "MemoryAuditStore",
    "MerkleTree",
    "Outbound",
    "Outcome",
    "Pending",
    "PostgresAuditStore",
    "ProofError",
    "PruneMarker",
    "Pruned",
    "SqliteAuditStore",
    "StoredRow",
    "TreeHead",
    "Verification",
    "audit_id",
    "digest_form",
    "is_case_id",
    "is_digest_form",
    "is_request_id",
    "leaf_hash",
    "node_hash",
    "open_kept_request",
    "parse_audit_id",
    "pseudonymize",
    "recordable",
    "request_digest",
    "seal_kept_request",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]
