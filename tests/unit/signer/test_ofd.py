"""OFD documents (GB/T 33190 §18): ofdrw's sealed OFD as its README describes it, a changed byte
in every protected file and in the signature, e-licences made and sealed here (cross-checked
with OpenSSL's SM3 and SM2 and Info-ZIP's `unzip -t`), several signatures, check methods and
references that point where they must not."""

from __future__ import annotations

import base64
import io
import random
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sm2_support import NOW, SIGNING_USAGE, Issued, issue
from support import SHARED

from signer import (
    GmVerifier,
    Indication,
    OfdRefused,
    OfdVerifier,
    Sm2FileSigner,
    SubIndication,
    ValidationReport,
    is_ofd,
    make_licence_ofd,
    make_seal,
    seal_ofd,
    sign_with_seal,
)
from signer._sm2_x509 import sm2_public_key_of

GM = SHARED / "vectors" / "gm"
SHARED_OFD = GM / "ses-v4-signed.ofd"
SIGN_0 = "Doc_0/Signs/Sign_0/"
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(64)
LINES = [("持证人", "张三"), ("许可事项", "食品经营"), ("有效期至", "2031-06-01")]


def sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def files_of(ofd: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(ofd)) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def checks_of(report: ValidationReport) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.passed, c.detail) for c in report.checks}


def changed_byte(name: str, data: bytes) -> bytes:
    """`data` with one byte changed: XML's declared encoding (it still parses), else the last."""
    if name.endswith(".xml"):
        assert b'encoding="UTF-8"' in data, name
        return data.replace(b'encoding="UTF-8"', b'encoding="uTF-8"', 1)
    return data[:-1] + bytes([data[-1] ^ 0x01])


# -- ofdrw's sealed OFD -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ofdrw_verifier() -> OfdVerifier:
    root = x509.load_pem_x509_certificate((GM / "ofdrw-root.pem").read_bytes())
    return OfdVerifier(GmVerifier(None, extra_anchors=[root]))


def test_shared_ofd_verifies_as_its_readme_says(ofdrw_verifier: OfdVerifier) -> None:
    report = ofdrw_verifier.validate(SHARED_OFD.read_bytes())
    assert report.format == "OFD"
    assert len(report.signatures) == 1
    (signature,) = report.signatures
    checks = checks_of(signature)
    assert signature.format == "GB/T 38540 SES_Signature v4"
    for protected in (
        "OFD.xml",
        "Doc_0/PublicRes.xml",
        "Doc_0/Pages/Page_0/Content.xml",
        "Doc_0/Document.xml",
        SIGN_0 + "Seal.esl",
    ):
        assert checks[f"Reference /{protected}"] == (True, "SM3 matches the CheckValue")
    assert checks["References CheckMethod"] == (True, "SM3")
    assert checks["Seal.esl"][0]
    # The SES_Signature over TBS_Sign verifies, its dataHash is SM3 of Signature.xml ...
    assert checks["signature"][0]
    assert checks["data hash"][0]
    assert checks["seal signature"][0]
    # ... and, as the README says, the signer certificate had expired by the signing time and
    # the chain is refused (the root's key usage).
    assert checks["validity at signing time"][1].startswith("EXPIRED")
    assert checks["signer chain"][1].startswith("CHAIN_CONSTRAINTS_FAILURE")
    assert (report.indication, report.sub_indication) == (
        signature.indication,
        signature.sub_indication,
    )
    assert checks_of(report)["files no signature protects"] == (
        True,
        "/Doc_0/Signs/Signatures.xml",
    )


PROTECTED = [
    "OFD.xml",
    "Doc_0/PublicRes.xml",
    "Doc_0/Pages/Page_0/Content.xml",
    "Doc_0/Document.xml",
    SIGN_0 + "Seal.esl",
]


@pytest.mark.parametrize("name", PROTECTED)
def test_a_changed_byte_in_a_protected_file_is_hash_failure(
    ofdrw_verifier: OfdVerifier, name: str
) -> None:
    files = files_of(SHARED_OFD.read_bytes())
    files[name] = changed_byte(name, files[name])
    report = ofdrw_verifier.validate(zip_of(files))
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.HASH_FAILURE,
    )
    assert f"/{name} was changed after signing" in report.message
    assert checks_of(report.signatures[0])[f"Reference /{name}"][0] is False


