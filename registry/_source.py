"""Loading the registry source: TOML files under one folder, validated as a whole.

The source is what people edit: regions, agencies, datasets, purposes and agreements. Keys and
certificates come from the PKI inventory (see `_inventory`). Loading reports every problem at
once, each with the file, the key and the reason, so a reviewer fixes a source in one pass.

Layout (any table may be in any `*.toml` file of the folder; each id may be defined once)::

    [registry]                         name, refresh_seconds, snapshot_lifetime_seconds
    [regions.<code>]                   name, endpoint
    [agencies.<id>]                    name, region, uscc, roles
    [datasets.<region>.<id>]           name, owner, share_class, cache_ttl_seconds, cache_scope,
                                       description, and [datasets.<region>.<id>.fields]
                                       <field> = { classification = ..., description = ... }
    [purposes.<id>]                    unified_code, name, legal_basis, and
                                       [purposes.<id>.datasets] <dataset> = [fields...]
    [agreements.<id>]                  provider_region, requester_agencies, requester_regions,
                                       purposes, valid_from, valid_until, quota_per_minute,
                                       description
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from registry._codes import MAX_REGISTRY_ID_CHARS, PROVINCES, is_registry_id, is_valid_uscc
from registry._model import (
    Agency,
    AgencyRole,
    Agreement,
    CacheScope,
    Dataset,
    DatasetField,
    FieldClassification,
    Purpose,
    PurposeDataset,
    Region,
    ShareClass,
)
from registry.errors import SourceError, SourceProblem

__all__ = ["DEMO_SOURCE", "RegistrySource", "load_source"]

MAX_SOURCE_FILE_BYTES = 4 * 1024 * 1024  # bytes; a registry source is hand-written text
_ID_GRAMMAR = (
    f"an id is 1-{MAX_REGISTRY_ID_CHARS} letters, digits, '.', '_' or '-', starting with a letter"
)
_ENDPOINT_RE = re.compile(r"^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):\d{1,5}$")

E = TypeVar("E", bound=StrEnum)


def _demo_source() -> Path:
    # Shipped inside the package (a link to conf/registry in a clone), so that the demo and the
    # commands' defaults work from any folder once installed; never relative to the cwd.
    # A folder on disk: pip installs Tongban as files (a zipped one would say "no registry
    # source here" with this path, like any missing source).
    return Path(str(importlib.resources.files("registry") / "demo-source"))


DEMO_SOURCE = _demo_source()  # the demo federation's registry source (conf/registry in a clone)


@dataclass(frozen=True)
class RegistrySource:
    """A validated registry source: everything but the keys."""

    name: str
    refresh_seconds: int
    snapshot_lifetime_seconds: int
    regions: tuple[Region, ...]
    agencies: tuple[Agency, ...]
    datasets: tuple[Dataset, ...]
    purposes: tuple[Purpose, ...]
    agreements: tuple[Agreement, ...]
    files: tuple[Path, ...] = field(default=())


class _Problems:
    def __init__(self) -> None:
        self.items: list[SourceProblem] = []

    def add(self, file: str, key: str, reason: str) -> None:
        self.items.append(SourceProblem(file, key, reason))


class _Table:
    """A TOML table being read: typed getters that record problems instead of raising."""

    def __init__(self, problems: _Problems, file: str, key: str, data: Any) -> None:
        self.problems = problems
        self.file = file
        self.key = key
        self.ok = isinstance(data, dict)
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.seen: set[str] = set()
        if not self.ok:
            self.fail(f"must be a table, not {_type_name(data)}")

    def fail(self, reason: str, sub: str | None = None) -> None:
        self.problems.add(self.file, f"{self.key}.{sub}" if sub else self.key, reason)

    def _get(self, name: str, required: bool) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                self.fail("missing required key", name)
            return None
        return self.data[name]

    def text(self, name: str, *, required: bool = True, default: str = "") -> str:
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, str) or (required and not value.strip()):
            self.fail(f"must be a non-empty string, not {_type_name(value)}", name)
            return default
        return value

    def integer(
        self, name: str, *, required: bool = True, default: int = 0, minimum: int = 0
    ) -> int:
        value = self._get(name, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"must be an integer, not {_type_name(value)}", name)
            return default
        if value < minimum:
            self.fail(f"must be at least {minimum}, not {value}", name)
            return default
        return value

    def texts(self, name: str, *, required: bool = True) -> tuple[str, ...]:
        value = self._get(name, required)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail("must be a list of strings", name)
            return ()
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            self.fail(f"lists {', '.join(map(repr, duplicates))} more than once", name)
        return tuple(value)

    def choice(self, name: str, enum: type[E], *, default: E | None = None) -> E | None:
        value = self._get(name, default is None)
        if value is None:
            return default
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in enum)
            self.fail(f"{value!r} is not one of {allowed}", name)
            return default

    def instant(self, name: str) -> datetime | None:
        value = self._get(name, True)
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            self.fail(
                "must be a TOML date-time with a UTC offset, e.g. 2026-01-01T00:00:00+08:00", name
            )
            return None
        return value.astimezone(UTC)

    def table(self, name: str, *, required: bool = True) -> _Table:
        value = self._get(name, required)
        return _Table(
            self.problems, self.file, f"{self.key}.{name}", {} if value is None else value
        )

    def entries(self) -> Iterator[tuple[str, Any]]:
        """Every key of this table, for tables keyed by id."""
        self.seen.update(self.data)
        yield from self.data.items()

    def finish(self) -> None:
        for unknown in sorted(set(self.data) - self.seen):
            self.fail("unknown key", unknown)


def _type_name(value: object) -> str:
    return {
        dict: "a table",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
    }.get(type(value), type(value).__name__)


_SECTIONS = ("registry", "regions", "agencies", "datasets", "purposes", "agreements")


def load_source(folder: Path) -> RegistrySource:
    """Load and validate every `*.toml` file in `folder`; raise `SourceError` with all problems."""
    problems = _Problems()
    folder_name = str(folder)
    files = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    if not files:
        problems.add(folder_name, "-", "no registry source here: expected a folder of *.toml files")
        raise SourceError(problems.items)

    # Merge the files section by section, remembering where each entry was defined.
    merged: dict[str, dict[str, tuple[str, Any]]] = {s: {} for s in _SECTIONS}
    for path in files:
        name = str(path)
        try:
            if path.stat().st_size > MAX_SOURCE_FILE_BYTES:
                problems.add(name, "-", f"larger than {MAX_SOURCE_FILE_BYTES} bytes")
                continue
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(name, "-", f"cannot be read: {exc.__class__.__name__}")
            continue
        except tomllib.TOMLDecodeError as exc:
            problems.add(name, "-", f"is not valid TOML: {exc}")
            continue
        for section, body in document.items():
            if section not in _SECTIONS:
                problems.add(
                    name, section, f"unknown section (expected one of {', '.join(_SECTIONS)})"
                )
                continue
            if not isinstance(body, dict):
                problems.add(name, section, "must be a table")
                continue
            if section == "registry":
                if merged["registry"]:
                    problems.add(name, section, "defined in more than one file")
                merged["registry"] = {"": (name, body)}
                continue
            items: list[tuple[str, Any]] = list(body.items())
            if section == "datasets":
                # Datasets are keyed by region, then id: merge at the dataset level.
                items = [
                    (f"{region}.{dataset_id}", (region, dataset_id, entry))
                    for region, by_id in items
                    for dataset_id, entry in (
                        by_id.items() if isinstance(by_id, dict) else [("", by_id)]
                    )
                ]
            for entry_id, entry in items:
                if entry_id in merged[section]:
                    first = merged[section][entry_id][0]
                    problems.add(
                        name, f"{section}.{entry_id}", f"duplicate id (first defined in {first})"
                    )
                    continue
                merged[section][entry_id] = (name, entry)

    meta_file, meta_body = merged["registry"].get("", (str(files[0]), None))
    if meta_body is None:
        problems.add(meta_file, "registry", "missing required section")
        meta_body = {}
    meta = _Table(problems, meta_file, "registry", meta_body)
    registry_name = meta.text("name")
    refresh = meta.integer("refresh_seconds", required=False, default=300, minimum=1)
    lifetime = meta.integer(
        "snapshot_lifetime_seconds", required=False, default=7 * 86400, minimum=60
    )
    meta.finish()

    regions = _read(merged["regions"], "regions", problems, _region)
    agencies = _read(merged["agencies"], "agencies", problems, _agency)
    datasets: list[Dataset] = []
    for key, (file, (region_code, dataset_id, body)) in merged["datasets"].items():
        item = _dataset(_Table(problems, file, f"datasets.{key}", body), region_code, dataset_id)
        if item is not None:
            datasets.append(item)
    purposes = _read(merged["purposes"], "purposes", problems, _purpose)
    agreements = _read(merged["agreements"], "agreements", problems, _agreement)

    source = RegistrySource(
        name=registry_name,
        refresh_seconds=refresh,
        snapshot_lifetime_seconds=lifetime,
        regions=tuple(sorted(regions, key=lambda r: r.code)),
        agencies=tuple(sorted(agencies, key=lambda a: a.id)),
        datasets=tuple(sorted(datasets, key=lambda d: (d.region, d.id))),
        purposes=tuple(sorted(purposes, key=lambda p: p.id)),
        agreements=tuple(sorted(agreements, key=lambda a: a.id)),
        files=tuple(files),
    )
    where = {s: {k: v[0] for k, v in merged[s].items()} for s in _SECTIONS}
    _check_references(source, where, problems)
    if problems.items:
        raise SourceError(problems.items)
    return source


T = TypeVar("T")


def _read(
    entries: dict[str, tuple[str, Any]],
    section: str,
    problems: _Problems,
    make: Callable[[_Table, str], T | None],
) -> list[T]:
    out: list[T] = []
    for entry_id, (file, body) in entries.items():
        table = _Table(problems, file, f"{section}.{entry_id}", body)
        if not table.ok:
            continue
        if section != "regions" and not is_registry_id(entry_id):
            table.fail(_ID_GRAMMAR)
        item = make(table, entry_id)
        table.finish()
        if item is not None:
            out.append(item)
    return out


def _region(t: _Table, code: str) -> Region | None:
    standard = PROVINCES.get(code)
    if standard is None:
        t.fail(f"{code!r} is not a GB/T 2260 province-level division code")
    name = t.text("name", required=False, default=standard or code)
    endpoint = t.text("endpoint")
    if endpoint and not _ENDPOINT_RE.match(endpoint):
        t.fail(f"{endpoint!r} is not host:port", "endpoint")
    return Region(code=code, name=name, endpoint=endpoint) if standard else None


def _agency(t: _Table, agency_id: str) -> Agency | None:
    name = t.text("name")
    region = t.text("region")
    uscc = t.text("uscc")
    if uscc and not is_valid_uscc(uscc):
        t.fail(f"{uscc!r} is not a valid unified social credit code (GB 32100 check)", "uscc")
    roles: set[AgencyRole] = set()
    for role in t.texts("roles"):
        try:
            roles.add(AgencyRole(role))
        except ValueError:
            allowed = ", ".join(repr(r.value) for r in AgencyRole)
            t.fail(f"{role!r} is not one of {allowed}", "roles")
    if not roles:
        t.fail("an agency needs at least one role", "roles")
    return Agency(id=agency_id, name=name, region=region, uscc=uscc, roles=frozenset(roles))


def _dataset(t: _Table, region: str, dataset_id: str) -> Dataset | None:
    if not t.ok:
        return None
    if not is_registry_id(dataset_id):
        t.fail(_ID_GRAMMAR)
    name = t.text("name")
    owner = t.text("owner")
    share = t.choice("share_class", ShareClass)
    ttl = t.integer("cache_ttl_seconds", required=False, default=0)
    scope = t.choice("cache_scope", CacheScope, default=CacheScope.PROVIDER)
    description = t.text("description", required=False)
    fields_table = t.table("fields")
    fields: list[DatasetField] = []
    for field_name, body in fields_table.entries():
        ft = _Table(t.problems, t.file, f"{fields_table.key}.{field_name}", body)
        if not ft.ok:
            continue
        if not is_registry_id(field_name):
            ft.fail(f"a field name follows the id grammar: {_ID_GRAMMAR}")
        classification = ft.choice("classification", FieldClassification)
        field_description = ft.text("description", required=False)
        ft.finish()
        if classification is not None:
            fields.append(DatasetField(field_name, classification, field_description))
    if fields_table.ok and not fields_table.data:
        fields_table.fail("a dataset needs at least one field")
    t.finish()
    if share is None or scope is None:
        return None
    return Dataset(
        id=dataset_id,
        region=region,
        name=name,
        owner=owner,
        share_class=share,
        cache_ttl_seconds=ttl,
        cache_scope=scope,
        fields=tuple(sorted(fields, key=lambda f: f.name)),
        description=description,
    )


def _purpose(t: _Table, purpose_id: str) -> Purpose | None:
    unified_code = t.text("unified_code")
    name = t.text("name")
    legal_basis = t.text("legal_basis")
    datasets_table = t.table("datasets")
    entries: list[PurposeDataset] = []
    for dataset_id, _ in datasets_table.entries():
        fields = datasets_table.texts(dataset_id)
        if not fields:
            datasets_table.fail("a purpose must allow at least one field", dataset_id)
        entries.append(PurposeDataset(dataset_id, tuple(sorted(fields))))
    if datasets_table.ok and not datasets_table.data:
        datasets_table.fail("a purpose needs at least one dataset")
    return Purpose(
        id=purpose_id,
        unified_code=unified_code,
        name=name,
        legal_basis=legal_basis,
        datasets=tuple(sorted(entries, key=lambda e: e.dataset)),
    )


def _agreement(t: _Table, agreement_id: str) -> Agreement | None:
    provider = t.text("provider_region")
    agencies = t.texts("requester_agencies", required=False)
    regions = t.texts("requester_regions", required=False)
    if not agencies and not regions:
        t.fail("an agreement must name requester_agencies or requester_regions")
    purposes = t.texts("purposes")
    if not purposes:
        t.fail("an agreement must name at least one purpose", "purposes")
    valid_from = t.instant("valid_from")
    valid_until = t.instant("valid_until")
    quota = t.integer("quota_per_minute", minimum=1)
    description = t.text("description", required=False)
    if valid_from and valid_until and valid_until <= valid_from:
        t.fail("must be later than valid_from", "valid_until")
    if valid_from is None or valid_until is None:
        return None
    return Agreement(
        id=agreement_id,
        provider_region=provider,
        requester_agencies=frozenset(agencies),
        requester_regions=frozenset(regions),
        purposes=tuple(sorted(purposes)),
        valid_from=valid_from,
        valid_until=valid_until,
        quota_per_minute=quota,
        description=description,
    )


def _check_references(
    source: RegistrySource, where: dict[str, dict[str, str]], problems: _Problems
) -> None:
    """Cross-entry rules: every id named must exist and fit."""
    regions = {r.code for r in source.regions}
    agencies = {a.id: a for a in source.agencies}
    by_catalogue: dict[str, list[Dataset]] = {}
    for d in source.datasets:
        by_catalogue.setdefault(d.id, []).append(d)

    def add(section: str, entry_id: str, sub: str, reason: str) -> None:
        file = where[section][entry_id]
        problems.add(file, f"{section}.{entry_id}.{sub}", reason)

    for a in source.agencies:
        if a.region and a.region not in regions:
            add("agencies", a.id, "region", f"unknown region {a.region!r}")
    for d in source.datasets:
        key = f"{d.region}.{d.id}"
        if d.region not in regions:
            add("datasets", key, "region", f"unknown region {d.region!r}")
        owner = agencies.get(d.owner)
        if owner is None:
            add("datasets", key, "owner", f"unknown agency {d.owner!r}")
        elif owner.region != d.region:
            add(
                "datasets",
                key,
                "owner",
                f"agency {d.owner!r} belongs to {owner.region}, not {d.region}",
            )
        elif AgencyRole.PROVIDER not in owner.roles:
            add("datasets", key, "owner", f"agency {d.owner!r} does not have the 'provider' role")
    for p in source.purposes:
        for entry in p.datasets:
            sub = f"datasets.{entry.dataset}"
            candidates = by_catalogue.get(entry.dataset)
            if not candidates:
                add("purposes", p.id, sub, f"unknown dataset {entry.dataset!r}")
                continue
            lacking: dict[tuple[str, ...], list[str]] = {}
            for d in candidates:
                missing = tuple(sorted(set(entry.fields) - d.field_names))
                if missing:
                    lacking.setdefault(missing, []).append(d.region)
            for missing, regions_lacking in lacking.items():
                add(
                    "purposes",
                    p.id,
                    sub,
                    f"fields not in dataset {entry.dataset} of {', '.join(sorted(regions_lacking))}: "
                    f"{', '.join(missing)}",
                )
    purposes = {p.id: p for p in source.purposes}
    for ag in source.agreements:
        if ag.provider_region not in regions:
            add("agreements", ag.id, "provider_region", f"unknown region {ag.provider_region!r}")
        for r in sorted(ag.requester_regions):
            if r not in regions:
                add("agreements", ag.id, "requester_regions", f"unknown region {r!r}")
            elif r == ag.provider_region:
                add(
                    "agreements",
                    ag.id,
                    "requester_regions",
                    "a region does not need an agreement with itself",
                )
        for agency_id in sorted(ag.requester_agencies):
            requester = agencies.get(agency_id)
            if requester is None:
                add("agreements", ag.id, "requester_agencies", f"unknown agency {agency_id!r}")
            elif AgencyRole.REQUESTER not in requester.roles:
                add(
                    "agreements",
                    ag.id,
                    "requester_agencies",
                    f"agency {agency_id!r} lacks the 'requester' role",
                )
        for purpose_id in ag.purposes:
            purpose = purposes.get(purpose_id)
            if purpose is None:
                add("agreements", ag.id, "purposes", f"unknown purpose {purpose_id!r}")
                continue
            if not any(
                d.region == ag.provider_region
                for e in purpose.datasets
                for d in by_catalogue.get(e.dataset, [])
            ):
                add(
                    "agreements",
                    ag.id,
                    "purposes",
                    f"purpose {purpose_id!r} uses no dataset that {ag.provider_region} provides",
                )
