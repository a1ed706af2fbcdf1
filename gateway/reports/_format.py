"""The `tongban.access-report/v1` format: one access report (`AccessReport`, as JSON and as
protobuf), and signed batches of them (`batch_payload`, `sign_batch`, `verify_batch`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.audit import (
    FIELD_GRAMMARS,
    is_case_id,
    is_request_id,
)
from gateway.errors import GatewayError, Refusal
from gateway.forward_signing import audit_public_key
from registry import KeyRefused, Registry, is_registry_id
from signer import SignedJsonRefused, canonical_json, sign_json, verify_json
from tongban.v1 import common_pb2, exchange_pb2

__all__ = [
    "BATCH_VERSION",
    "MAX_BATCH_JWS_BYTES",
    "MAX_FIELDS",
    "MAX_REPORTS_PER_BATCH",
    "MAX_TEXT_CHARS",
    "REPORT_TYPE",
    "AccessReport",
    "BatchRefused",
    "ReportFormatError",
    "SignedBatch",
    "batch_payload",
    "format_time",
    "parse_time",
    "sign_batch",
    "verify_batch",
]

REPORT_TYPE: Final = "tongban.access-report+jws"
BATCH_VERSION: Final = 1
MAX_REPORTS_PER_BATCH: Final = 100  # reports in one Peer.ReportAccess call
MAX_BATCH_JWS_BYTES: Final = 512 * 1024  # 100 reports take about 100 KiB
MAX_TEXT_CHARS: Final = 256  # any text of a report (ids, operator, case id)
MAX_FIELDS: Final = 64

_HEX64 = re.compile(r"[0-9a-f]{64}")
_REGION = re.compile(r"[0-9]{6}")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_EXACT_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z"
)
_REPORT_KEYS = frozenset(
    {
        "request_id",
        "caller",
        "dataset",
        "purpose",
        "case_id",
        "subject_pseudonym",
        "fields",
        "accessed_at",
        "sealed_digest",
        "answer_audit_id",
    }
)
_CALLER_KEYS = frozenset({"agency_id", "region", "operator", "certificate_thumbprint"})
_BATCH_KEYS = frozenset(
    {"v", "reporting_region", "owner_region", "batch_id", "issued_at", "reports"}
)


class ReportFormatError(GatewayError, ValueError):
    """A report or batch that is not in the `tongban.access-report/v1` form."""


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: object, what: str) -> datetime:
    if not isinstance(text, str):
        raise ReportFormatError(f"{what} is an RFC 3339 UTC time with microseconds")
    try:
        exact = _EXACT_TIME.fullmatch(text)  # the form `format_time` writes: without strptime
        if exact is not None:
            year, month, day, hour, minute, second, micro = map(int, exact.groups())
            return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ReportFormatError(f"{what} is an RFC 3339 UTC time with microseconds") from exc


def _text(value: object, what: str, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise ReportFormatError(f"{what} is a string")
    if required and not value:
        raise ReportFormatError(f"{what} is required")
    if len(value) > MAX_TEXT_CHARS or not value.isprintable():
        raise ReportFormatError(f"{what} is at most {MAX_TEXT_CHARS} printable characters")
    return value


# The last report found well formed, but for its request id and time (`AccessReport._form`):
# a batch's reports repeat the rest (one answer served many times), and the checks are pure
# functions of the values, so a report equal to it there has only its request id checked. Its
# first failing check, if any, is the same either way: every other value passed them all.
_LAST_FORM: list[tuple[object, ...]] = [()]


@dataclass(frozen=True, slots=True)
class AccessReport:
    """One access a requesting gateway answered from its own cache."""

    request_id: str
    caller_agency: str
    caller_region: str
    caller_operator: str
    caller_thumbprint: str
    dataset: str
    purpose: str
    case_id: str
    subject_pseudonym: str  # the owner's pseudonym of the subject (hex HMAC), never a raw id
    fields: tuple[str, ...]  # sorted, no repetition
    accessed_at: datetime  # UTC, microseconds
    sealed_digest: str  # hex SHA-256 of the sealed record's JWS
    answer_audit_id: str  # the owner's audit id of the answer served (its Peer.Forward record)

    def __post_init__(self) -> None:
        if self.accessed_at.tzinfo is None or self.accessed_at.utcoffset() is None:
            raise ReportFormatError("accessed_at is timezone-aware")
        object.__setattr__(self, "accessed_at", self.accessed_at.astimezone(UTC))
        form = self._form()
        if form == _LAST_FORM[0]:  # only the request id can fail, with its own message
            _text(self.request_id, "request_id")
            if not is_request_id(self.request_id):
                raise ReportFormatError(
                    "request_id is 1 to 128 printable ASCII characters, no spaces, no citizen id"
                )
            return
        for name in ("request_id", "caller_agency", "dataset", "purpose", "answer_audit_id"):
            _text(getattr(self, name), name)
        for name in ("caller_operator", "caller_thumbprint", "case_id"):
            _text(getattr(self, name), name, required=False)
        # The grammars of a query's arguments and of the owner's record (T16): a report's
        # values end up in the owner's log, and a retry must find its record by them.
        if not is_request_id(self.request_id):
            raise ReportFormatError(
                "request_id is 1 to 128 printable ASCII characters, no spaces, no citizen id"
            )
        for name in ("caller_agency", "dataset", "purpose"):
            if not is_registry_id(getattr(self, name)):
                raise ReportFormatError(f"{name} is a registry id")
        if self.case_id and not is_case_id(self.case_id):
            raise ReportFormatError("case_id is at most 128 printable characters, no citizen id")
        if self.caller_operator and not FIELD_GRAMMARS["caller_operator"](self.caller_operator):
            raise ReportFormatError(
                "caller.operator is at most 128 printable characters, no citizen id"
            )
        if not _REGION.fullmatch(self.caller_region):
            raise ReportFormatError("caller.region is a six-digit GB/T 2260 code")
        if not _HEX64.fullmatch(self.subject_pseudonym):
            raise ReportFormatError("subject_pseudonym is a hex HMAC-SHA256, never a raw id")
        if not _HEX64.fullmatch(self.sealed_digest):
            raise ReportFormatError("sealed_digest is a hex SHA-256")
        if not self.fields or len(self.fields) > MAX_FIELDS:
            raise ReportFormatError(f"fields names 1 to {MAX_FIELDS} fields")
        for name in self.fields:
            if not is_registry_id(_text(name, "a field name")):
                raise ReportFormatError("a field name is a registry id")
        if list(self.fields) != sorted(set(self.fields)):
            raise ReportFormatError("fields are sorted and not repeated")
        _LAST_FORM[0] = form

    def _form(self) -> tuple[object, ...]:
        """What `__post_init__` checks but the request id and the time (`_LAST_FORM`)."""
        return (
            self.caller_agency,
            self.caller_region,
            self.caller_operator,
            self.caller_thumbprint,
            self.dataset,
            self.purpose,
            self.case_id,
            self.subject_pseudonym,
            self.fields,
            self.sealed_digest,
            self.answer_audit_id,
        )

    def document(self) -> dict[str, Any]:
        """The report as it is signed (part of the batch payload)."""
        return {
            "request_id": self.request_id,
            "caller": {
                "agency_id": self.caller_agency,
                "region": self.caller_region,
                "operator": self.caller_operator,
                "certificate_thumbprint": self.caller_thumbprint,
            },
            "dataset": self.dataset,
            "purpose": self.purpose,
            "case_id": self.case_id,
            "subject_pseudonym": self.subject_pseudonym,
            "fields": list(self.fields),
            "accessed_at": format_time(self.accessed_at),
            "sealed_digest": self.sealed_digest,
            "answer_audit_id": self.answer_audit_id,
        }

    @classmethod
    def from_document(cls, document: object) -> AccessReport:
        if not isinstance(document, dict) or set(document) != _REPORT_KEYS:
            raise ReportFormatError(f"a report has exactly the keys {sorted(_REPORT_KEYS)}")
        caller = document["caller"]
        if not isinstance(caller, dict) or set(caller) != _CALLER_KEYS:
            raise ReportFormatError(
                f"a report's caller has exactly the keys {sorted(_CALLER_KEYS)}"
            )
        fields = document["fields"]
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ReportFormatError("fields is a list of field names")
        return cls(
            request_id=_text(document["request_id"], "request_id"),
            caller_agency=_text(caller["agency_id"], "caller.agency_id"),
            caller_region=_text(caller["region"], "caller.region"),
            caller_operator=_text(caller["operator"], "caller.operator", required=False),
            caller_thumbprint=_text(
                caller["certificate_thumbprint"], "caller.certificate_thumbprint", required=False
            ),
            dataset=_text(document["dataset"], "dataset"),
            purpose=_text(document["purpose"], "purpose"),
            case_id=_text(document["case_id"], "case_id", required=False),
            subject_pseudonym=_text(document["subject_pseudonym"], "subject_pseudonym"),
            fields=tuple(fields),
            accessed_at=parse_time(document["accessed_at"], "accessed_at"),
            sealed_digest=_text(document["sealed_digest"], "sealed_digest"),
            answer_audit_id=_text(document["answer_audit_id"], "answer_audit_id"),
        )

    def message(self) -> exchange_pb2.AccessReport:
        stamp = Timestamp()
        stamp.FromDatetime(self.accessed_at)
        return exchange_pb2.AccessReport(
            request_id=self.request_id,
            caller=common_pb2.CallerIdentity(
                agency_id=self.caller_agency,
                region=self.caller_region,
                operator=self.caller_operator,
                certificate_thumbprint=self.caller_thumbprint,
            ),
            dataset=self.dataset,
            purpose=self.purpose,
            case_id=self.case_id,
            subject_pseudonym=self.subject_pseudonym,
            fields=list(self.fields),
            accessed_at=stamp,
            sealed_digest=self.sealed_digest,
            answer_audit_id=self.answer_audit_id,
        )

    @classmethod
    def _of_checked_document(cls, document: Mapping[str, Any]) -> AccessReport:
        """The report whose `document()` `document` is, without checking its form again: only
        for a document equal to one `document()` made (of a report checked when it was made)."""
        report = object.__new__(cls)
        caller = document["caller"]
        for name, value in (
            ("request_id", document["request_id"]),
            ("caller_agency", caller["agency_id"]),
            ("caller_region", caller["region"]),
            ("caller_operator", caller["operator"]),
            ("caller_thumbprint", caller["certificate_thumbprint"]),
            ("dataset", document["dataset"]),
            ("purpose", document["purpose"]),
            ("case_id", document["case_id"]),
            ("subject_pseudonym", document["subject_pseudonym"]),
            ("fields", tuple(document["fields"])),
            ("accessed_at", parse_time(document["accessed_at"], "accessed_at")),
            ("sealed_digest", document["sealed_digest"]),
            ("answer_audit_id", document["answer_audit_id"]),
        ):
            object.__setattr__(report, name, value)
        return report

    @classmethod
    def from_message(cls, message: exchange_pb2.AccessReport) -> AccessReport:
        try:
            accessed_at = message.accessed_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise ReportFormatError("accessed_at is not a valid timestamp") from exc
        return cls(
            request_id=message.request_id,
            caller_agency=message.caller.agency_id,
            caller_region=message.caller.region,
            caller_operator=message.caller.operator,
            caller_thumbprint=message.caller.certificate_thumbprint,
            dataset=message.dataset,
            purpose=message.purpose,
            case_id=message.case_id,
            subject_pseudonym=message.subject_pseudonym,
            fields=tuple(message.fields),
            accessed_at=accessed_at,
            sealed_digest=message.sealed_digest,
            answer_audit_id=message.answer_audit_id,
        )


# -- signed batches -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A verified batch: who signed it (the registry key), and what it says."""

    kid: str
    reporting_region: str
    owner_region: str
    batch_id: str
    issued_at: datetime
    reports: tuple[AccessReport, ...]
    # The reports as signed, their JSON objects in order (`document()` of each report, unless
    # a time is written in another form than `format_time`'s, which `parse_time` accepts too).
    documents: tuple[Mapping[str, Any], ...] = ()


