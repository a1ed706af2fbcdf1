"""What the service edges read from a call's metadata, written once for every servicer."""

from __future__ import annotations

from typing import Any

import grpc

from gateway.tokens import TokenError, bearer_token

__all__ = ["request_token"]


def request_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The request token of ``authorization: Bearer <token>``, or "" when the call has none
    (or its authorization is not a bearer token): the caller's flow refuses a missing token with
    its own reason, so this never raises. Every servicer reads the token here, by one rule."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            try:
                return bearer_token(value)  # RFC 6750: the scheme's case does not matter
            except TokenError:
                return ""  # not a bearer token: refused as missing, with the form it must take
    return ""
