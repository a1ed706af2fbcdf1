"""Private key files: PKCS#8 PEM, mode 0600, written atomically, optionally passphrase-encrypted.

Also the three signing algorithms Tongban uses and the key types behind them:
``ES256`` (ECDSA P-256), ``EdDSA`` (Ed25519) and ``PS256`` (RSA-PSS, 3072-bit keys).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Final, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm as _CryptoUnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from signer.errors import KeyFileError, UnsupportedAlgorithm

__all__ = [
    "ALGORITHMS",
    "PrivateKey",
    "PublicKey",
    "algorithm_for_key",
    "generate_private_key",
    "load_private_key",
    "write_private_key",
]

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

ALGORITHMS: Final = ("ES256", "EdDSA", "PS256")

RSA_KEY_BITS: Final = 3072
RSA_MIN_KEY_BITS: Final = 2048  # RFC 7518 §3.5 floor for PS256 keys made elsewhere
MAX_KEY_FILE_BYTES: Final = 64 * 1024  # bytes; a PKCS#8 RSA-4096 PEM is about 3.3 KiB

_PRIVATE_FILE_MODE: Final = 0o600
_ENCRYPTED_PEM_HEADER: Final = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_PRIVATE_KEY_TYPES: Final = (
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    rsa.RSAPrivateKey,
)


def generate_private_key(algorithm: str) -> PrivateKey:
    """Generate a fresh key for a JWS algorithm name: ES256, EdDSA or PS256."""
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "PS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    raise UnsupportedAlgorithm(
        f"unsupported algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
    )


def algorithm_for_key(key: PublicKey | PrivateKey) -> str:
    """The JWS algorithm name a key signs with; the inverse of `generate_private_key`."""
    public_key = key.public_key() if isinstance(key, _PRIVATE_KEY_TYPES) else key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ec.SECP256R1):
            return "ES256"
        raise UnsupportedAlgorithm(
            f"unsupported elliptic curve {public_key.curve.name}; only P-256 (ES256) is used"
        )
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < RSA_MIN_KEY_BITS:
            raise UnsupportedAlgorithm(
                f"RSA key of {public_key.key_size} bits is too short for PS256 "
                f"(minimum {RSA_MIN_KEY_BITS})"
            )
        return "PS256"
    raise UnsupportedAlgorithm(f"unsupported key type {type(public_key).__name__}")


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    """Read a PEM private key, decrypting it with `passphrase` when it is encrypted.

    Raises `KeyFileError` naming the file and the reason (missing, unreadable, too large,
    not a PEM private key, encrypted without a passphrase given, wrong passphrase, or a key
    type Tongban does not use).
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeyFileError(f"private key file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise KeyFileError(f"private key file {path} is a directory") from exc
    except PermissionError as exc:
        raise KeyFileError(f"private key file {path} is not readable: permission denied") from exc
    except OSError as exc:
        raise KeyFileError(f"private key file {path} could not be read: {exc.strerror}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(
            f"private key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes; not a private key"
        )

    encrypted = _ENCRYPTED_PEM_HEADER in data
    if encrypted and passphrase is None:
        raise KeyFileError(f"private key file {path} is encrypted and no passphrase was given")
    if not encrypted and passphrase is not None:
        # Refused rather than ignored: the caller believes the key is protected and it is not.
        raise KeyFileError(f"private key file {path} is not encrypted, but a passphrase was given")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except _CryptoUnsupportedAlgorithm as exc:
        raise KeyFileError(f"private key file {path} holds an unsupported key type") from exc
    except (ValueError, TypeError) as exc:
        if encrypted:
            reason = "wrong passphrase, or the encrypted key is corrupted"
        else:
            reason = "not a PEM-encoded private key, or the key is corrupted"
        raise KeyFileError(f"private key file {path} could not be loaded: {reason}") from exc

    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise KeyFileError(
            f"private key file {path} holds an unsupported key type {type(key).__name__}; "
            "expected EC P-256, Ed25519 or RSA"
        )
    return key


def write_private_key(path: Path, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """Write `key` to `path` as PKCS#8 PEM with mode 0600, replacing any existing file.

    The key is written to a temporary file in the same folder, created with mode 0600 (so it
    is never readable by others, not even briefly), flushed to disk, then renamed over `path`.
    With a `passphrase` the key is encrypted with the best encryption `cryptography` offers.
    """
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise KeyFileError(
            f"cannot write private key file {path}: unsupported key type {type(key).__name__}"
        )
    encryption: serialization.KeySerializationEncryption
    if passphrase is None:
        encryption = serialization.NoEncryption()
    elif not passphrase:
        raise KeyFileError(f"cannot write private key file {path}: the passphrase is empty")
    else:
        encryption = serialization.BestAvailableEncryption(passphrase)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    try:
        _write_file_atomically(path, data, _PRIVATE_FILE_MODE)
    except OSError as exc:
        raise KeyFileError(
            f"cannot write private key file {path}: {exc.strerror or type(exc).__name__}"
        ) from exc


def _write_file_atomically(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, mode)
    try:
        try:
            # The umask can only remove bits from `mode`; make the result exact.
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
