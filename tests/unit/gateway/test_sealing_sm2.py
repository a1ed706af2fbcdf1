"""A region that seals with SM2: its gateway holds the SM2 seal key with the region's SESeal and
seals as GB/T 38540; OpenSSL's SM2 (an independent implementation) verifies what it made, and
the gateway's own check refuses another region's seal or other bytes. No network, no server."""

from __future__ import annotations

import base64
import dataclasses
import io
import struct
import zipfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sm2_support import DISTID, openssl
from support import Federation, make_federation

from gateway._wiring import load_seal_keys
from gateway.demo.config import config_for_dev_pki
from gateway.errors import ConfigError
from gateway.licences import RECORD_FILE, LicenceRefused, _with_file, licence_record
from gateway.sealing import (
    RegionSealer,
    SealedDocument,
    SealFormat,
    Sm2SealKey,
    check_region_seal,
)
from registry import (
    TRUSTED_ROOT,
    KeyState,
    KeyUsage,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    load_trusted_root,
)
from registry._pki_sm2 import eseal_path, seal_picture_png
from signer import (
    GmVerifier,
    Indication,
    OfdVerifier,
    SealVerifier,
    SignatureKind,
    SubIndication,
    UnsupportedAlgorithm,
    ValidationReport,
    make_licence_ofd,
    seal_ofd,
)
from signer._ofd_package import read_package
from signer._ses_asn1 import SESealV4, SESSignatureV4

NOW = datetime.now(UTC).replace(microsecond=0)
REGION = "330000"
PAYLOAD = b'{"uscc":"91330000MA00000000","company_name":"\xe6\xb5\x8b\xe8\xaf\x95"}'


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    federation = make_federation(
        tmp_path_factory.mktemp("fed"), now=NOW - timedelta(hours=1), seal_algorithm="SM2"
    )
    federation.publish(now=NOW - timedelta(minutes=30))
    return federation


@pytest.fixture(scope="module")
def registry(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / TRUSTED_ROOT))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


@pytest.fixture(scope="module")
def held(fed: Federation) -> dict[str, object]:
    config = config_for_dev_pki(fed.pki, REGION, listen="127.0.0.1:0", snapshot_file=fed.current)
    return dict(load_seal_keys(config))


async def _seal(registry: Registry, held: dict[str, object]) -> SealedDocument:
    sealer = RegionSealer(REGION, held)  # type: ignore[arg-type]
    return await sealer.seal(registry, PAYLOAD, content_type="application/json", now=NOW)


def _pem_public_key(certificate_der: bytes, path: Path) -> Path:
    certificate = x509.load_der_x509_certificate(certificate_der)
    (path.parent / f"{path.stem}.crt").write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
    )
    done = openssl("x509", "-in", path.parent / f"{path.stem}.crt", "-pubkey", "-noout")
    assert done.returncode == 0, done.stderr
    path.write_text(done.stdout)
    return path


def _openssl_sm2_verifies(public: Path, data: bytes, signature: bytes, folder: Path) -> bool:
    (folder / "data").write_bytes(data)
    (folder / "sig").write_bytes(signature)
    done = openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin", "-digest", "sm3",
        "-pkeyopt", DISTID, "-in", folder / "data", "-sigfile", folder / "sig",
    )  # fmt: skip
    return done.returncode == 0 and "Signature Verified Successfully" in done.stdout


async def test_an_sm2_region_seals_as_gbt38540_and_openssl_verifies_it(
    fed: Federation, registry: Registry, held: dict[str, object], tmp_path: Path
) -> None:
    (record,) = fed.inventory().find(REGION, KeyUsage.SEAL, KeyState.ACTIVE)
    assert record.algorithm == "SM2"
    assert isinstance(held[record.kid], Sm2SealKey)
    sealed = await _seal(registry, held)
    assert (sealed.format, sealed.jws, sealed.kid) == (SealFormat.GBT38540, "", record.kid)
    assert sealed.seal.startswith("GB/T 38540 ")

    signature = SESSignatureV4.load(sealed.ses_signature)
    tbs = signature["to_sign"]
    # dataHash is SM3 of the payload, as OpenSSL computes it
    (tmp_path / "payload").write_bytes(PAYLOAD)
    sm3 = openssl("dgst", "-sm3", "-binary", "-out", tmp_path / "sm3", tmp_path / "payload")
    assert sm3.returncode == 0, sm3.stderr
    assert bytes(tbs["data_hash"].native) == (tmp_path / "sm3").read_bytes()
    # the signature over the DER of TBS_Sign verifies with OpenSSL's SM2
    signer_key = _pem_public_key(bytes(signature["cert"].native), tmp_path / "signer.pem")
    tbs_der = tbs.dump()
    value = bytes(signature["signature"].native)
    assert _openssl_sm2_verifies(signer_key, tbs_der, value, tmp_path)
    tampered = tbs_der[:-1] + bytes([tbs_der[-1] ^ 1])
    assert not _openssl_sm2_verifies(signer_key, tampered, value, tmp_path)
    # the seal maker's signature over the DER of eSealInfo verifies with OpenSSL too
    seal = tbs["e_seal"]
    maker_key = _pem_public_key(bytes(seal["cert"].native), tmp_path / "maker.pem")
    maker_signature = bytes(seal["signed_value"].native)
    assert _openssl_sm2_verifies(maker_key, seal["e_seal_info"].dump(), maker_signature, tmp_path)
    # and the seal is the one written beside the key
    assert seal.dump() == eseal_path(fed.pki / record.certificate).read_bytes()


