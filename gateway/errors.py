"""Errors raised by the gateway, and the one place they become gRPC statuses.

    GatewayError
    ├── ConfigError            a configuration file or option is wrong (file, key, reason)
    └── CallerRejected         the caller's certificate does not name a party the registry trusts

Every refusal sent to a client is a standard gRPC status with a `google.rpc.ErrorInfo` detail
(`domain` "tongban", `reason` one of ARCHITECTURE.md's codes), sent by `abort()`.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tongban.v1 import common_pb2

__all__ = [
    "DOMAIN",
    "KNOWN_REASONS",
    "MAX_PEER_TEXT_CHARS",
    "MAX_STATUS_MESSAGE_BYTES",
    "CallerRejected",
    "ConfigError",
    "GatewayError",
    "abort",
    "bounded_message",
    "error_info_of",
    "peer_text",
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
    status = status_pb2.Status(code=numeric, message=bounded_message(message), details=details)
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
