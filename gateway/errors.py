"""Errors raised by the gateway, the table from reason to gRPC status, and the one place a
refusal becomes a gRPC status.

    GatewayError            (gateway._errors: no gRPC, so that domain modules subclass it)
    ├── ConfigError         a configuration file or option is wrong (file, key, reason)
    ├── Refusal             a call refused with a contract reason: the edge sends its status
    │   ├── CallerRejected  the caller's certificate names no party the registry trusts
    │   └── BatchRefused    an access-report batch the owner does not accept (gateway.reports)
    ├── PolicyInputError    a request of the wrong shape (gateway.policy)
    ├── TokenError          a request token refused (gateway.tokens)
    ├── ProviderError       the data system refused or failed a fetch (gateway.provider)
    ├── QuotaUnavailable    the quota store cannot count (gateway.quota)
    ├── ReplayUnavailable   the replay window cannot be checked (gateway.replay)
    ├── UnknownPeer         the registry names no gateway for a region (gateway.peers)
    ├── BreakerOpen         a dependency is not called: its breaker is open (gateway.cache)
    │   └── PeerCertificateRefused  a peer's server certificate is revoked (peer_certificates)
    ├── BackendError        the cache backend failed (gateway.cache)
    │   ├── BackendTimeout
    │   └── BackendUnavailable
    ├── AuditError          the audit log (gateway.audit.errors)
    │   ├── AuditUnavailable
    │   ├── AuditIntegrityError
    │   └── KeptRequestError  also a ValueError: a kept signed request that does not open
    ├── ProofError          also a ValueError: a proof that does not prove what it claims
    ├── CheckpointError     also a ValueError: a checkpoint note that is not one (gateway.audit)
    ├── ReportFormatError   also a ValueError: a report not in the access-report form
    ├── DeliveryFailed      case events not delivered to a peer: retried (gateway.cases)
    ├── BlockError          a generated reference block is missing (gateway.config_reference)
    ├── CaseRefused         an event that does not fit its case: a contract reason (gateway.cases)
    ├── MalformedEvent      also a ValueError: a document that is not a case event (gateway.cases)
    └── DemoError           the demo cannot be set up (gateway.demo)

Every refusal sent to a client is a standard gRPC status with a `google.rpc.ErrorInfo` detail
(`domain` "tongban", `reason` one of the contract's `ErrorReason` names). Its status code comes
from one table, `REASONS` (reason -> code and plain sentence), read by `status_of`, which
`refuse` sends: a service raises `Refusal(reason, message)` and the caller interceptor
(`gateway.identity`) turns it into the status, as it turns anything unmapped into INTERNAL.
A few places send a reason with another code than the table's, each one named in `OVERRIDES`
(a Refusal made with a code outside it is a bug, refused at once); a status passed on from
another party (a peer gateway's refusal, the data system's) keeps the code it came with
(`Refusal.passed_on`).

A status message crosses a trust boundary (to an agency, to another region's gateway), so it
never carries what went wrong inside: for a reason of an outage (`FIXED_MESSAGE_REASONS`: the
audit store, Redis, the data system, a peer, the registry) the message sent is always that
reason's fixed sentence in `PLAIN_MESSAGES`, whatever text the refusal was made with, and that
text (a driver's error naming a host, a port, a DSN) goes to this gateway's own log instead
(`client_message`). A requesting gateway passes a peer's reason on with its own fixed sentence,
never the peer's words (`relayed_message`).
"""

from __future__ import annotations

import logging
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway._errors import ConfigError, GatewayError
from tongban.v1 import common_pb2

__all__ = [
    "DOMAIN",
    "FAILURE_CODES",
    "FIXED_MESSAGE_REASONS",
    "KNOWN_REASONS",
    "MAX_PEER_TEXT_CHARS",
    "MAX_STATUS_MESSAGE_BYTES",
    "OVERRIDES",
    "PLAIN_MESSAGES",
    "REASONS",
    "RELAYED_CODES",
    "CallerRejected",
    "ConfigError",
    "GatewayError",
    "Reason",
    "Refusal",
    "abort",
    "bounded_message",
    "client_message",
    "error_info_of",
    "peer_text",
    "refuse",
    "relayed_message",
    "rich_status",
    "status_code",
    "status_error_info",
    "status_of",
]

