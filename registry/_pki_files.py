"""The PKI folder's files: certificates read and written as PEM, private keys written (PKCS#8,
mode 0600) through the signer's writers, every failure a `PkiError` that names the file."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from registry._files import write_atomically
from registry.errors import PkiError
from signer import SignerError, x5t_s256_of_certificate
from signer._keyfile import PrivateKey, write_private_key
from signer._sm2 import Sm2PrivateKey, write_sm2_private_key

__all__ = [
    "IMPORTED_INTERMEDIATES",
    "IMPORTED_ROOT",
    "certificate_kid",
    "imported_chain",
    "pem",
    "read_certificate",
    "read_pem_certificates",
    "write_private",
    "write_private_sm2",
    "write_public",
]


def certificate_kid(cert: x509.Certificate) -> str:
    """Key id of a certificate: the JWS x5t#S256 of its DER."""
    return x5t_s256_of_certificate(cert)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(f"certificate file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise PkiError(f"certificate file {path} could not be read: {exc}") from exc


IMPORTED_ROOT = "imported-root.pem"  # a region CA made elsewhere (`registry._import`)
IMPORTED_INTERMEDIATES = "imported-intermediates.pem"


def read_pem_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM file, in order."""
    try:
        return tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except FileNotFoundError as exc:
        raise PkiError(f"certificate file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a PEM certificate file ({exc})") from exc


def imported_chain(ca_folder: Path) -> tuple[x509.Certificate, ...] | None:
    """An imported region CA's certificates, root first; None when the region's CA is not
    imported."""
    if not (ca_folder / IMPORTED_ROOT).is_file():
        return None
    chain = read_pem_certificates(ca_folder / IMPORTED_ROOT)
    if (ca_folder / IMPORTED_INTERMEDIATES).is_file():
        chain += read_pem_certificates(ca_folder / IMPORTED_INTERMEDIATES)
    return chain


def write_private(path: Path, key: PrivateKey, passphrase: bytes | None) -> None:
    try:
        write_private_key(path, key, passphrase)
    except SignerError as exc:
        raise PkiError(str(exc)) from exc


def write_private_sm2(path: Path, key: Sm2PrivateKey) -> None:
    try:
        write_sm2_private_key(path, key)
    except SignerError as exc:
        raise PkiError(str(exc)) from exc


def write_public(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from exc
