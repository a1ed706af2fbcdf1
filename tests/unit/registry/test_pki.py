"""The development PKI: layout, file modes, certificate profiles, chains and real mTLS."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import stat
from base64 import urlsafe_b64encode
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from gateway.demo.pki import DevPki, init_dev_pki, load_dev_pki
from registry import authority_key_id, load_trusted_root, read_root
from registry._pki import (
    AgencySpec,
    IssuedKey,
    PkiError,
    RegionSpec,
    certificate_kid,
    issue_key,
    region_ca_certificates,
)
from signer import _oids, load_private_key

NOW = datetime.now(UTC).replace(microsecond=0)  # real time: the gRPC handshake checks it
PASSPHRASE = b"dev pki passphrase"

REGIONS = (
    RegionSpec("330000", "浙江省"),
    RegionSpec("440000", "广东省"),
    RegionSpec("510000", "四川省"),
)
# Synthetic credit codes with valid GB 32100 check characters.
AGENCIES = (
    AgencySpec("zj-hrss", "浙江省人力资源和社会保障厅", "330000", "11330000MB0000000H"),
    AgencySpec("zj-mca", "浙江省民政厅", "330000", "11330000MB0000019E"),
    AgencySpec("zj-amr", "浙江省市场监督管理局", "330000", "11330000MB00000279"),
    AgencySpec("gd-hrss", "广东省人力资源和社会保障厅", "440000", "11440000MB0000035Y"),
    AgencySpec("gd-mca", "广东省民政厅", "440000", "11440000MB0000043R"),
    AgencySpec("gd-amr", "广东省市场监督管理局", "440000", "11440000MB0000051L"),
    AgencySpec("sc-hrss", "四川省人力资源和社会保障厅", "510000", "11510000MB000006XN"),
    AgencySpec("sc-mca", "四川省民政厅", "510000", "11510000MB0000078N"),
    AgencySpec("sc-amr", "四川省市场监督管理局", "510000", "11510000MB0000086H"),
)
GATEWAY_USAGES = ("tls", "seal", "signature", "token", "audit")
AGENCY_USAGES = ("tls", "seal")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(tmp_path_factory.mktemp("pki") / "out", REGIONS, AGENCIES, now=NOW)


@pytest.fixture(scope="module")
def spare_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A second PKI for tests that issue more keys, so `pki` stays as init left it."""
    return init_dev_pki(tmp_path_factory.mktemp("spare"), REGIONS, AGENCIES, now=NOW)


@pytest.fixture(scope="module")
def locked_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    regions, agencies = REGIONS[:1], AGENCIES[:1]
    return init_dev_pki(
        tmp_path_factory.mktemp("locked"), regions, agencies, passphrase=PASSPHRASE, now=NOW
    )


def _key(pki: DevPki, *, owner: str, usage: str) -> IssuedKey:
    [found] = [k for k in pki.keys if k.owner == owner and k.usage == usage]
    return found


def _chain(key: IssuedKey) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(key.certificate_path.read_bytes())


