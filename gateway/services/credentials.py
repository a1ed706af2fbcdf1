"""`tongban.v1.Credentials`: verify e-seals and e-signatures for anyone, seal for the region.

`Verify` answers every authenticated caller with an ETSI-style report: a seal that does not
verify is a normal answer (TOTAL_FAILED or INDETERMINATE), never an RPC error. `Seal` is for the
agencies of this gateway's own region and signs with the region's seal key that the current
registry names as active; the gateway must hold that key's private key (`[[seal.keys]]`).
`Fetch` needs the query path (peer forwarding, authorisation, audit) and is not served yet: the
generated base class answers UNIMPLEMENTED.

The verifier belongs to the gateway, which switches it to each registry it applies; this module
only converts between protobuf messages and the signer's domain objects.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import rpcs
from gateway.audit import AuditLog, AuditRecord, AuditUnavailable, Outcome
from gateway.errors import Refusal
from gateway.identity import Caller, CallerKind, current_caller
from gateway.metrics import GatewayMetrics
from gateway.sealing import RegionSealer, SealKeyUnavailable, check_region_seal, staple_of
from gateway.services._metadata import request_token
from gateway.services.exchange import QueryPath, sealed_record, wire_seal_format
from registry import Registry, RegistryError, RegistryStore
from signer import (
    MAX_DOCUMENT_BYTES,
    MAX_JWS_BYTES,
    DocumentVerifier,
    KeyProvider,
    SealVerifier,
    SignatureKind,
    ValidationReport,
)
from tongban.v1 import credentials_pb2, credentials_pb2_grpc, exchange_pb2

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_SEAL_PAYLOAD_BYTES",
    "CredentialsService",
    "report_message",
]

log = logging.getLogger("tongban.credentials")

# credential_type -> (the issuing region's dataset, the purpose used unless the request names one)
CREDENTIAL_TYPES: Final = {
    "business_licence": ("market.business_licence", "LICENCE-VERIFY"),
    "marriage_certificate": ("civil.marriage", "MARRIAGE-CHECK"),
}

MAX_SEAL_PAYLOAD_BYTES: Final = 4 * 1024 * 1024  # bytes a caller may have sealed in one call
# Large payloads are sealed in a worker thread (`RegionSealer`). Verification stays on the event
# loop: the verifier's caches are switched there on a swap.
MAX_CONTENT_TYPE_CHARS: Final = 255  # RFC 6838: type and subtype names are at most 127 each
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"  # when a Seal request names none
# RFC 6838 type/subtype (restricted-name characters), then RFC 9110 parameters; ASCII only.
_TCHAR: Final = r"[A-Za-z0-9!#$&^_.+-]"
_MEDIA_TYPE: Final = re.compile(
    rf"[A-Za-z0-9]{_TCHAR}{{0,126}}/[A-Za-z0-9]{_TCHAR}{{0,126}}"
    rf"""(?:[ \t]*;[ \t]*{_TCHAR}+=(?:{_TCHAR}+|"[ !#-\[\]-~]*"))*""",
    re.ASCII,
)
_KINDS: Final = {
    SignatureKind.SEAL: credentials_pb2.SIGNATURE_KIND_SEAL,
    SignatureKind.SIGNATURE: credentials_pb2.SIGNATURE_KIND_SIGNATURE,
}


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def report_message(report: ValidationReport) -> credentials_pb2.ValidationReport:
    """The protobuf twin of a validation report (enums by name, every field)."""
    message = credentials_pb2.ValidationReport(
        indication=credentials_pb2.Indication.Value(report.indication.value),
        sub_indication=(
            credentials_pb2.SubIndication.Value(report.sub_indication.value)
            if report.sub_indication is not None
            else credentials_pb2.SUB_INDICATION_UNSPECIFIED
        ),
        signer_subject=report.signer_subject,
        signer_kid=report.signer_kid,
        owner=report.owner,
        owner_region=report.owner_region,
        kind=_KINDS[report.kind]
        if report.kind is not None
        else credentials_pb2.SIGNATURE_KIND_UNSPECIFIED,
        algorithm=report.algorithm,
        checks=[
            credentials_pb2.ValidationCheck(name=c.name, passed=c.passed, detail=c.detail)
            for c in report.checks
        ],
        registry_version=report.registry_version,
        message=report.message,
        format=report.format,
        signatures=[report_message(signature) for signature in report.signatures],
        time_stamp_authority=report.time_stamp_authority,
    )
    if report.signing_time is not None:
        message.signing_time.CopyFrom(_timestamp(report.signing_time))
    if report.proof_of_existence is not None:
        message.proof_of_existence.CopyFrom(_timestamp(report.proof_of_existence))
    return message


def _document_of(request: credentials_pb2.VerifyRequest) -> bytes:
    """The `document` of a Verify call, empty when it gives a `jws`: exactly one of the two,
    each within its limit. `jws` goes to the JWS verifier alone (whatever it holds, it is never
    read as another format); `document` is recognised by its content."""
    if request.jws and request.document:
        raise Refusal(
            "INVALID_ARGUMENT_FORMAT",
            "give either jws (a JAdES JWS, compact or JSON) or document (an OFD file, a DER SES_Signature or "
            "SESeal), not both",
        )
    if not request.jws and not request.document:
        raise Refusal(
            "INVALID_ARGUMENT_FORMAT",
            "nothing to verify: give jws (a JAdES JWS, compact or JSON) or document (an OFD file, a DER "
            "SES_Signature or SESeal)",
        )
    if len(request.jws) > MAX_JWS_BYTES:
        raise Refusal("REQUEST_TOO_LARGE", f"jws is longer than {MAX_JWS_BYTES} characters")
    if len(request.document) > MAX_DOCUMENT_BYTES:
        raise Refusal("REQUEST_TOO_LARGE", f"document is larger than {MAX_DOCUMENT_BYTES} bytes")
    if len(request.detached_payload) > MAX_DOCUMENT_BYTES:
        raise Refusal(
            "REQUEST_TOO_LARGE", f"detached_payload is larger than {MAX_DOCUMENT_BYTES} bytes"
        )
    return request.document


class CredentialsService(credentials_pb2_grpc.CredentialsServicer):
    """Verify for every authenticated caller; Seal for this region's agencies."""

    def __init__(
        self,
        store: RegistryStore,
        verifier: SealVerifier,
        *,
        documents: DocumentVerifier,
        region: str,
        seal_keys: Mapping[str, KeyProvider],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        audit: AuditLog | None = None,
        metrics: GatewayMetrics,
    ) -> None:
        self.query_path: QueryPath | None = None  # set by the gateway when it serves queries
        self.metrics = metrics
        self._store = store
        self._verifier = verifier  # switched to each applied registry by the gateway
        self._documents = documents  # every format; holds `verifier` and is switched with it
        self._region = region
        # seal_keys: refilled on a reload; JAdES seals staple an OCSP response when online
        self._sealer = RegionSealer(
            region, seal_keys, staple=staple_of(verifier), stamper=verifier.stamper
        )
        self._clock = clock
        self._audit = audit  # every Seal, allowed or denied, is recorded when there is a log

    async def _registry(self, context: grpc.aio.ServicerContext[Any, Any]) -> Registry:
        try:
            return self._store.current()
        except RegistryError as exc:
            raise Refusal("REGISTRY_STALE", str(exc)) from exc

    async def Fetch(
        self,
        request: credentials_pb2.FetchCredentialRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> credentials_pb2.FetchCredentialResponse:
        """An e-credential (电子证照) of a subject, sealed by the issuing region: the issuing
        region's dataset for that credential type, fetched through the query path (token,
        purpose, agreement, audit on both gateways), returned with its validation report."""
        if self.query_path is None:
            raise Refusal(
                "NOT_IMPLEMENTED",
                "this gateway does not serve the query path ([exchange] is not configured)",
            )
        kind = CREDENTIAL_TYPES.get(request.credential_type)
        if kind is None:
            raise Refusal(
                "UNKNOWN_DATASET",
                f"credential_type is one of {', '.join(sorted(CREDENTIAL_TYPES))}",
            )
        dataset, default_purpose = kind
        query = exchange_pb2.QueryRequest(
            provider_region=request.issuing_region,
            dataset=dataset,
            purpose=request.purpose or default_purpose,
            subject_id=request.subject_id,
            case_id=request.case_id,
            request_id=request.request_id,
        )
        answer = await self.query_path.query(
            query,
            context,
            token=request_token(context),
            rpc=rpcs.FETCH,
            credential_type=request.credential_type,
        )
        report = check_region_seal(
            format=answer.record.format,
            jws=answer.record.jws,
            ses_signature=answer.record.ses_signature,
            payload=answer.record.payload,
            region=request.issuing_region,
            jades=self._verifier,
            gm=self._documents.gm,
        )
        return credentials_pb2.FetchCredentialResponse(
            credential=sealed_record(answer.record),
            audit_id=answer.audit_id,
            report=report_message(report),
        )

    async def Verify(
        self,
        request: credentials_pb2.VerifyRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> credentials_pb2.ValidationReport:
        document = _document_of(request)
        validation_time: datetime | None = None
        if request.HasField("validation_time"):
            try:
                validation_time = request.validation_time.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                raise Refusal(
                    "INVALID_ARGUMENT_FORMAT",
                    "validation_time is not a valid timestamp",
                ) from None
        registry = await self._registry(context)
        if self._documents.trust.version != registry.version:  # pragma: no cover - defensive
            raise Refusal(
                "REGISTRY_STALE",
                f"the verifier does not hold registry version {registry.version} yet; retry",
            )
        # A document from outside the registry is a report (NO_CERTIFICATE_CHAIN_FOUND), not an
        # RPC error: the gateway trusts the registry's anchors only.
        payload = request.detached_payload or None
        when = validation_time or self._clock()
        report = (
            self._documents.validate(document, payload=payload, validation_time=when)
            if document
            else self._verifier.validate(
                request.jws, detached_payload=payload, validation_time=when
            )
        )
        self.metrics.verification(report.indication, report.sub_indication or "")
        return report_message(report)

    async def Seal(
        self,
        request: credentials_pb2.SealRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> credentials_pb2.SealResponse:
        caller = current_caller.get()
        started = time.perf_counter()
        if not self._may_seal(caller):
            who = caller.name if caller is not None else "an unidentified caller"
            await self._record(caller, started, Outcome.DENIED, "NOT_AUTHORISED_ROLE")
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"only agencies of region {self._region} may seal with its seal key; {who} may not",
            )
        if not request.payload:
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "payload is empty: there is nothing to seal",
            )
        if len(request.payload) > MAX_SEAL_PAYLOAD_BYTES:
            raise Refusal(
                "REQUEST_TOO_LARGE",
                f"payload is larger than {MAX_SEAL_PAYLOAD_BYTES} bytes",
            )
        content_type = request.content_type or DEFAULT_CONTENT_TYPE
        if len(content_type) > MAX_CONTENT_TYPE_CHARS or not _MEDIA_TYPE.fullmatch(content_type):
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "content_type is not a media type like application/pdf",
            )
        registry = await self._registry(context)
        try:
            sealed = await self._sealer.seal(
                registry,
                request.payload,
                content_type=content_type,
                now=self._clock(),
                detached=request.detached,
            )
        except SealKeyUnavailable as exc:
            raise Refusal(exc.reason, str(exc)) from exc
        # Fail closed: the sealed record is released only once its audit record is durable.
        try:
            await self._record(
                caller,
                started,
                Outcome.ALLOWED,
                "",
                sealed=sealed.seal,
                registry_version=registry.version,
            )
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the seal was not released: {exc}",
            ) from exc
        return credentials_pb2.SealResponse(
            record=credentials_pb2.SealedRecord(
                jws=sealed.jws,
                format=wire_seal_format(sealed.format),
                ses_signature=sealed.ses_signature,
                payload=request.payload,
                content_type=content_type,
                sealer_kid=sealed.kid,
                sealer_region=sealed.region,
                sealed_at=_timestamp(sealed.sealed_at),
            )
        )

    async def _record(
        self,
        caller: Caller | None,
        started: float,
        outcome: Outcome,
        reason: str,
        *,
        sealed: str = "",
        registry_version: int = 0,
    ) -> None:
        """Append the audit record of one Seal call (no subject: a seal concerns a document)."""
        if self._audit is None:
            return
        record = AuditRecord.of_call(
            time=self._clock(),
            region=self._region,
            rpc=rpcs.SEAL,
            outcome=outcome,
            reason=reason,
            started=started,
            caller_agency=caller.agency_id if caller else "",
            caller_region=caller.region if caller else "",
            sealed_digest=hashlib.sha256(sealed.encode()).hexdigest() if sealed else "",
            registry_version=registry_version,
        )
        try:
            await self._audit.append(record)
        except AuditUnavailable:
            if outcome is Outcome.ALLOWED:
                raise
            log.warning("a denied Seal could not be audited (the audit store is unavailable)")

    def _may_seal(self, caller: Caller | None) -> bool:
        return (
            caller is not None
            and caller.kind is CallerKind.AGENCY
            and caller.region == self._region
        )
