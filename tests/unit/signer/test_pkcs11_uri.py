"""PKCS#11 URIs (RFC 7512): what the strict parser accepts, what it refuses and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from signer import Pkcs11UriInvalid, key_reference, parse_pkcs11_uri

MODULE = "module-path=/usr/lib/softhsm/libsofthsm2.so"


def test_parses_token_object_id_module_and_pin_source() -> None:
    uri = parse_pkcs11_uri(
        "pkcs11:object=seal%202026;token=tongban-330000;id=%01%02%ff"
        f"?{MODULE}&pin-source=file:/run/secrets/hsm-pin"
    )
    assert uri.token == "tongban-330000"
    assert uri.object == "seal 2026"
    assert uri.id == b"\x01\x02\xff"
    assert uri.module_path == Path("/usr/lib/softhsm/libsofthsm2.so")
    assert uri.pin_file == Path("/run/secrets/hsm-pin")
    assert uri.pin_env is None
    # The normal form: the RFC's attribute order, and it parses back to the same URI.
    assert str(uri) == (
        "pkcs11:token=tongban-330000;object=seal%202026;id=%01%02%FF"
        f"?{MODULE}&pin-source=file:/run/secrets/hsm-pin"
    )
    assert parse_pkcs11_uri(str(uri)) == uri


@pytest.mark.parametrize(
    ("source", "expected"),
    [("file:/p/pin", "/p/pin"), ("file:///p/pin", "/p/pin"), ("/p/pin", "/p/pin")],
)
def test_pin_source_forms(source: str, expected: str) -> None:
    assert parse_pkcs11_uri(f"pkcs11:token=t?pin-source={source}").pin_file == Path(expected)


def test_pin_from_an_environment_variable() -> None:
    uri = parse_pkcs11_uri("pkcs11:token=t;object=k?x-pin-env=TONGBAN_HSM_PIN")
    assert uri.pin_env == "TONGBAN_HSM_PIN"
    assert str(uri).endswith("?x-pin-env=TONGBAN_HSM_PIN")


def test_with_path_adds_an_id_and_keeps_the_rest() -> None:
    uri = parse_pkcs11_uri(f"pkcs11:token=t;object=k?{MODULE}&x-pin-env=PIN")
    named = uri.with_path(id=b"\x00;=")
    assert named.id == b"\x00;="
    assert (named.object, named.pin_env, named.module_path) == ("k", "PIN", uri.module_path)
    assert parse_pkcs11_uri(str(named)) == named


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pkcs12:token=t", "starts with 'pkcs11:'"),
        ("pkcs11:token=t#x", "no fragment"),
        ("pkcs11:token=t;token=u", "'token' is given twice"),
        ("pkcs11:objekt=k", "unknown PKCS#11 URI path attribute 'objekt'"),
        ("pkcs11:token", "name=value"),
        ("pkcs11:Token=t", "lower-case name"),
        ("pkcs11:token=", "'token' is empty"),
        ("pkcs11:token=a b", "percent-encoded"),
        ("pkcs11:token=%zz", "percent-encoded"),
        ("pkcs11:token=%ff", "not UTF-8"),
        ("pkcs11:type=secret", "type must be one of"),
        ("pkcs11:token=t?pin-value=1234", "pin-value is refused"),
        ("pkcs11:token=t?module-name=softhsm2", "module-name is not supported"),
        ("pkcs11:token=t?x-vendor=1", "unknown PKCS#11 URI query attribute 'x-vendor'"),
        ("pkcs11:token=t?module-path=lib/softhsm2.so", "module-path must be an absolute path"),
        ("pkcs11:token=t?pin-source=pin.txt", "pin-source must be an absolute path"),
        ("pkcs11:token=t?pin-source=file://host/pin", "only local files"),
        ("pkcs11:token=t?pin-source=https://x/pin", "only a file"),
        ("pkcs11:token=t?pin-source=%7Cprompt", "only a file"),
        ("pkcs11:token=t?x-pin-env=1PIN", "must name an environment variable"),
        ("pkcs11:token=t?x-pin-env=P&pin-source=/p", "not both"),
        ("pkcs11:token=t?pin-source=/p;x", "percent-encoded"),
        ("pkcs11:" + "a" * 5000, "characters (at most 4096)"),
    ],
)
def test_refusals_say_why(text: str, message: str) -> None:
    with pytest.raises(Pkcs11UriInvalid) as caught:
        parse_pkcs11_uri(text)
    assert message in str(caught.value)


def test_a_refused_pin_value_is_not_repeated() -> None:
    with pytest.raises(Pkcs11UriInvalid) as caught:
        parse_pkcs11_uri("pkcs11:token=t?pin-value=s3cret-PIN")
    assert "s3cret-PIN" not in str(caught.value)


def test_with_path_refuses_an_unknown_attribute() -> None:
    with pytest.raises(Pkcs11UriInvalid, match="not a PKCS#11 URI path attribute"):
        parse_pkcs11_uri("pkcs11:token=t").with_path(colour="red")


def test_key_reference_is_a_uri_or_a_path(tmp_path: Path) -> None:
    assert key_reference("keys/seal.key", tmp_path) == tmp_path / "keys/seal.key"
    assert key_reference("/etc/seal.key", tmp_path) == Path("/etc/seal.key")
    reference = key_reference("PKCS11:token=t;object=k", tmp_path)
    assert not isinstance(reference, Path)
    assert reference.object == "k"
    with pytest.raises(Pkcs11UriInvalid):
        key_reference("pkcs11:token=t?pin-value=1", tmp_path)
