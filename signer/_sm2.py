"""SM2 signatures with SM3 (GB/T 32918.2, GM/T 0003): keys, their files, sign and verify.

The elliptic-curve work is GmSSL's (through `gmssl_pyx`); SM3 is pyca/cryptography's; the DER
of keys and certificates is read and written with asn1crypto. What this module adds is the part
every SM2 user must get right and that the libraries leave to the caller: the key formats
OpenSSL writes (PKCS#8 ``PRIVATE KEY``, SPKI ``PUBLIC KEY``, a certificate's SPKI), the
distinguishing id folded into the signed digest (``e = SM3(Z || M)``, ``Z`` from the id and the
public key), strict DER (r, s) signatures, and errors from the `Sm2Refused` subtree.

Why GmSSL's digest-level calls and ``Z`` computed here: gmssl_pyx's message-level ``sm2_sign``
precomputes 32 points on every call (about ten times slower) and refuses an empty message; the
digest-level calls take ``e`` and leave only the hashing above to this module, which the
published GM/T 0003.5 example (its ``Z`` and ``e``) and OpenSSL's SM2 check in the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from gmssl_pyx.gmsslext import (
    GmsslInnerError,
    InvalidValueError,
    sm2_key_generate,
    sm2_sign_sm3_digest,
    sm2_verify_sm3_digest,
)
from gmssl_pyx.sm2_utils import normalize_sm2_public_key

from signer._keyfile import MAX_KEY_FILE_BYTES, _write_file_atomically
from signer.errors import (
    KeyFileError,
    Sm2IdInvalid,
    Sm2KeyInvalid,
    Sm2SignatureInvalid,
    Sm2SignatureMalformed,
)

__all__ = [
    "SM2_CURVE_OID",
    "SM2_DEFAULT_ID",
    "SM2_WITH_SM3_OID",
    "Sm2PrivateKey",
    "Sm2PublicKey",
    "load_sm2_private_key",
    "write_sm2_private_key",
]

SM2_DEFAULT_ID: Final = b"1234567812345678"  # GM/T 0009 default distinguishing id
SM2_CURVE_OID: Final = "1.2.156.10197.1.301"  # sm2p256v1, the parameters of an SM2 key
SM2_WITH_SM3_OID: Final = "1.2.156.10197.1.501"  # the signature algorithm of SM2 certificates
EC_PUBLIC_KEY_OID: Final = "1.2.840.10045.2.1"  # id-ecPublicKey, the algorithm of an SM2 key
MAX_ID_BYTES: Final = 8191  # bytes; ENTL holds the id's length in bits in 16 bits
MAX_SIGNATURE_BYTES: Final = 72  # bytes; SEQUENCE of two 33-byte INTEGERs
MAX_CERTIFICATE_BYTES: Final = 64 * 1024  # bytes

# The curve of GB/T 32918.5 (sm2p256v1): a, b, the base point G and its order n.
_A: Final = bytes.fromhex("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC")
_B: Final = bytes.fromhex("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93")
_GX: Final = bytes.fromhex("32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7")
_GY: Final = bytes.fromhex("BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0")
_N: Final = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)

# asn1crypto sizes the scalar of an EC key from its curve, and knows curves by registration.
# Registering is idempotent and only adds the curve's name and size.
asn1_keys.NamedCurve.register("sm2p256v1", SM2_CURVE_OID, 32)

_KEY_ALGORITHM_NAMES: Final = {
    "1.2.840.113549.1.1.1": "an RSA key",
    "1.2.840.113549.1.1.10": "an RSA-PSS key",
    "1.3.101.112": "an Ed25519 key",
    "1.3.101.113": "an Ed448 key",
}
_CURVE_NAMES: Final = {
    "1.2.840.10045.3.1.7": "P-256",
    "1.3.132.0.34": "P-384",
    "1.3.132.0.35": "P-521",
    "1.3.132.0.10": "secp256k1",
}


def _check_id(distinguishing_id: bytes) -> bytes:
    if not isinstance(distinguishing_id, bytes):
        raise Sm2IdInvalid(
            f"SM2 distinguishing id must be bytes, not {type(distinguishing_id).__name__}"
        )
    if not distinguishing_id:
        raise Sm2IdInvalid("SM2 distinguishing id is empty")
    if len(distinguishing_id) > MAX_ID_BYTES:
        raise Sm2IdInvalid(
            f"SM2 distinguishing id is {len(distinguishing_id)} bytes; at most {MAX_ID_BYTES}"
        )
    return distinguishing_id


def _sm3(*parts: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    for part in parts:
        digest.update(part)
    return digest.finalize()


def _algorithm_refusal(algorithm: str, curve: str | None) -> str:
    """Why a key's algorithm identifier is not SM2's, in words, or '' when it is SM2's."""
    if algorithm == EC_PUBLIC_KEY_OID:
        if curve == SM2_CURVE_OID:
            return ""
        if curve is None:
            return "an EC key with explicit or absent curve parameters, not the named SM2 curve"
        return f"an EC key on curve {_CURVE_NAMES.get(curve, curve)}, not SM2"
    return f"{_KEY_ALGORITHM_NAMES.get(algorithm, f'a key of algorithm {algorithm}')}, not SM2"


