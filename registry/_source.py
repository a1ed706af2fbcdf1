"""Loading the registry source: TOML files under one folder, validated as a whole.

The source is what people edit: regions, agencies, datasets, purposes, agreements and matters.
Keys and certificates come from the PKI inventory (see `_inventory`). Loading reports every
problem at once, each with the file, the key and the reason, so a reviewer fixes a source in one
pass.

Layout (any table may be in any `*.toml` file of the folder; each id may be defined once)::

    [registry]                         name, refresh_seconds, snapshot_lifetime_seconds,
                                       witness_threshold
    [regions.<code>]                   name, endpoint
    [agencies.<id>]                    name, region, uscc, roles
    [datasets.<region>.<id>]           name, owner, share_class, cache_ttl_seconds, cache_scope,
                                       description, requires_consent (default false), and
                                       [datasets.<region>.<id>.fields]
                                       <field> = { classification = ..., description = ... }
    [purposes.<id>]                    unified_code, name, legal_basis, and
                                       [purposes.<id>.datasets] <dataset> = [fields...]
    [agreements.<id>]                  provider_region, requester_agencies, requester_regions,
                                       purposes, valid_from, valid_until, quota_per_minute,
                                       description
    [matters."<code>"]                 name, category, time_limit_days, parts, materials,
                                       queries (see `_source_matters`)
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
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
    Matter,
    Purpose,
    PurposeDataset,
    Region,
    ShareClass,
)
from registry._source_matters import check_matter, read_matter
from registry._source_table import Problems, Table
from registry.errors import SourceError

__all__ = ["DEMO_SOURCE", "RegistrySource", "load_source"]

MAX_SOURCE_FILE_BYTES = 4 * 1024 * 1024  # bytes; a registry source is hand-written text
_ID_GRAMMAR = (
    f"an id is 1-{MAX_REGISTRY_ID_CHARS} letters, digits, '.', '_' or '-', starting with a letter"
)
_ENDPOINT_RE = re.compile(r"(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")


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
    witness_threshold: int = 1
    matters: tuple[Matter, ...] = ()


_SECTIONS = ("registry", "regions", "agencies", "datasets", "purposes", "agreements", "matters")


_Merged = dict[str, dict[str, tuple[str, Any]]]  # section -> entry id -> (file, body)


def load_source(folder: Path) -> RegistrySource:
    """Load and validate every `*.toml` file in `folder`; raise `SourceError` with all problems.

    (1) the folder's `*.toml` files; with none, that is the one problem reported
    (2) the files merged section by section, each entry with the file that defines it
    (3) the [registry] table
    (4) each region, agency, dataset, purpose, agreement and matter on its own
    (5) the references between them (`_check_references`)

    Every problem is collected, in that order, and reported at once."""
    problems = Problems()
    files = sorted(folder.glob("*.toml")) if folder.is_dir() else []  # (1)
    if not files:
        problems.add(str(folder), "-", "no registry source here: expected a folder of *.toml files")
        raise SourceError(problems.items)
    merged = _merge(files, problems)  # (2)
    registry_name, refresh, lifetime, threshold = _read_registry_table(merged, files, problems)
    regions = _read(merged["regions"], "regions", problems, _region)  # (4)
    agencies = _read(merged["agencies"], "agencies", problems, _agency)
    datasets = _read_datasets(merged["datasets"], problems)
    purposes = _read(merged["purposes"], "purposes", problems, _purpose)
    agreements = _read(merged["agreements"], "agreements", problems, _agreement)
    matters = _read(merged["matters"], "matters", problems, read_matter)
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
        witness_threshold=threshold,
        matters=tuple(sorted(matters, key=lambda m: m.code)),
    )
    if regions and threshold > len(regions) - 1:
        problems.add(
            str(files[0]),
            "registry.witness_threshold",
            f"{threshold} cosignatures cannot come from the {len(regions) - 1} other regions",
        )
    where = {s: {k: v[0] for k, v in merged[s].items()} for s in _SECTIONS}
    _check_references(source, where, problems)  # (5)
    if problems.items:
        raise SourceError(problems.items)
    return source


def _merge(files: list[Path], problems: Problems) -> _Merged:
    """Step (2) of `load_source`: the files merged section by section, remembering where each
    entry was defined."""
    merged: _Merged = {s: {} for s in _SECTIONS}
    for path in files:
        document = _read_file(path, problems)
        if document is None:
            continue
        for section, body in document.items():
            _merge_section(merged, str(path), section, body, problems)
    return merged


def _read_file(path: Path, problems: Problems) -> dict[str, Any] | None:
    """The TOML document of one source file, or None with the problem recorded."""
    name = str(path)
    try:
        if path.stat().st_size > MAX_SOURCE_FILE_BYTES:
            problems.add(name, "-", f"larger than {MAX_SOURCE_FILE_BYTES} bytes")
            return None
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(name, "-", f"cannot be read: {exc.__class__.__name__}")
    except tomllib.TOMLDecodeError as exc:
        problems.add(name, "-", f"is not valid TOML: {exc}")
    return None


def _merge_section(merged: _Merged, name: str, section: str, body: Any, problems: Problems) -> None:
    """One section of file `name` merged into `merged`; an id defined before is a problem."""
    if section not in _SECTIONS:
        problems.add(name, section, f"unknown section (expected one of {', '.join(_SECTIONS)})")
        return
    if not isinstance(body, dict):
        problems.add(name, section, "must be a table")
        return
    if section == "registry":
        if merged["registry"]:
            problems.add(name, section, "defined in more than one file")
        merged["registry"] = {"": (name, body)}
        return
    items: list[tuple[str, Any]] = list(body.items())
    if section == "datasets":
        # Datasets are keyed by region, then id: merge at the dataset level.
        items = [
            (f"{region}.{dataset_id}", (region, dataset_id, entry))
            for region, by_id in items
            for dataset_id, entry in (by_id.items() if isinstance(by_id, dict) else [("", by_id)])
        ]
    for entry_id, entry in items:
        if entry_id in merged[section]:
            first = merged[section][entry_id][0]
            problems.add(name, f"{section}.{entry_id}", f"duplicate id (first defined in {first})")
            continue
        merged[section][entry_id] = (name, entry)


def _read_registry_table(
    merged: _Merged, files: list[Path], problems: Problems
) -> tuple[str, int, int, int]:
    """Step (3) of `load_source`: the [registry] table's name, refresh_seconds,
    snapshot_lifetime_seconds and witness_threshold (default 1: one other region cosigns)."""
    meta_file, meta_body = merged["registry"].get("", (str(files[0]), None))
    if meta_body is None:
        problems.add(meta_file, "registry", "missing required section")
        meta_body = {}
    meta = Table(problems, meta_file, "registry", meta_body)
    registry_name = meta.text("name")
    refresh = meta.integer("refresh_seconds", required=False, default=300, minimum=1)
    lifetime = meta.integer(
        "snapshot_lifetime_seconds", required=False, default=7 * 86400, minimum=60
    )
    threshold = meta.integer("witness_threshold", required=False, default=1, minimum=0)
    meta.finish()
    return registry_name, refresh, lifetime, threshold


def _read_datasets(entries: dict[str, tuple[str, Any]], problems: Problems) -> list[Dataset]:
    """The datasets of step (4), keyed by region and id (`_dataset` checks the id)."""
    datasets: list[Dataset] = []
    for key, (file, (region_code, dataset_id, body)) in entries.items():
        item = _dataset(Table(problems, file, f"datasets.{key}", body), region_code, dataset_id)
        if item is not None:
            datasets.append(item)
    return datasets


T = TypeVar("T")


def _read(
    entries: dict[str, tuple[str, Any]],
    section: str,
    problems: Problems,
    make: Callable[[Table, str], T | None],
) -> list[T]:
    out: list[T] = []
    for entry_id, (file, body) in entries.items():
        table = Table(problems, file, f"{section}.{entry_id}", body)
        if not table.ok:
            continue
        if section not in ("regions", "matters") and not is_registry_id(entry_id):
            table.fail(_ID_GRAMMAR)
        item = make(table, entry_id)
        table.finish()
        if item is not None:
            out.append(item)
    return out


def _region(t: Table, code: str) -> Region | None:
    standard = PROVINCES.get(code)
    if standard is None:
        t.fail(f"{code!r} is not a GB/T 2260 province-level division code")
    name = t.text("name", required=False, default=standard or code)
    endpoint = t.text("endpoint")
    if endpoint and not _ENDPOINT_RE.fullmatch(endpoint):
        t.fail(f"{endpoint!r} is not host:port", "endpoint")
    return Region(code=code, name=name, endpoint=endpoint) if standard else None


def _agency(t: Table, agency_id: str) -> Agency | None:
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


def _dataset(t: Table, region: str, dataset_id: str) -> Dataset | None:
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
    requires_consent = t.flag("requires_consent")
    fields_table = t.table("fields")
    fields: list[DatasetField] = []
    for field_name, body in fields_table.entries():
        ft = Table(t.problems, t.file, f"{fields_table.key}.{field_name}", body)
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
        requires_consent=requires_consent,
    )


def _purpose(t: Table, purpose_id: str) -> Purpose | None:
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


def _agreement(t: Table, agreement_id: str) -> Agreement | None:
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
    source: RegistrySource, where: dict[str, dict[str, str]], problems: Problems
) -> None:
    """Cross-entry rules: every id named must exist and fit. Checked in this order: each
    agency's region, each dataset's region and owner, each purpose's datasets and fields, each
    agreement's regions, requesters and purposes, each matter's regions, queries and datasets."""
    ids = _Ids(source, where, problems)
    for a in source.agencies:
        if a.region and a.region not in ids.regions:
            ids.add("agencies", a.id, "region", f"unknown region {a.region!r}")
    for d in source.datasets:
        _check_dataset_references(ids, d)
    for p in source.purposes:
        for entry in p.datasets:
            _check_purpose_dataset(ids, p, entry)
    for ag in source.agreements:
        _check_agreement_regions(ids, ag)
        _check_agreement_requesters(ids, ag)
        _check_agreement_purposes(ids, ag)
    for m in source.matters:
        add = functools.partial(ids.add, "matters", m.code)
        check_matter(m, frozenset(ids.regions), ids.purposes, ids.by_catalogue, add)


class _Ids:
    """What the cross-entry rules look ids up in, and where they record a problem."""

    def __init__(
        self, source: RegistrySource, where: dict[str, dict[str, str]], problems: Problems
    ) -> None:
        self.regions = {r.code for r in source.regions}
        self.agencies = {a.id: a for a in source.agencies}
        self.purposes = {p.id: p for p in source.purposes}
        self.by_catalogue: dict[str, list[Dataset]] = {}
        for d in source.datasets:
            self.by_catalogue.setdefault(d.id, []).append(d)
        self._where = where
        self._problems = problems

    def add(self, section: str, entry_id: str, sub: str, reason: str) -> None:
        file = self._where[section][entry_id]
        self._problems.add(file, f"{section}.{entry_id}.{sub}", reason)


def _check_dataset_references(ids: _Ids, d: Dataset) -> None:
    """A dataset's region exists, and its owner is a provider agency of that region."""
    key = f"{d.region}.{d.id}"
    if d.region not in ids.regions:
        ids.add("datasets", key, "region", f"unknown region {d.region!r}")
    owner = ids.agencies.get(d.owner)
    if owner is None:
        ids.add("datasets", key, "owner", f"unknown agency {d.owner!r}")
    elif owner.region != d.region:
        ids.add(
            "datasets",
            key,
            "owner",
            f"agency {d.owner!r} belongs to {owner.region}, not {d.region}",
        )
    elif AgencyRole.PROVIDER not in owner.roles:
        ids.add("datasets", key, "owner", f"agency {d.owner!r} does not have the 'provider' role")


