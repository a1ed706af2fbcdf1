"""Object identifiers used in Tongban certificates.

Tongban's own identifiers live under one UUID-derived arc, ``2.25.<uuid as an integer>``
(ITU-T X.667): anyone may use such an arc without registering it. The UUID was generated once
(c22410fe-4898-4a16-a550-538cf8701150) and must never change, or every issued certificate
loses its meaning. Layout under the arc::

    .1      certificate policies   .1.1 seal  .1.2 signature  .1.3 gateway TLS
                                   .1.4 agency TLS  .1.5 token  .1.6 audit
    .3      key purposes (EKU)     .3.1 token signing  .3.2 audit signing

Standard identifiers used next to them: the ETSI EN 319 411-2 qualified policies QCP-l
(legal person, seals) and QCP-n (natural person, signatures), RFC 9336 id-kp-documentSigning,
and the ETSI EN 319 412-5 QcType statement that says "e-seal" or "e-signature".
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from cryptography.x509 import ObjectIdentifier
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = [
    "EKU_AUDIT_SIGNING",
    "EKU_CLIENT_AUTH",
    "EKU_DOCUMENT_SIGNING",
    "EKU_SERVER_AUTH",
    "EKU_TOKEN_SIGNING",
    "POLICY_AUDIT",
    "POLICY_FOR_USAGE",
    "POLICY_SEAL",
    "POLICY_SIGNATURE",
    "POLICY_TLS_AGENCY",
    "POLICY_TLS_GATEWAY",
    "POLICY_TOKEN",
    "QCP_L",
    "QCP_N",
    "QCS_QC_TYPE",
    "QC_STATEMENTS",
    "QC_TYPE_ESEAL",
    "QC_TYPE_ESIGN",
    "TONGBAN_ARC",
]

TONGBAN_ARC: Final = "2.25.258057498534154897492412682915841839440"

POLICY_SEAL: Final = ObjectIdentifier(f"{TONGBAN_ARC}.1.1")
POLICY_SIGNATURE: Final = ObjectIdentifier(f"{TONGBAN_ARC}.1.2")
POLICY_TLS_GATEWAY: Final = ObjectIdentifier(f"{TONGBAN_ARC}.1.3")
POLICY_TLS_AGENCY: Final = ObjectIdentifier(f"{TONGBAN_ARC}.1.4")
POLICY_TOKEN: Final = ObjectIdentifier(f"{TONGBAN_ARC}.1.5")
POLICY_AUDIT: Final = ObjectIdentifier(f"{TONGBAN_ARC}.1.6")

EKU_TOKEN_SIGNING: Final = ObjectIdentifier(f"{TONGBAN_ARC}.3.1")
EKU_AUDIT_SIGNING: Final = ObjectIdentifier(f"{TONGBAN_ARC}.3.2")

# ETSI EN 319 411-2 §5.3: qualified certificate policies.
QCP_N: Final = ObjectIdentifier("0.4.0.194112.1.0")  # natural person
QCP_L: Final = ObjectIdentifier("0.4.0.194112.1.1")  # legal person

# RFC 9336; cryptography 50 does not name it.
EKU_DOCUMENT_SIGNING: Final = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
EKU_SERVER_AUTH: Final = ExtendedKeyUsageOID.SERVER_AUTH
EKU_CLIENT_AUTH: Final = ExtendedKeyUsageOID.CLIENT_AUTH

# RFC 3739 qcStatements extension and ETSI EN 319 412-5 §4.2.3 QcType.
QC_STATEMENTS: Final = ObjectIdentifier("1.3.6.1.5.5.7.1.3")
QCS_QC_TYPE: Final = ObjectIdentifier("0.4.0.1862.1.6")
QC_TYPE_ESIGN: Final = ObjectIdentifier("0.4.0.1862.1.6.1")
QC_TYPE_ESEAL: Final = ObjectIdentifier("0.4.0.1862.1.6.2")

# The Tongban policy a certificate of each usage carries. "tls" is split by who holds the
# certificate, and deliberately has no plain "tls" key: a gateway certificate must never be
# mistaken for an agency one, so a lookup that does not say which fails loudly.
POLICY_FOR_USAGE: Final[Mapping[str, ObjectIdentifier]] = MappingProxyType(
    {
        "seal": POLICY_SEAL,
        "signature": POLICY_SIGNATURE,
        "tls-gateway": POLICY_TLS_GATEWAY,
        "tls-agency": POLICY_TLS_AGENCY,
        "token": POLICY_TOKEN,
        "audit": POLICY_AUDIT,
    }
)