def _leaf(key: IssuedKey) -> x509.Certificate:
    return _chain(key)[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _b64url_sha256(data: bytes) -> str:
    return urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _verify_client(key: IssuedKey, pki_root: Path, at: datetime) -> list[x509.Certificate]:
    root, _ = region_ca_certificates(pki_root, key.region)
    leaf, *intermediates = _chain(key)
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(at)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    return verifier.verify(leaf, intermediates).chain


# ---------------------------------------------------------------------------------------------
# Layout and files


def test_init_issues_the_expected_keys(pki: DevPki) -> None:
    expected = {(r.code, r.code, u) for r in REGIONS for u in GATEWAY_USAGES} | {
        (a.region, a.id, u) for a in AGENCIES for u in AGENCY_USAGES
    }
    assert {(k.region, k.owner, k.usage) for k in pki.keys} == expected
    assert len(pki.keys) == len(expected)


def test_layout(pki: DevPki) -> None:
    root = pki.root
    assert pki.authority_key_paths == tuple(
        root / "authority" / f"{n}.key" for n in ("national", "province-1", "province-2")
    )
    assert pki.trusted_root_path == root / "authority" / "root.json"
    for region in REGIONS:
        ca = root / "regions" / region.code / "ca"
        names = {p.name for p in ca.iterdir()}
        assert names == {
            "root.pem",
            "root.key",
            "intermediate.pem",
            "intermediate.key",
            "intermediate.crl.pem",
        }
    for key in pki.keys:
        folder = (
            root / "regions" / key.owner
            if key.owner == key.region
            else root / "agencies" / key.owner
        )
        stem = f"{key.usage}-{key.kid[:8]}"
        assert key.certificate_path == folder / "keys" / f"{stem}.pem"
        assert key.key_path == folder / "keys" / f"{stem}.key"
    manifest = json.loads((root / "pki.json").read_text(encoding="utf-8"))
    assert [r["code"] for r in manifest["regions"]] == [r.code for r in REGIONS]
    assert [a["id"] for a in manifest["agencies"]] == [a.id for a in AGENCIES]
    assert not list(root.rglob(".*.tmp"))
    bundle = x509.load_pem_x509_certificates((root / "roots.pem").read_bytes())
    assert bundle == [
        x509.load_pem_x509_certificate((root / "regions" / r.code / "ca" / "root.pem").read_bytes())
        for r in REGIONS
    ]


def test_private_keys_are_0600_and_certificates_public(pki: DevPki) -> None:
    private = sorted(pki.root.rglob("*.key"))
    assert len(private) == 3 + 2 * len(REGIONS) + len(pki.keys)  # 3 authority keys
    for path in private:
        assert _mode(path) == 0o600, path
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    for path in pki.root.rglob("*.pem"):
        assert _mode(path) & 0o077 == 0o044, path


def test_passphrase_encrypts_every_private_key(locked_pki: DevPki) -> None:
    private = sorted(locked_pki.root.rglob("*.key"))
    assert len(private) == 3 + 2 + len(locked_pki.keys)
    for path in private:
        assert _mode(path) == 0o600
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert load_private_key(path, PASSPHRASE)


def test_leaf_key_matches_its_certificate(pki: DevPki) -> None:
    for key in pki.keys:
        private = load_private_key(key.key_path)
        assert private.public_key() == _leaf(key).public_key(), key


def test_authority_keys_and_root(pki: DevPki) -> None:
    """Three Ed25519 authority keys, the national platform's first; root version 1 names them
    with threshold 2 and carries every key's signature."""
    root = load_trusted_root(pki.trusted_root_path)
    assert (root.version, root.threshold, len(root.keys)) == (1, 2, 3)
    signed = read_root(pki.trusted_root_path)
    assert {s.keyid for s in signed.signatures} == {k.keyid for k in root.keys}
    holders = []
    for path in pki.authority_key_paths:
        private = load_private_key(path)
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        spki = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert authority_key_id(private.public_key()) == _b64url_sha256(spki)
        entry = root.key(_b64url_sha256(spki))
        assert entry is not None
        holders.append(entry.holder)
    assert holders[0] == "national platform"
    assert all("security team" in h for h in holders[1:])


def test_kid_is_base64url_sha256_of_the_certificate_der(pki: DevPki) -> None:
    for key in pki.keys:
        der = _leaf(key).public_bytes(serialization.Encoding.DER)
        assert key.kid == _b64url_sha256(der) == certificate_kid(_leaf(key))
        assert "=" not in key.kid
        assert len(key.kid) == 43


def test_algorithms_and_key_types(pki: DevPki) -> None:
    for key in pki.keys:
        public = _leaf(key).public_key()
        if key.usage == "audit":
            assert key.algorithm == "EdDSA"
            assert isinstance(public, ed25519.Ed25519PublicKey)
        else:
            assert key.algorithm == "ES256"
            assert isinstance(public, ec.EllipticCurvePublicKey)
            assert isinstance(public.curve, ec.SECP256R1)


def test_validity_uses_now_backdated_for_clock_skew(pki: DevPki) -> None:
    for key in pki.keys:
        leaf = _leaf(key)
        assert key.not_before == leaf.not_valid_before_utc == NOW - timedelta(minutes=5)
        assert key.not_after == leaf.not_valid_after_utc == NOW + timedelta(days=365)
        assert key.not_before.tzinfo is UTC


def test_load_dev_pki_finds_what_init_issued(pki: DevPki) -> None:
    loaded = load_dev_pki(pki.root)
    assert loaded.authority_key_path == pki.authority_key_path
    assert set(loaded.keys) == set(pki.keys)


# ---------------------------------------------------------------------------------------------
# Certificate authorities and CRL


def test_region_ca_certificates(pki: DevPki) -> None:
    for region in REGIONS:
        root, intermediate = region_ca_certificates(pki.root, region.code)
        assert root.subject == root.issuer
        root.verify_directly_issued_by(root)
        intermediate.verify_directly_issued_by(root)
        for cert, path_length in ((root, 1), (intermediate, 0)):
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
            assert constraints.critical
            assert constraints.value.ca
            assert constraints.value.path_length == path_length
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
            assert usage.critical
            assert usage.value.key_cert_sign
            assert usage.value.crl_sign
            assert not usage.value.digital_signature
            assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            public = cert.public_key()
            assert isinstance(public, ec.EllipticCurvePublicKey)
            assert isinstance(public.curve, ec.SECP256R1)
        aki = intermediate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert aki.value.key_identifier == ski.value.digest
        assert root.not_valid_after_utc - NOW >= timedelta(days=3652)
        assert timedelta(days=1826) <= intermediate.not_valid_after_utc - NOW < timedelta(days=1830)
        assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
            region.name
        )


