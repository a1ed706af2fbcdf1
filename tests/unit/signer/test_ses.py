"""GB/T 38540 / GM/T 0031 seals: ofdrw's real artefacts, seals and signatures Tongban makes with
its own SM2 PKI (cross-checked with OpenSSL), v1 structures, and hostile DER."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sm2_support import NOW, SIGNING_USAGE, Issued, crl, issue, openssl
from support import SHARED
from tsa_support import Tsa, running_tsa

from signer import (
    GmVerifier,
    Indication,
    SignatureKind,
    Sm2FileSigner,
    Sm2Signer,
    SubIndication,
    TimeStampClient,
    TrustedKey,
    ValidationReport,
    make_seal,
    ses_version,
    sign_with_seal,
    x5t_s256_of_certificate,
)
from signer._ses_asn1 import (
    CertDigestList,
    CertInfoList,
    PictureInfo,
    PropertyInfoV1,
    SealInfoV1,
    SealInfoV4,
    SESealV1,
    SESealV4,
    SesHeader,
    SESSignatureV1,
    SESSignatureV4,
    SignInfoV1,
    TBSSignV1,
    TBSSignV4,
    _SealToSignV1,
    parse_signature,
)
from signer._sm2 import SM2_WITH_SM3_OID

GM = SHARED / "vectors" / "gm"
REGION = "440000"
DATA = b"<ofd:Signature>the bytes that were sealed</ofd:Signature>"
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(64)


def sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def checks_of(report: ValidationReport) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.passed, c.detail) for c in report.checks}


# -- ofdrw's artefacts ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ofdrw() -> tuple[bytes, bytes, x509.Certificate]:
    with zipfile.ZipFile(GM / "ses-v4-signed.ofd") as ofd:
        signed = ofd.read("Doc_0/Signs/Sign_0/SignedValue.dat")
        data = ofd.read("Doc_0/Signs/Sign_0/Signature.xml")
    root = x509.load_pem_x509_certificate((GM / "ofdrw-root.pem").read_bytes())
    return signed, data, root


def test_ofdrw_signature_reports_what_holds(ofdrw: tuple[bytes, bytes, x509.Certificate]) -> None:
    signed, data, root = ofdrw
    report = GmVerifier(None, extra_anchors=[root]).validate_signature(signed, data)
    checks = checks_of(report)
    assert report.format == "GB/T 38540 SES_Signature v4"
    assert report.algorithm == "SM2"
    assert report.kind is SignatureKind.SEAL
    assert "CN=Test Certificate" in report.signer_subject
    assert report.signing_time == datetime(2026, 8, 4, 2, 8, 9, tzinfo=UTC)
    assert report.owner == "51f044b76510434e9bc67a1185c2fba5"
    assert report.owner_region == ""
    # The cryptography holds ...
    assert checks["signature"][0]
    assert checks["seal signature"][0]
    assert checks["data hash"][0]
    assert checks["signer listed in seal"][0]
    # ... the dates and the chain do not.
    assert checks["validity at signing time"] == (
        False,
        "EXPIRED: the signer's certificate (valid 2020-04-21T14:39:08Z to 2022-04-21T14:39:08Z)"
        " had expired at the claimed signing time 2026-08-04T02:08:09Z",
    )
    assert checks["seal validity at signing time"][1].startswith("EXPIRED")
    assert "seal's validity window" in checks["seal validity at signing time"][1]
    assert checks["signer chain"][1].startswith("CHAIN_CONSTRAINTS_FAILURE")
    assert "keyCertSign" in checks["signer chain"][1]
    assert checks["validity now"][1].startswith("OUT_OF_BOUNDS_NO_POE")
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.EXPIRED,
    )
    assert "not valid at signing time" in report.message
    assert "not valid now" in report.message
    assert report.payload is None


def test_ofdrw_seal_maker_signature_verifies() -> None:
    root = x509.load_pem_x509_certificate((GM / "ofdrw-root.pem").read_bytes())
    report = GmVerifier(None, extra_anchors=[root]).validate_seal((GM / "seal-v4.esl").read_bytes())
    checks = checks_of(report)
    assert report.format == "GB/T 38540 SESeal v4"
    assert checks["seal signature"] == (
        True,
        "the seal maker's SM2 signature over the DER of eSealInfo verifies",
    )
    assert checks["seal validity now"][1].startswith("EXPIRED")
    assert report.sub_indication is SubIndication.EXPIRED


def test_a_changed_byte_in_the_signature_value_is_sig_crypto_failure(
    ofdrw: tuple[bytes, bytes, x509.Certificate],
) -> None:
    signed, data, root = ofdrw
    view = parse_signature(signed)
    at = signed.rindex(view.signature) + 20  # inside r or s: still DER, another value
    changed = signed[:at] + bytes([signed[at] ^ 0x01]) + signed[at + 1 :]
    report = GmVerifier(None, extra_anchors=[root]).validate_signature(changed, data)
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.SIG_CRYPTO_FAILURE,
    )
    assert not checks_of(report)["signature"][0]


def test_a_changed_byte_in_the_data_is_hash_failure(
    ofdrw: tuple[bytes, bytes, x509.Certificate],
) -> None:
    signed, data, root = ofdrw
    changed = data.replace(b"<", b"[", 1)
    report = GmVerifier(None, extra_anchors=[root]).validate_signature(signed, changed)
    assert report.sub_indication is SubIndication.HASH_FAILURE
    assert checks_of(report)["signature"][0]  # the signature itself still verifies


# -- Tongban's own SM2 PKI --------------------------------------------------------------------
@dataclass
class FakeTrust:
    roots: tuple[x509.Certificate, ...]
    region_crls: tuple[x509.CertificateRevocationList, ...] = ()
    keys: dict[str, TrustedKey] = field(default_factory=dict)
    version: int = 7

    def key(self, kid: str) -> TrustedKey | None:
        return self.keys.get(kid)

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return (self.roots, ()) if region == REGION else ((), ())

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return self.region_crls if region == REGION else ()

    def regions(self) -> tuple[str, ...]:
        return ("110000", REGION)


@dataclass(frozen=True)
class Pki:
    root: Issued
    maker: Issued
    signer: Issued
    other: Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = issue("Region 440000 root CA")
    leaf = {"ca": False, "usage": SIGNING_USAGE}
    return Pki(
        root=root,
        maker=issue("Seal maker", root, **leaf),  # type: ignore[arg-type]
        signer=issue("Agency seal key", root, **leaf),  # type: ignore[arg-type]
        other=issue("Another agency", root, **leaf),  # type: ignore[arg-type]
    )


def seal_for(
    pki: Pki, *, listed: Sequence[x509.Certificate] | None = None, days: int = 90
) -> bytes:
    return make_seal(
        maker=Sm2FileSigner(pki.maker.key, pki.maker.certificate),
        es_id="44000000000000000001",
        name="广东省测试专用章",
        seal_type=1,
        signer_certificates=listed or [pki.signer.certificate],
        picture=PICTURE,
        width_mm=40,
        height_mm=40,
        valid_from=NOW - timedelta(days=days),
        valid_until=NOW + timedelta(days=days),
        created=NOW - timedelta(days=days),
    )


def signed_by(pki: Pki, seal: bytes, *, at: datetime = NOW, data: bytes = DATA) -> bytes:
    signer: Sm2Signer = Sm2FileSigner(pki.signer.key, pki.signer.certificate)
    return sign_with_seal(
        data, seal=seal, signer=signer, at=at, property_info="/Doc_0/Signs/Sign_0/Signature.xml"
    )


def verifier(pki: Pki, **trust: object) -> GmVerifier:
    return GmVerifier(FakeTrust((pki.root.certificate,), **trust), clock=lambda: NOW)  # type: ignore[arg-type]


def test_tongban_seal_and_signature_pass(pki: Pki) -> None:
    signed = signed_by(pki, seal_for(pki))
    report = verifier(pki).validate_signature(signed, DATA)
    assert report.passed, report.checks
    assert report.sub_indication is None
    assert all(c.passed for c in report.checks)
    assert report.owner_region == REGION
    assert report.owner == "44000000000000000001"
    assert report.registry_version == 7
    assert report.signer_kid == x5t_s256_of_certificate(pki.signer.certificate)
    assert report.signing_time == NOW
    assert report.payload == DATA
    assert report.message.endswith("valid at signing time and valid now")
    assert ses_version(signed) == "SES_Signature v4"
    assert verifier(pki).validate_seal(seal_for(pki)).passed


def test_a_published_key_names_its_owner_and_its_revocation_counts(pki: Pki) -> None:
    signed = signed_by(pki, seal_for(pki))
    kid = x5t_s256_of_certificate(pki.signer.certificate)

    def published(state: str, revoked_at: datetime | None, reason: str) -> TrustedKey:
        return TrustedKey(
            kid,
            pki.signer.certificate,
            "seal",
            "agency-7",
            "Agency 7",
            REGION,
            state,
            revoked_at,
            reason,
        )

    active = verifier(pki, keys={kid: published("active", None, "")}).validate_signature(
        signed, DATA
    )
    assert active.passed
    assert active.owner == "agency-7"
    before = published("revoked", NOW - timedelta(days=1), "keyCompromise")
    report = verifier(pki, keys={kid: before}).validate_signature(signed, DATA)
    assert report.sub_indication is SubIndication.REVOKED
    after = published("revoked", NOW + timedelta(hours=1), "keyCompromise")
    report = verifier(pki, keys={kid: after}).validate_signature(signed, DATA)
    assert report.sub_indication is SubIndication.REVOKED_NO_POE


def test_a_crl_listing_the_signer_before_the_signing_time_is_revoked(pki: Pki) -> None:
    signed = signed_by(pki, seal_for(pki))
    listing = crl(pki.root, [(pki.signer.certificate, NOW - timedelta(days=2))])
    report = verifier(pki, region_crls=(listing,)).validate_signature(signed, DATA)
    assert report.sub_indication is SubIndication.REVOKED, report.checks


def test_signature_outside_the_seal_window_is_expired_and_says_so(pki: Pki) -> None:
    signed = signed_by(pki, seal_for(pki, days=10), at=NOW + timedelta(days=30))
    report = verifier(pki).validate_signature(signed, DATA)
    assert report.sub_indication is SubIndication.EXPIRED
    passed, detail = checks_of(report)["seal validity at signing time"]
    assert not passed
    assert "the seal had expired" in detail


def test_a_signer_the_seal_does_not_list_is_a_chain_constraints_failure(pki: Pki) -> None:
    seal = seal_for(pki, listed=[pki.other.certificate])
    signed = signed_by(pki, seal_for(pki))
    tampered = SESSignatureV4.load(signed)
    tbs = tampered["to_sign"]
    tbs["e_seal"] = SESealV4.load(seal)
    tbs_der = tbs.dump(force=True)
    forged = SESSignatureV4(
        {
            "to_sign": tbs.load(tbs_der),
            "cert": pki.signer.certificate.public_bytes(serialization.Encoding.DER),
            "signature_alg_id": SM2_WITH_SM3_OID,
            "signature": pki.signer.key.sign(tbs_der),
        }
    ).dump()
    report = verifier(pki).validate_signature(forged, DATA)
    assert report.sub_indication is SubIndication.CHAIN_CONSTRAINTS_FAILURE
    assert checks_of(report)["signature"][0]


def test_sign_with_seal_refuses_a_seal_that_does_not_list_the_signer(pki: Pki) -> None:
    with pytest.raises(ValueError, match="does not list"):
        signed_by(pki, seal_for(pki, listed=[pki.other.certificate]))


def test_without_data_or_anchors_every_other_check_still_runs(pki: Pki) -> None:
    signed = signed_by(pki, seal_for(pki))
    report = verifier(pki).validate_signature(signed, None)
    assert (report.indication, report.sub_indication) == (
        Indication.INDETERMINATE,
        SubIndication.SIGNED_DATA_NOT_FOUND,
    )
    lost = GmVerifier(None, clock=lambda: NOW).validate_signature(signed, DATA)
    assert lost.sub_indication is SubIndication.NO_CERTIFICATE_CHAIN_FOUND
    checks = checks_of(lost)
    assert checks["signature"][0]
    assert checks["data hash"][0]
    assert not checks["signer chain"][0]
    assert not checks["seal maker chain"][0]
    assert "not shown valid at signing time" in lost.message


def test_expired_now_without_time_stamp_is_out_of_bounds(pki: Pki) -> None:
    signed = signed_by(pki, seal_for(pki))
    later = NOW + timedelta(days=400)  # the leaves end a year after NOW
    report = verifier(pki).validate_signature(signed, DATA, validation_time=later)
    assert report.sub_indication is SubIndication.OUT_OF_BOUNDS_NO_POE
    assert "valid at signing time, but not shown valid now" in report.message


def test_openssl_verifies_what_tongban_signs(pki: Pki, tmp_path: Path) -> None:
    seal = seal_for(pki)
    signed = signed_by(pki, seal)
    view = parse_signature(signed)
    files = {
        "signer.pem": pki.signer.certificate.public_bytes(serialization.Encoding.PEM),
        "maker.pem": pki.maker.certificate.public_bytes(serialization.Encoding.PEM),
        "tbs.der": view.tbs,
        "sig.der": view.signature,
        "info.der": view.seal.to_be_signed[0][1],
        "seal-sig.der": view.seal.signed_value,
        "signature.der": signed,
        "seal.der": seal,
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    for cert, data, sig in (("signer", "tbs", "sig"), ("maker", "info", "seal-sig")):
        key = openssl("x509", "-in", tmp_path / f"{cert}.pem", "-pubkey", "-noout")
        (tmp_path / f"{cert}-pub.pem").write_text(key.stdout)
        checked = openssl(
            "pkeyutl", "-verify", "-pubin", "-inkey", tmp_path / f"{cert}-pub.pem", "-rawin",
            "-digest", "sm3", "-pkeyopt", "distid:1234567812345678",
            "-in", tmp_path / f"{data}.der", "-sigfile", tmp_path / f"{sig}.der",
        )  # fmt: skip
        assert "Signature Verified Successfully" in checked.stdout, checked.stderr
    for name in ("signature.der", "seal.der"):
        parsed = openssl("asn1parse", "-inform", "DER", "-in", tmp_path / name)
        assert parsed.returncode == 0, parsed.stderr
        assert "SM2-with-SM3" in parsed.stdout
    assert sm3(DATA) == view.data_hash


# -- GM/T 0031 (v1) ---------------------------------------------------------------------------
def _v1(pki: Pki, time_text: bytes) -> tuple[bytes, bytes]:
    def der(issued: Issued) -> bytes:
        return issued.certificate.public_bytes(serialization.Encoding.DER)

    info = SealInfoV1(
        {
            "header": SesHeader({"id": "ES", "version": 1, "vid": "Tongban"}),
            "es_id": "V1SEAL",
            "property": PropertyInfoV1(
                {
                    "type": 1,
                    "name": "v1 测试章",
                    "cert_list": CertInfoList([core.OctetString(der(pki.signer))]),
                    "create_date": {"utc_time": NOW - timedelta(days=30)},
                    "valid_start": {"utc_time": NOW - timedelta(days=30)},
                    "valid_end": {"utc_time": NOW + timedelta(days=30)},
                }
            ),
            "picture": PictureInfo({"type": "PNG", "data": PICTURE, "width": 40, "height": 40}),
        }
    )
    to_sign = _SealToSignV1(
        {"e_seal_info": info, "cert": der(pki.maker), "signature_algorithm": SM2_WITH_SM3_OID}
    )
    sign_info = SignInfoV1(
        {
            "cert": der(pki.maker),
            "signature_algorithm": SM2_WITH_SM3_OID,
            "sign_data": pki.maker.key.sign(to_sign.dump()),
        }
    )
    seal = SESealV1({"e_seal_info": info, "sign_info": sign_info})
    tbs = TBSSignV1(
        {
            "version": 1,
            "e_seal": seal,
            "time_info": time_text,
            "data_hash": sm3(DATA),
            "property_info": "/Doc_0/Signs/Sign_0/Signature.xml",
            "cert": der(pki.signer),
            "signature_algorithm": SM2_WITH_SM3_OID,
        }
    )
    signature = SESSignatureV1({"to_sign": tbs, "signature": pki.signer.key.sign(tbs.dump())})
    return seal.dump(), signature.dump()


def test_v1_structures_round_trip_and_verify(pki: Pki) -> None:
    local = (NOW + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S").encode()  # ofdrw's form
    seal, signed = _v1(pki, local)
    assert ses_version(seal) == "SESeal v1"
    assert ses_version(signed) == "SES_Signature v1"
    assert SESSignatureV1.load(signed).dump(force=True) == signed
    report = verifier(pki).validate_signature(signed, DATA)
    assert report.passed, report.checks
    assert report.format == "GM/T 0031 SES_Signature v1"
    assert report.signing_time == NOW
    seal_report = verifier(pki).validate_seal(seal)
    assert seal_report.passed, seal_report.checks
    assert seal_report.format == "GM/T 0031 SESeal v1"
    unreadable = verifier(pki).validate_signature(_v1(pki, b"yesterday")[1], DATA)
    assert unreadable.sub_indication is SubIndication.FORMAT_FAILURE
    assert checks_of(unreadable)["signature"][0]


# -- hostile DER ------------------------------------------------------------------------------
def test_ses_version_recognises_by_content() -> None:
    assert ses_version((GM / "seal-v4.esl").read_bytes()) == "SESeal v4"
    for junk in (b"", b"\x30", b"\x30\x00", b"\x04\x00", b"not der", b"\x30\x80\x00\x00"):
        assert ses_version(junk) is None


@pytest.mark.parametrize(
    "hostile",
    [
        b"",
        b"\x30\x84\xff\xff\xff\xff",  # a length far past the end
        b"\x30" * 4 + b"\x00",
        b"\x30\x82\x00\x04" + b"\x30\x02\x30\x00",  # nested, truncated
        (b"\x30\x81\x80" * 1) + b"\x05\x00" * 64,
        b"\x31\x00",  # a SET, not a SEQUENCE
    ],
)
def test_hostile_der_is_a_format_failure(hostile: bytes) -> None:
    verifier_ = GmVerifier(None)
    for report in (verifier_.validate_signature(hostile, DATA), verifier_.validate_seal(hostile)):
        assert report.sub_indication is SubIndication.FORMAT_FAILURE
        assert report.checks[-1].name == "format"


def test_deep_nesting_huge_and_trailing_bytes_are_format_failures(pki: Pki) -> None:
    deep = b"\x05\x00"
    for _ in range(3000):
        deep = b"\x30" + _length(len(deep)) + deep
    signed = signed_by(pki, seal_for(pki))
    huge = b"\x30\x84\x01\x00\x00\x00" + bytes(16 * 1024 * 1024)
    for hostile in (deep, huge, signed + b"\x00", signed[:-1]):
        report = verifier(pki).validate_signature(hostile, DATA)
        assert report.sub_indication is SubIndication.FORMAT_FAILURE


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def test_byte_flips_never_raise(pki: Pki) -> None:
    signed = signed_by(pki, seal_for(pki))
    check = verifier(pki)
    step = max(1, len(signed) // 120)
    outcomes = set()
    for at in range(0, len(signed), step):
        for mask in (0x01, 0x80):
            flipped = signed[:at] + bytes([signed[at] ^ mask]) + signed[at + 1 :]
            report = check.validate_signature(flipped, DATA)
            assert not report.passed, at
            outcomes.add(report.sub_indication)
        truncated = check.validate_signature(signed[:at], DATA)
        assert truncated.sub_indication is SubIndication.FORMAT_FAILURE
    assert SubIndication.FORMAT_FAILURE in outcomes
    assert SubIndication.SIG_CRYPTO_FAILURE in outcomes


# -- RFC 3161 time-stamps ---------------------------------------------------------------------
SM3_OID = "1.2.156.10197.1.401"


def time_stamp_token(tsa: Issued, stamped: bytes, gen_time: datetime) -> bytes:
    """An RFC 3161 token over SM3(`stamped`), signed with SM2 by `tsa` (asn1crypto's cms/tsp)."""
    sm3_algorithm = algos.DigestAlgorithm({"algorithm": SM3_OID})
    tst = tsp.TSTInfo(
        {
            "version": "v1",
            "policy": "1.2.3.4",
            "message_imprint": {"hash_algorithm": sm3_algorithm, "hashed_message": sm3(stamped)},
            "serial_number": 1,
            "gen_time": gen_time,
        }
    )
    attributes = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute({"type": "message_digest", "values": [sm3(tst.dump())]}),
        ]
    )
    tsa_der = tsa.certificate.public_bytes(serialization.Encoding.DER)
    tsa_cert = asn1_x509.Certificate.load(tsa_der)
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": tsa_cert.issuer,
                        "serial_number": tsa_cert.serial_number,
                    }
                }
            ),
            "digest_algorithm": sm3_algorithm,
            "signed_attrs": attributes,
            "signature_algorithm": {"algorithm": SM2_WITH_SM3_OID},
            "signature": tsa.key.sign(attributes.dump()),
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [sm3_algorithm],
            "encap_content_info": {"content_type": "tst_info", "content": tst},
            "certificates": [tsa_cert],
            "signer_infos": [signer_info],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


