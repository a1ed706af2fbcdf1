"""A region brings its own CA: an OpenSSL-made root and intermediate, a seal certificate and CRLs
imported (`import_ca`, `import_cert`, `import_crl`), published without any of the region's private
keys, and a JWS sealed with the OpenSSL-made key verifies against the published registry until
the imported CRL revokes it. Each refusal of the import checks too."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sm2_support as sm2
from cryptography.hazmat.primitives import serialization
from openssl_ca import OpenSslCa, make_openssl_ca
from support import Federation, make_federation

from registry import (
    ImportedKey,
    Inventory,
    KeyLifecycleError,
    KeyState,
    KeyUsage,
    PkiError,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    import_ca,
    import_cert,
    import_crl,
    load_trusted_root,
    publish,
    rotate_key,
)
from registry._pki import Manifest, ca_dir
from signer import FileKeyProvider, Indication, SealVerifier, SubIndication, seal
from signer._sm2 import Sm2PrivateKey

REGION = "500000"  # a demo region whose dev CA is taken away: it brings its own


@dataclass(frozen=True)
class Setup:
    fed: Federation
    ca: OpenSslCa
    now: datetime  # a little ahead of the clock: OpenSSL dates its material from the clock


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("import")
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
    fed = make_federation(root / "fed", now=now - timedelta(hours=1))
    shutil.rmtree(ca_dir(fed.pki, REGION))
    return Setup(fed, make_openssl_ca(root / "ca", "Chongqing"), now)


@pytest.fixture
def setup(base: Setup, tmp_path: Path) -> Setup:
    """A copy of the PKI folder, so that each test imports into its own."""
    shutil.copytree(base.fed.pki, tmp_path / "pki")
    fed = Federation(
        root=tmp_path, source=base.fed.source, pki=tmp_path / "pki", published=tmp_path / "pub"
    )
    return Setup(fed, base.ca, base.now)


def published(fed: Federation) -> Registry:
    authority = load_trusted_root(fed.pki / "authority" / "root.json")
    return (
        SnapshotVerifier(authority)
        .verify(fed.current.read_bytes(), held_version=None, now=None)
        .registry
    )


def test_an_imported_ca_publishes_and_its_seal_verifies_until_revoked(setup: Setup) -> None:
    fed, ca = setup.fed, setup.ca
    chain = import_ca(fed.pki, REGION, ca.root, [ca.intermediate], now=setup.now)
    assert Manifest.read(fed.pki).region(REGION).ca == "imported"
    cert, key = ca.issue("seal-ok", "seal")
    record = import_cert(
        fed.pki,
        cert,
        owner=REGION,
        usage=KeyUsage.SEAL,
        key=ImportedKey(key_file=key),
        now=setup.now,
    )
    assert record.state is KeyState.PENDING  # the region's dev seal key is still active
    with pytest.raises(PkiError, match="has no CRL: import one"):
        publish(fed.source, fed.pki, fed.published, now=setup.now)
    import_crl(fed.pki, REGION, ca.crl("first.crl"), now=setup.now)
    # the dev CA keys are gone: publishing signs nothing with a key of the region
    publish(fed.source, fed.pki, fed.published, now=setup.now)
    registry = published(fed)
    region = registry.region(REGION)
    assert region is not None
    assert len(region.ca_certificates) == 2 == len(chain)
    assert len(region.crls) == 1
    provider = FileKeyProvider(key, fed.pki / record.certificate)
    assert provider.kid == record.kid
    jws = seal(b"{}", provider, signing_time=setup.now)
    verifier = SealVerifier(RegistryTrust(registry), clock=lambda: setup.now + timedelta(seconds=1))
    report = verifier.validate(jws)
    assert report.indication is Indication.TOTAL_PASSED, report.message

    ca.revoke(cert)
    import_crl(fed.pki, REGION, ca.crl("second.crl"), now=setup.now)
    publish(fed.source, fed.pki, fed.published, now=setup.now + timedelta(seconds=1))
    verifier = SealVerifier(
        RegistryTrust(published(fed)), clock=lambda: setup.now + timedelta(seconds=2)
    )
    report = verifier.validate(jws)
    assert report.sub_indication in {SubIndication.REVOKED, SubIndication.REVOKED_NO_POE}


def test_a_tls_certificate_with_a_module_key_is_recorded(setup: Setup) -> None:
    fed, ca = setup.fed, setup.ca
    import_ca(fed.pki, REGION, ca.root, [ca.intermediate], now=setup.now)
    cert, _ = ca.issue("tls", "tls")
    uri = "pkcs11:token=region;object=tls"
    record = import_cert(
        fed.pki, cert, owner=REGION, usage=KeyUsage.TLS, key=ImportedKey(key_uri=uri), now=setup.now
    )
    assert Inventory.load(fed.pki).get(record.kid).private_key == uri


@pytest.mark.parametrize(
    ("profile", "usage", "message"),
    [
        ("tls", KeyUsage.SEAL, "document signing"),
        ("leaf", KeyUsage.SEAL, "not a valid seal certificate"),
        ("seal", KeyUsage.TLS, "extendedKeyUsage lacks"),
        ("seal", KeyUsage.TOKEN, "extendedKeyUsage lacks"),
    ],
)
def test_a_certificate_without_its_usage_profile_is_refused(
    setup: Setup, profile: str, usage: KeyUsage, message: str
) -> None:
    fed, ca = setup.fed, setup.ca
    import_ca(fed.pki, REGION, ca.root, [ca.intermediate], now=setup.now)
    cert, key = ca.issue(f"wrong-{profile}-{usage.value}", profile)
    with pytest.raises(PkiError, match=message):
        import_cert(fed.pki, cert, owner=REGION, usage=usage, key=ImportedKey(key_file=key))


def test_cert_refusals(setup: Setup, tmp_path: Path) -> None:
    fed, ca = setup.fed, setup.ca
    cert, key = ca.issue("seal-refusals", "seal")
    with pytest.raises(PkiError, match="not a valid seal certificate of region 330000"):
        import_cert(
            fed.pki, cert, owner="330000", usage=KeyUsage.SEAL, key=ImportedKey(key_file=key)
        )
    import_ca(fed.pki, REGION, ca.root, [ca.intermediate], now=setup.now)
    _, other_key = ca.issue("other", "seal")
    with pytest.raises(PkiError, match="is not the key of the certificate"):
        import_cert(
            fed.pki, cert, owner=REGION, usage=KeyUsage.SEAL, key=ImportedKey(key_file=other_key)
        )
    with pytest.raises(PkiError, match="exactly one"):
        ImportedKey()
    with pytest.raises(PkiError, match="neither a region nor an agency"):
        import_cert(
            fed.pki, cert, owner="nobody", usage=KeyUsage.SEAL, key=ImportedKey(key_file=key)
        )
    import_cert(fed.pki, cert, owner=REGION, usage=KeyUsage.SEAL, key=ImportedKey(key_file=key))
    with pytest.raises(KeyLifecycleError, match="already in the inventory"):
        import_cert(fed.pki, cert, owner=REGION, usage=KeyUsage.SEAL, key=ImportedKey(key_file=key))
    again, again_key = ca.issue("seal-again", "seal")
    with pytest.raises(KeyLifecycleError, match="already under way"):
        import_cert(
            fed.pki, again, owner=REGION, usage=KeyUsage.SEAL, key=ImportedKey(key_file=again_key)
        )


def test_ca_refusals(setup: Setup) -> None:
    fed, ca = setup.fed, setup.ca
    with pytest.raises(PkiError, match="already has a CA"):
        import_ca(fed.pki, "330000", ca.root, now=setup.now)
    with pytest.raises(PkiError, match="not part of this PKI: give its name"):
        import_ca(fed.pki, "440000", ca.root, now=setup.now)
    with pytest.raises(PkiError, match="not a self-signed root"):
        import_ca(fed.pki, REGION, ca.intermediate, now=setup.now)
    leaf, _ = ca.issue("not-a-ca", "seal")
    with pytest.raises(PkiError, match="basicConstraints cA is false"):
        import_ca(fed.pki, REGION, leaf, now=setup.now)
    with pytest.raises(PkiError, match="expired on"):
        import_ca(fed.pki, REGION, ca.root, now=setup.now + timedelta(days=3660))
    other = make_openssl_ca(fed.root / "other", "Other")
    with pytest.raises(PkiError, match="is not issued by"):
        import_ca(fed.pki, REGION, ca.root, [other.intermediate], now=setup.now)
    assert not (ca_dir(fed.pki, REGION) / "imported-root.pem").exists()  # nothing half-written
    import_ca(fed.pki, "440000", other.root, [other.intermediate], name="广东省", now=setup.now)
    assert Manifest.read(fed.pki).region("440000").ca == "imported"


def test_crl_refusals(setup: Setup) -> None:
    fed, ca = setup.fed, setup.ca
    crl = ca.crl("held.crl")
    with pytest.raises(PkiError, match="has no imported CA"):
        import_crl(fed.pki, REGION, crl, now=setup.now)
    import_ca(fed.pki, REGION, ca.root, [ca.intermediate], now=setup.now)
    other = make_openssl_ca(fed.root / "other", "Chongqing")  # same names, other keys
    with pytest.raises(PkiError, match="signature is not region 500000's issuing CA's"):
        import_crl(fed.pki, REGION, other.crl(), now=setup.now)
    foreign = make_openssl_ca(fed.root / "foreign", "Foreign")
    with pytest.raises(PkiError, match="not by region 500000's issuing CA"):
        import_crl(fed.pki, REGION, foreign.crl(), now=setup.now)
    with pytest.raises(PkiError, match="out of date"):
        import_crl(fed.pki, REGION, crl, now=setup.now + timedelta(days=31))
    import_crl(fed.pki, REGION, crl, now=setup.now)
    with pytest.raises(PkiError, match="not newer than the CRL held"):
        import_crl(fed.pki, REGION, crl, now=setup.now)


def test_an_sm2_region_ca_and_its_crl_are_checked_and_published(setup: Setup) -> None:
    fed = setup.fed
    root = sm2.issue("Chongqing SM2 Root CA", path_length=1, not_before=setup.now - timedelta(days=1),
                     not_after=setup.now + timedelta(days=3650))  # fmt: skip
    issuing = sm2.issue("Chongqing SM2 Issuing CA", root, path_length=0,
                        not_before=setup.now - timedelta(days=1), not_after=setup.now + timedelta(days=1825))  # fmt: skip
    forged = sm2.issue("Chongqing SM2 Issuing CA", root, path_length=0,
                       signing_key=Sm2PrivateKey.generate(), not_before=setup.now - timedelta(days=1),
                       not_after=setup.now + timedelta(days=1825))  # fmt: skip
    files = fed.root / "sm2"
    files.mkdir()
    for stem, issued in (("root", root), ("issuing", issuing), ("forged", forged)):
        (files / f"{stem}.pem").write_bytes(issued.pem)
    with pytest.raises(PkiError, match="is not issued by"):
        import_ca(fed.pki, REGION, files / "root.pem", [files / "forged.pem"], now=setup.now)
    import_ca(fed.pki, REGION, files / "root.pem", [files / "issuing.pem"], now=setup.now)
    window = {
        "last_update": setup.now - timedelta(hours=1),
        "next_update": setup.now + timedelta(days=7),
    }
    wrong = sm2.crl(issuing, signing_key=Sm2PrivateKey.generate(), **window)
    (files / "wrong.crl").write_bytes(wrong.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(PkiError, match="signature is not region 500000's issuing CA's"):
        import_crl(fed.pki, REGION, files / "wrong.crl", now=setup.now)
    good = sm2.crl(issuing, **window)
    (files / "good.crl").write_bytes(good.public_bytes(serialization.Encoding.PEM))
    import_crl(fed.pki, REGION, files / "good.crl", now=setup.now)
    publish(fed.source, fed.pki, fed.published, now=setup.now)
    region = published(fed).region(REGION)
    assert region is not None
    assert region.ca_certificates == tuple(
        c.certificate.public_bytes(serialization.Encoding.DER) for c in (root, issuing)
    )
    assert region.crls == (good.public_bytes(serialization.Encoding.DER),)


def test_import_ca_keeps_when_the_pki_was_made(setup: Setup) -> None:
    path = setup.fed.pki / "pki.json"
    created = json.loads(path.read_bytes())["created"]
    import_ca(setup.fed.pki, REGION, setup.ca.root, [setup.ca.intermediate], now=setup.now)
    document = json.loads(path.read_bytes())
    assert document["created"] == created
    (region,) = (r for r in document["regions"] if r["code"] == REGION)
    assert region["ca"] == "imported"


def test_keys_are_not_issued_from_an_imported_ca(setup: Setup) -> None:
    import_ca(setup.fed.pki, REGION, setup.ca.root, [setup.ca.intermediate], now=setup.now)
    with pytest.raises(PkiError, match="CA is imported: its own CA issues its keys"):
        rotate_key(setup.fed.pki, REGION, KeyUsage.SEAL, now=setup.now)
    with pytest.raises(PkiError, match="pkcs11: URI"):
        ImportedKey(key_uri="/dev/hsm0")
