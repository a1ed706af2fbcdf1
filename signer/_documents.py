"""One entry for every signed format Tongban reads: recognise the bytes, validate them with the
verifier of their format, answer with the same `ValidationReport`.

    JWS             a JAdES JWS: compact (ASCII, three base64url parts)   SealVerifier
                    or JSON-serialised (an object with protected, signature)
    SES_SIGNATURE   a DER GB/T 38540 (v4) or GM/T 0031 (v1) SES_Signature GmVerifier.validate_signature
    SESEAL          a DER GB/T 38540 (v4) or GM/T 0031 (v1) SESeal         GmVerifier.validate_seal
    OFD             a GB/T 33190 OFD package (a zip) and its signatures    OfdVerifier

Recognition is by content, never by a file name or a caller's word: a caller cannot make a seal
be read as another format than it is. Anything else is a TOTAL_FAILED / FORMAT_FAILURE report
that names the formats recognised.

A document larger than `MAX_DOCUMENT_BYTES` is refused before it is looked at (the same bound
as a JWS, `MAX_JWS_BYTES`): an OFD e-licence is tens of kilobytes to a few megabytes, an
SES_Signature a few kilobytes; the OFD reader has its own, tighter limits inside the package.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from enum import StrEnum
from typing import Final

from signer._jades import MAX_JWS_BYTES
from signer._jades_json import looks_like_json_jws
from signer._ofd_verify import OfdVerifier, is_ofd
from signer._report import Check, SignatureKind, SubIndication, ValidationReport
from signer._ses_asn1 import ses_version
from signer._ses_verify import GmVerifier
from signer._trust import TrustSource
from signer._verify import SealVerifier

__all__ = ["MAX_DOCUMENT_BYTES", "DocumentVerifier", "Format", "recognise"]

MAX_DOCUMENT_BYTES: Final = MAX_JWS_BYTES  # bytes of one document (JWS, DER or OFD) validated
_JWS: Final = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+")
_ZIP: Final = b"PK\x03\x04"  # a zip's first local file header: an OFD package begins with one


class Format(StrEnum):
    JWS = "JWS"
    OFD = "OFD"
    SES_SIGNATURE = "SES_SIGNATURE"
    SESEAL = "SESEAL"
    UNKNOWN = "UNKNOWN"


RECOGNISED: Final = "a JAdES JWS (compact or JSON serialisation), an OFD file, a DER GB/T 38540 or GM/T 0031 SES_Signature, or a DER SESeal"


def recognise(data: bytes) -> Format:
    """The format of `data`, by content; UNKNOWN for anything else. Never raises.

    A JWS is ASCII text of three base64url parts (the middle one empty when detached), maybe
    with whitespace around it (a file ends in a newline), or a JSON object with string members
    `protected` and `signature` (the JSON serialisation); an OFD is a zip whose OFD.xml is an
    OFD root (`is_ofd`); an SES structure is DER that parses as one (`ses_version`)."""
    if _JWS.fullmatch(data.strip()) or looks_like_json_jws(data):
        return Format.JWS
    if data.startswith(_ZIP):
        return Format.OFD if is_ofd(data) else Format.UNKNOWN
    version = ses_version(data)  # never raises, whatever the bytes
    if version is None:
        return Format.UNKNOWN
    return Format.SES_SIGNATURE if version.startswith("SES_Signature") else Format.SESEAL


class DocumentVerifier:
    """The verifiers of every format, switched together to each trust source (registry version).

    Holds the gateway's (or the command line's) one `SealVerifier` and one `GmVerifier`; the
    `OfdVerifier` validates an OFD's signatures with that `GmVerifier`."""

    def __init__(self, seals: SealVerifier, gm: GmVerifier) -> None:
        self.seals = seals
        self.gm = gm
        self.ofd = OfdVerifier(gm)

    @property
    def trust(self) -> TrustSource:
        return self.seals.trust

    def use(self, trust: TrustSource) -> None:
        """Switch every verifier to a newer trust source (a registry swap), in one step."""
        self.seals.use(trust)
        self.gm.use(trust)

    def validate(
        self,
        data: bytes,
        *,
        payload: bytes | None = None,
        expected_kind: SignatureKind | None = None,
        expected_owner_region: str | None = None,
        validation_time: datetime | None = None,
    ) -> ValidationReport:
        """Validate `data` by its format and report; never raises for bad input.

        `payload` is the signed data of a detached JWS or of an SES_Signature (whose dataHash
        covers it); the other formats hold their data and refuse one. `expected_kind` and
        `expected_owner_region` hold for a JWS as in `SealVerifier.validate`, and for the other
        formats are checked on the report (a GB/T 38540 seal is always an e-seal)."""
        if len(data) > MAX_DOCUMENT_BYTES:
            return _refusal(
                f"the document is larger than {MAX_DOCUMENT_BYTES} bytes", self.trust.version
            )
        found = recognise(data)
        if found is Format.JWS:
            return self.seals.validate(
                data.strip(),
                detached_payload=payload,
                expected_kind=expected_kind,
                expected_owner_region=expected_owner_region,
                validation_time=validation_time,
            )
        if found is Format.UNKNOWN:
            return self._unknown(data)
        if found is Format.SES_SIGNATURE:
            report = self.gm.validate_signature(data, payload, validation_time=validation_time)
        elif payload is not None:
            what = "an OFD file" if found is Format.OFD else "a SESeal"
            return _refusal(
                f"{what} holds what it signs: no separate payload is taken", self.trust.version
            )
        elif found is Format.OFD:
            report = self.ofd.validate(data, validation_time=validation_time)
        else:
            report = self.gm.validate_seal(data, validation_time=validation_time)
        return expect(report, expected_kind, expected_owner_region)

    def _unknown(self, data: bytes) -> ValidationReport:
        """The refusal of a document of no recognised format; for a zip, the OFD reader's
        reason why it is not an OFD package (a limit it breaks, OFD.xml missing, ...)."""
        message = f"the document is none of the formats recognised: {RECOGNISED}"
        if data.startswith(_ZIP):
            why = self.ofd.validate(data).message
            message = f"a zip archive, but not an OFD package ({why}); {message}"
        return _refusal(message, self.trust.version)