def _named_curve(parameters: object) -> str | None:
    if isinstance(parameters, asn1_keys.ECDomainParameters) and parameters.name == "named":
        return str(parameters.chosen.dotted)
    return None


def _sm2_parameters() -> asn1_keys.ECDomainParameters:
    return asn1_keys.ECDomainParameters(name="named", value=SM2_CURVE_OID)


def _der_from_pem(data: bytes, label: str, what: str) -> bytes:
    if not asn1_pem.detect(data):
        raise Sm2KeyInvalid(f"{what} is not PEM (no -----BEGIN {label}----- line)")
    try:
        found, _headers, der = asn1_pem.unarmor(data)
    except ValueError as exc:
        raise Sm2KeyInvalid(f"{what} is not readable PEM") from exc
    if found != label:
        hint = ""
        if found == "ENCRYPTED PRIVATE KEY":
            hint = "; encrypted SM2 key files are not supported, keep the file mode 0600"
        elif found == "EC PRIVATE KEY":
            hint = "; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`"
        raise Sm2KeyInvalid(f"{what} is a PEM {found!r}, expected {label!r}{hint}")
    return bytes(der)


class Sm2PublicKey:
    """An SM2 public key: a point on sm2p256v1, checked to be on the curve when made."""

    __slots__ = ("_point",)

    def __init__(self, point: bytes) -> None:
        """`point`: 64 bytes x || y, 65 bytes 04 || x || y, or 33 bytes compressed."""
        if not isinstance(point, bytes) or len(point) not in (33, 64, 65):
            size = len(point) if isinstance(point, bytes) else type(point).__name__
            raise Sm2KeyInvalid(f"SM2 public key point has the wrong length ({size})")
        try:
            self._point: bytes = normalize_sm2_public_key(point)
        except InvalidValueError as exc:
            raise Sm2KeyInvalid("SM2 public key point is not on the SM2 curve") from exc

    @classmethod
    def from_spki(cls, der: bytes) -> Sm2PublicKey:
        """Load a DER SubjectPublicKeyInfo (id-ecPublicKey with the SM2 named curve)."""
        try:
            info = asn1_keys.PublicKeyInfo.load(der, strict=True)
            algorithm = str(info["algorithm"]["algorithm"].dotted)
            curve = _named_curve(info["algorithm"]["parameters"])
            refusal = _algorithm_refusal(algorithm, curve)
            point = None if refusal else bytes(info["public_key"].native)
        except (ValueError, TypeError, KeyError) as exc:
            raise Sm2KeyInvalid("SM2 public key is not a DER SubjectPublicKeyInfo") from exc
        if refusal:
            raise Sm2KeyInvalid(f"public key is {refusal}")
        assert point is not None
        return cls(point)

    @classmethod
    def from_pem(cls, data: bytes) -> Sm2PublicKey:
        """Load a PEM ``PUBLIC KEY`` (as ``openssl pkey -pubout`` writes it)."""
        return cls.from_spki(_der_from_pem(data, "PUBLIC KEY", "SM2 public key"))

    @classmethod
    def from_certificate(cls, data: bytes) -> Sm2PublicKey:
        """The subject public key of an X.509 certificate, PEM or DER."""
        if len(data) > MAX_CERTIFICATE_BYTES:
            raise Sm2KeyInvalid(f"certificate is larger than {MAX_CERTIFICATE_BYTES} bytes")
        der = _der_from_pem(data, "CERTIFICATE", "certificate") if asn1_pem.detect(data) else data
        try:
            certificate = asn1_x509.Certificate.load(der, strict=True)
            spki = certificate["tbs_certificate"]["subject_public_key_info"].dump()
        except (ValueError, TypeError, KeyError) as exc:
            raise Sm2KeyInvalid("certificate is not a DER or PEM X.509 certificate") from exc
        return cls.from_spki(spki)

    @property
    def point(self) -> bytes:
        """The uncompressed point without its 04 prefix: x || y, 64 bytes."""
        return self._point

    def spki(self) -> bytes:
        """The DER SubjectPublicKeyInfo, byte for byte as OpenSSL writes it."""
        info = asn1_keys.PublicKeyInfo(
            {
                "algorithm": {"algorithm": "ec", "parameters": _sm2_parameters()},
                "public_key": b"\x04" + self._point,
            }
        )
        return bytes(info.dump())

    def pem(self) -> bytes:
        """The PEM ``PUBLIC KEY``."""
        return bytes(asn1_pem.armor("PUBLIC KEY", self.spki()))

    def z_value(self, distinguishing_id: bytes = SM2_DEFAULT_ID) -> bytes:
        """Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA) (GB/T 32918.2, 5.5)."""
        ident = _check_id(distinguishing_id)
        entl = (len(ident) * 8).to_bytes(2, "big")
        return _sm3(entl, ident, _A, _B, _GX, _GY, self._point)

    def message_digest(self, data: bytes, distinguishing_id: bytes = SM2_DEFAULT_ID) -> bytes:
        """e = SM3(Z || M), the value an SM2 signature over `data` signs."""
        return _sm3(self.z_value(distinguishing_id), data)

    def verify(
        self, signature: bytes, data: bytes, distinguishing_id: bytes = SM2_DEFAULT_ID
    ) -> None:
        """Check a DER SM2 signature over `data`; raise `Sm2SignatureInvalid` if it fails.

        `Sm2SignatureMalformed` (a subclass) when the bytes are not a DER (r, s) with
        1 <= r, s < n; `Sm2IdInvalid` for an unusable distinguishing id.
        """
        canonical = _check_signature(signature)
        digest = self.message_digest(data, distinguishing_id)
        try:
            valid = sm2_verify_sm3_digest(self._point, digest, canonical)
        except GmsslInnerError as exc:  # InvalidValueError is a subclass
            raise Sm2SignatureInvalid("SM2 signature could not be checked") from exc
        if not valid:
            raise Sm2SignatureInvalid(
                "SM2 signature does not verify with this public key, data and distinguishing id"
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sm2PublicKey) and other._point == self._point

    def __hash__(self) -> int:
        return hash(self._point)

    def __repr__(self) -> str:
        return f"Sm2PublicKey(x={self._point[:4].hex()}…)"