def test_a_changed_byte_in_signature_xml_is_hash_failure(ofdrw_verifier: OfdVerifier) -> None:
    files = files_of(SHARED_OFD.read_bytes())
    name = SIGN_0 + "Signature.xml"
    files[name] = files[name].replace(b'Version="2.4.0"', b'Version="2.4.1"')
    report = ofdrw_verifier.validate(zip_of(files))
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.HASH_FAILURE,
    )
    assert checks_of(report.signatures[0])["data hash"][0] is False


def test_a_changed_byte_in_the_signature_value_is_sig_crypto_failure(
    ofdrw_verifier: OfdVerifier,
) -> None:
    files = files_of(SHARED_OFD.read_bytes())
    name = SIGN_0 + "SignedValue.dat"
    signature = core.Sequence.load(files[name])
    assert len(signature) == 4  # toSign, cert, signatureAlgID, signature: the value is last
    files[name] = changed_byte(name, files[name])
    report = ofdrw_verifier.validate(zip_of(files))
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.SIG_CRYPTO_FAILURE,
    )


# -- a Tongban PKI, licences made and sealed here -----------------------------------------------
@dataclass(frozen=True)
class Pki:
    root: Issued
    signer: Sm2FileSigner
    seal: bytes

    def verifier(self) -> OfdVerifier:
        return OfdVerifier(GmVerifier(None, extra_anchors=[self.root.certificate]))


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = issue("Tongban test root")  # extra anchors take no intermediates: leaves under it
    maker = issue("Tongban seal maker", root, ca=False, usage=SIGNING_USAGE)
    leaf = issue("Tongban licence office", root, ca=False, usage=SIGNING_USAGE)
    signer = Sm2FileSigner(leaf.key, leaf.certificate)
    seal = make_seal(
        maker=Sm2FileSigner(maker.key, maker.certificate),
        es_id="44000000000001",
        name="广东省市场监督管理局电子印章",
        seal_type=1,
        signer_certificates=[leaf.certificate],
        picture=PICTURE,
        width_mm=40,
        height_mm=40,
        valid_from=NOW - timedelta(days=30),
        valid_until=NOW + timedelta(days=300),
        created=NOW - timedelta(days=30),
    )
    return Pki(root, signer, seal)


def licence(doc_id: str = "licence-0001") -> bytes:
    return make_licence_ofd(
        title="食品经营许可证", lines=LINES, issued=NOW - timedelta(hours=1), doc_id=doc_id
    )


def sealed(pki: Pki, ofd: bytes | None = None, **kwargs: object) -> bytes:
    return seal_ofd(ofd or licence(), seal=pki.seal, signer=pki.signer, at=NOW, **kwargs)  # type: ignore[arg-type]


def test_a_licence_is_an_ofd_and_unsigned() -> None:
    ofd = licence()
    assert is_ofd(ofd)
    assert ofd == licence()  # deterministic
    files = files_of(ofd)
    assert sorted(files) == [
        "Doc_0/Document.xml",
        "Doc_0/Pages/Page_0/Content.xml",
        "Doc_0/PublicRes.xml",
        "OFD.xml",
    ]
    assert "食品经营许可证".encode() in files["Doc_0/Pages/Page_0/Content.xml"]
    assert "持证人：张三".encode() in files["Doc_0/Pages/Page_0/Content.xml"]
    report = OfdVerifier(GmVerifier(None)).validate(ofd)
    assert report.sub_indication is SubIndication.SIGNED_DATA_NOT_FOUND


def test_licence_text_is_escaped_and_inputs_checked() -> None:
    ofd = make_licence_ofd(title="<&>", lines=[("a", '"b" & <c>')], issued=NOW, doc_id="x")
    assert is_ofd(ofd)
    with pytest.raises(ValueError, match="doc_id"):
        make_licence_ofd(title="t", lines=[], issued=NOW, doc_id="../x")
    with pytest.raises(ValueError, match="time zone"):
        make_licence_ofd(title="t", lines=[], issued=NOW.replace(tzinfo=None), doc_id="x")
    with pytest.raises(ValueError, match="character"):
        make_licence_ofd(title="t\x00", lines=[], issued=NOW, doc_id="x")


