"""What the service edges read from a call's metadata, written once for every servicer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from gateway.errors import Refusal
from gateway.tokens import TokenClaims, TokenError, TokenVerifier, bearer_token

if TYPE_CHECKING:
    from gateway.identity import Caller
    from registry import Registry

__all__ = ["request_token", "verified_token"]


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


def verified_token(
    context: grpc.aio.ServicerContext[Any, Any],
    verifier: TokenVerifier,
    registry: Registry,
    caller: Caller,
) -> TokenClaims:
    """The claims of the call's request token, verified against `registry` for `caller` (its
    agency and region, bound to its TLS certificate); otherwise a Refusal: TOKEN_INVALID when
    the call carries none, else the token's own reason. For the services an agency of the
    gateway's own region calls with its operator's (or its portal's applicant's) token."""
    token = request_token(context)
    if not token:
        raise Refusal(
            "TOKEN_INVALID", "a request token is required (authorization: Bearer <token>)"
        )
    try:
        return verifier.verify(
            token,
            registry=registry,
            caller_agency=caller.agency_id,
            caller_region=caller.region,
            client_thumbprint=caller.thumbprint,
        )
    except TokenError as exc:
        raise Refusal(exc.reason, str(exc)) from exc