async def test_the_seal_names_the_region_and_carries_a_png(
    fed: Federation, registry: Registry, held: dict[str, object]
) -> None:
    (record,) = fed.inventory().find(REGION, KeyUsage.SEAL, KeyState.ACTIVE)
    seal = SESealV4.load(eseal_path(fed.pki / record.certificate).read_bytes())
    info = seal["e_seal_info"]
    assert info["property"]["name"].native == "浙江省电子印章"
    assert info["es_id"].native == f"{REGION}-{record.kid[:8]}"
    picture = info["picture"]
    assert picture["type"].native == "PNG"
    assert bytes(picture["data"].native) == seal_picture_png()
    report = GmVerifier(RegistryTrust(registry)).validate_seal(seal.dump(), validation_time=NOW)
    assert report.indication is Indication.TOTAL_PASSED, report.message
    assert report.owner_region == REGION


def test_the_seal_picture_is_a_png() -> None:
    png = seal_picture_png(32)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    length, kind = struct.unpack(">I4s", png[8:16])
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert (kind, length, width, height, depth, colour) == (b"IHDR", 13, 32, 32, 8, 6)
    idat = png.index(b"IDAT")
    (size,) = struct.unpack(">I", png[idat - 4 : idat])
    pixels = zlib.decompress(png[idat + 4 : idat + 4 + size])
    assert len(pixels) == 32 * (1 + 32 * 4)
    assert b"\xd0\x10\x10\xff" in pixels  # some red, and transparent elsewhere
    assert png.endswith(b"IEND\xaeB`\x82")


async def test_the_gateways_check_passes_the_regions_seal_and_refuses_the_rest(
    registry: Registry, held: dict[str, object]
) -> None:
    sealed = await _seal(registry, held)
    trust = RegistryTrust(registry)

    def check(payload: bytes, region: str, ses: bytes = sealed.ses_signature) -> ValidationReport:
        return check_region_seal(
            format=SealFormat.GBT38540,
            jws="",
            ses_signature=ses,
            payload=payload,
            region=region,
            jades=SealVerifier(trust),
            gm=GmVerifier(trust),
            at=NOW,
        )

    passed = check(PAYLOAD, REGION)
    assert passed.indication is Indication.TOTAL_PASSED, passed.message
    assert passed.kind is SignatureKind.SEAL
    assert passed.signer_kid == sealed.kid
    other_bytes = check(PAYLOAD + b" ", REGION)
    assert other_bytes.sub_indication is SubIndication.HASH_FAILURE
    other_region = check(PAYLOAD, "500000")
    assert other_region.sub_indication is SubIndication.CHAIN_CONSTRAINTS_FAILURE
    assert "not region 500000's" in other_region.message
    garbled = check(PAYLOAD, REGION, ses=sealed.ses_signature[:-3] + b"\x00\x00\x00")
    assert garbled.indication is not Indication.TOTAL_PASSED
    jws_read_as_ses = check_region_seal(
        format=SealFormat.JADES,
        jws="",
        ses_signature=sealed.ses_signature,
        payload=PAYLOAD,
        region=REGION,
        jades=SealVerifier(trust),
        gm=GmVerifier(trust),
        at=NOW,
    )
    assert jws_read_as_ses.indication is not Indication.TOTAL_PASSED


def test_an_sm2_key_needs_its_seal(fed: Federation, tmp_path: Path) -> None:
    config = config_for_dev_pki(fed.pki, REGION, listen="127.0.0.1:0", snapshot_file=fed.current)
    ((certificate, private_key),) = config.seal_keys
    moved = tmp_path / "seal.pem"
    moved.write_bytes(certificate.read_bytes())  # no .esl beside it
    alone = dataclasses.replace(config, seal_keys=((moved, private_key),))
    with pytest.raises(ConfigError, match=r"seal\.esl"):
        load_seal_keys(alone)
    named = dataclasses.replace(alone, seal_eseals=((moved, eseal_path(certificate)),))
    assert list(load_seal_keys(named)) == list(load_seal_keys(config))
    # another key's seal does not list this key
    (other,) = fed.inventory().find("500000", KeyUsage.SEAL, KeyState.ACTIVE)
    wrong = dataclasses.replace(
        alone, seal_eseals=((moved, eseal_path(fed.pki / other.certificate)),)
    )
    with pytest.raises(ConfigError, match="not a seal of"):
        load_seal_keys(wrong)


