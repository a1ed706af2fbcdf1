"""Helpers shared by the tests (importable as `support`; pytest puts tests/ on the path)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from registry import (
    AUTHORITY_KEY,
    CURRENT_SNAPSHOT,
    Inventory,
    KeyState,
    KeyUsage,
    PublishResult,
    load_source,
    publish,
)
from registry._pki import AgencySpec, RegionSpec, init_dev_pki

REPO = Path(__file__).resolve().parents[1]
DEMO_SOURCE = REPO / "conf" / "registry"
SHARED = REPO.parent / "shared"
DEMO_REGIONS = ("330000", "510000", "500000")


@dataclass
class Federation:
    """A dev PKI for the demo regions, its inventory, and a publish folder."""

    root: Path
    source: Path
    pki: Path
    published: Path

    @property
    def current(self) -> Path:
        return self.published / CURRENT_SNAPSHOT

    @property
    def authority_key(self) -> Path:
        return self.pki / AUTHORITY_KEY

    def publish(
        self, *, now: datetime | None = None, lifetime_seconds: int | None = None
    ) -> PublishResult:
        return publish(
            self.source,
            self.pki,
            self.published,
            now=now or datetime.now(UTC),
            lifetime_seconds=lifetime_seconds,
        )

    def inventory(self) -> Inventory:
        return Inventory.load(self.pki)

    def active(self, owner: str, usage: KeyUsage) -> str:
        """The kid of the owner's active key for `usage`."""
        (record,) = self.inventory().find(owner, usage, KeyState.ACTIVE)
        return record.kid

    def tls_files(self, owner: str) -> tuple[Path, Path]:
        """(certificate chain, private key) of the owner's active TLS key."""
        (record,) = self.inventory().find(owner, KeyUsage.TLS, KeyState.ACTIVE)
        return self.pki / record.certificate, self.pki / record.private_key


def make_federation(
    root: Path, source: Path = DEMO_SOURCE, now: datetime | None = None
) -> Federation:
    loaded = load_source(source)
    regions = [RegionSpec(r.code, r.name) for r in loaded.regions]
    agencies = [AgencySpec(a.id, a.name, a.region, a.uscc) for a in loaded.agencies]
    when = now or datetime.now(UTC)
    dev = init_dev_pki(root / "pki", regions, agencies, now=when)
    Inventory.for_new_pki(dev, when).save()
    return Federation(root=root, source=source, pki=root / "pki", published=root / "published")


def without_agency(fed: Federation, folder: Path, agency_id: str) -> Federation:
    """The same PKI and publish folder, publishing from a copy of the source without one agency
    (whose certificates the PKI still holds: a party the registry no longer knows)."""
    folder.mkdir(parents=True)
    for file in fed.source.glob("*.toml"):
        (folder / file.name).write_bytes(file.read_bytes())
    agencies = folder / "agencies.toml"
    text = agencies.read_text(encoding="utf-8")
    pattern = rf'\[agencies\."{re.escape(agency_id)}"\]\n(?:[^\[\n].*\n|\n)*'
    trimmed = re.sub(pattern, "", text)
    if trimmed == text:
        raise ValueError(f"agency {agency_id} is not in {agencies}")
    agencies.write_text(trimmed, encoding="utf-8")
    return dataclasses.replace(fed, source=folder)


async def eventually(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Wait until `predicate()` is true, polling; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
