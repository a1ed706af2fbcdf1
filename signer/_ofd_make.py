"""Making OFD documents (GB/T 33190-2016): an e-licence, and sealing one (§18) as ofdrw does.

`make_licence_ofd` writes the smallest OFD a reader shows: OFD.xml, one document with its public
resources (one font) and one page of text objects. `seal_ofd` adds a GB/T 38540 seal to any OFD:

    (1) OFD.xml's first DocBody gets a `Signatures` entry if it has none (the list of signatures
        lives beside the document, `Doc_N/Signs/Signatures.xml`);
    (2) the new signature's folder `Sign_K` takes the seal as `Seal.esl`;
    (3) `Signature.xml` lists, with SM3 check values, every file then in the package except the
        list of signatures: OFD.xml (already naming the list), the pages, resources, the earlier
        signatures' files and this signature's Seal.esl. The list itself stays unprotected so
        that later signatures can be added (ofdrw's ContinueSign mode; a package whose list an
        earlier signature protects admits no further signature and is refused);
    (4) `SignedValue.dat` is the SES_Signature over the bytes of Signature.xml (its dataHash is
        SM3 of them; its property string the path of Signature.xml, as ofdrw writes);
    (5) the list gets the new `Signature` (Type Seal) and a grown `MaxSignId`, which numbers the
        signature and its stamp annotation.

XML written here is from templates with escaped text (the licence) or re-serialised by
ElementTree after a hardened parse (the files an existing package brings); the zip's entries
keep their order, with new ones after them.
"""

from __future__ import annotations

import base64
import io
import re
import zipfile
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Final
from xml.etree import ElementTree
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape, quoteattr

from signer._ofd_package import OFD_NS, OfdPackage, OfdRefused, read_package, resolve_loc, sm3
from signer._ses import Sm2Signer, sign_with_seal
from signer._sm2 import SM2_WITH_SM3_OID

__all__ = ["make_licence_ofd", "seal_ofd"]

CHINA_STANDARD_TIME: Final = timezone(timedelta(hours=8))
PROVIDER: Final = ("Tongban", "Tongban", "0.1.0")  # ProviderName, Company, Version
DEFAULT_BOUNDARY: Final = (140.0, 230.0, 40.0, 40.0)  # mm: x, y, width, height on an A4 page
PAGE_BOX: Final = "0 0 210 297"  # mm, A4 portrait
FONT_NAME: Final = "宋体"  # SimSun: the font Chinese official documents are set in
MAX_LINES: Final = 40  # lines of a licence page
_NS: Final = "{" + OFD_NS + "}"
_XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'
_OFD: Final = f'xmlns:ofd="{OFD_NS}"'
_DOC_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_XML_TEXT: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

# ElementTree names namespaces from a global map when it serialises: registering `ofd` keeps
# the prefix every OFD reader expects (it changes nothing else of ElementTree's behaviour).
ElementTree.register_namespace("ofd", OFD_NS)


def _xml_text(text: str, what: str) -> str:
    if _NOT_XML_TEXT.search(text):
        raise ValueError(f"{what} holds a character XML cannot carry")
    return escape(text)


