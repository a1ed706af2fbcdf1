"""Caller request tokens: short-lived JWTs bound to the caller's TLS client certificate.

A region's identity service signs a token for one of its agencies' operators with the region's
identity (``token``) key, published in the registry. The token travels in the ``authorization``
metadata of each call to the gateway of the caller's own region (``aud``), names the operator
(``sub``) and the agency, lives at most five minutes, and is bound to the caller's TLS client
certificate by ``cnf`` ``x5t#S256`` (RFC 8705), so it is useless from any other client. A token
may serve several requests until it expires; `TokenVerifier` remembers a verified token until
then (ARCHITECTURE.md §3, "Caller identity").

`issue_token` plays the identity service for tests, the demo and `tongban token issue`. A token
is signed JSON (`signer.sign_json`, `signer.verify_json`), like registry snapshots and
access-report batches, with `typ` JWT.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography import x509

from gateway._errors import GatewayError
from gateway._identity_keys import jwt_algorithm, registry_token_key
from gateway.applicant_ids import is_applicant_id
from registry import Inventory, KeyEntry, KeyRefused, KeyState, KeyUsage, Registry
from signer import (
    PrivateKey,
    PublicKey,
    SignedJsonAlgorithmRefused,
    SignedJsonExtensionRefused,
    SignedJsonMalformed,
    SignedJsonSignatureInvalid,
    SignedJsonTypeRefused,
    SignedJsonUnsigned,
    canonical_json,
    key_reference,
    open_signing_key,
    sign_json,
    verify_json,
    x5t_s256_of_certificate,
)

__all__ = [
    "AUDIENCE_PREFIX",
    "ISSUER_PREFIX",
    "LEEWAY_SECONDS",
    "MAX_TOKEN_BYTES",
    "MAX_TOKEN_LIFETIME_SECONDS",
    "TOKEN_ALGORITHMS",
    "TOKEN_BINDING_MISMATCH",
    "TOKEN_EXPIRED",
    "TOKEN_INVALID",
    "TokenClaims",
    "TokenError",
    "TokenVerifier",
    "audience_for",
    "bearer_token",
    "issue_agency_token",
    "issue_token",
    "issuer_for",
]

AUDIENCE_PREFIX: Final = "urn:tongban:gateway:"
ISSUER_PREFIX: Final = "urn:tongban:idp:"
MAX_TOKEN_LIFETIME_SECONDS: Final = 300  # exp - iat, at most
MAX_TOKEN_BYTES: Final = 8 * 1024  # a token is ~600 bytes; anything this large is not one
LEEWAY_SECONDS: Final = 30  # clock skew allowed between the identity service and the gateway
TOKEN_ALGORITHMS: Final = ("ES256", "EdDSA")
MAX_CLAIM_CHARS: Final = 256  # sub, agency, jti

# Reasons (ARCHITECTURE.md error reasons; contract).
TOKEN_INVALID: Final = "TOKEN_INVALID"  # noqa: S105 - a reason code, not a secret
TOKEN_EXPIRED: Final = "TOKEN_EXPIRED"  # noqa: S105
TOKEN_BINDING_MISMATCH: Final = "TOKEN_BINDING_MISMATCH"  # noqa: S105

_REQUIRED_CLAIMS: Final = ("exp", "iat", "aud", "iss", "jti", "sub", "agency")
_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BEARER: Final = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+)")
_SWEEP_INTERVAL_SECONDS: Final = 1.0  # a full cache is swept of expired entries at most this often


def audience_for(region: str) -> str:
    """The `aud` of a token: the gateway of the caller's own region."""
    return AUDIENCE_PREFIX + region


def issuer_for(region: str) -> str:
    """The `iss` of a token: the region's identity service."""
    return ISSUER_PREFIX + region


