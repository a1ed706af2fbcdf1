"""Validating the signatures of an OFD document (GB/T 33190-2016 §18), one report per signature.

Plan, for the package and then for each signature listed (`validate`):

    (0) read the package under limits (`signer._ofd_package`): a refusal is TOTAL_FAILED /
        FORMAT_FAILURE with the reason, and nothing else is looked at;
    (1) OFD.xml: the root `ofd:OFD`, each `DocBody`'s `Signatures` list (none anywhere:
        INDETERMINATE / SIGNED_DATA_NOT_FOUND, "no signature to validate");
    (2) each `Signature` entry of each list: its Type (`Seal`, `Sign`, or absent, read as Seal
        as ofdrw does) and its Signature.xml, which must parse;
    (3) the check method of its References: SM3 by name or OID; anything else, or none (the
        standard's default is MD5), is CRYPTO_CONSTRAINTS_FAILURE;
    (4) each Reference: the file exists (else FORMAT_FAILURE) and its SM3 is the CheckValue
        (else HASH_FAILURE naming the file);
    (5) a seal: the Seal.esl the Signature.xml names is byte for byte the SESeal inside the
        SES_Signature (else FORMAT_FAILURE: the document shows a seal it was not sealed with);
    (6) SignedValue.dat: the SES_Signature over the bytes of Signature.xml, by the GM verifier
        (its dataHash, its SM2 signature, the seal, the signer's chain); its checks follow ours;
    (6') for a digital signature (Type Sign), SignedValue.dat is a GB/T 35275 SignedData over
        SM3(Signature.xml), checked by `signer._ofd_sign` with the certificate it carries, and
        that certificate as a seal's signer's (`GmVerifier.check_signer`) at the signing time
        (signingTime, else SignatureDateTime read as China Standard Time);
    (7) the container: the worst indication of its signatures; the files no signature protects
        are listed in a passing check (GB/T 33190 lets later signatures and annotations add
        files, and the list of signatures is never protected if more may follow).

A signature's sub-indication is the worst of its failures in `PRECEDENCE`; checks go on after
a failure, so the report shows every changed file, not only the first.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol
from xml.etree.ElementTree import Element

from asn1crypto import core
from cryptography import x509

from signer._ofd_make import CHINA_STANDARD_TIME
from signer._ofd_package import (
    MAX_ENTRIES,
    OFD_NS,
    OfdPackage,
    OfdRefused,
    read_package,
    resolve_loc,
)
from signer._ofd_sign import FORMAT as FORMAT_35275
from signer._ofd_sign import check_signed_data
from signer._report import Check, Indication, SubIndication, ValidationReport
from signer._ses_trust import CertificateVerdict
from signer._sm2_x509 import CERTIFICATE_READ_ERRORS

__all__ = ["MAX_SIGNATURES", "PRECEDENCE", "OfdVerifier", "is_ofd"]

MAX_SIGNATURES: Final = 64  # per document; each costs a chain validation
SM3_NAMES: Final = frozenset({"sm3", "1.2.156.10197.1.401"})  # CheckMethod, case-folded
SIGNATURE_TYPES: Final = frozenset({"Seal", "Sign"})
_NS: Final = "{" + OFD_NS + "}"

# Worst first: the container's (and a signature's) sub-indication is the first of these found.
PRECEDENCE: Final = (
    SubIndication.FORMAT_FAILURE,
    SubIndication.HASH_FAILURE,
    SubIndication.SIG_CRYPTO_FAILURE,
    SubIndication.REVOKED,
    SubIndication.EXPIRED,
    SubIndication.NOT_YET_VALID,
    SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
    SubIndication.CHAIN_CONSTRAINTS_FAILURE,
    SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
    SubIndication.REVOKED_NO_POE,
    SubIndication.OUT_OF_BOUNDS_NO_POE,
    SubIndication.SIGNED_DATA_NOT_FOUND,
    SubIndication.TRY_LATER,
)


class SesSignatureValidator(Protocol):
    """What the OFD verifier needs of the GM verifier (`GmVerifier`): an SES_Signature's report,
    and the checks of a digital signature's signer certificate."""

    def validate_signature(
        self, der: bytes, data: bytes | None, *, validation_time: datetime | None = None
    ) -> ValidationReport: ...

    def check_signer(
        self,
        certificate: x509.Certificate,
        signed_at: datetime | None,
        *,
        validation_time: datetime | None = None,
    ) -> CertificateVerdict: ...