class BatchRefused(Refusal):
    """A batch (or one of its reports, `index`) the owner does not accept: the ErrorInfo
    reason (its status code from the reason table), and a sentence for a person."""

    def __init__(self, reason: str, message: str, index: int | None = None) -> None:
        super().__init__(reason, message)
        self.index = index


def batch_payload(
    *,
    reporting_region: str,
    owner_region: str,
    batch_id: str,
    issued_at: datetime,
    reports: Sequence[AccessReport],
) -> bytes:
    """The canonical JSON a batch's JWS signs."""
    return canonical_json(
        {
            "v": BATCH_VERSION,
            "reporting_region": reporting_region,
            "owner_region": owner_region,
            "batch_id": batch_id,
            "issued_at": format_time(issued_at),
            "reports": [r.document() for r in reports],
        }
    )


def sign_batch(payload: bytes, key: ed25519.Ed25519PrivateKey, kid: str) -> str:
    """A compact JWS of `payload` by the reporting gateway's audit key (`kid` its registry id)."""
    return sign_json(
        payload, key, typ=REPORT_TYPE, kid=kid, algorithms=("EdDSA",), headers={"x5t#S256": kid}
    )


def _signature_invalid(message: str) -> BatchRefused:
    return BatchRefused("REPORT_SIGNATURE_INVALID", message)


