"""A case's materials (and a part's result) verified on arrival, with the gateway's own
verifiers (`signer.DocumentVerifier`: the one `Credentials.Verify` uses, switched to each
registry the gateway applies).

A material is recognised by its content (`signer.recognise`): a JAdES JWS (compact or JSON
serialisation; attached, or detached with its signed bytes in `signed_data`), a DER GB/T 38540
SES_Signature (its signed bytes in `signed_data`), or an OFD file. It is accepted only when its
validation report is TOTAL_PASSED (else MATERIAL_INVALID, ErrorInfo metadata "material"); one
larger than `max_material_bytes`, or a call's together larger than `max_call_bytes`, is refused
before it is looked at (MATERIAL_TOO_LARGE).

A **credential** material (kind "credential" in the matter, an 电子证照) must moreover be sealed
with a region's e-seal: every signature of it an e-seal (`SignatureKind.SEAL`, a legal person's)
whose owner in the registry is a region itself (its issuing authority's seal), not an agency
and not a natural person's signature. If the signed payload says which credential it is (a JSON
object with a text member "credential_type", as an e-licence's record may; an OFD e-licence
carries its record in `gateway.licences.RECORD_FILE`), that type must be the one the matter
names; a payload that names none (the demo's sealed records are the dataset's fields) is taken
as the credential the matter asks for. A document material needs only a valid seal or
signature.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from gateway.audit import is_case_id, recordable
from gateway.cases._model import MaterialRef
from gateway.errors import Refusal
from gateway.licences import LicenceRefused, licence_record
from signer import DocumentVerifier, Format, SignatureKind, ValidationReport, recognise

__all__ = [
    "MAX_CALL_MATERIAL_BYTES",
    "MAX_MATERIAL_BYTES",
    "MaterialInput",
    "MaterialVerifier",
    "material_digest",
    "material_label",
]

MAX_MATERIAL_BYTES: Final = 4 * 1024 * 1024  # content plus signed data of one material
MAX_CALL_MATERIAL_BYTES: Final = 12 * 1024 * 1024  # of every material of one call
_FORMATS: Final = {
    Format.JWS: "jades",
    Format.SES_SIGNATURE: "gbt38540",
    Format.OFD: "ofd",
}


@dataclass(frozen=True, slots=True)
class MaterialInput:
    """A material as a caller (or a peer) gives it."""

    material_id: str
    content: bytes
    signed_data: bytes = b""

    @property
    def size(self) -> int:
        return len(self.content) + len(self.signed_data)

    @property
    def sha256(self) -> str:
        return material_digest(self.content, self.signed_data)


def material_digest(content: bytes, signed_data: bytes) -> str:
    """Hex SHA-256 of the content, then of the signed data (MaterialSummary.sha256)."""
    digest = hashlib.sha256(content)
    digest.update(signed_data)
    return digest.hexdigest()


def material_label(material_id: str) -> str:
    """A caller's material id as a refusal's ErrorInfo metadata "material" shows it: as given
    when it is bounded printable text without a citizen id (the audit grammar of a case id),
    else its digest form (a 100 kB id would make the status too large to reach the caller)."""
    return recordable(material_id, is_case_id)


def _invalid(material_id: str, message: str) -> Refusal:
    return Refusal("MATERIAL_INVALID", message, metadata={"material": material_label(material_id)})


class MaterialVerifier:
    """Verifies materials for the gateway of `region` with `documents`, within the limits."""

    def __init__(
        self,
        documents: DocumentVerifier,
        region: str,
        *,
        max_material_bytes: int = MAX_MATERIAL_BYTES,
        max_call_bytes: int = MAX_CALL_MATERIAL_BYTES,
    ) -> None:
        if not 0 < max_material_bytes <= max_call_bytes:
            raise ValueError("0 < max_material_bytes <= max_call_bytes")
        self.documents = documents
        self.region = region
        self.max_material_bytes = max_material_bytes
        self.max_call_bytes = max_call_bytes

    def check_sizes(self, materials: Sequence[MaterialInput]) -> None:
        """MATERIAL_TOO_LARGE for the first material over the limit, or for the last one that
        takes the call's materials together over theirs."""
        total = 0
        for material in materials:
            total += material.size
            if material.size > self.max_material_bytes:
                raise Refusal(
                    "MATERIAL_TOO_LARGE",
                    f"a material is at most {self.max_material_bytes} bytes (content and "
                    "signed data)",
                    metadata={"material": material_label(material.material_id)},
                )
            if total > self.max_call_bytes:
                raise Refusal(
                    "MATERIAL_TOO_LARGE",
                    f"the materials of one call are at most {self.max_call_bytes} bytes together",
                    metadata={"material": material_label(material.material_id)},
                )

    def verify(
        self,
        material: MaterialInput,
        *,
        now: datetime,
        credential_type: str | None = None,
        validation_time: datetime | None = None,
    ) -> MaterialRef:
        """The reference of a material that verified (a credential of `credential_type` when
        given, "" for a credential whose type is not checked), or MATERIAL_INVALID.
        `validation_time` (default `now`) is the time the seal is validated at."""
        self.check_sizes((material,))
        found = recognise(material.content)
        name = _FORMATS.get(found)
        if name is None:
            raise _invalid(
                material.material_id,
                "a material is a JWS, a DER GB/T 38540 SES_Signature or an OFD file; this one is "
                "none of them",
            )
        report = self.documents.validate(
            material.content,
            payload=material.signed_data or None,
            validation_time=validation_time or now,
        )
        if not report.passed:
            raise _invalid(
                material.material_id,
                f"the material's seal does not verify ({report.indication.value}, "
                f"{report.sub_indication.value if report.sub_indication else ''}): "
                f"{report.message[:200]}",
            )
        if credential_type is not None:
            _check_credential(material, found, report, credential_type)
        signer = report.signatures[0] if report.signatures else report
        return MaterialRef(
            material_id=material.material_id,
            sha256=material.sha256,
            size=material.size,
            format=name,
            signer_region=signer.owner_region,
            signer=signer.signer_subject,
            verified_by_region=self.region,
            verified_at=now,
        )


def _check_credential(
    material: MaterialInput, found: Format, report: ValidationReport, credential_type: str
) -> None:
    """The credential rule of the module docstring."""
    for signature in report.signatures or (report,):
        if signature.kind is not SignatureKind.SEAL or not signature.owner_region:
            raise _invalid(material.material_id, "a credential is sealed with a region's e-seal")
        if signature.owner != signature.owner_region:
            raise _invalid(
                material.material_id,
                "a credential is sealed by its issuing region's seal, not an agency's",
            )
    if not credential_type:
        return
    payload: bytes | None
    if found is Format.OFD:
        try:
            payload = licence_record(material.content, report)
        except LicenceRefused:
            payload = None  # an OFD credential that carries no record names no type
    else:
        payload = report.payload
    named = _named_type(payload)
    if named is not None and named != credential_type:
        raise _invalid(
            material.material_id,
            f"the credential is not a {credential_type} credential, as the matter requires",
        )


def _named_type(payload: bytes | None) -> str | None:
    if not payload:
        return None
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    named = document.get("credential_type")
    return named if isinstance(named, str) else None
