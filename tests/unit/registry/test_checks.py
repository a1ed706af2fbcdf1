"""`registry._checks`: the PKI folder's own issuing runs the checks `import-ca` and `import-cert`
run, so a dev PKI cannot make a certificate a region could not import. A profile that drifted
(here: a seal certificate without the document-signing EKU, a gateway TLS certificate without
serverAuth) is refused at issuing, before anything is written, with the import's reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from support import Federation, make_federation

from registry import Inventory, KeyState, KeyUsage, PkiError, _pki
from registry._checks import check_issued
from registry._pki import issue_key, region_ca_certificates
from signer import _oids

REGION = "330000"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """One dev PKI: the refused issuings write nothing to it (which the test checks)."""
    return make_federation(tmp_path_factory.mktemp("checks") / "fed")


def test_every_key_of_a_dev_pki_passes_the_import_checks(fed: Federation) -> None:
    inventory = Inventory.load(fed.pki)
    now = datetime.now(UTC)
    checked = 0
    for record in inventory.records():
        leaf, *_ = x509.load_pem_x509_certificates((fed.pki / record.certificate).read_bytes())
        cas = region_ca_certificates(fed.pki, record.region)
        gateway = record.owner == record.region
        check_issued(
            leaf, cas=cas, region=record.region, usage=record.usage.value, gateway=gateway, at=now
        )
        checked += 1
    assert checked == len(inventory.records()) > 30


@pytest.mark.parametrize(
    ("usage", "dropped", "message"),
    [
        (
            "seal",
            _oids.EKU_DOCUMENT_SIGNING,
            # pyca 51 (locked) says "extendedKeyUsage (2.5.29.37): ...", 46 (lowest) "2.5.29.37: ..."
            r"2\.5\.29\.37.?: Certificate is missing required extension",
        ),
        ("tls", _oids.EKU_SERVER_AUTH, "extendedKeyUsage lacks 1.3.6.1.5.5.7.3.1"),
    ],
)
def test_a_drifted_profile_is_refused_at_issuing(
    fed: Federation,
    monkeypatch: pytest.MonkeyPatch,
    usage: str,
    dropped: x509.ObjectIdentifier,
    message: str,
) -> None:
    original = _pki.profile_extensions

    def drifted(*args: object) -> list[tuple[x509.ExtensionType, bool]]:
        out = []
        for extension, critical in original(*args):  # type: ignore[arg-type]
            if isinstance(extension, x509.ExtendedKeyUsage):
                kept = [o for o in extension if o != dropped]
                if kept:  # a seal's only EKU dropped: no extension at all
                    out.append((x509.ExtendedKeyUsage(kept), critical))
            else:
                out.append((extension, critical))
        return out

    monkeypatch.setattr(_pki, "profile_extensions", drifted)
    before = sorted(p.name for p in (fed.pki / "regions" / REGION / "keys").iterdir())
    with pytest.raises(PkiError, match=message) as refused:
        issue_key(fed.pki, region=REGION, owner=REGION, usage=usage)
    assert f"the {usage} certificate just issued by region {REGION}'s CA" in str(refused.value)
    assert sorted(p.name for p in (fed.pki / "regions" / REGION / "keys").iterdir()) == before
    assert len(Inventory.load(fed.pki).find(REGION, KeyUsage(usage), KeyState.ACTIVE)) == 1
