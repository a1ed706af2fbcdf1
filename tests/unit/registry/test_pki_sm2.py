"""SM2 seal keys in a region's PKI: an SM2 leaf under the region's P-256 CA (a mixed chain),
the seal profile of an ES256 seal, its key file, and OpenSSL's word on the chain."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_support import Run
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support import make_federation

from gateway.demo.pki import DevPki, init_dev_pki, load_dev_pki
from registry import KeyState, KeyUsage
from registry._pki import (
    AgencySpec,
    IssuedKey,
    PkiError,
    RegionSpec,
    issue_key,
    pem,
    region_ca_certificates,
)
from registry._pki_sm2 import SEAL_MAKER, eseal_path
from signer import load_sm2_private_key
from signer._ses_asn1 import parse_seal
from signer._sm2_x509 import is_sm2_key, sm2_public_key_of

NOW = datetime.now(UTC).replace(microsecond=0)
REGION = RegionSpec("330000", "浙江省")
AGENCY = AgencySpec("zj-hrss", "浙江省人力资源和社会保障厅", "330000", "11330000MB0000000H")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(tmp_path_factory.mktemp("pki") / "out", [REGION], [AGENCY], now=NOW)


@pytest.fixture(scope="module")
def sm2_seal(pki: DevPki) -> IssuedKey:
    return issue_key(pki.root, region="330000", owner="330000", usage="seal", algorithm="SM2")


def _chain(key: IssuedKey) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(key.certificate_path.read_bytes())


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("openssl")
    assert binary, "the openssl CLI (Debian's OpenSSL 3) is needed to cross-check SM2"
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, check=False)


def test_sm2_seal_key_is_sm2_and_its_file_holds_its_key(sm2_seal: IssuedKey) -> None:
    leaf, intermediate = _chain(sm2_seal)
    assert sm2_seal.algorithm == "SM2"
    assert is_sm2_key(leaf)
    assert load_sm2_private_key(sm2_seal.key_path).public_key() == sm2_public_key_of(leaf)
    assert sm2_seal.key_path.stat().st_mode & 0o777 == 0o600
    # Mixed: the SM2 leaf is signed by the region's P-256 issuing CA with ECDSA.
    assert leaf.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert leaf.issuer == intermediate.subject


def test_openssl_verifies_the_mixed_chain(pki: DevPki, sm2_seal: IssuedKey, tmp_path: Path) -> None:
    root, intermediate = region_ca_certificates(pki.root, "330000")
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "intermediate.pem").write_bytes(pem(intermediate))
    # No -vfyopt distid: every signature of this chain is ECDSA (an SM2 id given to OpenSSL
    # for an ECDSA check makes it fail); the SM2 key signs documents, not certificates.
    args = ("-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "intermediate.pem")
    result = _openssl("verify", *args, sm2_seal.certificate_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")
    (tmp_path / "other.pem").write_bytes(pem(intermediate))  # not a root: the chain must fail
    refused = _openssl("verify", "-CAfile", tmp_path / "other.pem", sm2_seal.certificate_path)
    assert refused.returncode != 0


def test_sm2_seal_has_the_seal_profile_of_an_es256_seal(pki: DevPki, sm2_seal: IssuedKey) -> None:
    [es256] = [k for k in pki.keys if k.owner == "330000" and k.usage == "seal"]
    sm2_leaf, es_leaf = _chain(sm2_seal)[0], _chain(es256)[0]
    for extension in (
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.CertificatePolicies,
        x509.BasicConstraints,
        x509.CRLDistributionPoints,
        x509.AuthorityKeyIdentifier,
    ):
        assert sm2_leaf.extensions.get_extension_for_class(
            extension
        ) == es_leaf.extensions.get_extension_for_class(extension), extension
    assert sm2_leaf.subject == es_leaf.subject
    assert sm2_leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


def test_load_dev_pki_finds_the_sm2_key(pki: DevPki, sm2_seal: IssuedKey) -> None:
    found = [k for k in load_dev_pki(pki.root).keys if k.kid == sm2_seal.kid]
    assert found == [sm2_seal]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"usage": "token"}, "SM2 keys are for seals only"),
        ({"usage": "tls"}, "TLS keys are always ES256"),
    ],
)
def test_sm2_refusals(pki: DevPki, arguments: dict[str, object], message: str) -> None:
    with pytest.raises(PkiError, match=message):
        issue_key(pki.root, region="330000", owner="330000", algorithm="SM2", **arguments)  # type: ignore[arg-type]


def test_sm2_key_in_a_passphrase_protected_pki_is_refused(tmp_path: Path) -> None:
    locked = init_dev_pki(tmp_path / "locked", [REGION], [], passphrase=b"pass", now=NOW)
    with pytest.raises(PkiError, match="SM2 key files are written unencrypted"):
        issue_key(
            locked.root,
            region="330000",
            owner="330000",
            usage="seal",
            algorithm="SM2",
            passphrase=b"pass",
        )


def test_keys_rotate_alg_sm2_moves_a_region_to_sm2_seals(run: Run, tmp_path: Path) -> None:
    """`tongban keys rotate --alg sm2`: the successor is SM2, with the region's seal beside it
    (made by the region's seal maker, issued on first use); the next rotation keeps SM2."""
    fed = make_federation(tmp_path)
    args = ("--pki", fed.pki, "--owner", "330000", "--usage", "seal")
    code, out, err = run("keys", "rotate", *args, "--alg", "sm2")
    assert (code, err) == (0, ""), err
    assert "(SM2), pending" in out
    (pending,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.PENDING)
    assert pending.algorithm == "SM2"
    certificate = fed.pki / pending.certificate
    seal = parse_seal(eseal_path(certificate).read_bytes())
    leaf = x509.load_pem_x509_certificates(certificate.read_bytes())[0]
    assert seal.certificates == (leaf.public_bytes(serialization.Encoding.DER),)
    assert (
        fed.pki / "regions" / "330000" / "keys" / f"{SEAL_MAKER}.key"
    ).stat().st_mode & 0o777 == 0o600
    # the registry publishes the SM2 key like any other
    fed.publish()
    fed.publish()
    (active,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    assert active.kid == pending.kid
    # a later rotation keeps SM2 without being told, and the maker stays the same
    maker = (fed.pki / "regions" / "330000" / "keys" / f"{SEAL_MAKER}.pem").read_bytes()
    code, out, err = run("keys", "rotate", *args)
    assert (code, err) == (0, ""), err
    assert "(SM2), pending" in out
    assert (fed.pki / "regions" / "330000" / "keys" / f"{SEAL_MAKER}.pem").read_bytes() == maker
    # an agency's seal key cannot be SM2
    code, out, err = run(
        "keys", "rotate", "--pki", fed.pki, "--owner", "zj.amr", "--usage", "seal", "--alg", "SM2"
    )
    assert code != 0
    assert "SM2 seal keys are a region's" in err


def test_pki_init_seal_alg_sm2(run: Run, tmp_path: Path) -> None:
    code, out, err = run(
        "pki", "init", "--out", tmp_path / "pki", "--regions", "330000,510000", "--seal-alg", "sm2"
    )
    assert (code, err) == (0, ""), err
    assert "Dev PKI created" in out
    pki = load_dev_pki(tmp_path / "pki")
    seals = {k.owner: k.algorithm for k in pki.keys if k.usage == "seal"}
    assert seals["330000"] == seals["510000"] == "SM2"
    assert {a for o, a in seals.items() if o not in ("330000", "510000")} == {"ES256"}
    for key in pki.keys:
        if key.algorithm == "SM2":
            assert eseal_path(key.certificate_path).is_file()


def test_pki_init_refuses_sm2_seals_with_a_passphrase_before_writing(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="unencrypted"):
        init_dev_pki(tmp_path / "pki", [REGION], [], passphrase=b"p", seal_algorithm="SM2")
    assert not (tmp_path / "pki").exists()
