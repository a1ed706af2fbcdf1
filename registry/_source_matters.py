"""The matter catalogue of a registry source: `[matters.<code>]` tables, read and checked.

A matter (政务服务事项 of the 跨省通办 list) names the regions that take part and what each does
(`parts`, in the order they complete), the materials an applicant supplies, the data queries a
handling agency may make for it and its time limit (承诺时限)::

    [matters."<code>"]      name, category (optional), time_limit_days,
                            parts = [{ region, role, description }, ...],
                            materials = [{ id, kind, credential_type | description, required }],
                            queries = [{ dataset, purpose, fields }, ...]

Problems are recorded like every other table's (`file: key: reason`), all at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from registry._model import (
    Dataset,
    MaterialKind,
    Matter,
    MatterMaterial,
    MatterPart,
    MatterQuery,
    PartRole,
    Purpose,
)
from registry._source_table import Table

__all__ = ["MATTER_CODE_GRAMMAR", "check_matter", "is_matter_code", "read_matter"]

MAX_MATTER_CODE_CHARS = 64
T = TypeVar("T")
MATTER_CODE_GRAMMAR = (
    f"a matter code is 1-{MAX_MATTER_CODE_CHARS} letters, digits, '.' or '-', "
    "starting with a letter or a digit"
)
_MATTER_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
MAX_TIME_LIMIT_DAYS = 366  # a 承诺时限 beyond a year is a typo, not a promise


def is_matter_code(code: str) -> bool:
    """A national matter code's sane form (ASCII only: `[A-Za-z0-9][A-Za-z0-9.-]{0,63}`)."""
    return _MATTER_CODE_RE.fullmatch(code) is not None


def read_matter(t: Table, code: str) -> Matter | None:
    """One `[matters.<code>]` table; None when it cannot make a matter (problems recorded)."""
    if not is_matter_code(code):
        t.fail(MATTER_CODE_GRAMMAR)
    name = t.text("name")
    category = t.text("category", required=False)
    limit = t.integer("time_limit_days", minimum=1)
    if limit > MAX_TIME_LIMIT_DAYS:
        t.fail(f"must be at most {MAX_TIME_LIMIT_DAYS}, not {limit}", "time_limit_days")
    parts = _items(t, "parts", _part)
    if t.data.get("parts") == []:
        t.fail("a matter needs at least one part", "parts")
    elif parts and not any(p.role is PartRole.HANDLE for p in parts):
        t.fail("a matter needs a part with role 'handle'", "parts")
    materials = _items(t, "materials", _material, required=False)
    ids = [m.id for m in materials]
    for twice in sorted({i for i in ids if ids.count(i) > 1}):
        t.fail(f"material id {twice!r} listed more than once", "materials")
    queries = _items(t, "queries", _query, required=False)
    pairs = [(q.dataset, q.purpose) for q in queries]
    for dataset, purpose in sorted({p for p in pairs if pairs.count(p) > 1}):
        t.fail(f"dataset {dataset!r} under purpose {purpose!r} listed more than once", "queries")
    return Matter(
        code=code,
        name=name,
        category=category,
        parts=tuple(parts),
        materials=tuple(sorted(materials, key=lambda m: m.id)),
        queries=tuple(sorted(queries, key=lambda q: (q.dataset, q.purpose))),
        time_limit_days=limit,
    )


def _items(
    t: Table, name: str, make: Callable[[Table], T | None], *, required: bool = True
) -> list[T]:
    """The entries of an array of tables `name`, each read by `make` as `name[i]`."""
    value = t.data.get(name)
    t.seen.add(name)
    if value is None:
        if required:
            t.fail("missing required key", name)
        return []
    if not isinstance(value, list):
        t.fail("must be a list of tables", name)
        return []
    out: list[T] = []
    for i, body in enumerate(value):
        entry = Table(t.problems, t.file, f"{t.key}.{name}[{i}]", body)
        if not entry.ok:
            continue
        item = make(entry)
        entry.finish()
        if item is not None:
            out.append(item)
    return out


def _part(t: Table) -> MatterPart | None:
    region = t.text("region")
    role = t.choice("role", PartRole)
    description = t.text("description", required=False)
    return MatterPart(region, role, description) if role is not None and region else None


def _material(t: Table) -> MatterMaterial | None:
    material_id = t.text("id")
    kind = t.choice("kind", MaterialKind)
    credential_type = t.text("credential_type", required=kind is MaterialKind.CREDENTIAL)
    description = t.text("description", required=kind is MaterialKind.DOCUMENT)
    if kind is MaterialKind.DOCUMENT and credential_type:
        t.fail("only a 'credential' material names a credential_type", "credential_type")
    required = t.data.get("required", True)
    t.seen.add("required")
    if not isinstance(required, bool):
        t.fail("must be a boolean", "required")
        required = True
    if kind is None or not material_id:
        return None
    return MatterMaterial(material_id, kind, credential_type, description, required)


def _query(t: Table) -> MatterQuery | None:
    dataset = t.text("dataset")
    purpose = t.text("purpose")
    fields = t.texts("fields")
    if "fields" in t.data and not fields and isinstance(t.data["fields"], list):
        t.fail("a query needs at least one field", "fields")
    if not dataset or not purpose or not fields:
        return None
    return MatterQuery(dataset, purpose, tuple(sorted(fields)))


def check_matter(
    matter: Matter,
    regions: frozenset[str],
    purposes: Mapping[str, Purpose],
    by_catalogue: Mapping[str, list[Dataset]],
    add: Callable[[str, str], None],
) -> None:
    """A matter's references, each problem passed to `add(sub_key, reason)`: every part's
    region exists (and takes one part only); every query's purpose exists and allows its
    dataset and fields; its dataset is published by every region that handles or assists."""
    seen: set[str] = set()
    for part in matter.parts:
        if part.region not in regions:
            add("parts", f"unknown region {part.region!r}")
        elif part.region in seen:
            add("parts", f"region {part.region} has more than one part")
        seen.add(part.region)
    handling = sorted(matter.handling_regions & regions)
    for q in matter.queries:
        _check_query(q, handling, purposes, by_catalogue, add)


def _check_query(
    q: MatterQuery,
    handling: list[str],
    purposes: Mapping[str, Purpose],
    by_catalogue: Mapping[str, list[Dataset]],
    add: Callable[[str, str], None],
) -> None:
    sub = f"queries.{q.dataset}"
    purpose = purposes.get(q.purpose)
    if purpose is None:
        add(sub, f"unknown purpose {q.purpose!r}")
    else:
        allowed = purpose.allowed_fields(q.dataset)
        if allowed is None:
            add(sub, f"purpose {q.purpose!r} does not allow dataset {q.dataset!r}")
        elif extra := sorted(set(q.fields) - allowed):
            add(sub, f"purpose {q.purpose!r} does not allow fields: {', '.join(extra)}")
    published = {d.region for d in by_catalogue.get(q.dataset, [])}
    missing = [r for r in handling if r not in published]
    if not published:
        add(sub, f"unknown dataset {q.dataset!r}")
    elif missing:
        add(sub, f"dataset {q.dataset!r} is not published by handling region {', '.join(missing)}")