def with_time_stamp(signed: bytes, token: bytes) -> bytes:
    loaded = SESSignatureV4.load(signed)
    fields = {name: loaded[name] for name in ("to_sign", "cert", "signature_alg_id", "signature")}
    return bytes(SESSignatureV4({**fields, "time_stamp": token}).dump())


@pytest.fixture(scope="module")
def tsa(pki: Pki) -> Issued:
    return issue(
        "Time-stamping authority",
        pki.root,
        ca=False,
        usage=SIGNING_USAGE,
        extensions=[(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.TIME_STAMPING]), True)],
    )


def test_an_anchored_time_stamp_proves_existence_after_expiry(pki: Pki, tsa: Issued) -> None:
    signed = signed_by(pki, seal_for(pki))
    value = parse_signature(signed).signature
    stamped = with_time_stamp(signed, time_stamp_token(tsa, value, NOW + timedelta(minutes=1)))
    assert verifier(pki).validate_signature(stamped, DATA).passed
    later = NOW + timedelta(days=400)  # the signer's certificate has expired
    report = verifier(pki).validate_signature(stamped, DATA, validation_time=later)
    assert report.passed, report.checks
    checks = checks_of(report)
    assert "proof of existence at" in checks["time-stamp"][1]
    assert "a time-stamp proves existence" in checks["validity now"][1]