def issue_token(
    key: PrivateKey,
    kid: str,
    *,
    region: str,
    operator: str,
    agency: str,
    thumbprint: str,
    lifetime_seconds: int = MAX_TOKEN_LIFETIME_SECONDS,
    now: datetime,
    token_id: str | None = None,
    applicant: str = "",
) -> str:
    """A request token for `operator` of `agency` (of `region`), bound to the TLS certificate
    whose `x5t#S256` is `thumbprint`, signed with the region's token key `key` (`kid`: the
    x5t#S256 of that key's certificate); `applicant` (claim): for a citizen portal, the
    citizen id (or USCC) the call is for (Cases shows them their own cases only).

    Raises `ValueError` for a key that is not P-256 or Ed25519, a lifetime outside 1..300
    seconds, a naive `now`, or an empty name.
    """
    algorithm = jwt_algorithm(key)
    if isinstance(lifetime_seconds, bool) or not isinstance(lifetime_seconds, int):
        raise TypeError("the token lifetime is a whole number of seconds")
    if not 1 <= lifetime_seconds <= MAX_TOKEN_LIFETIME_SECONDS:
        raise ValueError(
            f"a token lives 1 to {MAX_TOKEN_LIFETIME_SECONDS} seconds, not {lifetime_seconds}"
        )
    if now.tzinfo is None:
        raise ValueError("the issuing time must carry a time zone")
    for name, value in (
        ("kid", kid),
        ("region", region),
        ("operator", operator),
        ("agency", agency),
        ("thumbprint", thumbprint),
    ):
        if not value:
            raise ValueError(f"the token's {name} is empty")
    if token_id is not None and not token_id:
        raise ValueError("the token id is empty")
    if applicant and not is_applicant_id(applicant):
        raise ValueError("the applicant is not a citizen id (GB 11643) or USCC (GB 32100)")
    issued_at = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": issuer_for(region),
        "sub": operator,
        "agency": agency,
        "aud": audience_for(region),
        "iat": issued_at,
        "exp": issued_at + lifetime_seconds,
        "jti": token_id or secrets.token_urlsafe(16),
        "cnf": {"x5t#S256": thumbprint},
    }
    if applicant:
        claims["applicant"] = applicant
    return sign_json(canonical_json(claims), key, typ="JWT", kid=kid, algorithms=(algorithm,))


