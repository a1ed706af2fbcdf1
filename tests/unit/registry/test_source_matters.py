"""The matter catalogue in the registry source: the demo's loads; every kind of bad entry or
reference is reported with its file and key, all at once; the code grammar."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import DEMO_SOURCE

from registry import SourceError, load_source
from registry._model import MaterialKind, PartRole
from registry._source_matters import is_matter_code


def test_demo_catalogue_loads_with_parts_in_order() -> None:
    source = load_source(DEMO_SOURCE)
    names = {m.name for m in source.matters}
    assert names == {
        "异地就医登记备案",
        "养老保险关系转移接续",
        "户口迁移",
        "住房公积金异地转移接续",
        "营业执照异地办理",
    }
    assert [m.code for m in source.matters] == sorted(m.code for m in source.matters)
    pension = next(m for m in source.matters if m.name == "养老保险关系转移接续")
    # 多地联办: the order written is the order the parts complete in, never sorted.
    assert [(p.region, p.role) for p in pension.parts] == [
        ("510000", PartRole.RECEIVE),
        ("330000", PartRole.ASSIST),
        ("500000", PartRole.HANDLE),
    ]
    assert pension.handling_regions == {"330000", "500000"}
    assert pension.time_limit_days == 45
    proof = next(x for x in pension.materials if x.id == "contribution-proof")
    assert proof.kind is MaterialKind.DOCUMENT
    assert proof.required is False
    (query,) = pension.queries
    assert (query.dataset, query.purpose) == ("si.participation", "SI-TRANSFER")
    licence = next(m for m in source.matters if m.name == "营业执照异地办理")
    assert {x.credential_type for x in licence.materials} == {"", "id_card", "business_licence"}


_BAD = """
[matters."X.1"]
name = "坏事项"
time_limit_days = 0
parts = [
  { region = "990000", role = "handle" },
  { region = "510000", role = "approve" },
  { region = "500000", role = "handle" },
  { region = "500000", role = "assist" },
]
materials = [
  { id = "a", kind = "credential", description = "no type" },
  { id = "a", kind = "document", description = "twice" },
  { id = "b", kind = "document", credential_type = "id_card" },
  { id = "c", kind = "letter", description = "?" },
]
queries = [
  { dataset = "si.participation", purpose = "NO-SUCH", fields = ["name"] },
  { dataset = "civil.marriage", purpose = "SI-TRANSFER", fields = ["name"] },
  { dataset = "si.participation", purpose = "SI-TRANSFER", fields = ["name", "bank_account"] },
  { dataset = "no.such", purpose = "MED-REG", fields = ["name"] },
  { dataset = "si.participation", purpose = "SI-TRANSFER", fields = ["status"] },
]
deadline = 3

[matters."-bad"]
name = "坏编码"
time_limit_days = 400
parts = [{ region = "510000", role = "receive" }]
"""

_EXPECTED = {
    ("matters.X.1.time_limit_days", "must be at least 1, not 0"),
    ("matters.X.1.parts[1].role", "'approve' is not one of 'receive', 'handle', 'assist'"),
    ("matters.X.1.materials[0].credential_type", "missing required key"),
    ("matters.X.1.materials[2].description", "missing required key"),
    ("matters.X.1.materials[2].credential_type", "only a 'credential' material names"),
    ("matters.X.1.materials[3].kind", "'letter' is not one of 'credential', 'document'"),
    ("matters.X.1.materials", "material id 'a' listed more than once"),
    ("matters.X.1.deadline", "unknown key"),
    ("matters.X.1.queries", "'si.participation' under purpose 'SI-TRANSFER' listed more than once"),
    ("matters.-bad", "a matter code is 1-64 letters, digits, '.' or '-'"),
    ("matters.-bad.time_limit_days", "must be at most 366, not 400"),
    ("matters.-bad.parts", "a matter needs a part with role 'handle'"),
    ("matters.X.1.parts", "unknown region '990000'"),
    ("matters.X.1.parts", "region 500000 has more than one part"),
    ("matters.X.1.queries.civil.marriage", "purpose 'SI-TRANSFER' does not allow dataset"),
    ("matters.X.1.queries.no.such", "unknown dataset 'no.such'"),
    ("matters.X.1.queries.no.such", "purpose 'MED-REG' does not allow dataset 'no.such'"),
    ("matters.X.1.queries.si.participation", "unknown purpose 'NO-SUCH'"),
    ("matters.X.1.queries.si.participation", "does not allow fields: bank_account"),
}


def test_every_bad_matter_entry_and_reference_is_reported_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "source"
    shutil.copytree(DEMO_SOURCE, folder)
    (folder / "matters.toml").write_text(_BAD, encoding="utf-8")
    with pytest.raises(SourceError) as caught:
        load_source(folder)
    found = caught.value.problems
    assert {p.file for p in found} == {str(folder / "matters.toml")}
    missing = [e for e in _EXPECTED if not any(p.key == e[0] and e[1] in p.reason for p in found)]
    assert not missing, f"not reported: {missing}\nin:\n{caught.value}"
    assert len(found) == len(_EXPECTED), str(caught.value)


def test_a_dataset_missing_in_a_handling_region_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "source"
    shutil.copytree(DEMO_SOURCE, folder)
    datasets = folder / "datasets.toml"
    text = datasets.read_text(encoding="utf-8")
    # Chongqing (handling region of 营业执照异地办理) stops publishing the licence dataset.
    start = text.index('[datasets."500000"."market.business_licence"]')
    end = text.index('[datasets."500000"."civil.marriage"]', start)
    datasets.write_text(text[:start] + text[end:], encoding="utf-8")
    with pytest.raises(SourceError) as caught:
        load_source(folder)
    # (an agreement using the dataset there is refused too; that is its own rule)
    assert [(p.key, p.reason) for p in caught.value.problems if p.key.startswith("matters.")] == [
        (
            "matters.000108002100.queries.market.business_licence",
            "dataset 'market.business_licence' is not published by handling region 500000",
        )
    ]


def test_matters_are_read_from_any_file_and_defined_once(tmp_path: Path) -> None:
    folder = tmp_path / "source"
    shutil.copytree(DEMO_SOURCE, folder)
    text = (folder / "matters.toml").read_text(encoding="utf-8")
    block = text[text.index('[matters."000127001100"]') :].split("\n\n")[0]
    (folder / "more.toml").write_text(block + "\n", encoding="utf-8")
    (folder / "empty.toml").write_text(
        '[matters.E1]\nname = "无环节"\ntime_limit_days = 1\nparts = []\n', encoding="utf-8"
    )
    with pytest.raises(SourceError) as caught:
        load_source(folder)
    assert [(p.file, p.key, p.reason) for p in caught.value.problems] == [
        (
            str(folder / "more.toml"),
            "matters.000127001100",
            f"duplicate id (first defined in {folder / 'matters.toml'})",
        ),
        (str(folder / "empty.toml"), "matters.E1.parts", "a matter needs at least one part"),
    ]


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("000112003100", True),
        ("11500000MB1564209X-00011200310", True),
        ("a", True),
        ("9.9-9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        (".1", False),
        ("-1", False),
        ("事项1", False),
        ("A_1", False),
        ("A 1", False),
        ("１２", False),
    ],
)
def test_matter_code_grammar(code: str, ok: bool) -> None:
    assert is_matter_code(code) is ok
