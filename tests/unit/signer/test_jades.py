"""The JAdES seal format (`seal`), the file key provider, and `parse_compact` at its edges."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from support import Federation, make_federation

from registry import KeyUsage
from signer import (
    MAX_JWS_BYTES,
    FileKeyProvider,
    JwsFormatError,
    KeyFileError,
    KeyProvider,
    SignerError,
    _jades,
    parse_compact,
    seal,
    verify_signature,
    x5t_s256_of_certificate,
    x5t_s256_of_der,
)
from signer._jades import SIGD_HASH_MECHANISM

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
SIGNED = T0 + timedelta(hours=1, seconds=7)
PAYLOAD = json.dumps({"统一社会信用代码": "11330000002482131K", "状态": "存续"}).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Keys:
    fed: Federation

    def files(self, owner: str, usage: KeyUsage = KeyUsage.SEAL) -> tuple[Path, Path]:
        """(private key, certificate chain) of the owner's active key."""
        record = self.fed.inventory().get(self.fed.active(owner, usage))
        return self.fed.pki / record.private_key, self.fed.pki / record.certificate

    def provider(self, owner: str, usage: KeyUsage = KeyUsage.SEAL) -> FileKeyProvider:
        return FileKeyProvider(*self.files(owner, usage))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(make_federation(tmp_path_factory.mktemp("federation"), now=T0))


def _header(jws: str) -> dict[str, Any]:
    part = jws.split(".", maxsplit=1)[0]
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return header


# -- seal -------------------------------------------------------------------------------------


def test_attached_seal_header(keys: Keys) -> None:
    provider = keys.provider("330000")
    jws = seal(PAYLOAD, provider, signing_time=SIGNED, content_type="application/json")
    header_b64, payload_b64, signature_b64 = jws.split(".")
    header = _header(jws)
    assert set(header) == {"alg", "typ", "cty", "x5t#S256", "x5c", "iat"}  # no sigD, no crit
    assert header["alg"] == "ES256" == provider.algorithm
    assert header["typ"] == "JOSE"
    assert header["cty"] == "application/json"
    assert header["iat"] == int(SIGNED.timestamp())
    # x5t#S256 is the key's id: the thumbprint of the leaf, which is x5c[0].
    leaf, *rest = provider.certificate_chain
    assert header["x5t#S256"] == provider.kid == x5t_s256_of_certificate(leaf)
    assert header["x5t#S256"] == x5t_s256_of_der(base64.b64decode(header["x5c"][0]))
    # x5c: the chain, leaf first, standard base64 DER (RFC 7515 4.1.6), without the root.
    chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"]]
    assert chain == [leaf, *rest]
    assert len(chain) == 2
    assert chain[1].subject == leaf.issuer
    assert chain[1].issuer != chain[1].subject  # the intermediate, not a self-signed root
    # The header is canonical (sorted, no spaces), the payload attached.
    assert (
        base64.urlsafe_b64decode(header_b64 + "==")
        == json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    )
    assert payload_b64 == b64url(PAYLOAD)
    parsed = parse_compact(jws)
    assert parsed.payload == PAYLOAD
    assert not parsed.detached
    assert len(parsed.signature) == 64  # ES256 in JWS form: r || s
    assert verify_signature(
        "ES256",
        leaf.public_key(),  # type: ignore[arg-type]
        f"{header_b64}.{payload_b64}".encode(),
        base64.urlsafe_b64decode(signature_b64 + "=="),
    )


def test_detached_seal_header_and_compact_form(keys: Keys) -> None:
    provider = keys.provider("zj.hrss")
    jws = seal(PAYLOAD, provider, signing_time=SIGNED, detached=True, content_type="text/csv")
    header_b64, payload_b64, _ = jws.split(".")
    assert payload_b64 == ""  # the compact form keeps an empty payload part
    header = _header(jws)
    assert set(header) == {"alg", "typ", "cty", "x5t#S256", "x5c", "iat", "sigD", "crit"}
    assert header["crit"] == ["sigD"]
    assert header["cty"] == "text/csv"
    assert header["sigD"] == {
        "mId": SIGD_HASH_MECHANISM,
        "pars": ["urn:tongban:payload"],
        "hashM": "S256",
        "hashV": [b64url(hashlib.sha256(PAYLOAD).digest())],
        "ctys": ["text/csv"],
    }
    parsed = parse_compact(jws)
    assert parsed.detached
    assert parsed.payload == b""
    # With sigD, the signature covers the header (and so the digest), not the payload part.
    assert parsed.signing_input(PAYLOAD) == f"{header_b64}.".encode()


