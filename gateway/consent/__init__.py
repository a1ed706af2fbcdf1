"""Consent artefacts: what a citizen allowed, issued by the citizen's home region, checked by
both gateways of a query for a dataset marked `requires_consent`, counted by the owner and
revocable at the home region (docs/integrating.md "Consent", docs/architecture.md decision 38).
"""

from gateway.consent._artefact import (
    CONSENT_TYPE,
    ConsentClaims,
    ConsentError,
    ConsentScope,
    is_consent_id,
    issue_consent,
    issue_region_consent,
    read_consent,
)
from gateway.consent._gate import DEFAULT_STATUS_SECONDS, ConsentGate, ConsentUses, StatusAsker
from gateway.consent._register import (
    ConsentRegister,
    MemoryConsentRegister,
    RegisteredConsent,
    SqliteConsentRegister,
    registered,
)
from gateway.consent._register_pg import PostgresConsentRegister

__all__ = [
    "CONSENT_TYPE",
    "DEFAULT_STATUS_SECONDS",
    "ConsentClaims",
    "ConsentError",
    "ConsentGate",
    "ConsentRegister",
    "ConsentScope",
    "ConsentUses",
    "MemoryConsentRegister",
    "PostgresConsentRegister",
    "RegisteredConsent",
    "SqliteConsentRegister",
    "StatusAsker",
    "is_consent_id",
    "issue_consent",
    "issue_region_consent",
    "read_consent",
    "registered",
]
