"""The identity service's keys, as the gateway meets them in JWS documents it issues or
verifies (request tokens, `gateway.tokens`; consents, `gateway.consent`): the algorithm of a
signing key, and the registry `token` key a header's kid names, checked against its algorithm
(its public key read once per certificate)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from registry import KeyEntry, KeyUsage, Registry
from signer import PrivateKey, PublicKey, UnsupportedAlgorithm, algorithm_for_key

__all__ = ["MAX_KID_CHARS", "jwt_algorithm", "registry_token_key"]

MAX_KID_CHARS: Final = 128  # a kid is 43 base64url characters


def jwt_algorithm(key: PrivateKey, what: str = "a token") -> str:
    """The JWS algorithm of an identity service's key (request tokens, consents): ES256 or
    EdDSA, what PyJWT and other JWT libraries verify; ValueError for any other key."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise ValueError(f"{what} is signed with a P-256 (ES256) or Ed25519 (EdDSA) key only")


def registry_token_key(
    header: Mapping[str, Any],
    registry: Registry,
    *,
    region: str | None,
    what: str,
    refuse: Callable[[str], Exception],
) -> tuple[KeyEntry, PublicKey]:
    """The registry `token` key (an identity service's) a JWS header's kid names, checked
    against the header's algorithm: `region`'s, or with `region` None any region's own. `what`
    names the document in the refusals ("the token", "the consent"); `refuse(message)` makes
    the exception raised. For request tokens (`TokenVerifier.verify`, steps 3 and 4) and
    consents (`gateway.consent`); `verify_json` has checked alg, typ and extensions before."""
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        raise refuse(f"{what}'s header names no key (kid)")
    algorithm = header["alg"]
    entry = registry.key(kid)
    if entry is None:
        raise refuse(f"{what} is signed by a key unknown to registry {registry.version}")
    if entry.usage is not KeyUsage.TOKEN:
        raise refuse(f"key {kid} is a {entry.usage.value} key, not a token key")
    if region is None and entry.owner != entry.region:
        raise refuse(f"{what} is not signed by a region's token key")
    if region is not None and (entry.owner != region or entry.region != region):
        raise refuse(
            f"{what} is signed by the token key of {entry.owner}, not of the caller's "
            f"region {region}"
        )
    try:
        public_key = _token_public_key(entry.certificate)
        key_algorithm = algorithm_for_key(public_key)
    except ValueError as exc:
        raise refuse(f"the certificate of token key {kid} cannot be read") from exc
    except UnsupportedAlgorithm as exc:
        raise refuse(f"token key {kid} has a key type tokens do not use") from exc
    if key_algorithm != algorithm or entry.algorithm != algorithm:
        raise refuse(f"token key {kid} does not sign with {what}'s algorithm")
    return entry, public_key


@functools.lru_cache(maxsize=256)
def _token_public_key(certificate: bytes) -> PublicKey:
    """The public key of a token key's certificate (DER), read once; ValueError when it cannot
    be read, UnsupportedAlgorithm for a key type tokens do not use."""
    loaded = x509.load_der_x509_certificate(certificate).public_key()
    if not isinstance(loaded, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise UnsupportedAlgorithm("token keys are P-256 or Ed25519")
    return loaded
