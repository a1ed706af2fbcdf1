"""Keys in a cryptographic module, over PKCS#11 (python-pkcs11): generated there, used there,
never read out.

The pieces, from the bottom:

- `SignatureMechanism`: how one JWS algorithm is done by a module — the key type, the PKCS#11
  mechanism and its parameter, whether Tongban hashes first, how a key pair is generated, and
  how the module's signature becomes the JWS one. `PKCS11_MECHANISMS` holds ES256 (CKM_ECDSA over a
  SHA-256 digest: SoftHSM2 2.6 has no CKM_ECDSA_SHA256, and CKM_ECDSA's r||s output is the JWS
  form already), EdDSA (CKM_EDDSA) and PS256 (CKM_SHA256_RSA_PKCS_PSS, MGF1-SHA-256, 32-byte
  salt). A module with other mechanisms — a vendor's SM2 with SM3, say — is another table
  passed in, not another copy of this code (docs/security.md, "Keys in a cryptographic module").
- `Pkcs11Key`: one private key object found by its URI, checked sensitive and never
  extractable, with its public key (from the matching public key object) and a `sign`.
- `Pkcs11KeyProvider`: a `Pkcs11Key` and its certificate chain, i.e. a `KeyProvider`; seals
  never see the difference from a key file.
- `generate_pkcs11_key`: a key pair generated inside the token (CKA_SENSITIVE true,
  CKA_EXTRACTABLE false, refused if the module says otherwise afterwards).

One PKCS#11 library is loaded once per process and each token gets one logged-in session,
shared by every key on it under a lock (PKCS#11 sessions are not to be used by two threads at
once, and a second login on the same token is refused by the module). A forked child (the
gateway's workers) initialises the library again and logs in afresh on first use.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.mechanisms import MGF
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from signer._algorithms import check_key_fits
from signer._keyfile import PublicKey
from signer._keys import same_public_key, x5t_s256_of_certificate
from signer._pkcs11_uri import Pkcs11Uri
from signer.errors import KeyFileError, KeyModuleError

# What the package exports; `Pkcs11Key` (what `open_pkcs11_key` returns) serves its other modules.
__all__ = [
    "PKCS11_MECHANISMS",
    "Pkcs11KeyProvider",
    "SignatureMechanism",
    "generate_pkcs11_key",
    "open_pkcs11_key",
]

MAX_PIN_FILE_BYTES: Final = 1024  # bytes; a PIN is a few dozen at most
RSA_KEY_BITS: Final = 3072  # as for key files (signer._keyfile)
_ID_BYTES: Final = 16  # random CKA_ID of a generated key pair


def _decode_ec(public: Any) -> PublicKey:
    key = serialization.load_der_public_key(encode_ec_public_key(public))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyModuleError(f"not an EC public key: {type(key).__name__}")
    return key


def _decode_ed25519(public: Any) -> PublicKey:
    point = bytes(public[Attribute.EC_POINT])
    if len(point) == 34 and point[:2] == b"\x04\x20":  # a DER OCTET STRING around it
        point = point[2:]
    return ed25519.Ed25519PublicKey.from_public_bytes(point)


def _decode_rsa(public: Any) -> PublicKey:
    modulus = int.from_bytes(public[Attribute.MODULUS], "big")
    exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _sha256(data: bytes, public_key: object) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class SignatureMechanism:
    """How a module signs for one algorithm: a row of a provider's mechanism table.

    A key object is matched to the row of its CKA_KEY_TYPE and, for curves, of one of the
    `curves` (CKA_EC_PARAMS encodings; the first is the one generation asks for). `decode` reads
    the public key object; `digest(data, public_key)`, when given, is what the module signs
    instead of the data (CKM_ECDSA signs a digest; an SM2 row would compute SM3(Z || M), whose Z
    needs the public key); `encode` turns the module's output into the signature the
    algorithm's verifiers expect. `generation` is the key pair generation mechanism and
    `key_bits` the key length it takes, if any.
    """

    algorithm: str
    key_type: int
    mechanism: int
    decode: Callable[[Any], PublicKey]
    parameter: Any = None
    curves: tuple[bytes, ...] = ()
    digest: Callable[[bytes, object], bytes] | None = None
    generation: int | None = None
    key_bits: int | None = None
    encode: Callable[[bytes], bytes] = bytes
    signature_bytes: int | None = None  # the module's output must be this long, when given

    def fits(self, key_type: int, public: Any) -> bool:
        """Whether a key pair of this key type (and curve, read from `public`) is this row's."""
        if key_type != self.key_type:
            return False
        return not self.curves or bytes(public[Attribute.EC_PARAMS]) in self.curves