def test_region_ca_certificates_of_unknown_region(pki: DevPki) -> None:
    with pytest.raises(PkiError, match="does not exist"):
        region_ca_certificates(pki.root, "110000")
    with pytest.raises(PkiError, match="6-digit"):
        region_ca_certificates(pki.root, "../../etc")


def test_crl_is_empty_signed_by_the_intermediate_and_fresh_for_7_days(pki: DevPki) -> None:
    for region in REGIONS:
        _, intermediate = region_ca_certificates(pki.root, region.code)
        path = pki.root / "regions" / region.code / "ca" / "intermediate.crl.pem"
        crl = x509.load_pem_x509_crl(path.read_bytes())
        public = intermediate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert crl.is_signature_valid(public)
        assert crl.issuer == intermediate.subject
        assert len(crl) == 0
        assert crl.last_update_utc <= NOW
        assert crl.next_update_utc == NOW + timedelta(days=7)
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1


# ---------------------------------------------------------------------------------------------
# Chains


def test_every_leaf_chains_to_its_region_root(pki: DevPki) -> None:
    for key in pki.keys:
        root, intermediate = region_ca_certificates(pki.root, key.region)
        chain = _chain(key)
        assert len(chain) == 2
        assert chain[1] == intermediate  # the file holds the chain without the root
        verified = _verify_client(key, pki.root, NOW)
        assert verified == [chain[0], intermediate, root], key


def test_leaf_does_not_chain_to_another_regions_root(pki: DevPki) -> None:
    key = _key(pki, owner="330000", usage="seal")
    other = replace(key, region="440000")
    with pytest.raises(VerificationError):
        _verify_client(other, pki.root, NOW)


def test_leaf_outside_its_validity_is_refused(pki: DevPki) -> None:
    key = _key(pki, owner="zj-hrss", usage="seal")
    with pytest.raises(VerificationError):
        _verify_client(key, pki.root, NOW + timedelta(days=366))


def test_gateway_tls_certificate_passes_the_webpki_server_profile(pki: DevPki) -> None:
    key = _key(pki, owner="330000", usage="tls")
    root, _ = region_ca_certificates(pki.root, "330000")
    leaf, *intermediates = _chain(key)
    for subject in (
        DNSName("gateway.330000.tongban.test"),
        DNSName("localhost"),
        IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        IPAddress(ipaddress.IPv6Address("::1")),
    ):
        verifier = PolicyBuilder().store(Store([root])).time(NOW).build_server_verifier(subject)
        assert verifier.verify(leaf, intermediates)[-1] == root
    wrong_name = (
        PolicyBuilder()
        .store(Store([root]))
        .time(NOW)
        .build_server_verifier(DNSName("gateway.440000.tongban.test"))
    )
    with pytest.raises(VerificationError):
        wrong_name.verify(leaf, intermediates)


