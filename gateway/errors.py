"""Errors raised by the gateway, and the one place they become gRPC statuses.

    GatewayError
    ├── ConfigError            a configuration file or option is wrong (file, key, reason)
    └── CallerRejected         the caller's certificate does not name a party the registry trusts

Every refusal sent to a client is a standard gRPC status with a `google.rpc.ErrorInfo` detail
(`domain` "tongban", `reason` one of ARCHITECTURE.md's codes), sent by `abort()`.

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
from types import MappingProxyType
from typing import Final, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tongban.v1 import common_pb2

__all__ = [
    "DOMAIN",
    "FIXED_MESSAGE_REASONS",
    "KNOWN_REASONS",
    "MAX_PEER_TEXT_CHARS",
    "MAX_STATUS_MESSAGE_BYTES",
    "PLAIN_MESSAGES",
    "CallerRejected",
    "ConfigError",
    "GatewayError",
    "abort",
    "bounded_message",
    "client_message",
    "error_info_of",
    "peer_text",
    "relayed_message",
    "rich_status",
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

# One plain sentence per contract reason: what a client or a peer may read. No host, port,
# path, driver text or request value in any of them.
PLAIN_MESSAGES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "PURPOSE_NOT_APPROVED": "no agreement approves this purpose for this dataset",
        "FIELD_NOT_ALLOWED": "a requested field is not allowed for this purpose",
        "AGREEMENT_EXPIRED": "the agreement is outside its validity window",
        "TOKEN_EXPIRED": "the request token has expired",
        "TOKEN_INVALID": "the request token is missing or invalid",
        "REQUEST_REPLAYED": "this request id was already used",
        "UNKNOWN_REGION": "the region is not in the registry",
        "SEAL_INVALID": "the e-seal or e-signature did not verify",
        "AUDIT_UNAVAILABLE": "the audit log is unavailable: nothing was released",
        "QUOTA_EXCEEDED": "the agreement's quota is used up: try again next minute",
        "SUBJECT_ID_INVALID": "the subject id is not well formed for this dataset",
        "REGISTRY_STALE": "the gateway holds no current registry",
        "NO_AGREEMENT": "no agreement links the requester and the provider region",
        "DATASET_NOT_SHARED": "the dataset is not shared with the requester",
        "CASE_ID_REQUIRED": "a case id is required for this purpose",
        "UNKNOWN_DATASET": "the dataset is not in the registry",
        "UNKNOWN_PURPOSE": "the purpose is not in the registry",
        "CERTIFICATE_NOT_TRUSTED": "the certificate does not name a party the registry trusts",
        "TOKEN_BINDING_MISMATCH": "the request token is bound to another client certificate",
        "NOT_AUTHORISED_ROLE": "the caller does not hold the role this call needs",
        "PROVIDER_UNAVAILABLE": "the data system is unavailable",
        "PEER_UNAVAILABLE": "the provider region's gateway is unavailable",
        "REQUEST_TOO_LARGE": "the request exceeds a size limit",
        "INVALID_ARGUMENT_FORMAT": "a request argument is malformed",
        "SEAL_KEY_UNAVAILABLE": "the region's seal key is unavailable",
        "NOT_IMPLEMENTED": "this gateway does not serve this call",
        "SUBJECT_NOT_FOUND": "no record is held for this subject in this dataset",
        "SHARED_STATE_UNAVAILABLE": "the gateway's shared state is unavailable: try again later",
        "REQUEST_CANCELLED": "the request was cancelled",
        "REPORT_SIGNATURE_INVALID": "the report batch is not validly signed",
        "REPORT_PAYLOAD_MISMATCH": "the reports are not the ones the batch signs",
        "CACHE_NOT_ALLOWED": "the dataset may not be answered from a requester's cache",
        "REPORT_ANSWER_UNKNOWN": "no answer matches the reported access",
        "CHECKPOINT_RATE_LIMITED": "a checkpoint was signed for this caller moments ago",
        "TOO_MANY_CALLS": "too many calls in flight: retry when some have ended",
        "REQUEST_INCOMPLETE": "the request did not arrive in full in time",
        "INTERNAL_ERROR": "the gateway failed to handle the request",
    }
)
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


class GatewayError(Exception):
    """Root of the gateway's own errors."""


class ConfigError(GatewayError):
    """A configuration problem; the message names the file and key."""


class CallerRejected(GatewayError):
    """The caller is not a party the current registry trusts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def bounded_message(message: str) -> str:
    """`message`, cut to at most MAX_STATUS_MESSAGE_BYTES of UTF-8 (a message may quote a
    request value, and a request value may be megabytes long)."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_STATUS_MESSAGE_BYTES:
        return message
    cut = encoded[: MAX_STATUS_MESSAGE_BYTES - 3].decode("utf-8", "ignore")
    return cut + "…"


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
    status = status_pb2.Status(
        code=numeric, message=client_message(reason, message), details=details
    )
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
    *,
    retry_after_seconds: float | None = None,
) -> NoReturn:
    """End the call with a rich status (and ErrorInfo `metadata`, if any); never returns."""
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
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == DOMAIN and info.reason in KNOWN_REASONS:
                return info, status.message
    return None, exc.details() or ""
