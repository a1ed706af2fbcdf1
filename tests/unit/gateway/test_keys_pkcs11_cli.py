"""`tongban keys ... --pkcs11`: what is refused before any module is loaded (a URI that is not
one, a PIN written into it, a TLS key, a public key file already there). The SoftHSM2 runs are
in tests/integration/test_pkcs11.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import Run
from support import Federation, make_federation

URI = "pkcs11:token=t;object=k?module-path=/nonexistent/module.so&x-pin-env=PIN"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return make_federation(tmp_path_factory.mktemp("fed"))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:token=t;object=k?pin-value=1234", "pin-value is refused"),
        ("pkcs11:token=t;objekt=k", "unknown PKCS#11 URI path attribute 'objekt'"),
        ("/etc/keys/seal.key", "a PKCS#11 URI starts with 'pkcs11:'"),
    ],
)
def test_a_bad_uri_is_a_usage_error(fed: Federation, run: Run, uri: str, message: str) -> None:
    code, _, err = run(
        "keys", "rotate", "--pki", fed.pki, "--owner", "330000", "--usage", "seal",
        "--pkcs11", uri,
    )  # fmt: skip
    assert code == 2
    assert message in err
    assert "1234" not in err


def test_a_tls_key_stays_in_a_file(fed: Federation, run: Run) -> None:
    code, _, err = run(
        "keys", "rotate", "--pki", fed.pki, "--owner", "330000", "--usage", "tls",
        "--pkcs11", URI,
    )  # fmt: skip
    assert code == 1
    assert "TLS keys stay in files" in err


def test_a_missing_module_is_named(fed: Federation, run: Run) -> None:
    code, _, err = run(
        "keys", "rotate", "--pki", fed.pki, "--owner", "330000", "--usage", "seal",
        "--pkcs11", URI,
    )  # fmt: skip
    assert code == 1
    assert "PKCS#11 module /nonexistent/module.so does not exist" in err


def test_the_authority_public_key_is_never_overwritten(tmp_path: Path, run: Run) -> None:
    existing = tmp_path / "authority.pub.pem"
    existing.write_text("kept", encoding="utf-8")
    code, _, err = run("keys", "authority", "--pkcs11", URI, "--out", existing)
    assert code == 1
    assert "refusing to overwrite" in err
    assert existing.read_text(encoding="utf-8") == "kept"


def test_publish_takes_a_key_file_or_a_uri(fed: Federation, run: Run) -> None:
    code, _, err = run(
        "registry", "publish", "--pki", fed.pki, "--out", fed.published,
        "--authority-key", "pkcs11:token=t?pin-value=1",
    )  # fmt: skip
    assert code == 2
    assert "pin-value is refused" in err