DOMAIN = "tongban"
# The contract's reasons (proto enum ErrorReason): the only ones read from a peer's status.
KNOWN_REASONS: frozenset[str] = frozenset(common_pb2.ErrorReason.keys()) - {
    "ERROR_REASON_UNSPECIFIED"
}
# A status message travels twice in the trailers (grpc-message, percent-encoded: up to 3 bytes
# per byte; and inside grpc-status-details-bin, base64): 1 KiB keeps both well under gRPC's
# 8 KiB metadata limit, past which the client would get RESOURCE_EXHAUSTED and no reason.
MAX_STATUS_MESSAGE_BYTES = 1024

log = logging.getLogger("tongban.errors")

_C = grpc.StatusCode


@dataclass(frozen=True, slots=True)
class Reason:
    """What a contract reason is sent with: its gRPC status code, and one plain sentence that a
    client or a peer may read (no host, port, path, driver text or request value)."""

    code: grpc.StatusCode
    plain: str


# The table: one entry per contract reason (docs/integrating.md "Errors, and which to retry"
# says the same, and tests/unit/gateway/test_reason_table.py holds the two together).
REASONS: Final[Mapping[str, Reason]] = MappingProxyType(
    {
        "PURPOSE_NOT_APPROVED": Reason(
            _C.PERMISSION_DENIED, "no agreement approves this purpose for this dataset"
        ),
        "FIELD_NOT_ALLOWED": Reason(
            _C.PERMISSION_DENIED, "a requested field is not allowed for this purpose"
        ),
        "AGREEMENT_EXPIRED": Reason(
            _C.PERMISSION_DENIED, "the agreement is outside its validity window"
        ),
        "TOKEN_EXPIRED": Reason(_C.UNAUTHENTICATED, "the request token has expired"),
        "TOKEN_INVALID": Reason(_C.UNAUTHENTICATED, "the request token is missing or invalid"),
        "REQUEST_REPLAYED": Reason(_C.ALREADY_EXISTS, "this request id was already used"),
        "UNKNOWN_REGION": Reason(_C.INVALID_ARGUMENT, "the region is not in the registry"),
        "SEAL_INVALID": Reason(_C.DATA_LOSS, "the e-seal or e-signature did not verify"),
        "AUDIT_UNAVAILABLE": Reason(
            _C.UNAVAILABLE, "the audit log is unavailable: nothing was released"
        ),
        "QUOTA_EXCEEDED": Reason(
            _C.RESOURCE_EXHAUSTED, "the agreement's quota is used up: try again next minute"
        ),
        "SUBJECT_ID_INVALID": Reason(
            _C.INVALID_ARGUMENT, "the subject id is not well formed for this dataset"
        ),
        "REGISTRY_STALE": Reason(_C.UNAVAILABLE, "the gateway holds no current registry"),
        "NO_AGREEMENT": Reason(
            _C.PERMISSION_DENIED, "no agreement links the requester and the provider region"
        ),
        "DATASET_NOT_SHARED": Reason(
            _C.PERMISSION_DENIED, "the dataset is not shared with the requester"
        ),
        "CASE_ID_REQUIRED": Reason(_C.PERMISSION_DENIED, "a case id is required for this purpose"),
        "UNKNOWN_DATASET": Reason(_C.INVALID_ARGUMENT, "the dataset is not in the registry"),
        "UNKNOWN_PURPOSE": Reason(_C.INVALID_ARGUMENT, "the purpose is not in the registry"),
        "CERTIFICATE_NOT_TRUSTED": Reason(
            _C.UNAUTHENTICATED, "the certificate does not name a party the registry trusts"
        ),
        "TOKEN_BINDING_MISMATCH": Reason(
            _C.UNAUTHENTICATED, "the request token is bound to another client certificate"
        ),
        "NOT_AUTHORISED_ROLE": Reason(
            _C.PERMISSION_DENIED, "the caller does not hold the role this call needs"
        ),
        "PROVIDER_UNAVAILABLE": Reason(_C.UNAVAILABLE, "the data system is unavailable"),
        "PEER_UNAVAILABLE": Reason(_C.UNAVAILABLE, "the provider region's gateway is unavailable"),
        "REQUEST_TOO_LARGE": Reason(_C.INVALID_ARGUMENT, "the request exceeds a size limit"),
        "INVALID_ARGUMENT_FORMAT": Reason(_C.INVALID_ARGUMENT, "a request argument is malformed"),
        "SEAL_KEY_UNAVAILABLE": Reason(_C.UNAVAILABLE, "the region's seal key is unavailable"),
        "NOT_IMPLEMENTED": Reason(_C.UNIMPLEMENTED, "this gateway does not serve this call"),
        "SUBJECT_NOT_FOUND": Reason(
            _C.NOT_FOUND, "no record is held for this subject in this dataset"
        ),
        "SHARED_STATE_UNAVAILABLE": Reason(
            _C.UNAVAILABLE, "the gateway's shared state is unavailable: try again later"
        ),
        "REQUEST_CANCELLED": Reason(_C.CANCELLED, "the request was cancelled"),
        "REPORT_SIGNATURE_INVALID": Reason(
            _C.UNAUTHENTICATED, "the report batch is not validly signed"
        ),
        "REPORT_PAYLOAD_MISMATCH": Reason(
            _C.INVALID_ARGUMENT, "the reports are not the ones the batch signs"
        ),
        "REQUEST_SIGNATURE_INVALID": Reason(
            _C.UNAUTHENTICATED, "the forwarded request is not validly signed"
        ),
        "REQUEST_PAYLOAD_MISMATCH": Reason(
            _C.INVALID_ARGUMENT, "the forwarded request is not the one it signs"
        ),
        "CACHE_NOT_ALLOWED": Reason(
            _C.PERMISSION_DENIED, "the dataset may not be answered from a requester's cache"
        ),
        "REPORT_ANSWER_UNKNOWN": Reason(
            _C.PERMISSION_DENIED, "no answer matches the reported access"
        ),
        "CHECKPOINT_RATE_LIMITED": Reason(
            _C.RESOURCE_EXHAUSTED, "a checkpoint was signed for this caller moments ago"
        ),
        "TOO_MANY_CALLS": Reason(
            _C.RESOURCE_EXHAUSTED, "too many calls in flight: retry when some have ended"
        ),
        "REQUEST_INCOMPLETE": Reason(
            _C.DEADLINE_EXCEEDED, "the request did not arrive in full in time"
        ),
        "INTERNAL_ERROR": Reason(_C.INTERNAL, "the gateway failed to handle the request"),
        "CERTIFICATE_REVOKED": Reason(
            _C.UNAUTHENTICATED, "the client certificate is revoked by its certificate authority"
        ),
        "REVOCATION_UNAVAILABLE": Reason(
            _C.UNAVAILABLE,
            "the revocation status of a TLS certificate (the client's, or the provider region's "
            "gateway's) cannot be learnt: try again later",
        ),
        "PEER_CERTIFICATE_REVOKED": Reason(
            _C.UNAVAILABLE,
            "the provider region's gateway presents a revoked TLS certificate: it is not called",
        ),
        "WITNESS_SIZE_MISMATCH": Reason(
            _C.FAILED_PRECONDITION, "the witness last cosigned another size of this log"
        ),
        "CHECKPOINT_INCONSISTENT": Reason(
            _C.FAILED_PRECONDITION, "the checkpoint contradicts one the witness cosigned"
        ),
        "CHECKPOINT_SIGNATURE_INVALID": Reason(
            _C.PERMISSION_DENIED, "no audit key of the log's region signs the checkpoint"
        ),
        "MATTER_UNKNOWN": Reason(
            _C.INVALID_ARGUMENT, "the matter is not one this region may receive applications for"
        ),
        "MATERIAL_MISSING": Reason(
            _C.INVALID_ARGUMENT, "a material the matter requires is missing, or one is not its own"
        ),
        "MATERIAL_INVALID": Reason(
            _C.INVALID_ARGUMENT, "a material's seal did not verify, or its format is unknown"
        ),
        "MATERIAL_TOO_LARGE": Reason(
            _C.INVALID_ARGUMENT, "a material, or the materials together, exceed the size limit"
        ),
        "CASE_NOT_FOUND": Reason(_C.NOT_FOUND, "no such case is held here for this caller"),
        "CASE_ACTION_NOT_ALLOWED": Reason(
            _C.FAILED_PRECONDITION, "the action does not fit the case's state"
        ),
        "CASE_PART_NOT_YOURS": Reason(
            _C.PERMISSION_DENIED, "the part of the case is not the caller's to act on"
        ),
        "CASE_NOT_OPEN": Reason(
            _C.PERMISSION_DENIED,
            "the query names no open case the asking agency handles for this subject",
        ),
        "CASE_QUERY_NOT_ALLOWED": Reason(
            _C.PERMISSION_DENIED, "the case's matter does not allow this query"
        ),
        "CASE_EVENT_INVALID": Reason(
            _C.PERMISSION_DENIED, "a case event is not one the sending region may deliver"
        ),
        "SUBJECT_NOT_CALLER": Reason(
            _C.PERMISSION_DENIED, "a citizen may ask for their own trail only"
        ),
        "TRAIL_NOT_ALLOWED": Reason(
            _C.PERMISSION_DENIED, "only a citizen portal or an oversight agency may ask for a trail"
        ),
        "CONSENT_REQUIRED": Reason(
            _C.PERMISSION_DENIED, "the dataset needs the citizen's consent: none was sent"
        ),
        "CONSENT_INVALID": Reason(_C.PERMISSION_DENIED, "the consent artefact is not valid"),
        "CONSENT_MISMATCH": Reason(_C.PERMISSION_DENIED, "the consent does not cover this query"),
        "CONSENT_REVOKED": Reason(_C.PERMISSION_DENIED, "the citizen revoked the consent"),
        "CONSENT_EXHAUSTED": Reason(_C.PERMISSION_DENIED, "the consent's uses are used up"),
        "CONSENT_STATUS_UNAVAILABLE": Reason(
            _C.UNAVAILABLE, "whether the consent is revoked cannot be learned now"
        ),
    }
)
# The places that send a reason with another code than the table's, and why: the only codes a
# Refusal may be made with besides its reason's own.
OVERRIDES: Final[Mapping[tuple[str, grpc.StatusCode], str]] = MappingProxyType(
    {
        ("UNKNOWN_REGION", _C.UNAUTHENTICATED): (
            "the caller's client certificate names a region the registry does not know "
            "(CallerRejected): it is the caller that is not authenticated, not an argument"
        ),
        ("CERTIFICATE_NOT_TRUSTED", _C.PERMISSION_DENIED): (
            "the query path finds the caller's agency gone from the registry it decides with "
            "(the registry changed after the call was authenticated)"
        ),
        ("PEER_UNAVAILABLE", _C.DEADLINE_EXCEEDED): (
            "the provider region's gateway did not answer within the caller's own deadline "
            "(within a shorter bound of this gateway's it is UNAVAILABLE)"
        ),
        ("CASE_EVENT_INVALID", _C.INVALID_ARGUMENT): (
            "Peer.DeliverCaseEvents: the event is signed by the sending region but is not a case "
            "event of the model, or its attachments do not match what it names (a malformed "
            "delivery rather than one the region may not make)"
        ),
        ("FIELD_NOT_ALLOWED", _C.DATA_LOSS): (
            "the owner's sealed answer carries fields beyond the decision: withheld, a failure "
            "of the exchange rather than a refusal of the caller"
        ),
    }
)
# Codes that say the exchange failed (audited `failed`), not that the caller was refused
# (`denied`).
FAILURE_CODES: Final = frozenset({_C.UNAVAILABLE, _C.DATA_LOSS, _C.DEADLINE_EXCEEDED})
# A peer's refusal with a contract reason and one of these codes is passed on to the caller
# with that code and reason (and this gateway's own sentence); any other is PEER_UNAVAILABLE.
RELAYED_CODES: Final = frozenset(
    {
        _C.INVALID_ARGUMENT,
        _C.PERMISSION_DENIED,
        _C.NOT_FOUND,
        _C.FAILED_PRECONDITION,
        _C.RESOURCE_EXHAUSTED,
        _C.UNAVAILABLE,
    }
)
# One plain sentence per contract reason, from the table: what a client or a peer may read.
PLAIN_MESSAGES: Final[Mapping[str, str]] = MappingProxyType(
    {reason: entry.plain for reason, entry in REASONS.items()}
)