PKCS11_MECHANISMS: Final[Mapping[str, SignatureMechanism]] = {
    "ES256": SignatureMechanism(
        algorithm="ES256",
        key_type=KeyType.EC,
        mechanism=Mechanism.ECDSA,
        decode=_decode_ec,
        curves=(encode_named_curve_parameters("secp256r1"),),
        digest=_sha256,
        generation=Mechanism.EC_KEY_PAIR_GEN,
        signature_bytes=64,  # r||s, 32 bytes each: JWS form (RFC 7518 §3.4)
    ),
    "EdDSA": SignatureMechanism(
        algorithm="EdDSA",
        key_type=KeyType.EC_EDWARDS,
        mechanism=Mechanism.EDDSA,
        decode=_decode_ed25519,
        # The OID (RFC 8410), then the PrintableString "edwards25519" of PKCS#11 3.0's examples.
        curves=(encode_named_curve_parameters("1.3.101.112"), b"\x13\x0cedwards25519"),
        generation=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
        signature_bytes=64,
    ),
    "PS256": SignatureMechanism(
        algorithm="PS256",
        key_type=KeyType.RSA,
        mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
        decode=_decode_rsa,
        parameter=(Mechanism.SHA256, MGF.SHA256, 32),
        generation=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
        key_bits=RSA_KEY_BITS,  # python-pkcs11 adds CKA_MODULUS_BITS and e = 65537
    ),
}


class _Token:
    """One logged-in session on one token of one module, and the lock that serialises it."""

    def __init__(self, session: pkcs11.Session, label: str) -> None:
        self.session = session
        self.label = label
        self.lock = threading.Lock()


_LIBRARIES: dict[str, Any] = {}  # module path: its pkcs11.lib, loaded once
_TOKENS: dict[tuple[str, str, str], _Token] = {}
_OPENING = threading.Lock()
_STALE: set[str] = set()  # libraries a fork left behind: initialised again before their next use


def _forget_after_fork() -> None:
    """In a forked child: sessions and logins are the parent's and do not survive a fork, so the
    child initialises each library again (C_Finalize, C_Initialize) and logs in afresh."""
    global _OPENING  # noqa: PLW0603 (a parent thread may have held it at the fork)
    _OPENING = threading.Lock()
    _TOKENS.clear()
    _STALE.update(_LIBRARIES)


os.register_at_fork(after_in_child=_forget_after_fork)


# The session or the login is gone (the module restarted, the token was pulled): the token is
# forgotten, so that the next open of a key on it (a reload, the next command) logs in again.
_SESSION_LOST: Final = (
    pkcs11.SessionHandleInvalid,
    pkcs11.SessionClosed,
    pkcs11.DeviceRemoved,
    pkcs11.TokenNotPresent,
    pkcs11.UserNotLoggedIn,
)


def _forget(token: _Token) -> None:
    with _OPENING:
        for cache_key, opened in list(_TOKENS.items()):
            if opened is token:
                del _TOKENS[cache_key]


def _module_error(what: str, exc: BaseException) -> KeyModuleError:
    """A module's refusal, named by its exception class (python-pkcs11 has one per CKR_*)."""
    return KeyModuleError(f"{what}: the module refused ({type(exc).__name__})")


def _library(uri: Pkcs11Uri) -> Any:
    if uri.module_path is None:
        raise KeyModuleError(
            "the PKCS#11 URI names no module: add ?module-path=/path/to/the/module.so "
            "(SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so)"
        )
    path = str(uri.module_path)
    library = _LIBRARIES.get(path)
    if library is not None and path in _STALE:
        try:
            library.reinitialize()
        except pkcs11.PKCS11Error as exc:
            raise _module_error(
                f"PKCS#11 module {path} could not be initialised again", exc
            ) from exc
        _STALE.discard(path)
    if library is None:
        if not uri.module_path.is_file():
            raise KeyModuleError(f"PKCS#11 module {path} does not exist")
        try:
            library = pkcs11.lib(path)
        except pkcs11.PKCS11Error as exc:
            raise _module_error(f"PKCS#11 module {path} could not be loaded", exc) from exc
        _LIBRARIES[path] = library
    return library