def _aware(at: datetime, what: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must carry its time zone")
    return at


def _zip(entries: Sequence[tuple[str, bytes]], at: datetime) -> bytes:
    stamp = _aware(at, "the time").astimezone(CHINA_STANDARD_TIME)
    date_time = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, 0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def make_licence_ofd(
    *, title: str, lines: Sequence[tuple[str, str]], issued: datetime, doc_id: str
) -> bytes:
    """A one-page OFD e-licence: `title`, then one "label：value" line per pair of `lines`."""
    if not title.strip():
        raise ValueError("a licence has a title")
    if not _DOC_ID.fullmatch(doc_id):
        raise ValueError("doc_id is 1-64 letters, digits, '-' or '_'")
    if len(lines) > MAX_LINES:
        raise ValueError(f"a licence page holds at most {MAX_LINES} lines")
    day = _aware(issued, "issued").astimezone(CHINA_STANDARD_TIME).date().isoformat()
    texts = [(_xml_text(title, "the title"), 8.0)] + [
        (_xml_text(f"{label}：{value}", "a line"), 4.2333) for label, value in lines
    ]
    # IDs (GB/T 33190 ST_ID, unique in the document): page 1, font 2, layer 3, text 4...
    max_id = 3 + len(texts)
    ofd_xml = (
        f'{_XML_DECLARATION}<ofd:OFD {_OFD} Version="1.0" DocType="OFD"><ofd:DocBody>'
        f"<ofd:DocInfo><ofd:DocID>{doc_id}</ofd:DocID><ofd:Title>{texts[0][0]}</ofd:Title>"
        f"<ofd:CreationDate>{day}</ofd:CreationDate><ofd:Creator>Tongban</ofd:Creator>"
        "</ofd:DocInfo><ofd:DocRoot>Doc_0/Document.xml</ofd:DocRoot></ofd:DocBody></ofd:OFD>"
    )
    document = (
        f"{_XML_DECLARATION}<ofd:Document {_OFD}><ofd:CommonData>"
        f"<ofd:MaxUnitID>{max_id}</ofd:MaxUnitID><ofd:PageArea>"
        f"<ofd:PhysicalBox>{PAGE_BOX}</ofd:PhysicalBox></ofd:PageArea>"
        "<ofd:PublicRes>PublicRes.xml</ofd:PublicRes></ofd:CommonData><ofd:Pages>"
        '<ofd:Page ID="1" BaseLoc="Pages/Page_0/Content.xml"/></ofd:Pages></ofd:Document>'
    )
    public_res = (
        f'{_XML_DECLARATION}<ofd:Res {_OFD} BaseLoc="Res"><ofd:Fonts>'
        f'<ofd:Font ID="2" FontName={quoteattr(FONT_NAME)} FamilyName={quoteattr(FONT_NAME)}/>'
        "</ofd:Fonts></ofd:Res>"
    )
    objects = []
    for number, (text, size) in enumerate(texts):
        top = 25.0 if number == 0 else 45.0 + 10.0 * (number - 1)
        objects.append(
            f'<ofd:TextObject ID="{4 + number}" Boundary="20 {top:g} 170 {size * 1.5:g}" '
            f'Font="2" Size="{size:g}"><ofd:TextCode X="0" Y="{size:g}">{text}</ofd:TextCode>'
            "</ofd:TextObject>"
        )
    content = (
        f'{_XML_DECLARATION}<ofd:Page {_OFD}><ofd:Content><ofd:Layer ID="3">'
        f"{''.join(objects)}</ofd:Layer></ofd:Content></ofd:Page>"
    )
    entries = [
        ("OFD.xml", ofd_xml),
        ("Doc_0/Document.xml", document),
        ("Doc_0/PublicRes.xml", public_res),
        ("Doc_0/Pages/Page_0/Content.xml", content),
    ]
    return _zip([(name, text.encode()) for name, text in entries], issued)


def _serialise(root: Element) -> bytes:
    body: bytes = ElementTree.tostring(root, encoding="unicode").encode()
    return _XML_DECLARATION.encode() + body


def _sub(parent: Element, name: str, text: str | None = None, **attributes: str) -> Element:
    element = ElementTree.SubElement(parent, _NS + name, attributes)
    element.text = text
    return element


def _max_sign_id(signatures: Element) -> int:
    """The number in MaxSignId (ofdrw writes "2" or "s002"); 0 for a new list."""
    found = signatures.find(_NS + "MaxSignId")
    text = (found.text or "") if found is not None else ""
    digits = re.search(r"\d+$", text.strip())
    ids = [
        int(m.group())
        for e in signatures.findall(_NS + "Signature")
        if (m := re.search(r"\d+$", e.get("ID", "")))
    ]
    return max([int(digits.group()) if digits else 0, *ids])


class _Plan:
    """Where the new signature goes in `package` and what must change for it (steps 1, 2)."""

    def __init__(self, package: OfdPackage, page: int) -> None:
        self.files = dict(package.files)
        ofd = package.xml("OFD.xml")
        body = ofd.find(_NS + "DocBody")
        if ofd.tag != _NS + "OFD" or body is None:
            raise OfdRefused("OFD.xml is not an ofd:OFD with a DocBody")
        root_loc = body.findtext(_NS + "DocRoot")
        self.document = resolve_loc("OFD.xml", root_loc, "DocRoot")
        self.page_ref = self._page_id(package, page)
        listed = body.findtext(_NS + "Signatures")
        if listed is None:
            folder = self.document.rpartition("/")[0]
            self.list_name = (folder + "/" if folder else "") + "Signs/Signatures.xml"
            _sub(body, "Signatures", "/" + self.list_name)
            self.files["OFD.xml"] = _serialise(ofd)
        else:
            self.list_name = resolve_loc("OFD.xml", listed, "OFD.xml's Signatures")
        if self.list_name in package:
            self.signatures = package.xml(self.list_name)
            self._refuse_if_closed(package)
        else:
            self.signatures = Element(_NS + "Signatures")
        folder = self.list_name.rpartition("/")[0]
        prefix = f"{folder}/" if folder else ""
        number = 0
        while any(n.startswith(f"{prefix}Sign_{number}/") for n in self.files):
            number += 1
        self.sign_folder = f"{prefix}Sign_{number}"
        self.max_id = _max_sign_id(self.signatures)

    def _page_id(self, package: OfdPackage, page: int) -> str:
        pages = package.xml(self.document).findall(f"{_NS}Pages/{_NS}Page")
        if not 1 <= page <= len(pages):
            raise ValueError(f"the document has {len(pages)} pages; page {page} does not exist")
        return pages[page - 1].get("ID", "").strip()

    def _refuse_if_closed(self, package: OfdPackage) -> None:
        for entry in self.signatures.findall(_NS + "Signature"):
            name = resolve_loc(self.list_name, entry.get("BaseLoc"), "signature BaseLoc")
            references = package.xml(name).iter(_NS + "Reference")
            if any(
                resolve_loc(name, ref.get("FileRef"), "FileRef") == self.list_name
                for ref in references
            ):
                raise OfdRefused(
                    "an earlier signature protects the list of signatures:"
                    " the document admits no further signature"
                )


def _signature_xml(plan: _Plan, at: datetime, boundary: tuple[float, float, float, float]) -> bytes:
    """Step 3: Signature.xml, with the check values of every file now in the package."""
    root = Element(_NS + "Signature")
    _sub(root, "SignedValue", f"/{plan.sign_folder}/SignedValue.dat")
    info = _sub(root, "SignedInfo")
    name, company, version = PROVIDER
    _sub(info, "Provider", ProviderName=name, Company=company, Version=version)
    _sub(info, "SignatureMethod", SM2_WITH_SM3_OID)
    local = at.astimezone(CHINA_STANDARD_TIME).strftime("%Y-%m-%d %H:%M:%S")
    _sub(info, "SignatureDateTime", local)
    references = _sub(info, "References", CheckMethod="SM3")
    for file_name, data in plan.files.items():
        if file_name != plan.list_name:
            reference = _sub(references, "Reference", FileRef="/" + file_name)
            _sub(reference, "CheckValue", _b64(sm3(data)))
    box = " ".join(f"{value:g}" for value in boundary)
    _sub(info, "StampAnnot", ID=str(plan.max_id + 2), PageRef=plan.page_ref, Boundary=box)
    seal = _sub(info, "Seal")
    _sub(seal, "BaseLoc", f"/{plan.sign_folder}/Seal.esl")
    return _serialise(root)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def seal_ofd(
    ofd: bytes,
    *,
    seal: bytes,
    signer: Sm2Signer,
    at: datetime,
    page: int = 1,
    boundary: tuple[float, float, float, float] = DEFAULT_BOUNDARY,
) -> bytes:
    """`ofd` with one more signature: `seal` used by `signer` at `at`, stamped on `page` (1 is the
    first) at `boundary` (x, y, width, height in mm). Raises `OfdRefused` for a package that
    cannot be read or admits no further signature, ValueError for a page that does not exist."""
    _aware(at, "at")
    package = read_package(ofd)
    plan = _Plan(package, page)
    plan.files[f"{plan.sign_folder}/Seal.esl"] = seal
    signature_xml = _signature_xml(plan, at, boundary)
    signature_name = f"{plan.sign_folder}/Signature.xml"
    signed_value = sign_with_seal(
        signature_xml, seal=seal, signer=signer, at=at, property_info="/" + signature_name
    )
    plan.files[signature_name] = signature_xml
    plan.files[f"{plan.sign_folder}/SignedValue.dat"] = signed_value
    _add_to_list(plan)
    return _zip(list(plan.files.items()), at)


def _add_to_list(plan: _Plan) -> None:
    """Step 5: the new entry in Signatures.xml, MaxSignId first as the standard orders it."""
    signatures = plan.signatures
    max_element = signatures.find(_NS + "MaxSignId")
    if max_element is None:
        max_element = Element(_NS + "MaxSignId")
        signatures.insert(0, max_element)
    max_element.text = str(plan.max_id + 2)
    _sub(
        signatures,
        "Signature",
        ID=str(plan.max_id + 1),
        Type="Seal",
        BaseLoc=f"/{plan.sign_folder}/Signature.xml",
    )
    plan.files[plan.list_name] = _serialise(signatures)