def status_code(reason: str) -> grpc.StatusCode:
    """The status code the table gives `reason` (KeyError for a reason outside the contract)."""
    return REASONS[reason].code


# Reasons of an outage of what a gateway depends on (its audit store, Redis, its data system,
# a peer, the registry source): their message is always the fixed sentence, since the refusal's
# own text quotes a driver's. (SEAL_KEY_UNAVAILABLE is a configuration state, said with the
# registry's public key id; a requesting gateway still passes it on in the fixed sentence.)
FIXED_MESSAGE_REASONS: Final = frozenset(
    {
        "AUDIT_UNAVAILABLE",
        "PEER_UNAVAILABLE",
        "PROVIDER_UNAVAILABLE",
        "REGISTRY_STALE",
        "REVOCATION_UNAVAILABLE",
        "SHARED_STATE_UNAVAILABLE",
    }
)


_RELAYED = re.compile(r"region ([0-9A-Za-z_-]{1,32}): (.*)")


def client_message(reason: str, message: str) -> str:
    """The status message sent with `reason`: its fixed sentence for a reason of an outage (the
    text the refusal was made with is logged here, for the operator), else `message`; bounded.
    """
    if reason in FIXED_MESSAGE_REASONS:
        fixed = PLAIN_MESSAGES[reason]
        relayed = _RELAYED.fullmatch(message)
        if relayed is not None and relayed.group(2) == fixed:
            return message  # relayed_message(region, reason): a region code and the sentence
        if message and message != fixed:
            log.warning("refused with %s: %s", reason, message)
        return fixed
    return bounded_message(message)


