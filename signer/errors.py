"""Errors raised by the signer package.

One root, with a subtree by who is at fault::

    SignerError                 anything this package raises on purpose
    ├── KeyFileError            a key file is missing, unreadable, malformed, encrypted with
    │                           another passphrase, or holds a key type Tongban does not use
    ├── UnsupportedAlgorithm    an algorithm name or key type outside ES256 / EdDSA / PS256
    ├── KeyModuleError          a key in a cryptographic module (PKCS#11) cannot be used: the
    │   │                       module, token, PIN or key is missing or refuses, or the key
    │   │                       would be exportable
    │   └── Pkcs11UriInvalid    a PKCS#11 URI (RFC 7512) that is malformed or not accepted
    ├── SealInvalid             a seal or signature did not reach TOTAL_PASSED; `.report` says why
    ├── RevocationDataInvalid   an OCSP response or CRL that cannot be relied on: unreadable, not
    │                           for this certificate, badly signed, by the wrong responder, stale
    ├── RevocationUnavailable   a certificate names OCSP responders or CRL URLs and none of them
    │                           answered usably (unreachable, refused, too large, invalid)
    ├── TimeStampUnavailable    the time-stamping authority did not answer with a token this
    │                           client accepts (unreachable, refused, too large, wrong nonce or
    │                           imprint, bad signature, a TSA not chaining to a trusted anchor)
    ├── Sm2Refused              SM2 input refused by the SM2 primitives (`signer._sm2`)
    │   ├── Sm2KeyInvalid       not an SM2 key: unreadable DER/PEM, another key type or curve,
    │   │                       a point off the curve, a scalar out of range, a public key that
    │   │                       is not its private key's
    │   ├── Sm2IdInvalid        a distinguishing id that is empty or longer than 8191 bytes
    │   └── Sm2SignatureInvalid the signature does not verify with this key, data and id
    │       └── Sm2SignatureMalformed   not a DER SEQUENCE of two INTEGERs, r or s outside
    │                                   [1, n-1], or bytes after it
    └── SignedJsonRefused       a signed JSON document (compact JWS) refused by `verify_json`,
        │                       one subclass per step of its plan; callers word the refusal
        ├── SignedJsonMalformed         too large, not three parts, unreadable parts
        ├── SignedJsonUnsigned          `alg: none`, no `alg`, or an empty signature
        ├── SignedJsonAlgorithmRefused  `alg` outside the allow-list, or not its key's algorithm
        ├── SignedJsonTypeRefused       `typ` is not the one expected
        ├── SignedJsonExtensionRefused  a `crit` or `b64` header
        └── SignedJsonSignatureInvalid  the signature does not verify with the key looked up

Messages name the file and the reason; they never contain key material or a passphrase.
Foreign exceptions are kept as ``__cause__`` (``raise KeyFileError(...) from exc``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from signer._report import ValidationReport

__all__ = [
    "KeyFileError",
    "KeyModuleError",
    "Pkcs11UriInvalid",
    "RevocationDataInvalid",
    "RevocationUnavailable",
    "SealInvalid",
    "SignedJsonAlgorithmRefused",
    "SignedJsonExtensionRefused",
    "SignedJsonMalformed",
    "SignedJsonRefused",
    "SignedJsonSignatureInvalid",
    "SignedJsonTypeRefused",
    "SignedJsonUnsigned",
    "SignerError",
    "Sm2IdInvalid",
    "Sm2KeyInvalid",
    "Sm2Refused",
    "Sm2SignatureInvalid",
    "Sm2SignatureMalformed",
    "TimeStampUnavailable",
    "UnsupportedAlgorithm",
]


class SignerError(Exception):
    """Root of every error the signer package raises on purpose."""


class KeyFileError(SignerError):
    """A private key file could not be read, decrypted, parsed or written."""


class KeyModuleError(SignerError):
    """A key in a cryptographic module cannot be used; the message names the module's refusal
    (never a PIN)."""


class Pkcs11UriInvalid(KeyModuleError):
    """A PKCS#11 URI that is malformed, or asks for what Tongban refuses (`pin-value`)."""


class UnsupportedAlgorithm(SignerError):
    """An algorithm name or key type that Tongban does not sign with."""


class SealInvalid(SignerError):
    """A seal or signature was not TOTAL_PASSED; `report` holds the whole validation."""

    def __init__(self, report: ValidationReport) -> None:
        sub = report.sub_indication.value if report.sub_indication else ""
        super().__init__(f"{report.indication.value}/{sub}: {report.message}")
        self.report = report


class RevocationDataInvalid(SignerError):
    """An OCSP response or CRL that says nothing reliable about the certificate asked about; the
    message says why in one sentence (no status is learnt from it)."""


class RevocationUnavailable(SignerError):
    """No source a certificate names answered usably; the message lists what each said (URLs
    of public responders, never a key)."""


class TimeStampUnavailable(SignerError):
    """No usable RFC 3161 time-stamp token from the configured time-stamping authority."""


class Sm2Refused(SignerError):
    """SM2 input refused by the SM2 primitives; the subclass says which input."""


class Sm2KeyInvalid(Sm2Refused):
    """Bytes given as an SM2 key are not one (format, key type, curve, range, pairing)."""


class Sm2IdInvalid(Sm2Refused):
    """A distinguishing id that SM2 cannot use: empty, or longer than its 16-bit bit length."""


class Sm2SignatureInvalid(Sm2Refused):
    """An SM2 signature that does not verify with the key, data and distinguishing id given."""


class Sm2SignatureMalformed(Sm2SignatureInvalid):
    """Not a DER-encoded SM2 signature: SEQUENCE { r INTEGER, s INTEGER }, 1 <= r, s < n."""


class SignedJsonRefused(SignerError):
    """A signed JSON document refused by `verify_json`; the subclass names the step."""


class SignedJsonMalformed(SignedJsonRefused):
    """Not a compact JWS of bounded size, or its header or payload cannot be read."""


class SignedJsonUnsigned(SignedJsonRefused):
    """Not signed at all: `alg` missing or `none`, or the signature part empty."""


class SignedJsonAlgorithmRefused(SignedJsonRefused):
    """`algorithm` is outside the allow-list, or not the algorithm of the key looked up."""

    def __init__(self, message: str, *, algorithm: str) -> None:
        super().__init__(message)
        self.algorithm = algorithm


class SignedJsonTypeRefused(SignedJsonRefused):
    """The header's `typ` is missing where required, or not the one expected."""


class SignedJsonExtensionRefused(SignedJsonRefused):
    """The header asks for a JWS extension (`crit`, `b64`) that Tongban does not use."""


class SignedJsonSignatureInvalid(SignedJsonRefused):
    """The signature does not verify with the key the header names."""