def test_seal_uses_the_key_s_algorithm(keys: Keys) -> None:
    provider = keys.provider("330000", KeyUsage.AUDIT)  # the dev PKI's Ed25519 key
    jws = seal(PAYLOAD, provider, signing_time=SIGNED)
    assert _header(jws)["alg"] == "EdDSA" == provider.algorithm
    parsed = parse_compact(jws)
    assert len(parsed.signature) == 64
    assert verify_signature(
        "EdDSA",
        provider.certificate_chain[0].public_key(),  # type: ignore[arg-type]
        parsed.signing_input(),
        parsed.signature,
    )


def test_signing_time_defaults_to_now(keys: Keys) -> None:
    before = int(datetime.now(UTC).timestamp())
    iat = _header(seal(PAYLOAD, keys.provider("330000")))["iat"]
    assert before <= iat <= int(datetime.now(UTC).timestamp())


def test_each_signing_time_gives_its_own_header(keys: Keys) -> None:
    provider = keys.provider("330000")
    first, second = (
        seal(PAYLOAD, provider, signing_time=SIGNED + timedelta(seconds=s)).split(".")[0]
        for s in range(2)
    )
    assert first != second


# -- FileKeyProvider --------------------------------------------------------------------------


def test_file_key_provider(keys: Keys) -> None:
    key_path, certificate_path = keys.files("330000")
    provider = FileKeyProvider(key_path, certificate_path)
    assert isinstance(provider, KeyProvider)
    assert provider.kid == keys.fed.active("330000", KeyUsage.SEAL)
    assert provider.algorithm == "ES256"
    assert repr(provider) == f"FileKeyProvider(kid={provider.kid!r}, algorithm='ES256')"
    assert "PRIVATE" not in repr(provider)


def test_file_key_provider_refuses_a_key_of_another_certificate(keys: Keys) -> None:
    key_path, _ = keys.files("330000")
    _, other_certificate = keys.files("510000")
    with pytest.raises(KeyFileError, match="does not belong to the certificate in") as caught:
        FileKeyProvider(key_path, other_certificate)
    assert str(key_path) in str(caught.value)
    assert isinstance(caught.value, SignerError)
    # Another key type altogether (Ed25519 audit key, P-256 seal certificate).
    audit_key, _ = keys.files("330000", KeyUsage.AUDIT)
    _, seal_certificate = keys.files("330000")
    with pytest.raises(KeyFileError, match="does not belong to the certificate in"):
        FileKeyProvider(audit_key, seal_certificate)


