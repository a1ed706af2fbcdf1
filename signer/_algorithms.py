"""The algorithm policy: which JWS algorithms Tongban accepts, each bound to one key type.

Every signature Tongban checks goes through `verify_signature`, the function the Wycheproof
conformance tests exercise too. The cryptography is PyJWT's algorithm objects (themselves over
`cryptography`); the policy around them is ours:

- ES256: ECDSA P-256 / SHA-256, signature in JWS (IEEE P1363 r||s) form, 64 bytes.
- EdDSA: Ed25519 only (Ed448 is not in the profile).
- PS256: RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt; RSA keys of at least 2048 bits.
- `none`, HMAC (`HS*`) and anything else are refused, whatever the header says.
"""

from __future__ import annotations

from typing import Final, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAPSSAlgorithm

from signer._keyfile import PrivateKey, PublicKey
from signer.errors import UnsupportedAlgorithm

# What the package exports; `check_key_fits` and `verify_fitted` serve its other modules.
__all__ = ["ALLOWED_ALGORITHMS", "sign_bytes", "verify_signature"]

ALLOWED_ALGORITHMS: Final = ("ES256", "EdDSA", "PS256")
MIN_RSA_BITS: Final = 2048  # bits; smaller RSA keys are refused for signing and verifying

_ES256 = ECAlgorithm(ECAlgorithm.SHA256)
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_EDDSA = OKPAlgorithm()
_PS256 = RSAPSSAlgorithm(RSAPSSAlgorithm.SHA256)


def check_key_fits(algorithm: str, key: PublicKey | PrivateKey) -> None:
    """Raise `UnsupportedAlgorithm` unless `algorithm` is allowed and `key` is its key type."""
    if algorithm not in ALLOWED_ALGORITHMS:
        raise UnsupportedAlgorithm(
            f"algorithm {algorithm!r} is not allowed (allowed: {', '.join(ALLOWED_ALGORITHMS)})"
        )
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if algorithm == "PS256" and key.key_size < MIN_RSA_BITS:
            raise UnsupportedAlgorithm(
                f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} are required"
            )
        fits = algorithm == "PS256"
    elif isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        fits = algorithm == "ES256" and isinstance(key.curve, ec.SECP256R1)
    else:
        fits = algorithm == "EdDSA"
    if not fits:
        raise UnsupportedAlgorithm(f"algorithm {algorithm} does not fit a {type(key).__name__}")


def verify_signature(
    algorithm: str, key: PublicKey, signing_input: bytes, signature: bytes
) -> bool:
    """True only if `signature` is a valid JWS `algorithm` signature by `key` over the input.

    Raises `UnsupportedAlgorithm` when the algorithm is not allowed or does not fit the key.
    """
    check_key_fits(algorithm, key)
    return verify_fitted(algorithm, key, signing_input, signature)


def verify_fitted(algorithm: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    """`verify_signature` for a key already checked with `check_key_fits(algorithm, key)`."""
    try:
        if algorithm == "ES256":
            # JWS carries r||s (RFC 7518 3.4); cryptography wants DER. Same as PyJWT's
            # ECAlgorithm.verify, without its per-call key-type dispatch.
            if len(signature) != 64:
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            cast(ec.EllipticCurvePublicKey, key).verify(der, signing_input, _ECDSA_SHA256)
            return True
        if algorithm == "EdDSA":
            return bool(_EDDSA.verify(signing_input, key, signature))  # type: ignore[arg-type]
        return bool(_PS256.verify(signing_input, key, signature))  # type: ignore[arg-type]
    except (InvalidSignature, ValueError, TypeError):
        return False


def sign_bytes(algorithm: str, key: PrivateKey, signing_input: bytes) -> bytes:
    """A JWS `algorithm` signature over the input (ES256 in P1363 form)."""
    check_key_fits(algorithm, key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return bytes(_ES256.sign(signing_input, key))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return bytes(_EDDSA.sign(signing_input, key))
    return bytes(_PS256.sign(signing_input, key))
