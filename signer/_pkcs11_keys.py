"""Token keys in the shape of `cryptography` private keys, for the code that signs with one.

Request tokens (PyJWT), registry snapshots (`sign_json`, PyJWT) and audit checkpoints (the
C2SP signed note) take a `cryptography` private key and call its `sign` and `public_key`. A
token key is given to them as a subclass of the same abstract class whose `sign` goes to the
module, so none of them changes; everything that would read the key out (`private_bytes`,
`private_numbers`, key agreement) raises `KeyModuleError` instead.

`open_signing_key` is the one door: a key file path or a PKCS#11 URI in, a private key out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import Buffer as _Buffer

from signer._keyfile import PrivateKey, load_private_key
from signer._pkcs11 import Pkcs11Key, open_pkcs11_key
from signer._pkcs11_uri import SCHEME, Pkcs11Uri, parse_pkcs11_uri
from signer.errors import KeyModuleError

__all__ = ["KeyReference", "key_reference", "open_signing_key"]

KeyReference = Path | Pkcs11Uri


def key_reference(text: str, base: Path) -> KeyReference:
    """A key named in configuration or an inventory: a PKCS#11 URI (`pkcs11:...`), else a
    file path (relative ones are taken from `base`)."""
    if text.lower().startswith(SCHEME):
        return parse_pkcs11_uri(text)
    path = Path(text)
    return path if path.is_absolute() else base / path


def open_signing_key(reference: KeyReference, passphrase: bytes | None = None) -> PrivateKey:
    """The private key a reference names: a key file opened with `passphrase`, or a token key
    (whose PIN comes from the URI's pin-source or x-pin-env; a passphrase is not used)."""
    if isinstance(reference, Path):
        return load_private_key(reference, passphrase)
    key = open_pkcs11_key(reference)
    public = key.public_key
    if isinstance(public, ec.EllipticCurvePublicKey):
        return _EcTokenKey(key, public)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return _Ed25519TokenKey(key, public)
    return _RsaTokenKey(key, public)


def _stays(key: Pkcs11Key) -> NoReturn:
    raise KeyModuleError(f"{key.uri}: a key in a cryptographic module is never read out")


class _EcTokenKey(ec.EllipticCurvePrivateKey):
    """ECDSA P-256 with SHA-256 in the token; `sign` returns DER, as cryptography's does."""

    def __init__(self, key: Pkcs11Key, public: ec.EllipticCurvePublicKey) -> None:
        self._key, self._public = key, public

    def sign(self, data: _Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        algorithm = getattr(signature_algorithm, "algorithm", None)
        if not isinstance(signature_algorithm, ec.ECDSA) or not isinstance(
            algorithm, hashes.SHA256
        ):
            raise KeyModuleError(f"{self._key.uri}: signs ECDSA with SHA-256 only")
        raw = self._key.sign(bytes(data))
        return encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _stays(self._key)

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _stays(self._key)

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _stays(self._key)

    def __copy__(self) -> _EcTokenKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _EcTokenKey:
        return self

    def __repr__(self) -> str:
        return f"<token key {self._key.uri} ES256>"


class _Ed25519TokenKey(ed25519.Ed25519PrivateKey):
    """Ed25519 in the token."""

    def __init__(self, key: Pkcs11Key, public: ed25519.Ed25519PublicKey) -> None:
        self._key, self._public = key, public

    def sign(self, data: _Buffer) -> bytes:
        return self._key.sign(bytes(data))

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _stays(self._key)

    def private_bytes_raw(self) -> bytes:
        _stays(self._key)

    def __copy__(self) -> _Ed25519TokenKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _Ed25519TokenKey:
        return self

    def __repr__(self) -> str:
        return f"<token key {self._key.uri} EdDSA>"


class _RsaTokenKey(rsa.RSAPrivateKey):
    """RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt in the token (PS256)."""

    def __init__(self, key: Pkcs11Key, public: rsa.RSAPublicKey) -> None:
        self._key, self._public = key, public

    def sign(self, data: _Buffer, padding_: padding.AsymmetricPadding, algorithm: Any) -> bytes:
        pss = isinstance(padding_, padding.PSS) and isinstance(algorithm, hashes.SHA256)
        mgf = getattr(padding_, "mgf", None)
        mgf_hash = getattr(mgf, "_algorithm", None)
        salt = getattr(padding_, "_salt_length", None)
        if not (pss and isinstance(mgf_hash, hashes.SHA256) and salt == 32):
            raise KeyModuleError(f"{self._key.uri}: signs RSASSA-PSS SHA-256 (salt 32) only")
        return self._key.sign(bytes(data))

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding_: padding.AsymmetricPadding) -> bytes:
        _stays(self._key)

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _stays(self._key)

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        _stays(self._key)

    def __copy__(self) -> _RsaTokenKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _RsaTokenKey:
        return self

    def __repr__(self) -> str:
        return f"<token key {self._key.uri} PS256>"