def test_a_sealed_licence_passes(pki: Pki) -> None:
    ofd = sealed(pki)
    assert is_ofd(ofd)
    report = pki.verifier().validate(ofd, validation_time=NOW + timedelta(days=1))
    assert report.indication is Indication.TOTAL_PASSED, report.message
    (signature,) = report.signatures
    assert signature.passed
    assert signature.signing_time == NOW
    files = files_of(ofd)
    assert b"<ofd:Signatures>/Doc_0/Signs/Signatures.xml</ofd:Signatures>" in files["OFD.xml"]
    listed = files["Doc_0/Signs/Signatures.xml"].decode()
    assert "<ofd:MaxSignId>2</ofd:MaxSignId>" in listed
    assert 'ID="1"' in listed
    assert 'Type="Seal"' in listed
    assert files[SIGN_0 + "Seal.esl"] == pki.seal
    assert checks_of(report)["files no signature protects"] == (
        True,
        "/Doc_0/Signs/Signatures.xml",
    )


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert shutil.which("openssl"), "the Makefile installs openssl"
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


def test_a_sealed_licence_checks_out_with_openssl_and_unzip(pki: Pki, tmp_path: Path) -> None:
    ofd = sealed(pki)
    files = files_of(ofd)
    # Every CheckValue is what OpenSSL's SM3 makes of the file.
    references = re.findall(
        rb'FileRef="/([^"]+)"><ofd:CheckValue>([^<]+)<', files[SIGN_0 + "Signature.xml"]
    )
    assert {name.decode() for name, _ in references} == set(files) - {
        "Doc_0/Signs/Signatures.xml",
        SIGN_0 + "Signature.xml",
        SIGN_0 + "SignedValue.dat",
    }
    for name, value in references:
        digest = openssl("dgst", "-sm3", "-binary", stdin=files[name.decode()])
        assert digest.returncode == 0, digest.stderr
        assert base64.b64encode(digest.stdout) == value
    # The SES_Signature's SM2 signature over the DER of TBS_Sign, by OpenSSL's SM2.
    signed = core.Sequence.load(files[SIGN_0 + "SignedValue.dat"])
    tbs, value = tmp_path / "tbs.der", tmp_path / "sig.der"
    tbs.write_bytes(signed[0].dump())
    value.write_bytes(core.BitString.load(signed[3].dump()).contents[1:])
    key = tmp_path / "pub.pem"
    key.write_bytes(sm2_public_key_of(pki.signer.certificate).pem())
    verified = openssl(
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(key),
        "-rawin",
        "-digest",
        "sm3",
        "-pkeyopt",
        "distid:1234567812345678",
        "-in",
        str(tbs),
        "-sigfile",
        str(value),
    )
    assert verified.returncode == 0, verified.stderr + verified.stdout
    # dataHash is SM3 of Signature.xml.
    tbs_fields = core.Sequence.load(signed[0].dump())
    data_hash = core.BitString.load(tbs_fields[3].dump()).contents[1:]
    assert data_hash == sm3(files[SIGN_0 + "Signature.xml"])
    # Info-ZIP accepts the package.
    path = tmp_path / "licence.ofd"
    path.write_bytes(ofd)
    assert shutil.which("unzip"), "the Makefile installs unzip"
    tested = subprocess.run(["unzip", "-t", str(path)], capture_output=True, check=False)
    assert tested.returncode == 0, tested.stdout
    assert b"No errors detected" in tested.stdout


def test_two_seals_the_second_covering_the_first(pki: Pki) -> None:
    twice = sealed(pki, sealed(pki), page=1, boundary=(20.0, 20.0, 30.0, 30.0))
    files = files_of(twice)
    assert "Doc_0/Signs/Sign_1/Signature.xml" in files
    listed = files["Doc_0/Signs/Signatures.xml"].decode()
    assert "<ofd:MaxSignId>4</ofd:MaxSignId>" in listed
    second = files["Doc_0/Signs/Sign_1/Signature.xml"]
    for earlier in ("Signature.xml", "SignedValue.dat", "Seal.esl"):
        assert f'FileRef="/{SIGN_0}{earlier}"'.encode() in second
    report = pki.verifier().validate(twice, validation_time=NOW)
    assert report.indication is Indication.TOTAL_PASSED, report.message
    assert len(report.signatures) == 2
    # The first signature's value changed: it fails by its own check, and the second (which
    # protects that file) by its reference; the container says the worse.
    files[SIGN_0 + "SignedValue.dat"] = changed_byte(".dat", files[SIGN_0 + "SignedValue.dat"])
    report = pki.verifier().validate(zip_of(files), validation_time=NOW)
    first, later = report.signatures
    assert first.sub_indication is SubIndication.SIG_CRYPTO_FAILURE
    assert later.sub_indication is SubIndication.HASH_FAILURE
    assert report.sub_indication is SubIndication.HASH_FAILURE