def _report_key(registry: Registry, kid: object, reporting_region: str, now: datetime) -> Any:
    """The Ed25519 public key of the registry's audit key `kid` of the reporting region."""
    try:
        return audit_public_key(registry, kid, reporting_region, now)
    except KeyRefused as exc:
        raise _signature_invalid(f"the batch's {exc}") from exc


def _verified_jws(jws: str, registry: Registry, reporting_region: str, now: datetime) -> Any:
    """(1) to (3) of `verify_batch`: the verified JWS (header, payload, canonical or not)."""
    if len(jws) > MAX_BATCH_JWS_BYTES:
        raise BatchRefused(
            "REQUEST_TOO_LARGE",
            f"a batch is a compact JWS of at most {MAX_BATCH_JWS_BYTES} bytes",
        )
    try:
        return verify_json(
            jws,
            key_for=lambda header: _report_key(
                registry, header.get("x5t#S256"), reporting_region, now
            ),
            algorithms=("EdDSA",),
            typ=REPORT_TYPE,
            typ_required=True,
            max_bytes=MAX_BATCH_JWS_BYTES,
            what="the batch",
        )
    except SignedJsonRefused as exc:
        raise _signature_invalid(str(exc)) from exc


def _batch_document(
    payload: bytes, reporting_region: str, owner_region: str
) -> tuple[dict[str, Any], str, datetime]:
    """(4) of `verify_batch`: the batch document, its id and when it was issued. The payload
    is parsed once (`VerifiedJson.is_canonical` would parse it again to compare)."""
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchRefused(
            "INVALID_ARGUMENT_FORMAT",
            "the batch payload is not JSON",
        ) from exc
    try:  # `VerifiedJson.is_canonical`, of the document parsed above
        is_canonical = canonical_json(document) == payload
    except RecursionError:
        is_canonical = False
    if (
        not isinstance(document, dict)
        or set(document) != _BATCH_KEYS
        or document.get("v") != BATCH_VERSION
        or not is_canonical
    ):
        raise BatchRefused(
            "INVALID_ARGUMENT_FORMAT",
            "the batch payload is not canonical tongban.access-report/v1 JSON",
        )
    if document["reporting_region"] != reporting_region or document["owner_region"] != owner_region:
        raise BatchRefused(
            "REPORT_PAYLOAD_MISMATCH",
            f"the signed batch is from {document['reporting_region']!s:.8} to "
            f"{document['owner_region']!s:.8}, not from {reporting_region} to {owner_region}",
        )
    try:
        batch_id = _text(document["batch_id"], "batch_id")
        issued_at = parse_time(document["issued_at"], "issued_at")
    except ReportFormatError as exc:
        raise BatchRefused("INVALID_ARGUMENT_FORMAT", str(exc)) from exc
    return document, batch_id, issued_at


