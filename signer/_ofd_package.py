"""Reading an OFD package (GB/T 33190-2016: a zip of XML and binary files) without trusting it.

An OFD file comes from outside: a citizen, another region, a reviewer trying to break us. It is
read whole into memory, entry by entry, under counted limits, before anything is interpreted;
nothing is ever written to disk, so names are checked for what they would do to a reader that
extracts (absolute paths, ``..``, backslashes, symlinks), and refused, rather than sanitised.

- Sizes are counted while decompressing (`zipfile` decompresses to the size asked for, so a
  bomb never inflates past a limit); the sizes the zip's headers declare are never trusted.
- XML is parsed by `defusedxml` (the stdlib's expat) with DTDs refused outright, which also
  refuses entity declarations (billion laughs) and external entities (XXE); the size of each
  XML file and the depth of its elements are capped.
- Locations inside the package (GB/T 33190 `ST_Loc`) are resolved as the standard says: from
  the package root when they begin with ``/``, else from the folder of the file that holds them;
  one that climbs out of the package is refused, not clamped.

Every refusal is an `OfdRefused` whose message says what was wrong, in words for a person; the
verifier turns it into a TOTAL_FAILED / FORMAT_FAILURE report.
"""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from types import MappingProxyType
from typing import Final
from xml.etree.ElementTree import Element, ParseError

from cryptography.hazmat.primitives import hashes
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse as _defused_iterparse

from signer.errors import SignerError

__all__ = [
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "MAX_ENTRIES",
    "MAX_ENTRY_BYTES",
    "MAX_PACKAGE_BYTES",
    "MAX_RATIO",
    "MAX_TOTAL_BYTES",
    "MAX_XML_BYTES",
    "OFD_NS",
    "OfdRefused",
]

OFD_NS: Final = "http://www.ofdspec.org/2016"

# The limits. A real OFD e-licence is tens of kilobytes; scanned archives with page images run to
# a few megabytes. The limits leave room for those and stop what is built to exhaust a verifier.
MAX_PACKAGE_BYTES: Final = 32 * 1024 * 1024  # bytes; the zip as received
MAX_ENTRIES: Final = 10_000  # zip entries (files and folders); a page costs about two
MAX_ENTRY_BYTES: Final = 32 * 1024 * 1024  # bytes, decompressed, one entry (a page image)
MAX_TOTAL_BYTES: Final = 64 * 1024 * 1024  # bytes, decompressed, all entries together
# Deflate can shrink repetitive XML a hundredfold, so the ratio is judged only past a floor;
# beyond it a larger ratio is a bomb (a 10 MB run of zeros deflates to 10 KB: ratio 1000).
MAX_RATIO: Final = 100  # decompressed bytes per compressed byte, once past RATIO_FLOOR
RATIO_FLOOR: Final = 1024 * 1024  # bytes, decompressed
MAX_XML_BYTES: Final = 8 * 1024 * 1024  # bytes; one XML file (a page's content)
MAX_DEPTH: Final = 100  # nested XML elements; OFD nests page blocks, not much else
# A dense page holds thousands of text objects; an element costs a few hundred bytes of memory,
# so 8 MiB of ``<a/>`` (two million elements) would cost hundreds of megabytes.
MAX_ELEMENTS: Final = 100_000  # elements in one XML file (10 000 references take 30 000)
_CHUNK: Final = 64 * 1024  # bytes decompressed per read
_ZIP_MAGIC: Final = b"PK\x03\x04"
_METHODS: Final = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_ZIP_ERRORS: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    RuntimeError,  # zipfile's "password required" for an encrypted entry
    NotImplementedError,  # an unknown compression method
    UnicodeDecodeError,
)


class OfdRefused(SignerError):
    """An OFD package, or something in it, that is refused; the message says what and why."""


@dataclass(frozen=True, slots=True)
class OfdPackage:
    """The files of an OFD package, by name from the package root (no leading ``/``)."""

    files: Mapping[str, bytes]
    # SM3 of each file, computed once: references may name one large file many times.
    _digests: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def __contains__(self, name: object) -> bool:
        return name in self.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def read(self, name: str) -> bytes:
        try:
            return self.files[name]
        except KeyError:
            raise OfdRefused(f"/{name} is referred to but is not in the package") from None

    def sm3(self, name: str) -> bytes:
        if name not in self._digests:
            self._digests[name] = sm3(self.read(name))
        return self._digests[name]

    def xml(self, name: str) -> Element:
        return parse_xml(self.read(name), f"/{name}")


def sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def read_package(data: bytes) -> OfdPackage:
    """Every file of the zip `data`, checked and read under the limits; else `OfdRefused`."""
    if len(data) > MAX_PACKAGE_BYTES:
        raise OfdRefused(f"the OFD file is larger than {MAX_PACKAGE_BYTES} bytes")
    if not data.startswith(_ZIP_MAGIC):
        raise OfdRefused("not an OFD file: it is not a zip archive")
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ENTRIES:
                raise OfdRefused(f"the zip has more than {MAX_ENTRIES} entries")
            _check_names(infos)
            return OfdPackage(MappingProxyType(_read_entries(archive, infos)))
    except _ZIP_ERRORS as exc:
        raise OfdRefused(f"the zip archive is damaged or unreadable ({_plain(exc)})") from exc


