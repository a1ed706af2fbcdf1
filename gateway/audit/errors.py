"""Errors of the audit log.

AuditError
├── AuditUnavailable     the record could not be made durable: release nothing (fail closed)
│   └── AuditOutcomeUnknown  ... and it may have been all the same (a commit without an answer)
├── AuditIntegrityError  the store contradicts itself or a signed checkpoint
└── KeptRequestError     a record's kept signed request does not open with this key, or not
                         to its digest (also a ValueError)
"""

from __future__ import annotations

from gateway._errors import GatewayError

__all__ = [
    "AuditError",
    "AuditIntegrityError",
    "AuditOutcomeUnknown",
    "AuditUnavailable",
    "KeptRequestError",
]


class AuditError(GatewayError):
    """Root of the audit log's errors."""


class AuditUnavailable(AuditError):
    """An append could not be made durable; the gateway answers UNAVAILABLE / AUDIT_UNAVAILABLE."""


class AuditOutcomeUnknown(AuditUnavailable):
    """The store was asked to commit and gave no answer (the connection broke, or the store was
    closed, while the commit was on its way): the records may be durable all the same. Nothing
    is released for them; an allowed one is followed by a record saying so."""


class AuditIntegrityError(AuditError):
    """The stored log is not what its checkpoints or its own structure say it is."""


class KeptRequestError(AuditError, ValueError):
    """A kept signed request that does not open with this pseudonym key, or not to the digest
    its record holds (another deployment's key, or an altered record)."""