def test_an_sm2_key_makes_no_jws(held: dict[str, object]) -> None:
    key = next(iter(held.values()))
    assert isinstance(key, Sm2SealKey)
    with pytest.raises(UnsupportedAlgorithm, match="GB/T 38540"):
        key.sign(b"header.payload")
    assert key.eseal  # the SESeal it signs with


async def test_a_credential_leaves_an_sm2_region_as_a_sealed_ofd_licence(
    registry: Registry, held: dict[str, object], tmp_path: Path
) -> None:
    sealer = RegionSealer(REGION, held)  # type: ignore[arg-type]
    made = await sealer.seal_licence(registry, PAYLOAD, credential_type="business_licence", now=NOW)
    assert made is not None
    sealed, ofd = made
    assert sealed.format is SealFormat.OFD
    trust = RegistryTrust(registry)
    report = check_region_seal(
        format=SealFormat.OFD,
        jws="",
        ses_signature=b"",
        payload=ofd,
        region=REGION,
        jades=SealVerifier(trust),
        gm=GmVerifier(trust),
        at=NOW,
    )
    assert report.indication is Indication.TOTAL_PASSED, report.message
    assert [s.owner_region for s in report.signatures] == [REGION]
    assert licence_record(ofd, report) == PAYLOAD  # the record, as sealed, inside the licence

    # OpenSSL's SM3 and SM2 agree: the record's check value, dataHash over Signature.xml, and
    # the signature over TBS_Sign
    files = read_package(ofd).files
    signature_xml = files["Doc_0/Signs/Sign_0/Signature.xml"]
    (tmp_path / "record.json").write_bytes(files[RECORD_FILE])
    sm3 = openssl("dgst", "-sm3", "-binary", "-out", tmp_path / "sm3", tmp_path / "record.json")
    assert sm3.returncode == 0, sm3.stderr
    check_value = base64.b64encode((tmp_path / "sm3").read_bytes()).decode()
    assert f'FileRef="/{RECORD_FILE}"><ofd:CheckValue>{check_value}<'.encode() in signature_xml
    ses = SESSignatureV4.load(files["Doc_0/Signs/Sign_0/SignedValue.dat"])
    (tmp_path / "sig.xml").write_bytes(signature_xml)
    sm3 = openssl("dgst", "-sm3", "-binary", "-out", tmp_path / "sm3x", tmp_path / "sig.xml")
    assert sm3.returncode == 0, sm3.stderr
    assert bytes(ses["to_sign"]["data_hash"].native) == (tmp_path / "sm3x").read_bytes()
    signer_key = _pem_public_key(bytes(ses["cert"].native), tmp_path / "signer.pem")
    value = bytes(ses["signature"].native)
    assert _openssl_sm2_verifies(signer_key, ses["to_sign"].dump(), value, tmp_path)


async def test_a_licence_whose_record_no_seal_protects_is_refused(
    registry: Registry, held: dict[str, object]
) -> None:
    sealer = RegionSealer(REGION, held)  # type: ignore[arg-type]
    made = await sealer.seal_licence(registry, PAYLOAD, credential_type="business_licence", now=NOW)
    assert made is not None
    _, ofd = made
    # the record replaced after sealing: its check value no longer matches
    with zipfile.ZipFile(io.BytesIO(ofd)) as source:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                target.writestr(
                    info, b'{"company_name":"forged"}' if info.filename == RECORD_FILE else data
                )
    trust = RegistryTrust(registry)
    forged = OfdVerifier(GmVerifier(trust)).validate(out.getvalue(), validation_time=NOW)
    assert not forged.passed
    with pytest.raises(LicenceRefused, match="not valid"):
        licence_record(out.getvalue(), forged)
    # a licence whose signature covers no record (made before the record was added)
    unsealed = make_licence_ofd(title="t", lines=[("a", "b")], issued=NOW, doc_id="x1")
    key = held[next(iter(held))]
    assert isinstance(key, Sm2SealKey)
    bare = seal_ofd(unsealed, seal=key.eseal, signer=key, at=NOW)
    with_record = _with_file(bare, RECORD_FILE, PAYLOAD)
    report = OfdVerifier(GmVerifier(trust)).validate(with_record, validation_time=NOW)
    assert report.passed, report.message  # the seal is intact: it just does not cover the record
    with pytest.raises(LicenceRefused, match="no seal of the e-licence protects"):
        licence_record(with_record, report)


async def test_an_es256_region_sends_no_licence(fed: Federation, tmp_path: Path) -> None:
    plain = make_federation(tmp_path / "es256", now=NOW - timedelta(hours=1))
    published = plain.publish(now=NOW - timedelta(minutes=30)).snapshot.registry
    config = config_for_dev_pki(
        plain.pki, REGION, listen="127.0.0.1:0", snapshot_file=plain.current
    )
    sealer = RegionSealer(REGION, load_seal_keys(config))
    assert await sealer.seal_licence(published, PAYLOAD, credential_type="x", now=NOW) is None