def test_file_key_provider_refuses_missing_and_unreadable_files(keys: Keys, tmp_path: Path) -> None:
    key_path, certificate_path = keys.files("330000")
    missing = tmp_path / "missing.key"
    with pytest.raises(KeyFileError, match=r"private key file .*missing\.key does not exist"):
        FileKeyProvider(missing, certificate_path)
    with pytest.raises(KeyFileError, match=r"missing\.pem: not a readable PEM certificate chain"):
        FileKeyProvider(key_path, tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(KeyFileError, match=r"not\.pem: not a readable PEM certificate chain"):
        FileKeyProvider(key_path, not_pem)
    with pytest.raises(KeyFileError, match="could not be loaded"):
        FileKeyProvider(certificate_path, certificate_path)  # a certificate is not a key


# -- parse_compact ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(keys: Keys) -> str:
    return seal(PAYLOAD, keys.provider("330000"), signing_time=SIGNED)


def _replace_part(jws: str, index: int, text: str) -> str:
    parts = jws.split(".")
    parts[index] = text
    return ".".join(parts)


def test_parse_compact_accepts_str_bytes_and_surrounding_whitespace(good: str) -> None:
    parsed = parse_compact(good)
    assert parse_compact(good.encode()) == parsed
    assert parse_compact(f"  {good}\r\n") == parsed
    assert parsed.header["x5t#S256"]
    assert parsed.signing_input() == good.rsplit(".", 1)[0].encode()


# name -> (how to spoil a good seal, what the error says)
EDGES: dict[str, tuple[Callable[[str], str | bytes], str]] = {
    "one part": (lambda j: j.replace(".", ""), "not a compact JWS"),
    "four parts": (lambda j: j + ".x", "not a compact JWS"),
    "JWE (five parts)": (lambda j: j + ".a.b", "not a compact JWS"),
    "JSON serialisation": (
        lambda j: json.dumps({"payload": j.split(".")[1], "signatures": []}),
        "not a compact JWS",
    ),
    "padded header": (lambda j: _replace_part(j, 0, j.split(".")[0] + "="), "not unpadded"),
    "padded payload": (lambda j: _replace_part(j, 1, "e30="), "payload is not unpadded"),
    "padded signature": (lambda j: j + "==", "not unpadded"),
    "'+' in the header": (lambda j: "+" + j[1:], "not unpadded base64url"),
    "'/' in the payload": (lambda j: _replace_part(j, 1, "e3/9"), "payload is not unpadded"),
    "'+' in the signature": (lambda j: j[:-1] + "+", "not unpadded base64url"),
    "'/' in the signature": (lambda j: j[:-1] + "/", "not unpadded base64url"),
    "space in the payload": (lambda j: _replace_part(j, 1, "e3 0"), "payload is not unpadded"),
    "impossible length": (lambda j: _replace_part(j, 1, "e30AA"), "payload is not unpadded"),
    "non-ASCII bytes": (lambda j: j.encode() + "张".encode(), "a compact JWS is ASCII"),
    "non-ASCII header": (lambda j: "张" + j[1:], "not base64url"),
    "non-ASCII payload": (lambda j: _replace_part(j, 1, "张三"), "payload is not unpadded"),
    "non-ASCII signature": (lambda j: j[:-1] + "张", "not base64url"),
    "header not JSON": (lambda j: _replace_part(j, 0, b64url(b"{nope")), "not JSON"),
    "header not UTF-8": (lambda j: _replace_part(j, 0, b64url(b'{"a":"\xff"}')), "not UTF-8"),
    "header a list": (lambda j: _replace_part(j, 0, b64url(b"[1]")), "not a JSON object"),
    "duplicate header names": (
        lambda j: _replace_part(j, 0, b64url(b'{"alg":"ES256","alg":"none"}')),
        "duplicate header parameter alg",
    ),
}


@pytest.mark.parametrize("name", list(EDGES))
def test_parse_compact_refuses(good: str, name: str) -> None:
    make, message = EDGES[name]
    with pytest.raises(JwsFormatError, match=message):
        parse_compact(make(good))


def test_parse_compact_size_limit() -> None:
    header = b64url(b'{"alg":"ES256"}')
    payload_size = MAX_JWS_BYTES - len(header) - 2  # header "." payload "." (empty signature)
    signature = ""
    if payload_size % 4 == 1:  # not a base64url length: move two characters to the signature
        payload_size, signature = payload_size - 2, "AA"
    at_limit = f"{header}.{'A' * payload_size}.{signature}"
    assert len(at_limit) == MAX_JWS_BYTES
    assert len(parse_compact(at_limit).payload) == payload_size * 3 // 4
    with pytest.raises(JwsFormatError, match=f"larger than {MAX_JWS_BYTES} bytes"):
        parse_compact(at_limit + "A")
    with pytest.raises(JwsFormatError, match="larger than"):
        parse_compact((at_limit + "AAAA").encode())


def test_parse_compact_keeps_an_empty_signature_for_the_verifier_to_refuse() -> None:
    parsed = parse_compact(f"{b64url(b'{}')}.{b64url(b'x')}.")
    assert parsed.signature == b""
    assert parsed.header == {}


def test_large_headers_are_parsed_but_not_kept(good: str) -> None:
    # Distinct headers of 256 KiB each (a JWS may be megabytes): the parsed-header cache keeps
    # a bounded count of them, and must not keep a bounded count of arbitrarily large ones.
    before = sum(len(k) for k in _jades._HEADERS)
    for n in range(20):
        header = {"alg": "ES256", "pad": f"{n:04d}" + "x" * 256 * 1024}
        jws = _replace_part(good, 0, b64url(json.dumps(header).encode()))
        assert parse_compact(jws).header["pad"].startswith(f"{n:04d}")
    assert sum(len(k) for k in _jades._HEADERS) <= before + _jades.MAX_CACHED_HEADER_BYTES
    parse_compact(good)
    assert (
        good.split(".", maxsplit=1)[0] in _jades._HEADERS
    )  # a seal's own header is still remembered
