"""A region whose CAs are SM2, with an SM2 seal key: the registry publishes it (an SM2-signed CRL
from the SM2 issuing CA), gateways read it back, its chain and CRL check with `check_sm2_path`,
a revocation reaches the CRL, and the JWS verifier answers for its key with a report."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sm2_support import add_sm2_key, make_region_sm2
from support import Federation, make_federation

from registry import (
    Inventory,
    KeyState,
    KeyUsage,
    PkiError,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    add_key,
    load_trusted_root,
    publish,
)
from signer import FileKeyProvider, SealVerifier, SubIndication, seal, sm2_public_key_of
from signer._sm2_path import check_sm2_path
from signer._sm2_x509 import is_sm2_signed, sm2_signature_verifies

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
SM2_REGION = "510000"


def published(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / "authority" / "root.json"))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return make_federation(tmp_path_factory.mktemp("sm2-region"), now=T0)


def test_sm2_region_publishes_and_its_key_checks_out(fed: Federation) -> None:
    root, issuing = make_region_sm2(fed.pki, SM2_REGION, T0)
    leaf = add_sm2_key(fed.pki, issuing, region=SM2_REGION, usage="seal", now=T0)
    publish(fed.source, fed.pki, fed.published, now=T0 + timedelta(minutes=1))
    registry = published(fed)
    region = registry.region(SM2_REGION)
    assert region is not None
    trust = RegistryTrust(registry)
    roots, intermediates = trust.anchors(SM2_REGION)
    assert roots == (root.certificate,)
    assert intermediates == (issuing.certificate,)
    (crl,) = trust.crls(SM2_REGION)
    assert is_sm2_signed(crl)
    assert sm2_signature_verifies(crl, sm2_public_key_of(issuing.certificate))
    key = trust.key(
        next(k.kid for k in registry.keys if k.region == SM2_REGION and k.algorithm == "SM2")
    )
    assert key is not None
    assert key.certificate == leaf.certificate
    path = check_sm2_path(
        key.certificate,
        roots=roots,
        intermediates=intermediates,
        crls=trust.crls(SM2_REGION),
        at=T0 + timedelta(minutes=2),
        require_crl=True,
    )
    assert path.revoked is None
    assert path.certificates == (leaf.certificate, issuing.certificate, root.certificate)

    # a revocation in the inventory reaches the SM2 CRL at the next publish
    inventory = Inventory.load(fed.pki)
    inventory.revoke(key.kid, at=T0 + timedelta(minutes=3), reason="keyCompromise")
    inventory.save()
    publish(fed.source, fed.pki, fed.published, now=T0 + timedelta(minutes=4))
    trust = RegistryTrust(published(fed))
    path = check_sm2_path(
        key.certificate,
        roots=roots,
        intermediates=intermediates,
        crls=trust.crls(SM2_REGION),
        at=T0 + timedelta(minutes=5),
    )
    assert path.revoked == (
        "the signing certificate",
        T0 + timedelta(minutes=3),
        "key_compromise",
    )

    # the JWS verifier answers for the SM2 key with a report, and other regions still verify
    verifier = SealVerifier(trust, clock=lambda: T0 + timedelta(minutes=5))
    header = {"alg": "ES256", "typ": "JOSE", "x5t#S256": key.kid, "iat": int(T0.timestamp())}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    report = verifier.validate(f"{encoded}.e30.{'A' * 86}")
    assert report.sub_indication is SubIndication.CRYPTO_CONSTRAINTS_FAILURE
    other = next(
        k
        for k in trust.registry.keys
        if k.region != SM2_REGION and k.usage is KeyUsage.SEAL and k.algorithm == "ES256"
    )
    record = Inventory.load(fed.pki).get(other.kid)
    provider = FileKeyProvider(fed.pki / record.private_key, fed.pki / record.certificate)
    jws = seal(b"{}", provider, signing_time=T0 + timedelta(minutes=4))
    assert verifier.validate(jws).passed


def test_keys_are_not_issued_from_an_sm2_ca(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, now=T0)
    make_region_sm2(fed.pki, SM2_REGION, T0)
    with pytest.raises(PkiError, match="region 510000's issuing CA is an SM2 CA"):
        add_key(
            fed.pki,
            Inventory.load(fed.pki),
            region=SM2_REGION,
            owner=SM2_REGION,
            usage=KeyUsage.SEAL,
            state=KeyState.ACTIVE,
            now=T0,
        )
