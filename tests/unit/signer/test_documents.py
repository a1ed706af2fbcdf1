"""`recognise` tells the formats apart by content alone, and `DocumentVerifier` sends each to
its verifier: a JWS to the SealVerifier (with the caller's expectations), anything unknown,
oversized, or given a payload it cannot take to a FORMAT_FAILURE report that says why."""

from __future__ import annotations

import io
import zipfile

import pytest
from support import SHARED, Federation, make_federation

from registry import (
    TRUSTED_ROOT,
    KeyState,
    KeyUsage,
    RegistryTrust,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import (
    MAX_DOCUMENT_BYTES,
    DocumentVerifier,
    FileKeyProvider,
    Format,
    GmVerifier,
    Indication,
    SealVerifier,
    SignatureKind,
    SubIndication,
    recognise,
    seal,
)

DOCUMENT = b'{"licence":"91330000MA27XL0T4K"}'


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    federation = make_federation(tmp_path_factory.mktemp("fed"))
    federation.publish()
    return federation


@pytest.fixture(scope="module")
def jws(fed: Federation) -> str:
    (record,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    provider = FileKeyProvider(fed.pki / record.private_key, fed.pki / record.certificate)
    return seal(DOCUMENT, provider)


@pytest.fixture
def verifier(fed: Federation) -> DocumentVerifier:
    authority = load_trusted_root(fed.pki / TRUSTED_ROOT)
    snapshot = SnapshotVerifier(authority).verify(
        fed.current.read_bytes(), held_version=None, now=None
    )
    trust = RegistryTrust(snapshot.registry)
    return DocumentVerifier(SealVerifier(trust), GmVerifier(trust))


def a_zip(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(name, data)
    return out.getvalue()


def test_a_compact_jws_is_recognised_with_whitespace_around_it(jws: str) -> None:
    assert recognise(jws.encode()) is Format.JWS
    assert recognise(f"\n  {jws}\r\n".encode()) is Format.JWS
    header, _, signature = jws.split(".")
    assert recognise(f"{header}..{signature}".encode()) is Format.JWS  # detached


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n",
        b"a.b",
        b"a.b.c.d",
        b".b.c",  # no header
        b"a.b.",  # no signature
        b"a.b=.c",  # padded: not base64url as JWS uses it
        "a.文.c".encode(),
        b"a.b\n.c",
        b"%PDF-1.7\n",
        b"\x30\x03\x02\x01\x01",  # DER, but no SES structure
        b"PK\x03\x04",  # a truncated zip
        bytes(range(256)),
    ],
    ids=repr,
)
def test_anything_else_is_unknown_and_never_raises(data: bytes) -> None:
    assert recognise(data) is Format.UNKNOWN


def test_a_zip_that_is_not_an_ofd_is_unknown() -> None:
    assert recognise(a_zip("readme.txt", b"hello")) is Format.UNKNOWN


def test_a_zip_that_is_not_an_ofd_says_why(verifier: DocumentVerifier) -> None:
    report = verifier.validate(a_zip("readme.txt", b"hello"))
    assert report.sub_indication is SubIndication.FORMAT_FAILURE
    assert report.message.startswith("a zip archive, but not an OFD package (")
    assert "OFD.xml" in report.message


def test_a_jws_goes_to_the_seal_verifier(verifier: DocumentVerifier, jws: str) -> None:
    report = verifier.validate(jws.encode() + b"\n")
    assert report.indication is Indication.TOTAL_PASSED, report.message
    assert report.format == "JAdES"
    assert report.owner_region == "330000"
    assert report.payload == DOCUMENT


def test_expectations_hold_for_a_jws(verifier: DocumentVerifier, jws: str) -> None:
    report = verifier.validate(jws.encode(), expected_owner_region="510000")
    assert report.sub_indication is SubIndication.CHAIN_CONSTRAINTS_FAILURE
    report = verifier.validate(jws.encode(), expected_kind=SignatureKind.SEAL)
    assert report.passed


def test_unknown_bytes_are_a_format_failure_naming_the_formats(
    verifier: DocumentVerifier,
) -> None:
    report = verifier.validate(b"%PDF-1.7 a licence, unsealed")
    assert report.indication is Indication.TOTAL_FAILED
    assert report.sub_indication is SubIndication.FORMAT_FAILURE
    for name in ("JWS", "OFD", "SES_Signature", "SESeal"):
        assert name in report.message
    (check,) = report.checks
    assert (check.name, check.passed) == ("format", False)


def test_a_document_over_the_limit_is_refused_unread(verifier: DocumentVerifier, jws: str) -> None:
    report = verifier.validate(jws.encode() + b" " * (MAX_DOCUMENT_BYTES + 1 - len(jws)))
    assert report.sub_indication is SubIndication.FORMAT_FAILURE
    assert str(MAX_DOCUMENT_BYTES) in report.message


def test_a_payload_for_an_attached_jws_is_a_format_failure(
    verifier: DocumentVerifier, jws: str
) -> None:
    report = verifier.validate(jws.encode(), payload=DOCUMENT)
    assert report.sub_indication is SubIndication.FORMAT_FAILURE


# The GB/T 38540 and OFD formats: ofdrw's artefacts ------------------------------------------
GM = SHARED / "vectors" / "gm"


@pytest.fixture(scope="module")
def ofdrw() -> dict[str, bytes]:
    with zipfile.ZipFile(GM / "ses-v4-signed.ofd") as archive:
        sign = "Doc_0/Signs/Sign_0/"
        return {
            "ofd": (GM / "ses-v4-signed.ofd").read_bytes(),
            "esl": (GM / "seal-v4.esl").read_bytes(),
            "ses": archive.read(sign + "SignedValue.dat"),
            "xml": archive.read(sign + "Signature.xml"),
        }


def test_the_gm_formats_are_recognised_by_content(ofdrw: dict[str, bytes]) -> None:
    assert recognise(ofdrw["ofd"]) is Format.OFD
    assert recognise(ofdrw["esl"]) is Format.SESEAL
    assert recognise(ofdrw["ses"]) is Format.SES_SIGNATURE
    assert recognise(ofdrw["xml"]) is Format.UNKNOWN
    assert recognise(ofdrw["ses"][:-1]) is Format.UNKNOWN  # truncated DER


def test_each_gm_format_goes_to_its_verifier(
    verifier: DocumentVerifier, ofdrw: dict[str, bytes]
) -> None:
    assert verifier.validate(ofdrw["ofd"]).format == "OFD"
    assert verifier.validate(ofdrw["esl"]).format == "GB/T 38540 SESeal v4"
    report = verifier.validate(ofdrw["ses"], payload=ofdrw["xml"])
    assert report.format == "GB/T 38540 SES_Signature v4"
    checks = {c.name: c.passed for c in report.checks}
    assert checks["data hash"]
    assert not checks["signer chain"]  # the registry does not know ofdrw's CA


@pytest.mark.parametrize("what", ["ofd", "esl"])
def test_a_container_or_a_seal_refuses_a_payload(
    verifier: DocumentVerifier, ofdrw: dict[str, bytes], what: str
) -> None:
    report = verifier.validate(ofdrw[what], payload=b"data")
    assert report.sub_indication is SubIndication.FORMAT_FAILURE
    assert "no separate payload" in report.message


def test_expectations_are_checked_on_each_signature_of_an_ofd(
    verifier: DocumentVerifier, ofdrw: dict[str, bytes]
) -> None:
    plain = verifier.validate(ofdrw["ofd"])
    expected = verifier.validate(ofdrw["ofd"], expected_owner_region="330000")
    assert expected.sub_indication is plain.sub_indication  # a failed report keeps its reason
    (last,) = expected.checks[-1:]
    assert (last.name, last.passed) == ("expected", False)
    assert "region (none)" in last.detail
