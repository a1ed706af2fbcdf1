"""Errors of the audit log.

AuditError
├── AuditUnavailable     the record could not be made durable: release nothing (fail closed)
└── AuditIntegrityError  the store contradicts itself or a signed checkpoint
"""

from __future__ import annotations

from gateway._errors import GatewayError

__all__ = ["AuditError", "AuditIntegrityError", "AuditUnavailable"]


class AuditError(GatewayError):
    """Root of the audit log's errors."""


class AuditUnavailable(AuditError):
    """An append could not be made durable; the gateway answers UNAVAILABLE / AUDIT_UNAVAILABLE."""


class AuditIntegrityError(AuditError):
    """The stored log is not what its checkpoints or its own structure say it is."""
