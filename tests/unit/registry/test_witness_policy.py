"""The witnessing policy in the registry: `witness_threshold` read from the source's [registry]
table (default 1), carried in the signed payload, and 0 for snapshots published before it."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry import Registry, SourceError, load_source
from registry._snapshot import registry_from_payload, registry_to_payload
from registry._source import DEMO_SOURCE


def _source(tmp_path: Path, line: str | None) -> Path:
    folder = tmp_path / "source"
    shutil.copytree(DEMO_SOURCE, folder)
    regions = folder / "regions.toml"
    text = regions.read_text(encoding="utf-8")
    kept = [x for x in text.splitlines() if not x.startswith("witness_threshold")]
    if line is not None:
        kept.insert(kept.index("[registry]") + 1, line)
    regions.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("line", "expected"), [(None, 1), ("witness_threshold = 0", 0), ("witness_threshold = 2", 2)]
)
def test_the_threshold_comes_from_the_registry_table(
    tmp_path: Path, line: str | None, expected: int
) -> None:
    assert load_source(_source(tmp_path, line)).witness_threshold == expected


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("witness_threshold = 3", "3 cosignatures cannot come from the 2 other regions"),
        ("witness_threshold = -1", "registry.witness_threshold"),
    ],
)
def test_an_impossible_threshold_is_refused(tmp_path: Path, line: str, problem: str) -> None:
    with pytest.raises(SourceError, match=problem):
        load_source(_source(tmp_path, line))


def test_the_payload_carries_the_threshold_and_older_payloads_mean_none() -> None:
    registry = Registry(
        name="t",
        version=3,
        issued_at=datetime(2026, 12, 1, tzinfo=UTC),
        expires_at=datetime(2026, 12, 8, tzinfo=UTC),
        refresh_seconds=300,
        witness_threshold=2,
    )
    payload = registry_to_payload(registry)
    assert payload["witness_threshold"] == 2
    assert registry_from_payload(payload).witness_threshold == 2
    del payload["witness_threshold"]
    assert registry_from_payload(payload).witness_threshold == 0