def relayed_message(region: str, reason: str) -> str:
    """What a requesting gateway tells its client of a peer's refusal with `reason`: the region
    and the reason's fixed sentence, never the peer's own words (they are logged, quoted)."""
    return f"region {region}: {PLAIN_MESSAGES.get(reason, 'the request was refused')}"


# A peer's status message goes into our log lines as `peer_text`: at most this many characters.
MAX_PEER_TEXT_CHARS = 200
_PEER_TEXT = reprlib.Repr()
_PEER_TEXT.maxstring = MAX_PEER_TEXT_CHARS


def peer_text(text: str) -> str:
    """Words another party sent (a peer's status message), for one log line: quoted, control
    characters escaped (no forged lines), cut to about MAX_PEER_TEXT_CHARS (a status message
    may be as long as gRPC's metadata allows)."""
    return _PEER_TEXT.repr(text)


class Refusal(GatewayError):
    """A call refused: the ErrorInfo `reason`, a sentence for a person, and what travels with
    them (ErrorInfo `metadata`, such as a report's "index"; a RetryInfo delay). The status code
    is the table's for the reason, unless made with one of the reason's `OVERRIDES`.

    `audited` is set once the refusal's own audit record is written (or was attempted)."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        metadata: Mapping[str, str] | None = None,
        audited: bool = False,
        retry_after_seconds: float | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"{reason!r} is not a reason of the contract")
        if code is not None and code != REASONS[reason].code and (reason, code) not in OVERRIDES:
            raise ValueError(f"{reason} is not sent with {code.name} (gateway.errors.OVERRIDES)")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self._code = code or REASONS[reason].code
        self.metadata = dict(metadata or {})
        self.audited = audited
        self.retry_after_seconds = retry_after_seconds

    @classmethod
    def passed_on(cls, code: grpc.StatusCode, reason: str, message: str, **kwargs: Any) -> Refusal:
        """A refusal another party made (a peer gateway, the data system), passed on with the
        code it came with, whatever the table says."""
        refusal = cls(reason, message, **kwargs)
        refusal._code = code
        return refusal

    @property
    def code(self) -> grpc.StatusCode:
        return self._code

    @property
    def failed(self) -> bool:
        """The exchange failed (an outage, a bad answer, a deadline), rather than the caller
        being refused: audited `failed`, not `denied`."""
        return self._code in FAILURE_CODES


class CallerRejected(Refusal):
    """The caller is not a party the current registry trusts (UNAUTHENTICATED; UNAVAILABLE
    when there is no current registry to decide with)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(
            reason,
            message,
            code=grpc.StatusCode.UNAUTHENTICATED if reason == "UNKNOWN_REGION" else None,
        )


