"""E-licences (电子证照) as sealed OFD files, for the regions that seal with SM2.

Where the credential leaves the issuing region: the query path's answers are sealed JSON
records, which both gateways authorise, minimise, cache and audit; a credential fetch
(`Credentials.Fetch`, whose forwarded request names its `credential_type`) from a region that
seals with SM2 is answered by that region's gateway with the same record turned into a one-page
OFD e-licence, the record's fields as its lines, the JSON record itself inside the package
(`RECORD_FILE`), and the whole sealed with the region's seal (GB/T 38540 in OFD, GB/T 33190
§18). The requesting gateway checks the OFD's signatures and reads the record from the file the
signature protects, so minimisation is checked on exactly what was sealed. The licence is made
for each fetch from the record the owner holds (cached or not): the caches keep JSON records
only, so a query and a fetch never share a cache entry of another shape.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime
from typing import Final

from gateway.errors import GatewayError
from signer import ValidationReport, make_licence_ofd
from signer._ofd_package import OfdRefused, read_package

__all__ = [
    "LICENCE_CONTENT_TYPE",
    "RECORD_FILE",
    "LicenceRefused",
    "licence_ofd",
    "licence_record",
]

LICENCE_CONTENT_TYPE: Final = "application/ofd"
RECORD_FILE: Final = "Doc_0/Attachs/record.json"  # the JSON record, protected by the seal
_TITLES: Final = {
    "business_licence": "营业执照（电子证照）",
    "marriage_certificate": "结婚证（电子证照）",
}
_MAX_LINES: Final = 40  # lines of a licence page (signer's make_licence_ofd)
_MAX_VALUE_CHARS: Final = 60  # characters of a value shown on the page (the record has all)
_UNPROTECTED: Final = "files no signature protects"  # the OFD verifier's check


class LicenceRefused(GatewayError):
    """An OFD e-licence that does not carry a sealed JSON record."""

    reason: Final = "SEAL_INVALID"


def licence_ofd(record: bytes, *, credential_type: str, issued: datetime, doc_id: str) -> bytes:
    """The unsealed OFD e-licence of a JSON `record` (a flat object, synthetic data only)."""
    document = json.loads(record)
    if not isinstance(document, dict):
        raise ValueError("a credential record is a JSON object")  # noqa: TRY004 (bad content, as json.loads says)
    lines = [(str(field), _shown(value)) for field, value in sorted(document.items())[:_MAX_LINES]]
    title = _TITLES.get(credential_type, f"{credential_type}（电子证照）")
    ofd = make_licence_ofd(title=title, lines=lines, issued=issued, doc_id=doc_id)
    return _with_file(ofd, RECORD_FILE, record)


def licence_record(ofd: bytes, report: ValidationReport) -> bytes:
    """The JSON record an e-licence carries, once `report` (the OFD verifier's, passed) shows a
    signature protects it; `LicenceRefused` otherwise."""
    if not report.passed:
        raise LicenceRefused(f"the e-licence's seals are not valid: {report.message}")
    unprotected = next((c.detail for c in report.checks if c.name == _UNPROTECTED), None)
    if unprotected is None or "/" + RECORD_FILE in unprotected.split(", "):
        raise LicenceRefused("no seal of the e-licence protects the record it carries")
    try:
        record = read_package(ofd).files.get(RECORD_FILE)
    except OfdRefused as exc:  # the verifier read it, so only a limit could refuse it now
        raise LicenceRefused(f"the e-licence cannot be read: {exc}") from exc
    if record is None:
        raise LicenceRefused("the e-licence carries no record")
    return record


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = "".join(c for c in text if c.isprintable())
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _with_file(ofd: bytes, name: str, data: bytes) -> bytes:
    """`ofd` (a zip just made here) with one more file."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(ofd)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr(name, data)
    return out.getvalue()