def test_agency_tls_certificate_is_a_client_certificate_only(pki: DevPki) -> None:
    key = _key(pki, owner="zj-hrss", usage="tls")
    root, _ = region_ca_certificates(pki.root, "330000")
    leaf, *intermediates = _chain(key)
    client = PolicyBuilder().store(Store([root])).time(NOW).build_client_verifier()
    verified = client.verify(leaf, intermediates)
    assert verified.subjects == [x509.UniformResourceIdentifier("urn:tongban:agency:zj-hrss")]
    server = (
        PolicyBuilder().store(Store([root])).time(NOW).build_server_verifier(DNSName("localhost"))
    )
    with pytest.raises(VerificationError):
        server.verify(leaf, intermediates)


def test_seal_is_refused_by_the_default_tls_client_profile(pki: DevPki) -> None:
    key = _key(pki, owner="zj-hrss", usage="seal")
    root, _ = region_ca_certificates(pki.root, "330000")
    leaf, *intermediates = _chain(key)
    client = PolicyBuilder().store(Store([root])).time(NOW).build_client_verifier()
    with pytest.raises(VerificationError):
        client.verify(leaf, intermediates)


# ---------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class Profile:
    usage: str
    owner: str
    content_commitment: bool
    purposes: tuple[x509.ObjectIdentifier, ...]
    policies: tuple[x509.ObjectIdentifier, ...]
    qc_type: x509.ObjectIdentifier | None


DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
QC_TYPE_DER = {  # RFC 3739 QCStatements holding one ETSI QcType, checked with openssl asn1parse
    "seal": "30153013060604008e4601063009060704008e46010602",
    "signature": "30153013060604008e4601063009060704008e46010601",
}
PROFILES = [
    Profile(
        "seal",
        "330000",
        True,
        (DOCUMENT_SIGNING,),
        (x509.ObjectIdentifier("0.4.0.194112.1.1"), _oids.POLICY_SEAL),
        _oids.QC_TYPE_ESEAL,
    ),
    Profile(
        "seal",
        "zj-hrss",
        True,
        (DOCUMENT_SIGNING,),
        (x509.ObjectIdentifier("0.4.0.194112.1.1"), _oids.POLICY_SEAL),
        _oids.QC_TYPE_ESEAL,
    ),
    Profile(
        "signature",
        "330000",
        True,
        (DOCUMENT_SIGNING,),
        (x509.ObjectIdentifier("0.4.0.194112.1.0"), _oids.POLICY_SIGNATURE),
        _oids.QC_TYPE_ESIGN,
    ),
    Profile(
        "tls",
        "330000",
        False,
        (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        (_oids.POLICY_TLS_GATEWAY,),
        None,
    ),
    Profile(
        "tls",
        "zj-hrss",
        False,
        (ExtendedKeyUsageOID.CLIENT_AUTH,),
        (_oids.POLICY_TLS_AGENCY,),
        None,
    ),
    Profile("token", "330000", False, (_oids.EKU_TOKEN_SIGNING,), (_oids.POLICY_TOKEN,), None),
    Profile("audit", "330000", False, (_oids.EKU_AUDIT_SIGNING,), (_oids.POLICY_AUDIT,), None),
]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: f"{p.usage}-{p.owner}")
def test_leaf_profile(pki: DevPki, profile: Profile) -> None:
    leaf = _leaf(_key(pki, owner=profile.owner, usage=profile.usage))
    extensions = leaf.extensions

    constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    key_usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert key_usage.value.content_commitment is profile.content_commitment
    assert not key_usage.value.key_cert_sign
    assert not key_usage.value.key_encipherment
    eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert tuple(eku) == profile.purposes
    policies = extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert tuple(p.policy_identifier for p in policies) == profile.policies
    assert extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    points = extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [p.full_name for p in points] == [
        [x509.UniformResourceIdentifier("http://pki.330000.tongban.test/intermediate.crl")]
    ]
    qc = [e for e in extensions if e.oid == _oids.QC_STATEMENTS]
    if profile.qc_type is None:
        assert qc == []
    else:
        [statement] = qc
        assert not statement.critical
        assert isinstance(statement.value, x509.UnrecognizedExtension)
        assert statement.value.value.hex() == QC_TYPE_DER[profile.usage]