def expect(
    report: ValidationReport, kind: SignatureKind | None, region: str | None
) -> ValidationReport:
    """`report` with the caller's expectations checked (each signature's, for a container): a
    passing report that does not meet them becomes INDETERMINATE / CHAIN_CONSTRAINTS_FAILURE, as
    a JWS's step (10) makes it."""
    if kind is None and region is None:
        return report
    signers = report.signatures or (report,)
    wrong = [
        f"{s.kind or 'no kind'} of region {s.owner_region or '(none)'}"
        for s in signers
        if (kind is not None and s.kind is not kind)
        or (region is not None and s.owner_region != region)
    ]
    wanted = " of ".join(
        part for part in (f"e-{kind}" if kind else "", f"region {region}" if region else "") if part
    )
    if not wrong:
        return dataclasses.replace(
            report, checks=(*report.checks, Check("expected", True, f"{wanted}, as expected"))
        )
    message = f"expected {wanted}, found {', '.join(wrong)}"
    checks = (*report.checks, Check("expected", False, message))
    if not report.passed:
        return dataclasses.replace(report, checks=checks)
    sub = SubIndication.CHAIN_CONSTRAINTS_FAILURE
    return dataclasses.replace(
        report, indication=sub.indication, sub_indication=sub, message=message, checks=checks
    )


def _refusal(message: str, registry_version: int) -> ValidationReport:
    sub = SubIndication.FORMAT_FAILURE
    return ValidationReport(
        indication=sub.indication,
        sub_indication=sub,
        message=message,
        checks=(Check("format", False, message),),
        registry_version=max(registry_version, 0),
        format="",
    )
