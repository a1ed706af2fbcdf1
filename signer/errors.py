"""Errors raised by the signer package.

One root, with a subtree by who is at fault::

    SignerError                 anything this package raises on purpose
    ├── KeyFileError            a key file is missing, unreadable, malformed, encrypted with
    │                           another passphrase, or holds a key type Tongban does not use
    └── UnsupportedAlgorithm    an algorithm name or key type outside ES256 / EdDSA / PS256

Messages name the file and the reason; they never contain key material or a passphrase.
Foreign exceptions are kept as ``__cause__`` (``raise KeyFileError(...) from exc``).
"""

from __future__ import annotations

__all__ = ["KeyFileError", "SignerError", "UnsupportedAlgorithm"]


class SignerError(Exception):
    """Root of every error the signer package raises on purpose."""


class KeyFileError(SignerError):
    """A private key file could not be read, decrypted, parsed or written."""


class UnsupportedAlgorithm(SignerError):
    """An algorithm name or key type that Tongban does not sign with."""