def bounded_message(message: str) -> str:
    """`message`, cut to at most MAX_STATUS_MESSAGE_BYTES of UTF-8 (a message may quote a
    request value, and a request value may be megabytes long)."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_STATUS_MESSAGE_BYTES:
        return message
    cut = encoded[: MAX_STATUS_MESSAGE_BYTES - 3].decode("utf-8", "ignore")
    return cut + "…"


def _status_message(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None,
    retry_after_seconds: float | None,
) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))
    details = [detail]
    if retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(retry_after_seconds * 1e9)))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    numeric: int = code.value[0]
    return status_pb2.Status(code=numeric, message=client_message(reason, message), details=details)


def rich_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
    *,
    retry_after_seconds: float | None = None,
) -> grpc.Status:
    """A gRPC status carrying `google.rpc.ErrorInfo(reason, domain="tongban")`, and a
    `google.rpc.RetryInfo` when the caller should ask again after `retry_after_seconds`."""
    status = _status_message(code, reason, message, metadata, retry_after_seconds)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def status_of(refusal: Refusal) -> status_pb2.Status:
    """The `google.rpc.Status` a refusal is sent as (a whole call's, or a batch item's): the
    code from the table (or the refusal's override), its reason, metadata and retry delay, and
    the message a client may read (`client_message`)."""
    return _status_message(
        refusal.code,
        refusal.reason,
        refusal.message,
        refusal.metadata,
        refusal.retry_after_seconds,
    )


async def refuse(context: grpc.aio.ServicerContext[Any, Any], refusal: Refusal) -> NoReturn:
    """End the call with the refusal's status (`status_of`); never returns."""
    await context.abort_with_status(rpc_status.to_status(status_of(refusal)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
    *,
    retry_after_seconds: float | None = None,
) -> NoReturn:
    """End the call with a rich status with this code, whatever the table says (and ErrorInfo
    `metadata`, if any); never returns. The gateway's services raise `Refusal` instead: this is
    for a status made elsewhere (a data system's, a test's stand-in for a peer)."""
    await context.abort_with_status(
        rich_status(code, reason, message, metadata, retry_after_seconds=retry_after_seconds)
    )
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def error_info_of(exc: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo | None, str]:
    """The Tongban `ErrorInfo` (domain "tongban") of a failed call's rich status, or None, and
    the status message (the call's details when there is no rich status). A detail that does
    not parse is no detail, nor is one whose reason is not in the contract (KNOWN_REASONS): a
    peer's made-up reason never becomes ours, an audit record's or a metric label."""
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a malformed detail from a peer is no detail, never a crash
            break
        info = status_error_info(status)
        if info is not None:
            return info, status.message
    return None, exc.details() or ""


def status_error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The Tongban `ErrorInfo` of a `google.rpc.Status` (a call's rich status, or a batch
    item's), or None: as `error_info_of`, a detail that does not unpack or names a reason
    outside the contract is no detail."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        try:
            unpacked = detail.Unpack(info)
        except Exception:  # a malformed detail from a peer is no detail, never a crash
            unpacked = False
        if unpacked and info.domain == DOMAIN and info.reason in KNOWN_REASONS:
            return info
    return None