def test_files_added_after_sealing_are_listed_not_failed(pki: Pki) -> None:
    files = files_of(sealed(pki))
    files["Doc_0/Annots/Annotations.xml"] = b"<later/>"
    report = pki.verifier().validate(zip_of(files), validation_time=NOW)
    assert report.passed
    assert checks_of(report)["files no signature protects"] == (
        True,
        "/Doc_0/Annots/Annotations.xml, /Doc_0/Signs/Signatures.xml",
    )


def resigned(pki: Pki, ofd: bytes, edit: object) -> bytes:
    """`ofd` with Sign_0's Signature.xml edited by `edit` and sealed again over the new bytes."""
    files = files_of(ofd)
    name = SIGN_0 + "Signature.xml"
    files[name] = edit(files[name])  # type: ignore[operator]
    files[SIGN_0 + "SignedValue.dat"] = sign_with_seal(
        files[name], seal=pki.seal, signer=pki.signer, at=NOW, property_info="/" + name
    )
    return zip_of(files)


@pytest.mark.parametrize(
    ("method", "passes"),
    [
        (b'CheckMethod="1.2.156.10197.1.401"', True),
        (b'CheckMethod="sm3"', True),
        (b'CheckMethod="MD5"', False),
        (b'CheckMethod="SHA256"', False),
        (b"", False),
    ],
)
def test_check_methods(pki: Pki, method: bytes, passes: bool) -> None:
    ofd = resigned(pki, sealed(pki), lambda xml: xml.replace(b'CheckMethod="SM3"', method))
    report = pki.verifier().validate(ofd, validation_time=NOW)
    if passes:
        assert report.passed, report.message
    else:
        assert report.sub_indication is SubIndication.CRYPTO_CONSTRAINTS_FAILURE
        assert "only SM3 is accepted" in report.message


@pytest.mark.parametrize(
    ("file_ref", "reason"),
    [
        (b"/../../etc/passwd", "outside the package"),
        (b"../../../../x", "outside the package"),
        (b"/Doc_0/missing.xml", "/Doc_0/missing.xml is not in the package"),
        (b"C:\\\\evil", "not a location inside the package"),
    ],
)
def test_references_that_point_outside_or_nowhere(pki: Pki, file_ref: bytes, reason: str) -> None:
    ofd = resigned(
        pki,
        sealed(pki),
        lambda xml: xml.replace(b'FileRef="/OFD.xml"', b'FileRef="' + file_ref + b'"'),
    )
    report = pki.verifier().validate(ofd, validation_time=NOW)
    assert (report.indication, report.sub_indication) == (
        Indication.TOTAL_FAILED,
        SubIndication.FORMAT_FAILURE,
    )
    assert reason in report.message
    assert len(report.signatures) == 1


def test_a_seal_file_that_is_not_the_seal_used(pki: Pki) -> None:
    other = (GM / "seal-v4.esl").read_bytes()

    def drop_seal_reference(xml: bytes) -> bytes:
        return re.sub(rb'<ofd:Reference FileRef="/[^"]*Seal\.esl">.*?</ofd:Reference>', b"", xml)

    files = files_of(resigned(pki, sealed(pki), drop_seal_reference))
    files[SIGN_0 + "Seal.esl"] = other
    report = pki.verifier().validate(zip_of(files), validation_time=NOW)
    assert report.sub_indication is SubIndication.FORMAT_FAILURE
    assert "is not the seal inside the signed value" in report.message