def _plain(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def _check_names(infos: list[zipfile.ZipInfo]) -> None:
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        _check_entry_name(name)
        folded = name.casefold()
        if folded in seen:
            raise OfdRefused(f"the zip holds {name!r} twice (names compared case-insensitively)")
        seen.add(folded)
        if info.flag_bits & 0x1:
            raise OfdRefused(f"the zip entry {name!r} is encrypted")
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            raise OfdRefused(f"the zip entry {name!r} is a symbolic link")
        if info.compress_type not in _METHODS:
            raise OfdRefused(f"the zip entry {name!r} uses a compression other than deflate")


def _check_entry_name(name: str) -> None:
    if not name or len(name) > 1024:
        raise OfdRefused("the zip has an entry with an empty or overlong name")
    if name.startswith("/") or "\\" in name or ":" in name:
        raise OfdRefused(f"the zip entry {name!r} has an absolute or non-portable path")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise OfdRefused(f"the zip entry {name!r} has a control character in its name")
    segments = name.removesuffix("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise OfdRefused(f"the zip entry {name!r} has an empty, '.' or '..' path segment")


def _read_entries(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for info in infos:
        content = _read_entry(archive, info, MAX_TOTAL_BYTES - total)
        total += len(content)
        if info.filename.endswith("/"):
            if content:
                raise OfdRefused(f"the zip folder entry {info.filename!r} holds data")
            continue
        files[info.filename] = content
    return files


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, room: int) -> bytes:
    """The entry's bytes, counted as they are decompressed (declared sizes are not trusted)."""
    chunks: list[bytes] = []
    size = 0
    with archive.open(info) as stream:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > MAX_ENTRY_BYTES:
                raise OfdRefused(
                    f"the zip entry {info.filename!r} is larger than {MAX_ENTRY_BYTES} bytes"
                )
            if size > room:
                raise OfdRefused(f"the zip's files come to more than {MAX_TOTAL_BYTES} bytes")
            if size > RATIO_FLOOR and size > MAX_RATIO * max(info.compress_size, 1):
                raise OfdRefused(
                    f"the zip entry {info.filename!r} expands more than {MAX_RATIO} times"
                    " (a zip bomb)"
                )
            chunks.append(chunk)
    return b"".join(chunks)


def parse_xml(data: bytes, what: str) -> Element:
    """The root element of the XML `data` (named `what` in refusals), parsed defensively.

    DTDs are refused whatever they declare: OFD never needs one, and refusing them refuses
    entity expansion (billion laughs, quadratic blowup) and external entities (XXE) with them.
    Depth and element count are checked while parsing, so a deep or wide document is refused
    before its tree is built.
    """
    if len(data) > MAX_XML_BYTES:
        raise OfdRefused(f"{what} is larger than {MAX_XML_BYTES} bytes of XML")
    depth = elements = 0
    root: Element | None = None
    try:
        for event, element in _defused_iterparse(
            BytesIO(data),
            events=("start", "end"),
            forbid_dtd=True,
            forbid_entities=True,
            forbid_external=True,
        ):
            if event == "end":
                depth -= 1
                root = element
                continue
            depth += 1
            elements += 1
            if depth > MAX_DEPTH:
                raise OfdRefused(f"{what} nests elements deeper than {MAX_DEPTH}")
            if elements > MAX_ELEMENTS:
                raise OfdRefused(f"{what} has more than {MAX_ELEMENTS} elements")
    except DefusedXmlException as exc:
        raise OfdRefused(f"{what} declares a DTD or entities, which are refused") from exc
    except LookupError as exc:  # expat asks the codecs for the declared encoding
        raise OfdRefused(f"{what} declares an unknown encoding ({_plain(exc)})") from exc
    except (ParseError, ValueError) as exc:
        raise OfdRefused(f"{what} is not well-formed XML ({_plain(exc)})") from exc
    if root is None:
        raise OfdRefused(f"{what} is not well-formed XML (no element)")
    return root


def resolve_loc(referrer: str, loc: str | None, what: str) -> str:
    """The package name `loc` (an `ST_Loc` found in the file `referrer`) designates.

    GB/T 33190 §7.1: a location beginning with ``/`` is from the package root, any other from
    the folder of the file that holds it. ``.`` and ``..`` are followed; climbing above the root
    is refused, as are backslashes, schemes and empty locations.
    """
    text = (loc or "").strip()
    if not text:
        raise OfdRefused(f"{what} is empty")
    if "\\" in text or ":" in text or any(ord(char) < 0x20 for char in text):
        raise OfdRefused(f"{what} {text!r} is not a location inside the package")
    if text.startswith("/"):
        base: list[str] = []
    else:
        base = referrer.split("/")[:-1]
    parts = list(base)
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise OfdRefused(f"{what} {text!r} points outside the package")
            parts.pop()
            continue
        parts.append(segment)
    if not parts:
        raise OfdRefused(f"{what} {text!r} names no file")
    return "/".join(parts)