def test_an_unanchored_time_stamp_is_reported_not_relied_on(pki: Pki) -> None:
    stranger = issue("Unknown TSA", None, ca=False, usage=SIGNING_USAGE)
    signed = signed_by(pki, seal_for(pki))
    value = parse_signature(signed).signature
    stamped = with_time_stamp(signed, time_stamp_token(stranger, value, NOW))
    later = NOW + timedelta(days=400)
    report = verifier(pki).validate_signature(stamped, DATA, validation_time=later)
    assert report.sub_indication is SubIndication.OUT_OF_BOUNDS_NO_POE
    passed, detail = checks_of(report)["time-stamp"]
    assert passed
    assert "not taken as proof of existence" in detail


def test_a_time_stamp_over_other_bytes_or_badly_signed_fails(pki: Pki, tsa: Issued) -> None:
    signed = signed_by(pki, seal_for(pki))
    value = parse_signature(signed).signature
    elsewhere = with_time_stamp(signed, time_stamp_token(tsa, value + b"!", NOW))
    report = verifier(pki).validate_signature(elsewhere, DATA)
    assert report.sub_indication is SubIndication.HASH_FAILURE
    assert "not over this signature value" in checks_of(report)["time-stamp"][1]
    token = bytearray(time_stamp_token(tsa, value, NOW))
    token[-10] ^= 0x01  # inside the TSA's SM2 signature
    report = verifier(pki).validate_signature(with_time_stamp(signed, bytes(token)), DATA)
    assert report.sub_indication is SubIndication.SIG_CRYPTO_FAILURE
    assert not checks_of(report)["time-stamp"][0]
    junk = verifier(pki).validate_signature(with_time_stamp(signed, b"\x30\x00"), DATA)
    assert junk.sub_indication is SubIndication.FORMAT_FAILURE
    assert checks_of(junk)["signature"][0]