def test_seal_and_signature_are_told_apart_by_policy_and_qc_type(pki: DevPki) -> None:
    def policies(usage: str) -> set[x509.ObjectIdentifier]:
        leaf = _leaf(_key(pki, owner="330000", usage=usage))
        value = leaf.extensions.get_extension_for_class(x509.CertificatePolicies).value
        return {p.policy_identifier for p in value}

    assert _oids.QCP_L in policies("seal")
    assert _oids.QCP_N not in policies("seal")
    assert _oids.QCP_N in policies("signature")
    assert _oids.QCP_L not in policies("signature")


def test_gateway_tls_subject_alternative_names(pki: DevPki) -> None:
    leaf = _leaf(_key(pki, owner="440000", usage="tls"))
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gateway.440000.tongban.test", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.IPv4Address("127.0.0.1"),
        ipaddress.IPv6Address("::1"),
    ]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:tongban:gateway:440000"
    ]


def test_subjects(pki: DevPki) -> None:
    def attributes(owner: str, usage: str) -> dict[str, str]:
        subject = _leaf(_key(pki, owner=owner, usage=usage)).subject
        return {a.oid.dotted_string: str(a.value) for a in subject}

    c, o, cn = NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME
    org_id, serial = NameOID.ORGANIZATION_IDENTIFIER, NameOID.SERIAL_NUMBER

    agency_seal = attributes("zj-hrss", "seal")
    assert agency_seal[c.dotted_string] == "CN"
    assert agency_seal[o.dotted_string] == "浙江省人力资源和社会保障厅"
    assert agency_seal[org_id.dotted_string] == "NTRCN-11330000MB0000000H"
    assert serial.dotted_string not in agency_seal

    agency_tls = attributes("zj-hrss", "tls")
    assert agency_tls[org_id.dotted_string] == "NTRCN-11330000MB0000000H"

    person = attributes("330000", "signature")
    assert person[cn.dotted_string] == "测试签名人 330000"
    assert person[serial.dotted_string].startswith("TONGBAN-TEST-330000-")
    assert org_id.dotted_string not in person

    gateway = attributes("330000", "tls")
    assert gateway[cn.dotted_string] == "gateway.330000.tongban.test"
    assert gateway[o.dotted_string] == "浙江省"


def test_oids_live_under_one_uuid_arc() -> None:
    own = [
        _oids.POLICY_SEAL,
        _oids.POLICY_SIGNATURE,
        _oids.POLICY_TLS_GATEWAY,
        _oids.POLICY_TLS_AGENCY,
        _oids.POLICY_TOKEN,
        _oids.POLICY_AUDIT,
        _oids.EKU_TOKEN_SIGNING,
        _oids.EKU_AUDIT_SIGNING,
    ]
    assert len(set(own)) == len(own)
    for oid in own:
        assert oid.dotted_string.startswith(_oids.TONGBAN_ARC + ".")
    arc = int(_oids.TONGBAN_ARC.removeprefix("2.25."))
    assert 0 < arc < 2**128
    assert set(_oids.POLICY_FOR_USAGE.values()) == set(own[:6])
    assert _oids.EKU_DOCUMENT_SIGNING.dotted_string == "1.3.6.1.5.5.7.3.36"


# ---------------------------------------------------------------------------------------------
# issue_key


def test_issue_key_makes_a_new_kid_each_time(spare_pki: DevPki) -> None:
    first = issue_key(spare_pki.root, region="330000", owner="zj-mca", usage="seal", now=NOW)
    second = issue_key(spare_pki.root, region="330000", owner="zj-mca", usage="seal", now=NOW)
    existing = {k.kid for k in spare_pki.keys}
    assert first.kid != second.kid
    assert first.kid not in existing
    assert second.kid not in existing
    for key in (first, second):
        assert key.certificate_path.parent == spare_pki.root / "agencies" / "zj-mca" / "keys"
        assert _mode(key.key_path) == 0o600
        assert _verify_client(key, spare_pki.root, NOW)
    assert {first, second} <= set(load_dev_pki(spare_pki.root).keys)


