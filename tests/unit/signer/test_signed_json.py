"""Signed JSON (`sign_json`, `verify_json`, `canonical_json`): one refusal, with its own error
type, per step of the verification plan; the key lookup decides which key verifies."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from signer import (
    PublicKey,
    SignedJsonAlgorithmRefused,
    SignedJsonExtensionRefused,
    SignedJsonMalformed,
    SignedJsonRefused,
    SignedJsonSignatureInvalid,
    SignedJsonTypeRefused,
    SignedJsonUnsigned,
    SignerError,
    UnsupportedAlgorithm,
    canonical_json,
    sign_json,
    verify_json,
)

TYP = "tongban.example+jws"
ED = ed25519.Ed25519PrivateKey.generate()
EC = ec.generate_private_key(ec.SECP256R1())
OTHER_ED = ed25519.Ed25519PrivateKey.generate()
KEYS: dict[str, PublicKey] = {"ed": ED.public_key(), "ec": EC.public_key()}
DOCUMENT = {"b": [1, 2], "a": "统一", "c": {"z": None, "y": True}}
PAYLOAD = canonical_json(DOCUMENT)


class UnknownKey(Exception):
    """The caller's own error for a kid it does not know."""


def lookup(header: Mapping[str, Any]) -> PublicKey:
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in KEYS:
        raise UnknownKey(f"no key {kid!r}")
    return KEYS[kid]


def verify(jws: str, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "key_for": lookup,
        "algorithms": ("EdDSA", "ES256"),
        "typ": TYP,
        "typ_required": True,
        "max_bytes": 4096,
        "what": "the example",
    }
    return verify_json(jws, **(options | overrides))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, object], payload: bytes = PAYLOAD, signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(payload)}.{_b64(signature)}"


def _pyjwt(key: Any, algorithm: str, **headers: object) -> str:
    return jwt.PyJWS().encode(PAYLOAD, key, algorithm=algorithm, headers=headers)