# -- certificate digests in the seal (certListType 2) -----------------------------------------
def test_a_seal_listing_certificate_digests(pki: Pki) -> None:
    seal = SESealV4.load(seal_for(pki))
    info = seal["e_seal_info"]
    der = pki.signer.certificate.public_bytes(serialization.Encoding.DER)
    info["property"]["cert_list_type"] = 2
    info["property"]["cert_list"] = core.Any.load(
        CertDigestList([{"type": "SM3", "value": sm3(der)}]).dump()
    )
    info_der = info.dump(force=True)
    digest_seal = SESealV4(
        {
            "e_seal_info": SealInfoV4.load(info_der),
            "cert": seal["cert"],
            "sign_alg_id": SM2_WITH_SM3_OID,
            "signed_value": pki.maker.key.sign(info_der),
        }
    ).dump()
    report = verifier(pki).validate_signature(signed_by_digest(pki, digest_seal), DATA)
    assert report.passed, report.checks
    assert "SM3 digest" in checks_of(report)["signer listed in seal"][1]


def signed_by_digest(pki: Pki, seal: bytes) -> bytes:
    """sign_with_seal wants a listed certificate; a digest-listing seal is signed by hand."""
    tbs = TBSSignV4(
        {
            "version": 4,
            "e_seal": SESealV4.load(seal),
            "time_info": NOW,
            "data_hash": sm3(DATA),
            "property_info": "digest",
        }
    )
    return SESSignatureV4(
        {
            "to_sign": tbs,
            "cert": pki.signer.certificate.public_bytes(serialization.Encoding.DER),
            "signature_alg_id": SM2_WITH_SM3_OID,
            "signature": pki.signer.key.sign(tbs.dump()),
        }
    ).dump()


