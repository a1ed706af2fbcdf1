"""`import_cert` for SM2 leaves (GB/T 38540 seal and signature keys): a region's SM2 root, issuing
CA and seal certificate made with the OpenSSL 3 command line (SM2 with SM3, the default
distinguishing id 1234567812345678), checked by `signer._sm2_path.check_sm2_path` on import and
published; each refusal names what is wrong."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import Federation, make_federation

from registry import (
    ImportedKey,
    Inventory,
    KeyState,
    KeyUsage,
    PkiError,
    SnapshotVerifier,
    import_ca,
    import_cert,
    import_crl,
    load_trusted_root,
    publish,
)
from registry._pki import ca_dir

REGION = "500000"
DISTID = "distid:1234567812345678"
PROFILES = """\
[req]
distinguished_name = dn
[dn]
[root]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[issuing_ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[seal]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,nonRepudiation
extendedKeyUsage = 1.3.6.1.5.5.7.3.36
certificatePolicies = 0.4.0.194112.1.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[seal_tls_eku]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = 1.3.6.1.5.5.7.3.36,clientAuth
certificatePolicies = 0.4.0.194112.1.1
[ca_db]
database = {dir}/index.txt
crlnumber = {dir}/crlnumber
certificate = {dir}/issuing.pem
private_key = {dir}/issuing.key
default_md = sm3
default_crl_days = 7
"""


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def key_and_csr(folder: Path, stem: str, subject: str) -> None:
    openssl(folder, "genpkey", "-algorithm", "SM2", "-out", f"{stem}.key")
    openssl(folder, "req", "-new", "-key", f"{stem}.key", "-sm3", "-sigopt", DISTID,
            "-subj", subject, "-config", "ext.cnf", "-out", f"{stem}.csr")  # fmt: skip


def certify(folder: Path, stem: str, issuer: str, profile: str, days: int) -> None:
    openssl(folder, "x509", "-req", "-in", f"{stem}.csr", "-vfyopt", DISTID, "-CA",
            f"{issuer}.pem", "-CAkey", f"{issuer}.key", "-CAcreateserial", "-sm3", "-sigopt",
            DISTID, "-days", str(days), "-extfile", "ext.cnf", "-extensions", profile,
            "-out", f"{stem}.pem")  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Federation, datetime]:
    """OpenSSL's SM2 material (root, issuing CA, seal and refusal cases) and a federation whose
    region 500000 has no CA of its own yet."""
    root = tmp_path_factory.mktemp("sm2-import")
    folder = root / "openssl"
    folder.mkdir()
    (folder / "ext.cnf").write_text(PROFILES.replace("{dir}", str(folder)))
    (folder / "index.txt").write_text("")
    (folder / "crlnumber").write_text("01\n")
    openssl(folder, "genpkey", "-algorithm", "SM2", "-out", "root.key")
    openssl(folder, "req", "-x509", "-new", "-key", "root.key", "-sm3", "-sigopt", DISTID,
            "-subj", "/O=重庆市/CN=重庆市 SM2 Root CA", "-days", "3650", "-config", "ext.cnf",
            "-extensions", "root", "-out", "root.pem")  # fmt: skip
    key_and_csr(folder, "issuing", "/O=重庆市/CN=重庆市 SM2 Issuing CA")
    certify(folder, "issuing", "root", "issuing_ca", 1825)
    for stem, profile in (("seal", "seal"), ("wrong-eku", "seal_tls_eku")):
        key_and_csr(folder, stem, f"/O=重庆市/CN={stem}")
        certify(folder, stem, "issuing", profile, 365)
    key_and_csr(folder, "stranger", "/O=重庆市/CN=stranger")  # a key of no certificate here
    key_and_csr(folder, "other-root", "/O=Elsewhere/CN=Other SM2 Root")
    certify(folder, "other-root", "root", "root", 10)  # a CA certificate, never a seal
    # `openssl ca` signs SM2 with an empty id unless told: the CRL would not verify here.
    openssl(folder, "ca", "-config", "ext.cnf", "-name", "ca_db", "-gencrl", "-sigopt", DISTID,
            "-out", "crl.pem")  # fmt: skip
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
    fed = make_federation(root / "fed", now=now - timedelta(hours=1))
    shutil.rmtree(ca_dir(fed.pki, REGION))
    return folder, fed, now


@pytest.fixture
def fed(made: tuple[Path, Federation, datetime], tmp_path: Path) -> Federation:
    folder, base, now = made
    shutil.copytree(base.pki, tmp_path / "pki")
    import_ca(tmp_path / "pki", REGION, folder / "root.pem", [folder / "issuing.pem"], now=now)
    return Federation(root=tmp_path, source=base.source, pki=tmp_path / "pki", published=tmp_path)


def test_an_openssl_sm2_seal_certificate_is_imported_and_published(
    made: tuple[Path, Federation, datetime], fed: Federation
) -> None:
    folder, _, now = made
    record = import_cert(
        fed.pki,
        folder / "seal.pem",
        owner=REGION,
        usage=KeyUsage.SEAL,
        key=ImportedKey(key_file=folder / "seal.key"),
        now=now,
    )
    assert (record.algorithm, record.state) == ("SM2", KeyState.PENDING)  # the dev key is active
    chain = (fed.pki / record.certificate).read_text()
    assert chain.count("BEGIN CERTIFICATE") == 2  # leaf and issuing CA, no root
    import_crl(fed.pki, REGION, folder / "crl.pem", now=now)
    publish(fed.source, fed.pki, fed.published, now=now)
    authority = load_trusted_root(fed.pki / "authority" / "root.json")
    registry = (
        SnapshotVerifier(authority).verify(fed.current.read_bytes(), held_version=None, now=None)
    ).registry
    (entry,) = [k for k in registry.keys if k.kid == record.kid]
    assert (entry.algorithm, entry.owner) == ("SM2", REGION)
    assert Inventory.load(fed.pki).get(record.kid).private_key == str(folder / "seal.key")


@pytest.mark.parametrize(
    ("stem", "usage", "key", "message"),
    [
        ("seal", KeyUsage.TLS, None, "an SM2 key seals and signs only: it cannot be a tls key"),
        ("seal", KeyUsage.AUDIT, None, "cannot be a audit key"),
        ("wrong-eku", KeyUsage.SEAL, None, "a TLS certificate does not seal documents"),
        ("other-root", KeyUsage.SEAL, None, "not a valid seal certificate of region 500000"),
        ("seal", KeyUsage.SIGNATURE, None, "certificatePolicies must name QCP-n"),
        ("seal", KeyUsage.SEAL, "stranger.key", "is not the key of the certificate"),
        ("seal", KeyUsage.SEAL, "seal.csr", "could not be loaded"),
    ],
)
def test_sm2_refusals(
    made: tuple[Path, Federation, datetime],
    fed: Federation,
    stem: str,
    usage: KeyUsage,
    key: str | None,
    message: str,
) -> None:
    folder, _, now = made
    where = ImportedKey(held_by_owner=True) if key is None else ImportedKey(key_file=folder / key)
    with pytest.raises(PkiError, match=message):
        import_cert(fed.pki, folder / f"{stem}.pem", owner=REGION, usage=usage, key=where, now=now)
    assert not [r for r in Inventory.load(fed.pki).records() if r.algorithm == "SM2"]