def _x(element: Element, name: str) -> Element | None:
    return element.find(_NS + name)


def _text(element: Element, name: str) -> str | None:
    found = element.find(_NS + name)
    return None if found is None or found.text is None else found.text.strip()


def is_ofd(data: bytes) -> bool:
    """Whether `data` is a zip whose OFD.xml has the root ``ofd:OFD``; never raises.

    The whole package is read under the limits, as `OfdVerifier` reads it: an archive it would
    refuse (a bomb, a name outside the package) is not called an OFD."""
    try:
        return read_package(data).xml("OFD.xml").tag == _NS + "OFD"
    except OfdRefused:
        return False


@dataclass(frozen=True, slots=True)
class _Entry:
    """One `ofd:Signature` of a Signatures.xml: where it is listed and where its file is."""

    listed_in: str  # package name of the Signatures.xml
    sign_id: str
    type: str  # "Seal" or "Sign"
    location: str  # package name of its Signature.xml


@dataclass(frozen=True, slots=True)
class _SignatureXml:
    """What a Signature.xml says (GB/T 33190 §18.2), locations resolved to package names."""

    signed_value: str
    seal: str | None
    check_method: str | None
    references: tuple[tuple[str, str], ...]  # (package name, CheckValue text)
    # SignatureDateTime, "YYYY-MM-DD HH:MM:SS" without a zone: read as China Standard Time (as
    # ofdrw and Tongban write it); None when absent or not such a time.
    signature_time: datetime | None = None


@dataclass(slots=True)
class _Run:
    """The checks of one signature so far, and the failures among them."""

    checks: list[Check] = dataclasses.field(default_factory=list)
    failures: list[tuple[SubIndication, str]] = dataclasses.field(default_factory=list)
    changed: set[str] = dataclasses.field(default_factory=set)  # files failing their CheckValue

    def ok(self, name: str, detail: str = "") -> None:
        self.checks.append(Check(name, True, detail))

    def fail(self, name: str, sub: SubIndication, detail: str) -> None:
        self.checks.append(Check(name, False, detail))
        self.failures.append((sub, detail))

    def worst(self) -> tuple[SubIndication, str] | None:
        if not self.failures:
            return None
        return min(self.failures, key=lambda failure: PRECEDENCE.index(failure[0]))


def _refused(message: str, checks: Sequence[Check] = ()) -> ValidationReport:
    return ValidationReport(
        indication=Indication.TOTAL_FAILED,
        sub_indication=SubIndication.FORMAT_FAILURE,
        message=message,
        checks=(*checks, Check("OFD package", False, message)),
        registry_version=0,
        format="OFD",
    )


def _signature_lists(package: OfdPackage) -> list[str]:
    """(1): the package names of the Signatures.xml of every document in OFD.xml."""
    root = package.xml("OFD.xml")
    if root.tag != _NS + "OFD":
        raise OfdRefused("OFD.xml's root is not ofd:OFD (namespace " + OFD_NS + ")")
    bodies = root.findall(_NS + "DocBody")
    if not bodies:
        raise OfdRefused("OFD.xml has no ofd:DocBody")
    lists = []
    for body in bodies:
        if _text(body, "DocRoot") is None:
            raise OfdRefused("an ofd:DocBody of OFD.xml has no DocRoot")
        loc = _text(body, "Signatures")
        if loc is not None:
            lists.append(resolve_loc("OFD.xml", loc, "OFD.xml's Signatures"))
    return list(dict.fromkeys(lists))  # two documents naming one list: its signatures once