def test_canonical_json_sorts_keys_drops_white_space_and_keeps_utf8() -> None:
    assert '{"a":"统一","b":[1,2],"c":{"y":true,"z":null}}'.encode() == PAYLOAD
    assert canonical_json(json.loads(PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize(("key", "kid", "algorithm"), [(ED, "ed", "EdDSA"), (EC, "ec", "ES256")])
def test_a_signed_document_verifies_with_the_key_its_kid_names(
    key: Any, kid: str, algorithm: str
) -> None:
    jws = sign_json(PAYLOAD, key, typ=TYP, kid=kid, algorithms=("EdDSA", "ES256"))
    verified = verify(jws)
    assert verified.payload == PAYLOAD
    assert verified.algorithm == algorithm
    assert verified.jws == jws
    assert dict(verified.header) == {"alg": algorithm, "typ": TYP, "kid": kid}
    assert verified.is_canonical


def test_extra_headers_are_signed_and_may_not_replace_the_fixed_ones() -> None:
    jws = sign_json(PAYLOAD, ED, typ=TYP, kid="ed", algorithms=("EdDSA",), headers={"x": "1"})
    assert verify(jws).header["x"] == "1"
    for name in ("alg", "typ", "kid", "crit", "b64"):
        with pytest.raises(ValueError, match="may not set"):
            sign_json(PAYLOAD, ED, typ=TYP, kid="ed", algorithms=("EdDSA",), headers={name: "x"})


def test_signing_refuses_a_key_outside_the_allow_list() -> None:
    with pytest.raises(UnsupportedAlgorithm, match="signed with EdDSA, not ES256"):
        sign_json(PAYLOAD, EC, typ=TYP, kid="ec", algorithms=("EdDSA",))


def test_a_payload_that_is_not_canonical_verifies_but_says_so() -> None:
    loose = json.dumps(DOCUMENT).encode()
    jws = jwt.PyJWS().encode(loose, ED, algorithm="EdDSA", headers={"kid": "ed", "typ": TYP})
    assert not verify(jws).is_canonical
    not_json = jwt.PyJWS().encode(b"\xff", ED, algorithm="EdDSA", headers={"kid": "ed", "typ": TYP})
    assert not verify(not_json).is_canonical


def test_the_key_lookups_own_error_passes_through_unchanged() -> None:
    with pytest.raises(UnknownKey, match="no key 'stranger'"):
        verify(_pyjwt(ED, "EdDSA", kid="stranger", typ=TYP))


def _hs256_keyed_with_the_public_key() -> str:
    # The classic confusion: HMAC keyed with the bytes of the public key the kid names.
    return _compact({"alg": "HS256", "kid": "ed", "typ": TYP}, signature=b"x" * 32)


def _tampered() -> str:
    header, _, signature = _pyjwt(ED, "EdDSA", kid="ed", typ=TYP).split(".")
    return ".".join((header, _b64(canonical_json({"a": 2})), signature))


def _rsa_signed() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pyjwt(key, "PS256", kid="ed", typ=TYP)


@dataclass(frozen=True)
class Case:
    make: Callable[[], str]
    error: type[SignedJsonRefused]
    message: str
    options: Mapping[str, Any] | None = None


CASES = {
    "(0) too large": Case(lambda: "a" * 4097, SignedJsonMalformed, "larger than 4096 bytes"),
    "(0) not three parts": Case(lambda: "a.b", SignedJsonMalformed, "not a compact JWS"),
    "(0) JSON serialization": Case(
        lambda: json.dumps({"payload": "x", "signatures": []}),
        SignedJsonMalformed,
        "not a compact JWS",
    ),
    "(1) garbage header": Case(
        lambda: "!!!.e30.AAAA", SignedJsonMalformed, "header cannot be read"
    ),
    "(1) kid not a string": Case(
        lambda: _compact({"alg": "EdDSA", "kid": 5}, signature=b"s"),
        SignedJsonMalformed,
        "header cannot be read",
    ),
    "(2) alg none": Case(
        lambda: _compact({"alg": "none", "kid": "ed", "typ": TYP}, signature=b"s"),
        SignedJsonUnsigned,
        "is not signed",
    ),
    "(2) no alg": Case(
        lambda: _compact({"kid": "ed", "typ": TYP}, signature=b"s"),
        SignedJsonUnsigned,
        "is not signed",
    ),
    "(2) empty signature": Case(
        lambda: _pyjwt(ED, "EdDSA", kid="ed", typ=TYP).rsplit(".", 1)[0] + ".",
        SignedJsonUnsigned,
        "is not signed",
    ),
    "(3) HS256 keyed with the public key": Case(
        _hs256_keyed_with_the_public_key, SignedJsonAlgorithmRefused, "uses algorithm 'HS256'"
    ),
    "(3) an algorithm the caller does not allow": Case(
        lambda: _pyjwt(EC, "ES256", kid="ec", typ=TYP),
        SignedJsonAlgorithmRefused,
        "not EdDSA",
        {"algorithms": ("EdDSA",)},
    ),
    "(4) another typ": Case(
        lambda: _pyjwt(ED, "EdDSA", kid="ed", typ="JWT"), SignedJsonTypeRefused, "typ is not"
    ),
    "(4) no typ where one is required": Case(
        lambda: _compact({"alg": "EdDSA", "kid": "ed"}, signature=b"s"),
        SignedJsonTypeRefused,
        "has no typ",
    ),
    "(4) a typ that is not a string": Case(
        lambda: _compact({"alg": "EdDSA", "kid": "ed", "typ": 1}, signature=b"s"),
        SignedJsonTypeRefused,
        "typ is not",
    ),
    "(5) b64, even the default": Case(
        lambda: _compact({"alg": "EdDSA", "kid": "ed", "typ": TYP, "b64": True}, signature=b"s"),
        SignedJsonExtensionRefused,
        "JWS extension",
    ),
    "(7) ES256 claimed for the Ed25519 key": Case(
        lambda: _pyjwt(EC, "ES256", kid="ed", typ=TYP),
        SignedJsonAlgorithmRefused,
        "its key signs with EdDSA",
    ),
    "(7) a key of a type Tongban does not use": Case(
        _rsa_signed,
        SignedJsonAlgorithmRefused,
        "a key of a type Tongban does not use",
        {
            "algorithms": ("PS256",),
            "key_for": lambda header: rsa.generate_private_key(65537, 1024).public_key(),
        },
    ),
    "(8) another key claiming the kid": Case(
        lambda: _pyjwt(OTHER_ED, "EdDSA", kid="ed", typ=TYP),
        SignedJsonSignatureInvalid,
        "signature does not verify",
    ),
    "(8) payload changed after signing": Case(
        _tampered, SignedJsonSignatureInvalid, "signature does not verify"
    ),
    "(1) junk after a valid signature (PyJWT before 2.14 skipped it: GHSA-hxm8-2xgr-2p9m)": Case(
        lambda: _pyjwt(ED, "EdDSA", kid="ed", typ=TYP) + "!!!!",
        SignedJsonMalformed,
        "cannot be read",
    ),
    "(1) a signature that is not base64url": Case(
        lambda: _pyjwt(ED, "EdDSA", kid="ed", typ=TYP).rsplit(".", 1)[0] + ".AAAAA",
        SignedJsonMalformed,
        "cannot be read",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_step_refuses_with_its_own_error(name: str) -> None:
    case = CASES[name]
    jws = case.make()
    with pytest.raises(case.error) as caught:
        verify(jws, **(case.options or {}))
    message = str(caught.value)
    assert case.message in message
    assert message.startswith("the example")
    assert jws not in message  # a refusal never echoes the document
    assert isinstance(caught.value, SignerError)


def test_typ_is_compared_without_case_and_may_be_optional_or_unchecked() -> None:
    assert verify(_pyjwt(ED, "EdDSA", kid="ed", typ=TYP.upper())).payload == PAYLOAD
    untyped = _compact({"alg": "EdDSA", "kid": "ed"}, signature=b"s")
    with pytest.raises(SignedJsonSignatureInvalid):  # past the typ check: no typ is fine
        verify(untyped, typ_required=False)
    assert verify(_pyjwt(ED, "EdDSA", kid="ed", typ="JWT"), typ=None).payload == PAYLOAD


@pytest.mark.parametrize("crit", [["x"], ["b64"], []])
def test_a_crit_header_is_refused_before_any_key_is_looked_up(crit: list[str]) -> None:
    # PyJWT refuses an unknown critical extension while reading the header (1); any other
    # `crit` is refused at (5). Either way no key is looked up and nothing verifies.
    jws = _compact({"alg": "EdDSA", "kid": "stranger", "typ": TYP, "crit": crit}, signature=b"s")
    with pytest.raises((SignedJsonMalformed, SignedJsonExtensionRefused)):
        verify(jws)


def test_segments_are_checked_as_pyjwt_checks_them() -> None:
    """The base64url check made by one regular expression (`_Jws`) accepts and refuses exactly
    what PyJWT's own per-character check does, with the same error."""
    import random

    from jwt.api_jws import PyJWS
    from jwt.utils import base64url_encode

    from signer._signed_json import _Jws

    rng = random.Random(20)
    cases = [b"", b"=", b"==", b"===", b"A", b"AA==", b"AA=", b"AAA=", b"AQ", b"AR", b"AB=A"]
    cases += [base64url_encode(rng.randbytes(n)) for n in range(40)]
    alphabet = b"ABCxyz019-_=+/!. \n\xff"
    cases += [bytes(rng.choices(alphabet, k=rng.randint(0, 9))) for _ in range(5000)]

    def outcome(decode: Any, segment: bytes) -> tuple[str, object]:
        try:
            return ("decoded", decode(segment, "payload"))
        except jwt.DecodeError as exc:
            return ("refused", str(exc))

    # PyJWT's own check (pyproject's floor, 2.15.1, has it in this form), and the same check
    # written out character by character here, as PyJWT writes it.
    for segment in cases:
        assert outcome(_Jws._decode_base64url_segment, segment) == outcome(
            PyJWS._decode_base64url_segment, segment
        ), segment
        assert outcome(_Jws._decode_base64url_segment, segment) == outcome(
            _per_character, segment
        ), segment


def _per_character(segment: bytes, name: str) -> bytes:
    """PyJWT's base64url check of a JWS segment (jwt/api_jws.py, 2.15.1), one character at a
    time."""
    from jwt.utils import base64url_decode, base64url_encode

    alphabet = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    padding, stripped = 0, segment
    while stripped.endswith(b"="):
        stripped, padding = stripped[:-1], padding + 1
        if padding > 2:
            raise jwt.DecodeError(f"Invalid {name} padding")
    if padding and len(segment) % 4 != 0:
        raise jwt.DecodeError(f"Invalid {name} padding")
    if len(stripped) % 4 == 1 or any(c not in alphabet for c in stripped):
        raise jwt.DecodeError(f"Invalid {name} padding")
    try:
        decoded = base64url_decode(stripped)
    except (TypeError, ValueError) as err:
        raise jwt.DecodeError(f"Invalid {name} padding") from err
    if base64url_encode(decoded) != stripped:
        raise jwt.DecodeError(f"Invalid {name} padding")
    return decoded