def _check_purpose_dataset(ids: _Ids, p: Purpose, entry: PurposeDataset) -> None:
    """A dataset a purpose names exists, and has the fields it allows in every region that
    publishes it."""
    sub = f"datasets.{entry.dataset}"
    candidates = ids.by_catalogue.get(entry.dataset)
    if not candidates:
        ids.add("purposes", p.id, sub, f"unknown dataset {entry.dataset!r}")
        return
    lacking: dict[tuple[str, ...], list[str]] = {}
    for d in candidates:
        missing = tuple(sorted(set(entry.fields) - d.field_names))
        if missing:
            lacking.setdefault(missing, []).append(d.region)
    for missing, regions_lacking in lacking.items():
        ids.add(
            "purposes",
            p.id,
            sub,
            f"fields not in dataset {entry.dataset} of {', '.join(sorted(regions_lacking))}: "
            f"{', '.join(missing)}",
        )


def _check_agreement_regions(ids: _Ids, ag: Agreement) -> None:
    """An agreement's provider and requester regions exist, and differ."""
    if ag.provider_region not in ids.regions:
        ids.add("agreements", ag.id, "provider_region", f"unknown region {ag.provider_region!r}")
    for r in sorted(ag.requester_regions):
        if r not in ids.regions:
            ids.add("agreements", ag.id, "requester_regions", f"unknown region {r!r}")
        elif r == ag.provider_region:
            ids.add(
                "agreements",
                ag.id,
                "requester_regions",
                "a region does not need an agreement with itself",
            )


def _check_agreement_requesters(ids: _Ids, ag: Agreement) -> None:
    """An agreement's requester agencies exist and hold the requester role."""
    for agency_id in sorted(ag.requester_agencies):
        requester = ids.agencies.get(agency_id)
        if requester is None:
            ids.add("agreements", ag.id, "requester_agencies", f"unknown agency {agency_id!r}")
        elif AgencyRole.REQUESTER not in requester.roles:
            ids.add(
                "agreements",
                ag.id,
                "requester_agencies",
                f"agency {agency_id!r} lacks the 'requester' role",
            )


def _check_agreement_purposes(ids: _Ids, ag: Agreement) -> None:
    """An agreement's purposes exist, and each uses a dataset its provider region provides."""
    for purpose_id in ag.purposes:
        purpose = ids.purposes.get(purpose_id)
        if purpose is None:
            ids.add("agreements", ag.id, "purposes", f"unknown purpose {purpose_id!r}")
            continue
        if not any(
            d.region == ag.provider_region
            for e in purpose.datasets
            for d in ids.by_catalogue.get(e.dataset, [])
        ):
            ids.add(
                "agreements",
                ag.id,
                "purposes",
                f"purpose {purpose_id!r} uses no dataset that {ag.provider_region} provides",
            )