def test_issue_key_validity_days_and_subject_name(spare_pki: DevPki) -> None:
    key = issue_key(
        spare_pki.root,
        region="440000",
        owner="440000",
        usage="signature",
        subject_name="测试签名人 甲",
        now=NOW,
        validity_days=30,
    )
    leaf = _leaf(key)
    assert key.not_after == NOW + timedelta(days=30)
    common_name = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "测试签名人 甲"


def test_issue_key_extra_tls_names(spare_pki: DevPki) -> None:
    key = issue_key(
        spare_pki.root,
        region="510000",
        owner="510000",
        usage="tls",
        now=NOW,
        tls_names=("gw1.internal.test",),
    )
    root, _ = region_ca_certificates(spare_pki.root, "510000")
    leaf, *intermediates = _chain(key)
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(NOW)
        .build_server_verifier(DNSName("gw1.internal.test"))
    )
    verifier.verify(leaf, intermediates)


def test_issue_key_ps256_is_rsa_3072(spare_pki: DevPki) -> None:
    key = issue_key(
        spare_pki.root, region="330000", owner="330000", usage="token", algorithm="PS256", now=NOW
    )
    public = _leaf(key).public_key()
    assert key.algorithm == "PS256"
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 3072
    assert _verify_client(key, spare_pki.root, NOW)


def test_issue_key_with_passphrase(locked_pki: DevPki) -> None:
    key = issue_key(
        locked_pki.root,
        region="330000",
        owner="330000",
        usage="audit",
        algorithm="EdDSA",
        passphrase=PASSPHRASE,
        now=NOW,
    )
    assert key.key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert load_private_key(key.key_path, PASSPHRASE)


@pytest.mark.parametrize("passphrase", [None, b"not the passphrase"])
def test_issue_key_needs_the_ca_passphrase(locked_pki: DevPki, passphrase: bytes | None) -> None:
    with pytest.raises(PkiError, match=r"intermediate\.key") as caught:
        issue_key(
            locked_pki.root,
            region="330000",
            owner="330000",
            usage="seal",
            passphrase=passphrase,
            now=NOW,
        )
    assert PASSPHRASE.decode() not in str(caught.value)
    if passphrase is not None:
        assert passphrase.decode() not in str(caught.value)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"region": "330000", "owner": "330000", "usage": "seal", "algorithm": "RS256"},
         "unknown algorithm 'RS256'"),
        ({"region": "330000", "owner": "330000", "usage": "encryption"}, "unknown key usage"),
        ({"region": "330000", "owner": "330000", "usage": "tls", "algorithm": "EdDSA"},
         "TLS keys are always ES256"),
        ({"region": "330000", "owner": "gd-hrss", "usage": "seal"}, "neither region 330000"),
        ({"region": "330000", "owner": "nobody", "usage": "seal"}, "neither region 330000"),
        ({"region": "110000", "owner": "110000", "usage": "seal"}, "not part of this PKI"),
        ({"region": "330000", "owner": "zj-hrss", "usage": "tls", "tls_names": ("x.test",)},
         "tls_names applies to gateway TLS"),
        ({"region": "330000", "owner": "330000", "usage": "seal", "validity_days": 0},
         "must be positive"),
        ({"region": "330000", "owner": "330000", "usage": "seal", "validity_days": 2000},
         "outlive the region 330000 issuing CA"),
        ({"region": "330000", "owner": "330000", "usage": "seal",
          "now": datetime(2026, 1, 1)},
         "timezone-aware"),
    ],
)  # fmt: skip
def test_issue_key_refusals(spare_pki: DevPki, arguments: dict[str, object], message: str) -> None:
    before = sorted(spare_pki.root.rglob("*"))
    with pytest.raises(PkiError, match=message):
        issue_key(spare_pki.root, **arguments)  # type: ignore[arg-type]
    assert sorted(spare_pki.root.rglob("*")) == before


def test_issue_key_outside_a_pki(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"pki\.json is missing"):
        issue_key(tmp_path, region="330000", owner="330000", usage="seal")


