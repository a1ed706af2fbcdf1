"""docs/audit.md's "Leaf encoding" section says what the code does: its worked example hashes to
the leaf it shows, decodes as a record and encodes back to the same bytes, and its member table
lists the canonical form's members in order."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import rfc8785

from gateway.audit import AuditRecord, leaf_hash

DOC = Path(__file__).resolve().parents[3] / "docs" / "audit.md"


def _section() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text[text.index("## Leaf encoding") : text.index("## Oversight records")]


def test_the_worked_example_is_what_the_code_encodes_and_hashes() -> None:
    section = _section()
    (example,) = re.findall(r"^\{\"agreement_id\".*\}$", section, flags=re.MULTILINE)
    (shown,) = re.findall(r"^    ([0-9a-f]{64})$", section, flags=re.MULTILINE)
    canonical = example.encode("utf-8")
    assert f"These are {len(canonical)} bytes" in section
    assert hashlib.sha256(b"\x00" + canonical).hexdigest() == shown
    record = AuditRecord.from_canonical(canonical)  # refuses bytes not in canonical form
    assert record.canonical == canonical
    assert leaf_hash(record.canonical).hex() == shown
    assert rfc8785.dumps(json.loads(example)) == canonical  # RFC 8785, as the section says


def test_the_member_table_lists_every_member_in_order() -> None:
    members = re.findall(r"^\| `([a-z_]+)` \| (?:string|integer|`true`|array)", _section(), re.M)
    (example,) = re.findall(r"^\{\"agreement_id\".*\}$", _section(), flags=re.MULTILINE)
    assert members == list(json.loads(example))
    assert len(members) == 22
