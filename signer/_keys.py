"""Key providers: where a signing key lives, behind one small protocol.

Callers ask a provider to sign bytes; they never hold the private key. `FileKeyProvider` reads a
PKCS#8 file (optionally passphrase-protected); `signer._pkcs11.Pkcs11KeyProvider` signs in a
cryptographic module (PKCS#11) with the same protocol, and a remote signer would too.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signer._algorithms import check_key_fits, sign_bytes
from signer._keyfile import algorithm_for_key, load_private_key
from signer.errors import KeyFileError, SignerError

# What the package exports; `same_public_key` serves its other modules.
__all__ = ["FileKeyProvider", "KeyProvider", "x5t_s256_of_certificate", "x5t_s256_of_der"]


def x5t_s256_of_der(der: bytes) -> str:
    """The JWS `x5t#S256` (RFC 7515 §4.1.8: base64url SHA-256) of a certificate's DER encoding:
    a key's id in Tongban, and what a request token is bound to (RFC 8705 `cnf`)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def x5t_s256_of_certificate(certificate: x509.Certificate) -> str:
    """The JWS `x5t#S256` of a parsed certificate: `x5t_s256_of_der` of its DER encoding."""
    return x5t_s256_of_der(certificate.public_bytes(serialization.Encoding.DER))


@runtime_checkable
class KeyProvider(Protocol):
    """A signing key and its certificate chain (leaf first, no root)."""

    @property
    def kid(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    @property
    def certificate_chain(self) -> tuple[x509.Certificate, ...]: ...

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature of `signing_input` (for ES256, the 64-byte r||s form)."""
        ...


class FileKeyProvider:
    """A PKCS#8 private key file and its PEM certificate chain."""

    def __init__(
        self, key_path: Path, certificate_path: Path, passphrase: bytes | None = None
    ) -> None:
        self._key = load_private_key(key_path, passphrase)
        try:
            chain = tuple(x509.load_pem_x509_certificates(certificate_path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{certificate_path}: not a readable PEM certificate chain") from exc
        if not chain:
            raise KeyFileError(f"{certificate_path}: holds no certificate")
        public = self._key.public_key()
        leaf_key = chain[0].public_key()
        if not same_public_key(public, leaf_key):
            raise KeyFileError(
                f"{key_path}: does not belong to the certificate in {certificate_path}"
            )
        self._algorithm = algorithm_for_key(public)
        check_key_fits(self._algorithm, self._key)
        self._chain = chain
        self._kid = x5t_s256_of_certificate(chain[0])

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def certificate_chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    def sign(self, signing_input: bytes) -> bytes:
        return sign_bytes(self._algorithm, self._key, signing_input)

    def __repr__(self) -> str:
        return f"FileKeyProvider(kid={self._kid!r}, algorithm={self._algorithm!r})"


def same_public_key(a: object, b: object) -> bool:
    """Whether two public keys are the same key (their SubjectPublicKeyInfo DER is equal)."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        return bool(a.public_bytes(*fmt) == b.public_bytes(*fmt))  # type: ignore[attr-defined]
    except (AttributeError, ValueError, SignerError):
        return False