# ---------------------------------------------------------------------------------------------
# init_dev_pki refusals and input checks


def test_init_refuses_an_existing_pki(pki: DevPki) -> None:
    before = {p: p.stat().st_mtime_ns for p in pki.root.rglob("*")}
    with pytest.raises(PkiError, match="already contains a PKI"):
        init_dev_pki(pki.root, REGIONS, AGENCIES)
    assert {p: p.stat().st_mtime_ns for p in pki.root.rglob("*")} == before


def test_init_refuses_a_half_made_pki(tmp_path: Path) -> None:
    (tmp_path / "authority").mkdir()
    with pytest.raises(PkiError, match=r"already contains a PKI \(authority\)"):
        init_dev_pki(tmp_path, REGIONS[:1], ())


def test_init_accepts_an_empty_or_unrelated_folder(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("notes")
    pki = init_dev_pki(tmp_path, REGIONS[:1], (), now=NOW)
    assert len(pki.keys) == len(GATEWAY_USAGES)


def test_init_refuses_a_file_as_out(tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(PkiError, match="not a directory"):
        init_dev_pki(out, REGIONS, ())


@pytest.mark.parametrize(
    ("regions", "agencies", "message"),
    [
        (REGIONS[:1], AGENCIES[3:4], "gd-hrss is in region 440000, which is not among"),
        ((), (), "at least one region"),
        ((REGIONS[0], RegionSpec("330000", "又一个")), (), "region code 330000 is given twice"),
        (REGIONS[:1], (AGENCIES[0], AGENCIES[0]), "agency id zj-hrss is given twice"),
        (REGIONS[:2], (AgencySpec("440000", "x", "330000", AGENCIES[0].uscc),),
         "also a region code"),
    ],
)  # fmt: skip
def test_init_refuses_inconsistent_input_before_writing(
    tmp_path: Path,
    regions: tuple[RegionSpec, ...],
    agencies: tuple[AgencySpec, ...],
    message: str,
) -> None:
    out = tmp_path / "out"
    with pytest.raises(PkiError, match=message):
        init_dev_pki(out, regions, agencies)
    assert not out.exists()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RegionSpec("33000", "浙江省"), "6-digit"),
        (lambda: RegionSpec("330000", ""), "empty"),
        (lambda: RegionSpec("330000", "x" * 65), "longer than 64"),
        (lambda: RegionSpec("330000", "浙江\n省"), "control characters"),
        (lambda: AgencySpec("../etc", "x", "330000", AGENCIES[0].uscc), "agency id"),
        (lambda: AgencySpec("a/b", "x", "330000", AGENCIES[0].uscc), "agency id"),
        (lambda: AgencySpec("a", "x", "330000", "11330000MB000000OH"), "USCC"),
        (lambda: AgencySpec("a", "x", "330000", "short"), "USCC"),
        (lambda: AgencySpec("a", "x", "zj", AGENCIES[0].uscc), "not a 6-digit"),
    ],
)
def test_specs_validate_themselves(build: object, message: str) -> None:
    assert callable(build)
    with pytest.raises(PkiError, match=message):
        build()


def test_init_with_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="timezone-aware"):
        init_dev_pki(tmp_path, REGIONS, (), now=datetime(2026, 1, 1))


# ---------------------------------------------------------------------------------------------
# The gateway TLS certificate really serves mutual TLS


@pytest.mark.integration
async def test_gateway_tls_serves_grpc_health_over_mutual_tls(pki: DevPki) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    gateway = _key(pki, owner="330000", usage="tls")
    agency = _key(pki, owner="zj-hrss", usage="tls")
    root_pem = (pki.root / "regions" / "330000" / "ca" / "root.pem").read_bytes()

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [(gateway.key_path.read_bytes(), gateway.certificate_path.read_bytes())],
        root_certificates=root_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        client_credentials = grpc.ssl_channel_credentials(
            root_certificates=root_pem,
            private_key=agency.key_path.read_bytes(),
            certificate_chain=agency.certificate_path.read_bytes(),
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client_credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # Without a client certificate the handshake is refused.
        anonymous = grpc.ssl_channel_credentials(root_certificates=root_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", anonymous) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(grace=None)