def _batch_reports(
    reports: object, known: Sequence[Mapping[str, Any]] = ()
) -> tuple[AccessReport, ...]:
    """(5) of `verify_batch`: the reports, each well formed (`index` names the first that is not).
    A report equal to `known`'s at its index is that document's report, not checked again."""
    if not isinstance(reports, list) or not reports:
        raise BatchRefused("INVALID_ARGUMENT_FORMAT", "a batch holds reports")
    if len(reports) > MAX_REPORTS_PER_BATCH:
        raise BatchRefused(
            "REQUEST_TOO_LARGE",
            f"a batch holds at most {MAX_REPORTS_PER_BATCH} reports",
        )
    parsed = []
    for index, item in enumerate(reports):
        if index < len(known) and item == known[index]:
            parsed.append(AccessReport._of_checked_document(item))
            continue
        try:
            parsed.append(AccessReport.from_document(item))
        except ReportFormatError as exc:
            raise BatchRefused(
                "INVALID_ARGUMENT_FORMAT",
                f"report {index}: {exc}",
                index,
            ) from exc
    return tuple(parsed)


def verify_batch(
    jws: str,
    *,
    registry: Registry,
    reporting_region: str,
    owner_region: str,
    now: datetime,
    known: Sequence[Mapping[str, Any]] = (),
) -> SignedBatch:
    """The batch `jws` says, or the `BatchRefused` that says why it is not accepted.

    (1) a compact JWS of bounded size, signed (no `alg: none`, no empty signature), EdDSA,
        `typ` REPORT_TYPE
    (2) its `x5t#S256` names an audit key the registry publishes for `reporting_region`, not
        revoked (pending, active or retiring: a rotation must not fail reports), whose
        certificate is valid `now`
    (3) the signature verifies with that key (never with a key carried in the message)
    (4) the payload is canonical JSON of this format, for `reporting_region` and `owner_region`
    (5) 1 to MAX_REPORTS_PER_BATCH reports, each well formed (`index` names the first that is not)

    `known`: documents made by `AccessReport.document()` of reports checked when they were made
    (the owner's parse of the reports sent beside the batch). A signed report equal to the one
    at its index is taken as that report: its form is not checked a second time (the same
    values, checked by the same rules), which is most of what verifying a batch costs.
    """
    verified = _verified_jws(jws, registry, reporting_region, now)  # (1), (2), (3)
    document, batch_id, issued_at = _batch_document(  # (4)
        verified.payload, reporting_region, owner_region
    )
    reports = _batch_reports(document["reports"], known)  # (5)
    kid = verified.header["x5t#S256"]
    return SignedBatch(
        kid,
        reporting_region,
        owner_region,
        batch_id,
        issued_at,
        reports,
        tuple(document["reports"]),
    )
