"""Loading the registry source: the demo source is valid; every kind of mistake is reported
with its file, key and reason, and all of them at once."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import DEMO_SOURCE

from registry import AgencyRole, CacheScope, ShareClass, SourceError, load_source


def test_demo_source_is_valid_and_complete() -> None:
    source = load_source(DEMO_SOURCE)
    assert {r.code for r in source.regions} == {"330000", "510000", "500000"}
    assert len({d.id for d in source.datasets}) >= 4
    assert len(source.purposes) >= 5
    assert len(source.agreements) >= 3
    assert {p.id for p in source.purposes} >= {
        "SI-TRANSFER",
        "MED-REG",
        "HUKOU-TRANSFER",
        "LICENCE-VERIFY",
        "MARRIAGE-CHECK",
    }
    shares = {d.share_class for d in source.datasets}
    assert shares == set(ShareClass)
    assert CacheScope.REQUESTER in {d.cache_scope for d in source.datasets}
    data_bureau = next(a for a in source.agencies if a.id == "zj.data")
    assert data_bureau.roles == {AgencyRole.OVERSIGHT, AgencyRole.SECURITY}
    purpose = next(p for p in source.purposes if p.id == "SI-TRANSFER")
    allowed = purpose.allowed_fields("si.participation")
    assert allowed is not None
    assert "citizen_id" in allowed
    assert "bank_account" not in allowed
    assert purpose.allowed_fields("civil.marriage") is None


@dataclass(frozen=True)
class Mistake:
    file: str  # file changed, relative to the source folder
    old: str | None  # text replaced (None: `new` is appended)
    new: str
    key: str  # expected key of the problem
    reason: str  # expected part of the reason
    where: str | None = None  # expected file of the problem when it is another file


MISTAKES = {
    "unknown key": Mistake(
        "agreements.toml",
        None,
        '\n[agreements.X-1]\nprovider_region = "330000"\nrequester_regions = ["510000"]\npurposes = ["SI-TRANSFER"]\nvalid_from = 2026-01-01T00:00:00Z\nvalid_until = 2027-01-01T00:00:00Z\nquota_per_minute = 5\nquota_per_hour = 9\n',
        "agreements.X-1.quota_per_hour",
        "unknown key",
    ),
    "missing field": Mistake(
        "regions.toml",
        'endpoint = "localhost:7330"\n',
        "",
        "regions.330000.endpoint",
        "missing required key",
    ),
    "unknown region in an agreement": Mistake(
        "agreements.toml",
        'requester_regions = ["510000"]\npurposes = ["SI-TRANSFER", "MED-REG"]',
        'requester_regions = ["990000"]\npurposes = ["SI-TRANSFER", "MED-REG"]',
        "agreements.CY-SI-2026.requester_regions",
        "unknown region '990000'",
    ),
    "unknown provider region": Mistake(
        "agreements.toml",
        'provider_region = "330000"\nrequester_agencies = ["cq.psb"]',
        'provider_region = "320000"\nrequester_agencies = ["cq.psb"]',
        "agreements.ZJ-HUKOU-CQ-2026.provider_region",
        "unknown region '320000'",
    ),
    "duplicate id across files": Mistake(
        "extra.toml",
        None,
        '[regions.330000]\nendpoint = "localhost:1"\n',
        "regions.330000",
        "duplicate id (first defined in",
        where="regions.toml",
    ),
    "duplicate dataset across files": Mistake(
        "extra.toml",
        None,
        '[datasets."330000"."si.participation"]\nname = "x"\nowner = "zj.hrss"\nshare_class = "无条件共享"\n[datasets."330000"."si.participation".fields]\nname = { classification = "personal" }\n',
        "datasets.330000.si.participation",
        "duplicate id",
    ),
    "fields not in the dataset": Mistake(
        "purposes.toml",
        '"si.participation" = ["name", ',
        '"si.participation" = ["salary", "name", ',
        "purposes.SI-TRANSFER.datasets.si.participation",
        "fields not in dataset si.participation of 330000, 500000, 510000: salary",
    ),
    "unknown dataset in a purpose": Mistake(
        "purposes.toml",
        '"hukou.household" = [',
        '"hukou.households" = [',
        "purposes.HUKOU-TRANSFER.datasets.hukou.households",
        "unknown dataset 'hukou.households'",
    ),
    "unknown purpose in an agreement": Mistake(
        "agreements.toml",
        'purposes = ["HUKOU-TRANSFER"]',
        'purposes = ["HUKOU-MOVE"]',
        "agreements.ZJ-HUKOU-CQ-2026.purposes",
        "unknown purpose 'HUKOU-MOVE'",
    ),
    "unknown agency in an agreement": Mistake(
        "agreements.toml",
        'requester_agencies = ["cq.psb"]',
        'requester_agencies = ["cq.police"]',
        "agreements.ZJ-HUKOU-CQ-2026.requester_agencies",
        "unknown agency 'cq.police'",
    ),
    "requester without the requester role": Mistake(
        "agreements.toml",
        'requester_agencies = ["cq.psb"]',
        'requester_agencies = ["cq.data"]',
        "agreements.ZJ-HUKOU-CQ-2026.requester_agencies",
        "lacks the 'requester' role",
    ),
    "not a province code": Mistake(
        "regions.toml",
        "[regions.330000]",
        "[regions.330100]",
        "regions.330100",
        "not a GB/T 2260 province-level division code",
    ),
    "invalid credit code": Mistake(
        "agencies.toml",
        'uscc = "1133000082459151X5"',
        'uscc = "1133000082459151X6"',
        "agencies.zj.hrss.uscc",
        "GB 32100 check",
    ),
    "unknown role": Mistake(
        "agencies.toml",
        'roles = ["oversight", "security"]',
        'roles = ["oversight", "auditor"]',
        "agencies.zj.data.roles",
        "'auditor' is not one of",
    ),
    "unknown share class": Mistake(
        "datasets.toml",
        'share_class = "不予共享"',
        'share_class = "保密"',
        "datasets.500000.police.case_records.share_class",
        "'保密' is not one of",
    ),
    "unknown field classification": Mistake(
        "datasets.toml",
        'records = { classification = "sensitive_personal"',
        'records = { classification = "secret"',
        "datasets.500000.police.case_records.fields.records.classification",
        "'secret' is not one of",
    ),
    "dataset owner in another region": Mistake(
        "datasets.toml",
        'owner = "cq.psb"\nshare_class = "不予共享"',
        'owner = "zj.psb"\nshare_class = "不予共享"',
        "datasets.500000.police.case_records.owner",
        "belongs to 330000, not 500000",
    ),
    "validity window backwards": Mistake(
        "agreements.toml",
        "valid_until = 2029-01-01T00:00:00+08:00\nquota_per_minute = 60\n\n[agreements.LICENCE-ZJ-2026]",
        "valid_until = 2025-01-01T00:00:00+08:00\nquota_per_minute = 60\n\n[agreements.LICENCE-ZJ-2026]",
        "agreements.ZJ-HUKOU-CQ-2026.valid_until",
        "must be later than valid_from",
    ),
    "time without offset": Mistake(
        "agreements.toml",
        "valid_from = 2026-01-01T00:00:00+08:00\nvalid_until = 2029-01-01T00:00:00+08:00\nquota_per_minute = 60\n\n[agreements.LICENCE-ZJ-2026]",
        "valid_from = 2026-01-01T00:00:00\nvalid_until = 2029-01-01T00:00:00+08:00\nquota_per_minute = 60\n\n[agreements.LICENCE-ZJ-2026]",
        "agreements.ZJ-HUKOU-CQ-2026.valid_from",
        "with a UTC offset",
    ),
    "wrong type": Mistake(
        "agreements.toml",
        "quota_per_minute = 60\n\n[agreements.LICENCE-ZJ-2026]",
        'quota_per_minute = "60"\n\n[agreements.LICENCE-ZJ-2026]',
        "agreements.ZJ-HUKOU-CQ-2026.quota_per_minute",
        "must be an integer, not a string",
    ),
    "zero quota": Mistake(
        "agreements.toml",
        "quota_per_minute = 60\n\n[agreements.LICENCE-ZJ-2026]",
        "quota_per_minute = 0\n\n[agreements.LICENCE-ZJ-2026]",
        "agreements.ZJ-HUKOU-CQ-2026.quota_per_minute",
        "at least 1",
    ),
    "unknown section": Mistake(
        "extra.toml", None, "[agreement.X]\nid = 1\n", "agreement", "unknown section"
    ),
    "invalid TOML": Mistake("extra.toml", None, "[regions\n", "-", "is not valid TOML"),
    "bad endpoint": Mistake(
        "regions.toml",
        'endpoint = "localhost:7330"',
        'endpoint = "localhost"',
        "regions.330000.endpoint",
        "is not host:port",
    ),
    "purpose with no dataset": Mistake(
        "purposes.toml",
        '[purposes.MED-REG.datasets]\n"medical.insurance" = ["name", "citizen_id", "insurance_type", "insured_region", "status", "filing_status"]',
        "[purposes.MED-REG.datasets]",
        "purposes.MED-REG.datasets",
        "at least one dataset",
    ),
    # T16: ids start with a letter, so no number (a citizen id, a credit code) is ever an id
    "a purpose id that is a citizen id": Mistake(
        "extra.toml",
        None,
        '[purposes.11010519491231002X]\nunified_code = "000125002000"\nname = "x"\n'
        'legal_basis = "x"\n',
        "purposes.11010519491231002X",
        "starting with a letter",
    ),
    "a field name outside the id grammar": Mistake(
        "datasets.toml",
        'marital_status = { classification = "sensitive_personal", description = "婚姻状况" }',
        '"1marital status" = { classification = "sensitive_personal", description = "婚姻状况" }',
        "datasets.330000.civil.marriage.fields.1marital status",
        "a field name follows the id grammar",
    ),
}


def _copy_source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    shutil.copytree(DEMO_SOURCE, folder)
    return folder


def _apply(folder: Path, mistake: Mistake) -> None:
    path = folder / mistake.file
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if mistake.old is None:
        text += mistake.new
    else:
        assert mistake.old in text, f"test data drifted: {mistake.old!r} not in {mistake.file}"
        text = text.replace(mistake.old, mistake.new, 1)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_is_reported_with_file_key_and_reason(tmp_path: Path, name: str) -> None:
    mistake = MISTAKES[name]
    folder = _copy_source(tmp_path)
    _apply(folder, mistake)
    with pytest.raises(SourceError) as caught:
        load_source(folder)
    expected_file = str(folder / (mistake.where or mistake.file))
    matching = [
        p for p in caught.value.problems if p.key == mistake.key and mistake.reason in p.reason
    ]
    assert matching, f"no problem {mistake.key}: {mistake.reason} in\n{caught.value}"
    assert matching[0].file == expected_file
    # The message a person reads carries all three.
    assert f"{expected_file}: {mistake.key}: " in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    folder = _copy_source(tmp_path)
    for name in (
        "unknown key",
        "unknown region in an agreement",
        "fields not in the dataset",
        "invalid credit code",
    ):
        _apply(folder, MISTAKES[name])
    with pytest.raises(SourceError) as caught:
        load_source(folder)
    assert len(caught.value.problems) == 4
    assert str(caught.value).startswith("registry source has 4 problems:")


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no registry source here"):
        load_source(tmp_path)


def test_missing_registry_section(tmp_path: Path) -> None:
    folder = _copy_source(tmp_path)
    text = (folder / "regions.toml").read_text(encoding="utf-8")
    _, _, tail = text.partition("[regions.330000]")
    (folder / "regions.toml").write_text("[regions.330000]" + tail, encoding="utf-8")
    with pytest.raises(SourceError) as caught:
        load_source(folder)
    assert any(
        p.key == "registry" and p.reason == "missing required section"
        for p in caught.value.problems
    )
