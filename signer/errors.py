"""Errors raised by the signer package.

One root, with a subtree by who is at fault::

    SignerError                 anything this package raises on purpose
    ├── KeyFileError            a key file is missing, unreadable, malformed, encrypted with
    │                           another passphrase, or holds a key type Tongban does not use
    ├── UnsupportedAlgorithm    an algorithm name or key type outside ES256 / EdDSA / PS256
    └── SealInvalid             a seal or signature did not reach TOTAL_PASSED; `.report` says why

Messages name the file and the reason; they never contain key material or a passphrase.
Foreign exceptions are kept as ``__cause__`` (``raise KeyFileError(...) from exc``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from signer._report import ValidationReport

__all__ = ["KeyFileError", "SealInvalid", "SignerError", "UnsupportedAlgorithm"]


class SignerError(Exception):
    """Root of every error the signer package raises on purpose."""


class KeyFileError(SignerError):
    """A private key file could not be read, decrypted, parsed or written."""


class UnsupportedAlgorithm(SignerError):
    """An algorithm name or key type that Tongban does not sign with."""


class SealInvalid(SignerError):
    """A seal or signature was not TOTAL_PASSED; `report` holds the whole validation."""

    def __init__(self, report: ValidationReport) -> None:
        sub = report.sub_indication.value if report.sub_indication else ""
        super().__init__(f"{report.indication.value}/{sub}: {report.message}")
        self.report = report