def test_a_seal_made_before_its_makers_certificate_is_not_yet_valid(pki: Pki) -> None:
    early = seal_for(pki, days=400)  # created a year and more ago; the maker's starts a year ago
    report = verifier(pki).validate_seal(early)
    assert report.sub_indication is SubIndication.NOT_YET_VALID
    passed, detail = checks_of(report)["seal maker validity"]
    assert not passed
    assert "the seal maker's certificate" in detail
    assert "the seal's creation" in detail
    assert checks_of(report)["seal maker chain"][0]  # the path itself holds


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(min_value=0, max_value=4000),
    splice=st.binary(max_size=24),
    noise=st.binary(max_size=64),
)
def test_spliced_and_random_der_never_raise(
    pki: Pki, cut: int, splice: bytes, noise: bytes
) -> None:
    signed = _SIGNED_FOR_FUZZ.setdefault("der", signed_by(pki, seal_for(pki)))
    check = verifier(pki)
    at = cut % len(signed)
    spliced = signed[:at] + splice + signed[at + len(splice) :]
    for der in (spliced, noise, b"\x30" + bytes([len(noise)]) + noise):
        report = check.validate_signature(der, DATA)
        assert isinstance(report, ValidationReport)
        assert report.passed == (der == signed)
        assert isinstance(check.validate_seal(der), ValidationReport)
        assert ses_version(der) in (
            None,
            "SES_Signature v4",
            "SESeal v4",
            "SESeal v1",
            "SES_Signature v1",
        )