def _check_signature(signature: bytes) -> bytes:
    if not isinstance(signature, bytes):
        raise Sm2SignatureMalformed(f"SM2 signature must be bytes, not {type(signature).__name__}")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise Sm2SignatureMalformed(
            f"SM2 signature is {len(signature)} bytes; a DER (r, s) is at most "
            f"{MAX_SIGNATURE_BYTES}"
        )
    try:
        r, s = decode_dss_signature(signature)
    except ValueError as exc:
        raise Sm2SignatureMalformed(
            "SM2 signature is not a DER SEQUENCE of two INTEGERs (r, s)"
        ) from exc
    if not (1 <= r < _N and 1 <= s < _N):
        raise Sm2SignatureMalformed("SM2 signature has r or s outside [1, n-1]")
    return signature


class Sm2PrivateKey:
    """An SM2 private key and its public key; never shows the scalar in repr or errors."""

    __slots__ = ("_public_key", "_scalar")

    def __init__(self, scalar: bytes, public_key: Sm2PublicKey) -> None:
        """`scalar`: d as 32 big-endian bytes, 1 <= d <= n-2; `public_key`: d·G.

        The pair is proven by a signature made and verified on the spot, so a key whose
        public half belongs to another key never exists.
        """
        if not isinstance(scalar, bytes) or len(scalar) != 32:
            raise Sm2KeyInvalid("SM2 private key scalar must be 32 bytes")
        if not isinstance(public_key, Sm2PublicKey):
            raise Sm2KeyInvalid(
                f"SM2 private key needs an Sm2PublicKey, not {type(public_key).__name__}"
            )
        if not 1 <= int.from_bytes(scalar, "big") <= _N - 2:
            raise Sm2KeyInvalid("SM2 private key scalar is outside [1, n-2]")
        self._scalar = scalar
        self._public_key = public_key
        probe = os.urandom(32)
        try:
            public_key.verify(self.sign(probe), probe)
        except Sm2SignatureInvalid as exc:
            raise Sm2KeyInvalid("SM2 public key does not belong to the private key") from exc

    @classmethod
    def generate(cls) -> Sm2PrivateKey:
        """A fresh key from GmSSL's generator (the operating system's random source)."""
        point, scalar = sm2_key_generate()
        return cls(scalar, Sm2PublicKey(point))

    @classmethod
    def from_pkcs8(cls, der: bytes) -> Sm2PrivateKey:
        """Load a DER PKCS#8 PrivateKeyInfo holding an SM2 ECPrivateKey with its public key."""
        try:
            info = asn1_keys.PrivateKeyInfo.load(der, strict=True)
            algorithm = str(info["private_key_algorithm"]["algorithm"].dotted)
            curve = _named_curve(info["private_key_algorithm"]["parameters"])
            refusal = _algorithm_refusal(algorithm, curve)
            if not refusal:
                inner = info["private_key"].parsed
                inner_curve = inner["parameters"]
                if inner_curve.native is not None and _named_curve(inner_curve) != SM2_CURVE_OID:
                    refusal = "an EC key whose inner parameters name another curve"
                scalar_value = inner["private_key"].native
                public = inner["public_key"].native
        except (ValueError, TypeError, KeyError) as exc:
            raise Sm2KeyInvalid("SM2 private key is not a DER PKCS#8 PrivateKeyInfo") from exc
        if refusal:
            raise Sm2KeyInvalid(f"private key is {refusal}")
        if not isinstance(scalar_value, int) or not 1 <= scalar_value <= _N - 2:
            raise Sm2KeyInvalid("SM2 private key scalar is outside [1, n-2]")
        if public is None:
            # GmSSL offers no d·G on its own; OpenSSL, GmSSL and BouncyCastle all write it.
            raise Sm2KeyInvalid(
                "SM2 private key holds no public key; re-export it with `openssl pkey`"
            )
        return cls(scalar_value.to_bytes(32, "big"), Sm2PublicKey(bytes(public)))

    @classmethod
    def from_pem(cls, data: bytes) -> Sm2PrivateKey:
        """Load a PEM ``PRIVATE KEY`` (as ``openssl genpkey -algorithm SM2`` writes it)."""
        return cls.from_pkcs8(_der_from_pem(data, "PRIVATE KEY", "SM2 private key"))

    def pkcs8(self) -> bytes:
        """The DER PKCS#8 PrivateKeyInfo, byte for byte as OpenSSL writes it."""
        inner = asn1_keys.ECPrivateKey(
            {
                "version": "ecPrivkeyVer1",
                "private_key": int.from_bytes(self._scalar, "big"),
                "public_key": b"\x04" + self._public_key.point,
            }
        )
        inner["private_key"].set_encoded_width(32)
        info = asn1_keys.PrivateKeyInfo(
            {
                "version": 0,
                "private_key_algorithm": {"algorithm": "ec", "parameters": _sm2_parameters()},
                "private_key": inner,
            }
        )
        return bytes(info.dump())

    def pem(self) -> bytes:
        """The PEM ``PRIVATE KEY`` (unencrypted PKCS#8)."""
        return bytes(asn1_pem.armor("PRIVATE KEY", self.pkcs8()))

    def public_key(self) -> Sm2PublicKey:
        return self._public_key

    def sign(self, data: bytes, distinguishing_id: bytes = SM2_DEFAULT_ID) -> bytes:
        """A DER SM2 signature over `data` with SM3 and `distinguishing_id`."""
        digest = self._public_key.message_digest(data, distinguishing_id)
        return bytes(sm2_sign_sm3_digest(self._scalar, digest))

    def __repr__(self) -> str:
        return f"Sm2PrivateKey(public={self._public_key!r})"


def load_sm2_private_key(path: Path) -> Sm2PrivateKey:
    """Read an SM2 private key file (PEM PKCS#8); `KeyFileError` names the file and reason."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeyFileError(f"private key file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise KeyFileError(f"private key file {path} is a directory") from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise KeyFileError(f"private key file {path} could not be read: {reason}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(
            f"private key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes; not a private key"
        )
    try:
        return Sm2PrivateKey.from_pem(data)
    except Sm2KeyInvalid as exc:
        raise KeyFileError(f"private key file {path} could not be loaded: {exc}") from exc


def write_sm2_private_key(path: Path, key: Sm2PrivateKey) -> None:
    """Write `key` to `path` as PEM PKCS#8, mode 0600, atomically (as `write_private_key`)."""
    if not isinstance(key, Sm2PrivateKey):
        raise KeyFileError(
            f"cannot write SM2 private key file {path}: {type(key).__name__} is not an SM2 key"
        )
    try:
        _write_file_atomically(path, key.pem(), 0o600)
    except OSError as exc:
        raise KeyFileError(
            f"cannot write private key file {path}: {exc.strerror or type(exc).__name__}"
        ) from exc