def _entries(package: OfdPackage, listed_in: str) -> list[_Entry]:
    """(2): the signatures one Signatures.xml lists, in document order."""
    root = package.xml(listed_in)
    if root.tag != _NS + "Signatures":
        raise OfdRefused(f"/{listed_in}'s root is not ofd:Signatures")
    entries = []
    for element in root.findall(_NS + "Signature"):
        sign_id = element.get("ID", "").strip()
        kind = element.get("Type", "Seal").strip()
        if kind not in SIGNATURE_TYPES:
            raise OfdRefused(f"/{listed_in}: signature {sign_id!r} has Type {kind!r}")
        location = resolve_loc(listed_in, element.get("BaseLoc"), f"signature {sign_id!r} BaseLoc")
        entries.append(_Entry(listed_in, sign_id, kind, location))
    ids = [entry.sign_id for entry in entries]
    if len(set(ids)) != len(ids) or "" in ids:
        raise OfdRefused(f"/{listed_in}: signature IDs are missing or repeated")
    return entries


def _parse_signature_xml(package: OfdPackage, name: str) -> _SignatureXml:
    """(2): Signature.xml's parts; every location is resolved from Signature.xml's folder."""
    root = package.xml(name)
    info = _x(root, "SignedInfo")
    if root.tag != _NS + "Signature" or info is None:
        raise OfdRefused(f"/{name} is not an ofd:Signature with an ofd:SignedInfo")
    signed_value = resolve_loc(name, _text(root, "SignedValue"), "SignedValue")
    seal_element = _x(info, "Seal")
    seal = None
    if seal_element is not None:
        seal = resolve_loc(name, _text(seal_element, "BaseLoc"), "Seal BaseLoc")
    references_element = _x(info, "References")
    if references_element is None:
        raise OfdRefused(f"/{name} has no ofd:References")
    references = []
    for reference in references_element.findall(_NS + "Reference"):
        target = resolve_loc(name, reference.get("FileRef"), "Reference FileRef")
        references.append((target, _text(reference, "CheckValue") or ""))
    if not references:
        raise OfdRefused(f"/{name} protects no file (its References are empty)")
    if len(references) > MAX_ENTRIES:
        raise OfdRefused(f"/{name} has more references than a package may have files")
    method = references_element.get("CheckMethod")
    stated = _signature_time(_text(info, "SignatureDateTime"))
    return _SignatureXml(signed_value, seal, method, tuple(references), stated)


def _signature_time(text: str | None) -> datetime | None:
    """SignatureDateTime as a time: with a zone as given, without one in China Standard Time."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=CHINA_STANDARD_TIME)


def _check_references(package: OfdPackage, parsed: _SignatureXml, run: _Run) -> None:
    """(3) and (4): the check method, then every protected file against its CheckValue."""
    method = parsed.check_method
    if method is None or method.strip().casefold() not in SM3_NAMES:
        shown = "none (the standard's default, MD5)" if method is None else repr(method)
        run.fail(
            "References CheckMethod",
            SubIndication.CRYPTO_CONSTRAINTS_FAILURE,
            f"the check method is {shown}; only SM3 is accepted",
        )
        return
    run.ok("References CheckMethod", method)
    for name, value in parsed.references:
        check = f"Reference /{name}"
        if name not in package:
            run.fail(check, SubIndication.FORMAT_FAILURE, f"/{name} is not in the package")
            continue
        try:
            expected = base64.b64decode(value, validate=True)
        except binascii.Error:
            run.fail(check, SubIndication.FORMAT_FAILURE, f"/{name}: CheckValue is not base64")
            continue
        if package.sm3(name) != expected:
            run.fail(check, SubIndication.HASH_FAILURE, f"/{name} was changed after signing")
            run.changed.add(name)
        else:
            run.ok(check, "SM3 matches the CheckValue")


def embedded_seal(signed_value: bytes) -> bytes | None:
    """The DER of the SESeal inside an SES_Signature (v4 or v1: TBS_Sign's second field)."""
    try:
        signature = core.Sequence.load(signed_value, strict=True)
        tbs = core.Sequence.load(signature[0].dump(), strict=True)
        seal = tbs[1]
        if not isinstance(seal, core.Sequence):
            return None
        return bytes(seal.dump())
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError):
        return None