def test_relative_locations_are_followed(pki: Pki) -> None:
    """Locations relative to the referring file's folder, as GB/T 33190 §7.1 has them."""
    files = files_of(sealed(pki))
    files["Doc_0/Signs/Signatures.xml"] = files["Doc_0/Signs/Signatures.xml"].replace(
        b'BaseLoc="/Doc_0/Signs/Sign_0/Signature.xml"', b'BaseLoc="Sign_0/Signature.xml"'
    )
    report = pki.verifier().validate(zip_of(files), validation_time=NOW)
    assert report.passed, report.message

    def relative(xml: bytes) -> bytes:
        return xml.replace(b"/Doc_0/Signs/Sign_0/SignedValue.dat", b"SignedValue.dat").replace(
            b'FileRef="/Doc_0/Document.xml"', b'FileRef="../../Document.xml"'
        )

    report = pki.verifier().validate(resigned(pki, sealed(pki), relative), validation_time=NOW)
    assert report.passed, report.message


def test_a_document_closed_to_further_signatures_is_refused(pki: Pki) -> None:
    def protect_list(xml: bytes) -> bytes:
        value = base64.b64encode(sm3(files_of(ofd)["Doc_0/Signs/Signatures.xml"]))
        return xml.replace(
            b"</ofd:References>",
            b'<ofd:Reference FileRef="/Doc_0/Signs/Signatures.xml"><ofd:CheckValue>'
            + value
            + b"</ofd:CheckValue></ofd:Reference></ofd:References>",
        )

    ofd = sealed(pki)
    closed = resigned(pki, ofd, protect_list)
    assert pki.verifier().validate(closed, validation_time=NOW).passed
    with pytest.raises(OfdRefused, match="admits no further signature"):
        sealed(pki, closed)
    with pytest.raises(ValueError, match="page 2 does not exist"):
        sealed(pki, page=2)


def test_the_seal_must_list_the_signer(pki: Pki) -> None:
    stranger = issue("someone else", ca=False, usage=SIGNING_USAGE)
    with pytest.raises(ValueError, match="does not list"):
        seal_ofd(
            licence(),
            seal=pki.seal,
            signer=Sm2FileSigner(stranger.key, stranger.certificate),
            at=NOW,
        )