_SIGNED_FOR_FUZZ: dict[str, bytes] = {}


def test_a_time_stamp_before_a_later_revocation_keeps_the_signature(pki: Pki, tsa: Issued) -> None:
    signed = signed_by(pki, seal_for(pki))
    value = parse_signature(signed).signature
    stamped = with_time_stamp(signed, time_stamp_token(tsa, value, NOW + timedelta(minutes=1)))
    listing = crl(pki.root, [(pki.signer.certificate, NOW + timedelta(hours=2))])
    check = verifier(pki, region_crls=(listing,))
    assert check.validate_signature(signed, DATA).sub_indication is SubIndication.REVOKED_NO_POE
    report = check.validate_signature(stamped, DATA)
    assert report.passed, report.checks
    assert "a time-stamp proves the signature older" in checks_of(report)["revocation"][1]


def test_a_seal_whose_maker_was_revoked_before_making_it(pki: Pki) -> None:
    seal = seal_for(pki)
    listing = crl(pki.root, [(pki.maker.certificate, NOW - timedelta(days=200))])
    report = verifier(pki, region_crls=(listing,)).validate_seal(seal)
    assert report.sub_indication is SubIndication.REVOKED
    assert not checks_of(report)["seal maker revocation"][0]
    signed = verifier(pki, region_crls=(listing,)).validate_signature(signed_by(pki, seal), DATA)
    assert signed.sub_indication is SubIndication.REVOKED