def _check_seal(package: OfdPackage, parsed: _SignatureXml, signed_value: bytes, run: _Run) -> None:
    """(5): the Seal.esl shown is the seal the SES_Signature was made with."""
    if parsed.seal is None:
        run.ok("Seal.esl", "Signature.xml names no seal file (optional in GB/T 33190)")
        return
    if parsed.seal not in package:
        run.fail("Seal.esl", SubIndication.FORMAT_FAILURE, f"/{parsed.seal} is not in the package")
        return
    inside = embedded_seal(signed_value)
    if parsed.seal in run.changed:
        # Already a HASH_FAILURE: a changed Seal.esl is a changed protected file first.
        run.checks.append(Check("Seal.esl", False, f"/{parsed.seal} was changed after signing"))
    elif inside is None:
        run.ok("Seal.esl", "not compared: the signed value's seal is unreadable (see below)")
    elif inside != package.read(parsed.seal):
        run.fail(
            "Seal.esl",
            SubIndication.FORMAT_FAILURE,
            f"/{parsed.seal} is not the seal inside the signed value",
        )
    else:
        run.ok("Seal.esl", f"/{parsed.seal} is the seal inside the signed value")


class OfdVerifier:
    """Validates every signature of an OFD document with the GM verifier (`GmVerifier`)."""

    def __init__(self, gm: SesSignatureValidator) -> None:
        self._gm = gm

    def validate(self, ofd: bytes, *, validation_time: datetime | None = None) -> ValidationReport:
        """The container's report, with one report per signature in `signatures`; never raises
        for bad input (a refused package is TOTAL_FAILED / FORMAT_FAILURE with the reason)."""
        # (0), (1), (2): the package, its lists of signatures, their entries.
        try:
            package = read_package(ofd)
            lists = _signature_lists(package)
            entries = [entry for listed in lists for entry in _entries(package, listed)]
        except OfdRefused as exc:
            return _refused(str(exc))
        checks = [Check("OFD package", True, f"{len(package.files)} files read within limits")]
        if not entries:
            return ValidationReport(
                indication=Indication.INDETERMINATE,
                sub_indication=SubIndication.SIGNED_DATA_NOT_FOUND,
                message="no signature to validate: the OFD document is not signed",
                checks=(*checks, Check("signatures", False, "no ofd:Signature is listed")),
                registry_version=0,
                format="OFD",
            )
        if len(entries) > MAX_SIGNATURES:
            return _refused(f"the document lists more than {MAX_SIGNATURES} signatures", checks)
        protected: set[str] = set()
        reports = tuple(
            self._validate_one(package, entry, validation_time, protected) for entry in entries
        )
        return _container(package, reports, protected, checks)

    def _validate_one(
        self,
        package: OfdPackage,
        entry: _Entry,
        validation_time: datetime | None,
        protected: set[str],
    ) -> ValidationReport:
        run = _Run()
        run.ok("listed", f"ID {entry.sign_id}, Type {entry.type}, in /{entry.listed_in}")
        # (2): Signature.xml.
        try:
            parsed = _parse_signature_xml(package, entry.location)
            signed_value = package.read(parsed.signed_value)
        except OfdRefused as exc:
            run.fail("Signature.xml", SubIndication.FORMAT_FAILURE, str(exc))
            return _signature_report(entry, run, None)
        run.ok("Signature.xml", f"/{entry.location}: {len(parsed.references)} references")
        # A signature's own Signature.xml and SignedValue.dat are protected by its signed value.
        protected.update([entry.location, parsed.signed_value])
        protected.update(name for name, _ in parsed.references)
        # (3), (4): the protected files.
        _check_references(package, parsed, run)
        if entry.type == "Sign":
            # (6'): a GB/T 35275 SignedData, and its signer's certificate as a seal's signer's.
            signed = check_signed_data(signed_value, package.read(entry.location), run)
            if signed.certificate is None:
                return _signature_report(entry, run, None, FORMAT_35275)
            signed_at = signed.signing_time or parsed.signature_time
            verdict = self._gm.check_signer(
                signed.certificate, signed_at, validation_time=validation_time
            )
            run.checks.extend(verdict.checks)
            run.failures.extend(verdict.failures)
            who = (_subject_of(signed.certificate), verdict.owner, verdict.owner_region, signed_at)
            return _signature_report(entry, run, None, FORMAT_35275, who)
        # (5), (6): the seal shown, then the SES_Signature over Signature.xml.
        _check_seal(package, parsed, signed_value, run)
        gm = self._gm.validate_signature(
            signed_value, package.read(entry.location), validation_time=validation_time
        )
        run.checks.extend(gm.checks)
        if gm.sub_indication is not None:
            run.failures.append((gm.sub_indication, gm.message))
        return _signature_report(entry, run, gm)


