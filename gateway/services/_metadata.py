"""What the service edges read from a call's metadata, written once for every servicer."""

from __future__ import annotations

from typing import Any

import grpc

__all__ = ["request_token"]


def request_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The request token of ``authorization: Bearer <token>``, or "" when the call has none:
    the caller's flow refuses a missing token with its own reason, so this never raises."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""