def test_byte_flips_anywhere_never_raise_nor_pass_changed_content(pki: Pki) -> None:
    """A byte changed anywhere in the zip: a report, never an exception; TOTAL_PASSED only
    where the byte was outside every file's content (a header's date or attributes)."""
    ofd = sealed(pki)
    original = files_of(ofd)
    verifier = pki.verifier()
    for at in range(0, len(ofd), max(1, len(ofd) // 150)):
        flipped = ofd[:at] + bytes([ofd[at] ^ 0x5A]) + ofd[at + 1 :]
        report = verifier.validate(flipped, validation_time=NOW)
        if report.passed:
            assert files_of(flipped) == original, at


def test_byte_flips_in_each_file_never_raise_nor_pass(pki: Pki) -> None:
    original = files_of(sealed(pki, sealed(pki)))
    verifier = pki.verifier()
    rng = random.Random(33190)
    for name, data in original.items():
        if name == "Doc_0/Signs/Signatures.xml":
            continue  # unprotected by design: a flip there may still list both signatures
        for at in rng.sample(range(len(data)), min(12, len(data))):
            files = dict(original)
            files[name] = data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1 :]
            report = verifier.validate(zip_of(files), validation_time=NOW)
            assert not report.passed, (name, at)


# -- digital signatures (Type Sign): GB/T 35275 SignedData as ofdrw's GBT35275DSContainer ------
def tlv(tag: int, body: bytes) -> bytes:
    """DER tag, length, value (written out: the test does not lean on the parser's library)."""
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def oid(dotted: str) -> bytes:
    return bytes(core.ObjectIdentifier(dotted).dump())


def signed_data(
    data: bytes,
    signer: Sm2FileSigner,
    *,
    attributes: bool = False,
    cert: x509.Certificate | None = None,
) -> bytes:
    """A GB/T 35275 SignedData over SM3(`data`), laid out byte by byte as ofdrw's
    SignedDataBuilder writes it (PKCS #7 fields, GM object identifiers), signed as ofdrw signs:
    the digest itself, or with `attributes` the DER SET of PKCS #9 attributes holding it."""
    from cryptography.hazmat.primitives import serialization

    certificate = cert or signer.certificate
    digest = sm3(data)
    sm3_id = tlv(0x30, oid("1.2.156.10197.1.401"))
    signer_info = tlv(0x02, b"\x01") + tlv(
        0x30,
        certificate.issuer.public_bytes() + bytes(core.Integer(certificate.serial_number).dump()),
    )
    signer_info += sm3_id
    content = tlv(0x30, oid("1.2.156.10197.6.1.4.2.1") + tlv(0xA0, tlv(0x04, digest)))
    to_sign = digest
    if attributes:
        attrs = tlv(0x30, oid("1.2.840.113549.1.9.4") + tlv(0x31, tlv(0x04, digest)))
        signer_info += tlv(0xA0, attrs)
        to_sign = tlv(0x31, attrs)
        content = tlv(0x30, oid("1.2.156.10197.6.1.4.2.1"))
    signer_info += tlv(0x30, oid("1.2.156.10197.1.301.1"))
    signer_info += tlv(0x04, signer.sign_sm2(to_sign))
    body = (
        tlv(0x02, b"\x01")
        + tlv(0x31, sm3_id)
        + content
        + tlv(0xA0, certificate.public_bytes(serialization.Encoding.DER))
        + tlv(0x31, tlv(0x30, signer_info))
    )
    return tlv(0x30, oid("1.2.156.10197.6.1.4.2.2") + tlv(0xA0, tlv(0x30, body)))


def digitally_signed(pki: Pki, **kwargs: object) -> dict[str, bytes]:
    files = files_of(sealed(pki))
    listed = "Doc_0/Signs/Signatures.xml"
    files[listed] = files[listed].replace(b'Type="Seal"', b'Type="Sign"')
    files[SIGN_0 + "SignedValue.dat"] = signed_data(
        files[SIGN_0 + "Signature.xml"],
        pki.signer,
        **kwargs,  # type: ignore[arg-type]
    )
    return files


@pytest.mark.parametrize("attributes", [False, True])
def test_a_digital_signature_and_its_signers_chain_are_checked(pki: Pki, attributes: bool) -> None:
    files = digitally_signed(pki, attributes=attributes)
    report = pki.verifier().validate(zip_of(files), validation_time=NOW)
    (signature,) = report.signatures
    checks = checks_of(signature)
    assert signature.format == "GB/T 35275 SignedData"
    assert checks["data hash"] == (True, "the signed digest is SM3 of Signature.xml")
    assert checks["signature"][0]
    assert checks["Reference /OFD.xml"][0]
    assert checks["signer chain"][0], checks["signer chain"]
    assert checks["validity at signing time"][0]
    assert checks["validity now"][0]
    assert report.passed, report.message
    # SignatureDateTime (China Standard Time, as seal_ofd writes it) is the signing time here.
    assert signature.signing_time == NOW.replace(microsecond=0)
    # Without the signer's CA among the anchors: the chain, and only it, fails.
    alone = OfdVerifier(GmVerifier(None)).validate(zip_of(files), validation_time=NOW)
    assert (alone.indication, alone.sub_indication) == (
        Indication.INDETERMINATE,
        SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
    )
    assert not checks_of(alone.signatures[0])["signer chain"][0]
    # Years later, the signer's certificate has expired and nothing proves the signing time.
    later = pki.verifier().validate(zip_of(files), validation_time=NOW + timedelta(days=3650))
    assert later.sub_indication is SubIndication.OUT_OF_BOUNDS_NO_POE
    # A changed Signature.xml, a changed signature value, a certificate that is not the signer's.
    changed = dict(files)
    changed[SIGN_0 + "Signature.xml"] = changed_byte(".xml", files[SIGN_0 + "Signature.xml"])
    report = pki.verifier().validate(zip_of(changed), validation_time=NOW)
    assert report.sub_indication is SubIndication.HASH_FAILURE
    changed = dict(files)
    value = files[SIGN_0 + "SignedValue.dat"]
    signature_value = files_signature_value(value)
    at = value.index(signature_value) + len(signature_value) - 1
    changed[SIGN_0 + "SignedValue.dat"] = value[:at] + bytes([value[at] ^ 1]) + value[at + 1 :]
    report = pki.verifier().validate(zip_of(changed), validation_time=NOW)
    assert report.sub_indication is SubIndication.SIG_CRYPTO_FAILURE


def files_signature_value(der: bytes) -> bytes:
    """The encryptedDigest of the one SignerInfo (the last OCTET STRING holding a DER SM2 value)."""
    found = re.findall(rb"\x04[\x46-\x48](\x30[\x44-\x46]\x02.+)$", der, flags=re.S)
    assert found, "no SM2 signature at the end"
    return found[0]


def test_a_digital_signature_with_a_foreign_certificate_or_garbage(pki: Pki) -> None:
    stranger = issue("someone else", ca=False, usage=SIGNING_USAGE)
    files = files_of(sealed(pki))
    listed = "Doc_0/Signs/Signatures.xml"
    files[listed] = files[listed].replace(b'Type="Seal"', b'Type="Sign"')
    files[SIGN_0 + "SignedValue.dat"] = signed_data(
        files[SIGN_0 + "Signature.xml"], pki.signer, cert=stranger.certificate
    )
    report = pki.verifier().validate(zip_of(files), validation_time=NOW)
    assert report.sub_indication is SubIndication.SIG_CRYPTO_FAILURE
    files[SIGN_0 + "SignedValue.dat"] = b"\x30\x03\x02\x01\x01"
    report = pki.verifier().validate(zip_of(files), validation_time=NOW)
    assert report.sub_indication is SubIndication.FORMAT_FAILURE
    assert "SignedValue.dat" in report.message
    # Any byte of it changed: a report, never an exception.
    value = signed_data(files[SIGN_0 + "Signature.xml"], pki.signer, attributes=True)
    for at in range(0, len(value), 7):
        files[SIGN_0 + "SignedValue.dat"] = value[:at] + bytes([value[at] ^ 0xA5]) + value[at + 1 :]
        report = pki.verifier().validate(zip_of(files), validation_time=NOW)
        assert not report.passed, (at, value[max(0, at - 8) : at + 8].hex())


def test_a_seal_added_to_ofdrws_sealed_document(pki: Pki) -> None:
    """Interoperation: Tongban's seal after ofdrw's, on ofdrw's package and lists."""
    twice = sealed(pki, SHARED_OFD.read_bytes())
    files = files_of(twice)
    listed = files["Doc_0/Signs/Signatures.xml"].decode()
    assert "<ofd:MaxSignId>4</ofd:MaxSignId>" in listed
    assert 'ID="3"' in listed
    assert 'BaseLoc="/Doc_0/Signs/Sign_1/Signature.xml"' in listed
    root = x509.load_pem_x509_certificate((GM / "ofdrw-root.pem").read_bytes())
    verifier = OfdVerifier(GmVerifier(None, extra_anchors=[root, pki.root.certificate]))
    report = verifier.validate(twice, validation_time=NOW)
    ofdrws, ours = report.signatures
    assert ours.passed, ours.message
    assert not ofdrws.passed  # as before: its signer certificate had expired
    assert checks_of(ofdrws)["signature"][0]
    assert report.sub_indication is ofdrws.sub_indication


def test_a_list_of_signatures_at_the_package_root(pki: Pki) -> None:
    files = files_of(licence())
    files["OFD.xml"] = files["OFD.xml"].replace(
        b"</ofd:DocRoot>", b"</ofd:DocRoot><ofd:Signatures>Signatures.xml</ofd:Signatures>"
    )
    ofd = sealed(pki, zip_of(files))
    assert {"Signatures.xml", "Sign_0/Signature.xml", "Sign_0/SignedValue.dat"} <= set(
        files_of(ofd)
    )
    assert pki.verifier().validate(ofd, validation_time=NOW).passed


def test_two_documents_naming_one_list_report_its_signatures_once(pki: Pki) -> None:
    files = files_of(sealed(pki))
    body = re.search(rb"<ofd:DocBody>.*</ofd:DocBody>", files["OFD.xml"], flags=re.S)
    assert body is not None
    files["OFD.xml"] = files["OFD.xml"].replace(body.group(), body.group() * 2)
    report = pki.verifier().validate(zip_of(files), validation_time=NOW)
    assert len(report.signatures) == 1
    assert report.sub_indication is SubIndication.HASH_FAILURE  # OFD.xml is protected