def _read_pin(uri: Pkcs11Uri) -> str:
    """The user PIN from `pin-source` (a file) or `x-pin-env` (a variable): never from the URI."""
    if uri.pin_file is not None:
        try:
            with uri.pin_file.open("rb") as file:
                data = file.read(MAX_PIN_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyModuleError(
                f"PIN file {uri.pin_file} could not be read: {exc.strerror or type(exc).__name__}"
            ) from exc
        if len(data) > MAX_PIN_FILE_BYTES:
            raise KeyModuleError(
                f"PIN file {uri.pin_file} is larger than {MAX_PIN_FILE_BYTES} bytes"
            )
        try:
            pin = data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise KeyModuleError(f"PIN file {uri.pin_file} is not UTF-8 text") from exc
    elif uri.pin_env is not None:
        value = os.environ.get(uri.pin_env)
        if value is None:
            raise KeyModuleError(f"environment variable {uri.pin_env} (the token PIN) is not set")
        pin = value
    else:
        raise KeyModuleError(
            "the PKCS#11 URI says nowhere where the PIN comes from: add "
            "pin-source=file:/path or x-pin-env=VARIABLE to its query"
        )
    if not pin:
        raise KeyModuleError("the token PIN is empty")
    return pin


def _token(uri: Pkcs11Uri) -> _Token:
    """The logged-in session on the one token `uri` selects (opened on first use)."""
    label = uri.token
    if label is None and uri.text("serial") is None:
        raise KeyModuleError("the PKCS#11 URI names no token: add token=LABEL (or serial=...)")
    with _OPENING:
        library = _library(uri)
        cache_key = (str(uri.module_path), label or "", uri.text("serial") or "")
        opened = _TOKENS.get(cache_key)
        if opened is not None:
            return opened
        try:
            tokens = [t for t in library.get_tokens() if _token_matches(t, uri)]
        except pkcs11.PKCS11Error as exc:
            raise _module_error("listing the module's tokens", exc) from exc
        if not tokens:
            raise KeyModuleError(f"no token of module {uri.module_path} matches {uri}")
        if len(tokens) > 1:
            raise KeyModuleError(f"{len(tokens)} tokens match {uri}: add serial=... to choose one")
        pin = _read_pin(uri)
        try:
            session = tokens[0].open(rw=True, user_pin=pin)
        except pkcs11.PinIncorrect as exc:
            raise KeyModuleError(f"token {tokens[0].label!r} refused the PIN") from exc
        except pkcs11.PKCS11Error as exc:
            raise _module_error(f"logging in to token {tokens[0].label!r}", exc) from exc
        opened = _TOKENS[cache_key] = _Token(session, tokens[0].label)
        return opened


def _token_matches(token: pkcs11.Token, uri: Pkcs11Uri) -> bool:
    wanted = {
        "token": token.label,
        "serial": token.serial.decode("ascii", "replace").strip()
        if isinstance(token.serial, bytes)
        else str(token.serial).strip(),
        "manufacturer": token.manufacturer_id,
        "model": token.model,
    }
    return all(uri.text(name) in (None, value) for name, value in wanted.items())


def _find(session: pkcs11.Session, uri: Pkcs11Uri, object_class: ObjectClass) -> list[Any]:
    template: dict[Attribute, Any] = {Attribute.CLASS: object_class}
    if uri.object is not None:
        template[Attribute.LABEL] = uri.object
    if uri.id is not None:
        template[Attribute.ID] = uri.id
    return list(session.get_objects(template))


def _check_unexportable(private: Any, where: str) -> None:
    """Refuse a private key the module would let out: Tongban's keys never leave the token."""
    if not private[Attribute.SENSITIVE] or private[Attribute.EXTRACTABLE]:
        raise KeyModuleError(
            f"{where} is extractable or not sensitive: Tongban refuses keys that can leave the "
            "module (generate them with `tongban keys generate --pkcs11`)"
        )


class Pkcs11Key:
    """A private key in a token, found by its URI; it signs there and is never read out."""

    def __init__(
        self, uri: Pkcs11Uri, mechanisms: Mapping[str, SignatureMechanism] = PKCS11_MECHANISMS
    ) -> None:
        if uri.text("type") not in (None, "private"):
            raise KeyModuleError("a signing key's PKCS#11 URI has type=private or no type")
        if uri.object is None and uri.id is None:
            raise KeyModuleError("the PKCS#11 URI names no key: add object=LABEL (or id=...)")
        token = _token(uri)
        with token.lock:
            try:
                privates = _find(token.session, uri, ObjectClass.PRIVATE_KEY)
                publics = _find(token.session, uri, ObjectClass.PUBLIC_KEY)
                if len(privates) != 1:
                    raise KeyModuleError(
                        f"{len(privates)} private keys in token {token.label!r} match {uri}"
                    )
                if len(publics) != 1:
                    raise KeyModuleError(
                        f"{len(publics)} public keys in token {token.label!r} match {uri}: "
                        "the key pair's public half is needed"
                    )
                _check_unexportable(privates[0], str(uri))
                key_type = int(privates[0][Attribute.KEY_TYPE])
                entry = next((m for m in mechanisms.values() if m.fits(key_type, publics[0])), None)
                if entry is None:
                    raise KeyModuleError(
                        f"{uri}: a key of type {key_type:#x} (or on a curve) that no row of "
                        "this provider's mechanism table signs with"
                    )
                public = entry.decode(publics[0])
            except pkcs11.PKCS11Error as exc:
                raise _module_error(f"reading {uri}", exc) from exc
            except ValueError as exc:  # a public key the decoder cannot read
                raise KeyModuleError(f"{uri}: its public key cannot be read") from exc
        self.uri = uri
        self._token = token
        self._private = privates[0]
        self._public = public
        self._entry = entry

    @property
    def algorithm(self) -> str:
        return self._entry.algorithm

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        """The signature of `data` in the algorithm's JWS form (ES256: r||s, 64 bytes)."""
        entry = self._entry
        message = entry.digest(data, self._public) if entry.digest else data
        try:
            with self._token.lock:
                raw = self._private.sign(
                    message, mechanism=entry.mechanism, mechanism_param=entry.parameter
                )
        except pkcs11.PKCS11Error as exc:
            if isinstance(exc, _SESSION_LOST):
                _forget(self._token)  # the lock is released here: _forget takes the opening lock
            raise _module_error(f"signing with {self.uri}", exc) from exc
        signature = entry.encode(bytes(raw))
        if entry.signature_bytes is not None and len(signature) != entry.signature_bytes:
            raise KeyModuleError(
                f"{self.uri}: the module returned a {len(signature)}-byte {entry.algorithm} "
                f"signature (expected {entry.signature_bytes})"
            )
        return signature

    def __repr__(self) -> str:
        return f"Pkcs11Key({str(self.uri)!r}, algorithm={self.algorithm!r})"


def open_pkcs11_key(
    uri: Pkcs11Uri, mechanisms: Mapping[str, SignatureMechanism] = PKCS11_MECHANISMS
) -> Pkcs11Key:
    """The key `uri` names, through its module and token; `KeyModuleError` says what failed."""
    return Pkcs11Key(uri, mechanisms)


class Pkcs11KeyProvider:
    """A `KeyProvider` whose private key stays in a token: a `Pkcs11Key` and its PEM
    certificate chain (leaf first), the leaf checked to certify the token's key."""

    def __init__(
        self,
        uri: Pkcs11Uri,
        certificate_path: Path,
        mechanisms: Mapping[str, SignatureMechanism] = PKCS11_MECHANISMS,
    ) -> None:
        self._key = open_pkcs11_key(uri, mechanisms)
        try:
            chain = tuple(x509.load_pem_x509_certificates(certificate_path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{certificate_path}: not a readable PEM certificate chain") from exc
        if not chain:
            raise KeyFileError(f"{certificate_path}: holds no certificate")
        if not same_public_key(self._key.public_key, chain[0].public_key()):
            raise KeyModuleError(f"{uri}: is not the key of the certificate in {certificate_path}")
        check_key_fits(self._key.algorithm, self._key.public_key)
        self._chain = chain
        self._kid = x5t_s256_of_certificate(chain[0])

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def algorithm(self) -> str:
        return self._key.algorithm

    @property
    def certificate_chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    def sign(self, signing_input: bytes) -> bytes:
        return self._key.sign(signing_input)

    def __repr__(self) -> str:
        return f"Pkcs11KeyProvider(kid={self._kid!r}, algorithm={self.algorithm!r})"


def generate_pkcs11_key(
    uri: Pkcs11Uri,
    algorithm: str,
    mechanisms: Mapping[str, SignatureMechanism] = PKCS11_MECHANISMS,
) -> Pkcs11Uri:
    """Generate a key pair for `algorithm` inside the token `uri` names, labelled `object`;
    return the URI that names it from now on (with the random CKA_ID it was given).

    The private key is made sensitive and not extractable, and is checked to be so afterwards;
    a label already in use is refused rather than shadowed.
    """
    entry = mechanisms.get(algorithm)
    if entry is None or entry.generation is None:
        raise KeyModuleError(f"no key generation for {algorithm} in this provider's table")
    label = uri.object
    if label is None:
        raise KeyModuleError("the PKCS#11 URI names no key to generate: add object=LABEL")
    if uri.text("type") not in (None, "private"):
        raise KeyModuleError("a signing key's PKCS#11 URI has type=private or no type")
    key_id = uri.id or os.urandom(_ID_BYTES)
    token = _token(uri)
    with token.lock:
        try:
            if list(token.session.get_objects({Attribute.LABEL: label})):
                raise KeyModuleError(
                    f"token {token.label!r} already holds a key labelled {label!r}: choose "
                    "another object= label (keys are never replaced)"
                )
            _, private = token.session.generate_keypair(
                KeyType(entry.key_type),
                entry.key_bits,
                id=key_id,
                label=label,
                store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                mechanism=Mechanism(entry.generation),
                public_template={Attribute.EC_PARAMS: entry.curves[0]} if entry.curves else {},
                private_template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.PRIVATE: True,
                },
            )
            _check_unexportable(private, f"the key generated as {label!r}")
        except pkcs11.PKCS11Error as exc:
            raise _module_error(
                f"generating a {algorithm} key pair in {token.label!r}", exc
            ) from exc
    return uri.with_path(id=key_id)