def _subject_of(certificate: x509.Certificate) -> str:
    try:
        return certificate.subject.rfc4514_string()
    except CERTIFICATE_READ_ERRORS:
        return ""


def _signature_report(
    entry: _Entry,
    run: _Run,
    gm: ValidationReport | None,
    format_: str = "OFD signature",
    who: tuple[str, str, str, datetime | None] = ("", "", "", None),
) -> ValidationReport:
    """The report of one signature; `who`: (subject, owner, owner region, signing time) of a
    digital signature's signer (a seal's come from `gm`, the SES_Signature's report)."""
    worst = run.worst()
    where = f"signature {entry.sign_id} (/{entry.location})"
    if worst is None:
        indication, sub, message = Indication.TOTAL_PASSED, None, f"{where} is valid"
    else:
        indication, sub, message = worst[0].indication, worst[0], f"{where}: {worst[1]}"
    if gm is None:
        return ValidationReport(
            indication=indication,
            sub_indication=sub,
            message=message,
            checks=tuple(run.checks),
            registry_version=0,
            algorithm="SM2" if who[0] else "",
            signer_subject=who[0],
            owner=who[1],
            owner_region=who[2],
            signing_time=who[3],
            format=format_,
        )
    return dataclasses.replace(
        gm, indication=indication, sub_indication=sub, message=message, checks=tuple(run.checks)
    )


def _container(
    package: OfdPackage,
    reports: tuple[ValidationReport, ...],
    protected: set[str],
    checks: list[Check],
) -> ValidationReport:
    """(7): the worst of the signatures, and which files none of them protects."""
    for number, report in enumerate(reports, 1):
        checks.append(Check(f"signature {number}", report.passed, report.message))
    unprotected = sorted(name for name in package.files if name not in protected)
    detail = ", ".join("/" + name for name in unprotected) if unprotected else "none"
    checks.append(Check("files no signature protects", True, detail))
    failed = [report for report in reports if report.sub_indication is not None]
    version = max(report.registry_version for report in reports)
    if not failed:
        count = "its signature is" if len(reports) == 1 else f"all {len(reports)} signatures are"
        return ValidationReport(
            indication=Indication.TOTAL_PASSED,
            sub_indication=None,
            message=f"the OFD document is intact: {count} valid",
            checks=tuple(checks),
            registry_version=version,
            format="OFD",
            signatures=reports,
        )
    worst = min(failed, key=lambda report: PRECEDENCE.index(_sub(report)))
    sub = _sub(worst)
    return ValidationReport(
        indication=sub.indication,
        sub_indication=sub,
        message=f"{len(failed)} of {len(reports)} signatures failed; {worst.message}",
        checks=tuple(checks),
        registry_version=version,
        format="OFD",
        signatures=reports,
    )


def _sub(report: ValidationReport) -> SubIndication:
    assert report.sub_indication is not None  # only failed reports are passed here
    return report.sub_indication
