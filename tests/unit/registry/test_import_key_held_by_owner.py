"""The publisher imports a region's certificates without their private keys
(`ImportedKey(held_by_owner=True)`, `import-cert --key-held-by-owner`), and a CRL the region's CA
signed revokes the inventory's keys it lists (`import_crl`): the registry then says `revoked` too.
A key recorded without a location is refused, with the reason, wherever the PKI folder would use
it: here, the dev gateway configuration (request tokens and audit prune call the same check)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from openssl_ca import OpenSslCa, make_openssl_ca
from support import Federation, make_federation

from gateway.demo.config import config_for_dev_pki
from gateway.errors import ConfigError
from registry import (
    ImportedKey,
    Inventory,
    KeyLifecycleError,
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
HELD = ImportedKey(held_by_owner=True)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[Federation, OpenSslCa, datetime]:
    root = tmp_path_factory.mktemp("held")
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
    fed = make_federation(root / "fed", now=now - timedelta(hours=1))
    shutil.rmtree(ca_dir(fed.pki, REGION))  # the region brings its own CA
    return fed, make_openssl_ca(root / "ca", "Chongqing"), now


@pytest.fixture
def fed(material: tuple[Federation, OpenSslCa, datetime], tmp_path: Path) -> Federation:
    base, ca, now = material
    shutil.copytree(base.pki, tmp_path / "pki")
    import_ca(tmp_path / "pki", REGION, ca.root, [ca.intermediate], now=now)
    return Federation(root=tmp_path, source=base.source, pki=tmp_path / "pki", published=tmp_path)


def test_only_one_place_for_the_key() -> None:
    with pytest.raises(PkiError, match="exactly one"):
        ImportedKey(key_uri="pkcs11:token=t;object=k", held_by_owner=True)
    with pytest.raises(PkiError, match="exactly one"):
        ImportedKey(key_file=Path("k.pem"), held_by_owner=True)
    assert HELD.recorded == ""


def test_a_certificate_held_by_its_owner_is_published_and_revoked_by_the_crl(
    material: tuple[Federation, OpenSslCa, datetime], fed: Federation
) -> None:
    _, ca, now = material
    cert, _ = ca.issue("seal-held", "seal")
    record = import_cert(fed.pki, cert, owner=REGION, usage=KeyUsage.SEAL, key=HELD, now=now)
    assert Inventory.load(fed.pki).get(record.kid).private_key == ""
    with pytest.raises(KeyLifecycleError, match=f"held by {REGION}: its certificate was imported"):
        record.located_private_key()
    first = import_crl(fed.pki, REGION, ca.crl("held-first.crl"), now=now)
    assert first.revoked == ()
    publish(fed.source, fed.pki, fed.published, now=now)  # no key of the region is asked for

    ca.revoke(cert)
    crl_path = ca.crl("held-second.crl")
    second = import_crl(fed.pki, REGION, crl_path, now=now)
    (revoked,) = second.revoked
    serial = x509.load_pem_x509_certificates(cert.read_bytes())[0].serial_number
    entry = second.crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert (revoked.kid, revoked.state) == (record.kid, KeyState.REVOKED)
    assert revoked.revoked_at == entry.revocation_date_utc
    assert revoked.revocation_reason == "unspecified"  # `openssl ca -revoke` without a reason
    assert Inventory.load(fed.pki).get(record.kid).state is KeyState.REVOKED
    publish(fed.source, fed.pki, fed.published, now=now + timedelta(seconds=1))
    authority = load_trusted_root(fed.pki / "authority" / "root.json")
    registry = (
        SnapshotVerifier(authority).verify(fed.current.read_bytes(), held_version=None, now=None)
    ).registry
    (entry_in_registry,) = [k for k in registry.keys if k.kid == record.kid]
    assert entry_in_registry.state is KeyState.REVOKED
    # a CRL listing it again revokes nothing twice
    third = import_crl(fed.pki, REGION, ca.crl("held-third.crl"), now=now)
    assert third.revoked == ()


def test_the_dev_pki_refuses_to_use_a_key_it_does_not_hold(
    material: tuple[Federation, OpenSslCa, datetime], fed: Federation
) -> None:
    _, ca, now = material
    inventory = Inventory.load(fed.pki)
    (dev,) = inventory.find(REGION, KeyUsage.TLS, KeyState.ACTIVE)
    inventory.revoke(dev.kid, at=now, reason="superseded")
    inventory.save()
    tls, _ = ca.issue("tls-held", "tls")
    record = import_cert(fed.pki, tls, owner=REGION, usage=KeyUsage.TLS, key=HELD, now=now)
    assert record.state is KeyState.ACTIVE
    with pytest.raises(ConfigError, match="run that region's gateway with --config"):
        config_for_dev_pki(fed.pki, REGION, listen="127.0.0.1:0", snapshot_file=None)