def issue_agency_token(
    pki_root: Path,
    agency: str,
    operator: str,
    *,
    lifetime_seconds: int,
    now: datetime,
    passphrase: bytes | None = None,
    applicant: str = "",
) -> str:
    """What a region's identity service does, from a PKI folder's key inventory: a request token
    for `operator` of `agency`, signed with its region's active token key and bound to the
    agency's active TLS certificate. ValueError says what is missing."""
    inventory = Inventory.load(pki_root)
    owned = [r for r in inventory.records() if r.owner == agency]
    if not owned:
        raise ValueError(f"{agency!r} is not an agency of {inventory.path}")
    if any(r.owner == r.region for r in owned):
        raise ValueError(f"{agency!r} is a region, not an agency: tokens are for agencies")
    tls = inventory.find(agency, KeyUsage.TLS, KeyState.ACTIVE)
    if not tls:
        raise ValueError(f"agency {agency} has no active TLS certificate in {inventory.path}")
    region = tls[-1].region
    token_keys = inventory.find(region, KeyUsage.TOKEN, KeyState.ACTIVE)
    if not token_keys:
        raise ValueError(f"region {region} has no active token key in {inventory.path}")
    token_key = token_keys[-1]
    certificate_path = pki_root / tls[-1].certificate
    try:
        certificate = x509.load_pem_x509_certificates(certificate_path.read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        raise ValueError(
            f"{certificate_path}: the agency's TLS certificate cannot be read"
        ) from exc
    key = open_signing_key(key_reference(token_key.located_private_key(), pki_root), passphrase)
    try:
        return issue_token(
            key,
            token_key.kid,
            region=region,
            operator=operator,
            agency=agency,
            thumbprint=x5t_s256_of_certificate(certificate),
            lifetime_seconds=lifetime_seconds,
            now=now,
            applicant=applicant,
        )
    except ValueError as exc:
        raise ValueError(f"token key {token_key.kid}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says."""

    issuer: str
    region: str  # the caller's region, whose identity service issued the token
    operator: str  # sub
    agency: str
    audience: str
    issued_at: datetime
    expires_at: datetime
    token_id: str  # jti
    thumbprint: str  # cnf x5t#S256: the TLS client certificate the token is bound to
    kid: str  # the registry key that signed it
    applicant: str = ""  # the applicant a citizen portal calls for (never logged)


class TokenError(GatewayError):
    """A token refused: `reason` is TOKEN_INVALID, TOKEN_EXPIRED or TOKEN_BINDING_MISMATCH.

    The message is one sentence for the caller; it never contains the token.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _invalid(message: str) -> TokenError:
    return TokenError(TOKEN_INVALID, message)


def bearer_token(authorization: str) -> str:
    """The token of an `authorization` metadata value, ``Bearer <token>``."""
    match = (
        _BEARER.fullmatch(authorization.strip())
        if len(authorization) < 2 * MAX_TOKEN_BYTES
        else None
    )
    if match is None:
        raise _invalid("the authorization metadata is not a bearer token")
    return match.group(1)


def _number(payload: dict[str, Any], claim: str) -> float:
    value = payload.get(claim)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"the token's {claim!r} claim is not a time")
    if not 0 <= value < 1 << 40:
        raise _invalid(f"the token's {claim!r} claim is out of range")
    return float(value)


def _text(payload: dict[str, Any], claim: str) -> str:
    value = payload.get(claim)
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_CLAIM_CHARS
        or not value.isprintable()  # no control characters, no lone surrogates
    ):
        raise _invalid(f"the token's {claim!r} claim is not a non-empty printable string")
    return value


def _applicant(payload: dict[str, Any]) -> str:
    """The optional `applicant` claim: a citizen id or USCC with its check character."""
    if "applicant" not in payload:
        return ""
    value = payload["applicant"]
    if not isinstance(value, str) or not is_applicant_id(value):
        raise _invalid("the token's 'applicant' claim is not a citizen id or USCC")
    return value


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _check_shape(token: str) -> None:
    """Step 1 of `TokenVerifier.verify`: at most 8 KiB, a compact JWS."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
        raise _invalid(f"the token is larger than {MAX_TOKEN_BYTES} bytes")
    if not _COMPACT_JWS.fullmatch(token):
        raise _invalid("the token is not a compact JWS")


def _check_times(payload: dict[str, Any], now_ts: float) -> tuple[float, float]:
    """Step 6 of `TokenVerifier.verify`: (iat, exp), checked against `now_ts` with the
    leeway."""
    issued = _number(payload, "iat")
    expires = _number(payload, "exp")
    if issued > now_ts + LEEWAY_SECONDS:
        raise _invalid("the token was issued in the future")
    if "nbf" in payload and _number(payload, "nbf") > now_ts + LEEWAY_SECONDS:
        raise _invalid("the token is not valid yet")
    if expires <= issued:
        raise _invalid("the token expires before it was issued")
    if expires - issued > MAX_TOKEN_LIFETIME_SECONDS:
        raise _invalid(
            f"the token lives longer than the {MAX_TOKEN_LIFETIME_SECONDS} seconds allowed"
        )
    if expires <= now_ts - LEEWAY_SECONDS:
        raise TokenError(TOKEN_EXPIRED, "the token has expired")
    return issued, expires


def _check_binding(
    payload: dict[str, Any], agency: str, caller_agency: str, client_thumbprint: str
) -> str:
    """Step 8 of `TokenVerifier.verify`: the token names the caller's agency and is bound to
    its TLS client certificate; the bound thumbprint."""
    if agency != caller_agency:
        raise TokenError(
            TOKEN_BINDING_MISMATCH, "the token was issued to another agency than the caller"
        )
    confirmation = payload.get("cnf")
    bound = confirmation.get("x5t#S256") if isinstance(confirmation, dict) else None
    if not isinstance(bound, str) or bound != client_thumbprint:
        raise TokenError(
            TOKEN_BINDING_MISMATCH,
            "the token is not bound to the caller's TLS client certificate",
        )
    return bound


_CacheKey = tuple[bytes, int, str, str, str]


class TokenVerifier:
    """Verifies request tokens for the gateway of `region`, remembering good ones until `exp`.

    `clock` is the only source of time (PyJWT's own time checks are switched off and made here
    against it). One verifier serves one event loop; it is not meant to be shared by threads.
    """

    def __init__(
        self, *, region: str, clock: Callable[[], datetime], max_cached: int = 10_000
    ) -> None:
        if max_cached < 1:
            raise ValueError("max_cached must be at least 1")
        self.region = region
        self.audience = audience_for(region)
        self._clock = clock
        self._max_cached = max_cached
        self._cache: OrderedDict[_CacheKey, TokenClaims] = OrderedDict()
        self._version: int | None = None
        self._last_sweep = float("-inf")

    @property
    def cached(self) -> int:
        """How many verified tokens are remembered."""
        return len(self._cache)

    def verify(
        self,
        token: str,
        *,
        registry: Registry,
        caller_agency: str,
        caller_region: str,
        client_thumbprint: str,
    ) -> TokenClaims:
        """The claims of `token`, presented by `caller_agency` (of `caller_region`) over a TLS
        connection whose client certificate has `client_thumbprint`; else `TokenError`.

        1. Size (at most 8 KiB) and shape (compact JWS: three base64url parts).
        2. Cache: a token verified before for the same caller and certificate under this
           registry version is accepted again until its `exp` (the cache is emptied when the
           registry version changes).
        3. Unverified header: `alg` ES256 or EdDSA, `typ` JWT if present, no `crit`/`b64`,
           `kid` a string. The kid is only a hint of which registry key to try:
        4. the registry key must exist, have usage `token`, belong to the caller's region (an
           agency's tokens come from its own region's identity service), and its certificate's
           key type must be the one `alg` names.
        5. The signature verifies with exactly that algorithm and key (steps 3 to 5 are
           `signer.verify_json`'s, with the registry lookup of 4 as its key lookup); then the
           claims, read by PyJWT: `aud` this gateway (a single string), `iss` the caller's
           region's identity service, and exp, iat, aud, iss, jti, sub and agency required.
        6. Times, against the clock with 30 s of leeway: `iat` not in the future, `nbf` (if
           any) reached, 0 < `exp - iat` <= 300 s, `exp` not passed (TOKEN_EXPIRED).
        7. The key may verify a token made at `iat` and still at the current time (not
           revoked by then, inside its certificate's validity).
        8. Binding: the `agency` claim is the caller's agency and `cnf` `x5t#S256` is the
           thumbprint of the caller's TLS client certificate (TOKEN_BINDING_MISMATCH).

        Anything else wrong is TOKEN_INVALID. Messages never contain the token.
        """
        _check_shape(token)  # 1. size and shape
        now = self._clock()
        now_ts = now.timestamp()
        cache_key: _CacheKey = (
            hashlib.sha256(token.encode("ascii")).digest(),
            registry.version,
            caller_agency,
            caller_region,
            client_thumbprint,
        )
        cached = self._cached(cache_key, registry.version, now_ts)  # 2. cache
        if cached is not None:
            return cached
        entry = self._verify_signature(token, registry, caller_region)  # 3. to 5.
        payload = self._read_claims(token, caller_region)  # 5. claims
        operator = _text(payload, "sub")
        agency = _text(payload, "agency")
        token_id = _text(payload, "jti")
        issued, expires = _check_times(payload, now_ts)  # 6. times
        try:  # 7. key state at signing and now
            entry.check_may_verify(_utc(issued))
            entry.check_may_verify(now)
        except KeyRefused as exc:
            raise _invalid(f"token key {entry.kid} may not verify this token: {exc}") from exc
        bound = _check_binding(payload, agency, caller_agency, client_thumbprint)  # 8. binding
        claims = TokenClaims(
            issuer=issuer_for(caller_region),
            region=caller_region,
            operator=operator,
            agency=agency,
            audience=self.audience,
            issued_at=_utc(issued),
            expires_at=_utc(expires),
            token_id=token_id,
            thumbprint=bound,
            kid=entry.kid,
            applicant=_applicant(payload),
        )
        self._remember(cache_key, claims, now_ts)
        return claims

    def _cached(self, cache_key: _CacheKey, version: int, now_ts: float) -> TokenClaims | None:
        """Step 2 of `verify`: the claims of a token verified before for the same caller and
        certificate under registry `version`, until its `exp` (TOKEN_EXPIRED after); the cache
        is emptied when the registry version changes."""
        if version != self._version:
            self._cache.clear()
            self._version = version
        cached = self._cache.get(cache_key)
        if cached is not None:
            if cached.expires_at.timestamp() <= now_ts - LEEWAY_SECONDS:
                del self._cache[cache_key]
                raise TokenError(TOKEN_EXPIRED, "the token has expired")
            self._cache.move_to_end(cache_key)
        return cached

    def _verify_signature(self, token: str, registry: Registry, caller_region: str) -> KeyEntry:
        """Steps 3 to 5 of `verify` (the JWS, by the signed-JSON checks): the registry key,
        found in 4 by `_token_key`, the signature verifies with."""
        found: list[KeyEntry] = []  # the registry key `_token_key` returned

        def registry_key(header: Mapping[str, Any]) -> PublicKey:
            entry, public_key = registry_token_key(
                header, registry, region=caller_region, what="the token", refuse=_invalid
            )
            found.append(entry)
            return public_key

        try:
            verify_json(
                token,
                key_for=registry_key,
                algorithms=TOKEN_ALGORITHMS,
                typ="JWT",
                typ_required=False,
                max_bytes=MAX_TOKEN_BYTES,
                what="the token",
            )
        except SignedJsonMalformed as exc:
            raise _invalid("the token's header cannot be read") from exc
        except (SignedJsonUnsigned, SignedJsonAlgorithmRefused) as exc:
            raise _invalid("the token's algorithm is not ES256 or EdDSA") from exc
        except SignedJsonTypeRefused as exc:
            raise _invalid("the token's type is not JWT") from exc
        except SignedJsonExtensionRefused as exc:
            raise _invalid("the token's header carries extensions a token does not use") from exc
        except SignedJsonSignatureInvalid as exc:
            raise _invalid(
                f"the token's signature does not verify with key {found[0].kid}"
            ) from exc
        return found[0]

    def _read_claims(self, token: str, caller_region: str) -> dict[str, Any]:
        """Step 5 of `verify`, the claims: the signature is verified already, with the registry
        key; PyJWT reads the claims with exactly the checks it made when it also verified the
        signature (the times are `_check_times`'s, against our clock)."""
        try:
            payload = jwt.decode(
                token,
                audience=self.audience,
                issuer=issuer_for(caller_region),
                options={
                    "verify_signature": False,  # done by verify_json in `_verify_signature`
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    "require": list(_REQUIRED_CLAIMS),
                    "strict_aud": True,
                    # Times are checked by `_check_times` against our clock, with the leeway.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            claim = exc.claim if exc.claim in _REQUIRED_CLAIMS else "a required"
            raise _invalid(f"the token lacks the {claim!r} claim") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid(f"the token is not for the gateway of region {self.region}") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid(
                f"the token was not issued by the identity service of region {caller_region}"
            ) from exc
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
            raise _invalid("the token is malformed") from exc
        if not isinstance(payload, dict):  # pragma: no cover - PyJWT returns a dict
            raise _invalid("the token's claims are not a JSON object")
        return payload

    def _remember(self, key: _CacheKey, claims: TokenClaims, now_ts: float) -> None:
        if len(self._cache) >= self._max_cached:
            if now_ts - self._last_sweep >= _SWEEP_INTERVAL_SECONDS:
                self._last_sweep = now_ts
                for stale in [
                    k
                    for k, c in self._cache.items()
                    if c.expires_at.timestamp() <= now_ts - LEEWAY_SECONDS
                ]:
                    del self._cache[stale]
            while len(self._cache) >= self._max_cached:
                self._cache.popitem(last=False)  # the least recently used
        self._cache[key] = claims
