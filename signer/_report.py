"""Validation reports in the manner of ETSI EN 319 102-1 (as EU DSS produces them).

A report says what was concluded (`indication`), why (`sub_indication`), about whom (signer,
owner, region, kind) and how (every check run, in order, with its result). It is a frozen value;
`gateway` converts it to its protobuf twin `tongban.v1.ValidationReport` at the service edge.

Which sub-indications go with which indication (EN 319 102-1, table 5, as used here):

    TOTAL_FAILED    FORMAT_FAILURE, HASH_FAILURE, SIG_CRYPTO_FAILURE, REVOKED, EXPIRED,
                    NOT_YET_VALID
    INDETERMINATE   SIGNED_DATA_NOT_FOUND, NO_CERTIFICATE_CHAIN_FOUND, CHAIN_CONSTRAINTS_FAILURE,
                    CRYPTO_CONSTRAINTS_FAILURE, REVOKED_NO_POE, OUT_OF_BOUNDS_NO_POE, TRY_LATER
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

__all__ = ["Indication", "SignatureKind", "SubIndication", "ValidationReport"]


class Indication(StrEnum):
    TOTAL_PASSED = "TOTAL_PASSED"
    TOTAL_FAILED = "TOTAL_FAILED"
    INDETERMINATE = "INDETERMINATE"


class SubIndication(StrEnum):
    FORMAT_FAILURE = "FORMAT_FAILURE"
    HASH_FAILURE = "HASH_FAILURE"
    SIG_CRYPTO_FAILURE = "SIG_CRYPTO_FAILURE"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"
    NOT_YET_VALID = "NOT_YET_VALID"
    SIGNED_DATA_NOT_FOUND = "SIGNED_DATA_NOT_FOUND"
    NO_CERTIFICATE_CHAIN_FOUND = "NO_CERTIFICATE_CHAIN_FOUND"
    CHAIN_CONSTRAINTS_FAILURE = "CHAIN_CONSTRAINTS_FAILURE"
    CRYPTO_CONSTRAINTS_FAILURE = "CRYPTO_CONSTRAINTS_FAILURE"
    REVOKED_NO_POE = "REVOKED_NO_POE"
    OUT_OF_BOUNDS_NO_POE = "OUT_OF_BOUNDS_NO_POE"
    TRY_LATER = "TRY_LATER"

    @property
    def indication(self) -> Indication:
        return _TOTAL_FAILED.get(self, Indication.INDETERMINATE)


_TOTAL_FAILED = dict.fromkeys(
    (
        SubIndication.FORMAT_FAILURE,
        SubIndication.HASH_FAILURE,
        SubIndication.SIG_CRYPTO_FAILURE,
        SubIndication.REVOKED,
        SubIndication.EXPIRED,
        SubIndication.NOT_YET_VALID,
    ),
    Indication.TOTAL_FAILED,
)


class SignatureKind(StrEnum):
    SEAL = "seal"  # 电子印章: a legal person's (an agency's or a region's)
    SIGNATURE = "signature"  # 电子签名: a natural person's


class Check(NamedTuple):
    """One step of the validation and what it found (a tuple: a dozen are made per validation)."""

    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ValidationReport:
    indication: Indication
    sub_indication: SubIndication | None  # None exactly when TOTAL_PASSED
    message: str  # one sentence for a person
    checks: tuple[Check, ...]
    registry_version: int
    algorithm: str = ""
    signer_kid: str = ""
    signer_subject: str = ""
    owner: str = ""  # agency id or region code, from the registry
    owner_region: str = ""
    kind: SignatureKind | None = None
    signing_time: datetime | None = None  # claimed (`iat`): B-level has no proof of existence
    content_type: str = ""
    signed_payload_b64: str = ""  # the attached payload as signed, when the signature verified
    detached_payload: bytes | None = None  # the detached payload, when the signature verified
    # What was validated: "JAdES" (a compact JWS), "GB/T 38540 SES_Signature v4",
    # "GM/T 0031 SES_Signature v1", "GB/T 38540 SESeal v4", "GM/T 0031 SESeal v1", "OFD".
    format: str = "JAdES"
    # The reports of the signatures a container holds (an OFD file's, in document order); the
    # container's own indication is the worst of them. Empty for a single signature.
    signatures: tuple[ValidationReport, ...] = ()
    # The proof of existence of the signature: the genTime of a time-stamp over its signature
    # value (JAdES sigTst, GB/T 38540 timeStamp) whose TSA chains to a trusted anchor; None
    # without one. A revocation or expiry after it does not undo the signature.
    proof_of_existence: datetime | None = None
    time_stamp_authority: str = ""  # the subject of that TSA's certificate

    def __post_init__(self) -> None:
        if (self.indication is Indication.TOTAL_PASSED) != (self.sub_indication is None):
            raise ValueError("a report has a sub-indication exactly when it did not pass")
        if (
            self.sub_indication is not None
            and self.sub_indication.indication is not self.indication
        ):
            raise ValueError(f"{self.sub_indication} goes with {self.sub_indication.indication}")

    @property
    def passed(self) -> bool:
        return self.indication is Indication.TOTAL_PASSED

    @property
    def payload(self) -> bytes | None:
        """The signed bytes of a signature that passed (decoded on each access), else None."""
        if not self.passed:
            return None
        if self.detached_payload is not None:
            return self.detached_payload
        padded = self.signed_payload_b64 + "=" * (-len(self.signed_payload_b64) % 4)
        return base64.urlsafe_b64decode(padded)