@pytest.fixture(scope="module")
def openssl_tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tsa]:
    with running_tsa(tmp_path_factory.mktemp("tsa")) as tsa:
        yield tsa


def test_sign_with_seal_time_stamps_the_signature_value(pki: Pki, openssl_tsa: Tsa) -> None:
    client = TimeStampClient(openssl_tsa.url, anchors=[openssl_tsa.root])
    signer = Sm2FileSigner(pki.signer.key, pki.signer.certificate)
    signed = sign_with_seal(
        DATA, seal=seal_for(pki), signer=signer, at=NOW, property_info="x", tsa=client
    )
    view = parse_signature(signed)
    assert view.time_stamp is not None
    assert openssl_tsa.verify(view.time_stamp, view.signature) == "Verification: OK"
    later = NOW + timedelta(days=400)  # the signer's certificate has expired
    trusting = GmVerifier(
        FakeTrust((pki.root.certificate,)), extra_anchors=[openssl_tsa.root], clock=lambda: NOW
    )
    report = trusting.validate_signature(signed, DATA, validation_time=later)
    assert report.passed, "\n".join(c.name + ": " + c.detail[:300] for c in report.checks)
    assert report.proof_of_existence is not None
    assert report.proof_of_existence > NOW
    assert "proof of existence at" in checks_of(report)["time-stamp"][1]
    unanchored = verifier(pki).validate_signature(signed, DATA, validation_time=later)
    assert unanchored.sub_indication is SubIndication.OUT_OF_BOUNDS_NO_POE
    assert unanchored.proof_of_existence is None
