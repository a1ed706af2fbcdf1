"""The matter catalogue in the snapshot payload: canonical (sorted, parts in their order),
read back equal, the `tongban.v1.RegistrySnapshot` schema, strict reading, signed and verified."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import json_format
from support import DEMO_SOURCE

from registry import (
    Registry,
    SnapshotFormatError,
    SnapshotVerifier,
    load_source,
    registry_from_payload,
    registry_to_payload,
    sign_snapshot,
)
from signer import canonical_json
from tongban.v1 import registry_pb2

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _registry() -> Registry:
    source = load_source(DEMO_SOURCE)
    return Registry(
        name=source.name,
        version=3,
        issued_at=NOW,
        expires_at=NOW + timedelta(days=7),
        refresh_seconds=source.refresh_seconds,
        regions=source.regions,
        agencies=source.agencies,
        datasets=source.datasets,
        purposes=source.purposes,
        agreements=source.agreements,
        matters=source.matters,
    )


def _pension(payload: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in payload["matters"] if m["name"] == "养老保险关系转移接续")


def test_matters_round_trip_and_encode_canonically() -> None:
    registry = _registry()
    payload = registry_to_payload(registry)
    assert [m["code"] for m in payload["matters"]] == sorted(m.code for m in registry.matters)
    assert registry_from_payload(payload) == registry
    # Materials and queries are sets: any order encodes the same; matters too.
    shuffled = replace(
        registry,
        matters=tuple(
            replace(m, materials=tuple(reversed(m.materials)), queries=tuple(reversed(m.queries)))
            for m in reversed(registry.matters)
        ),
    )
    assert canonical_json(registry_to_payload(shuffled)) == canonical_json(payload)
    # Parts are an order (多地联办): another order is another matter.
    reordered = replace(
        registry,
        matters=tuple(replace(m, parts=tuple(reversed(m.parts))) for m in registry.matters),
    )
    assert canonical_json(registry_to_payload(reordered)) != canonical_json(payload)
    assert [p["region"] for p in _pension(payload)["parts"]] == ["510000", "330000", "500000"]
    materials = [x["id"] for x in _pension(payload)["materials"]]
    assert materials == sorted(materials)


def test_payload_with_matters_matches_the_protobuf_schema() -> None:
    message = json_format.ParseDict(
        registry_to_payload(_registry()), registry_pb2.RegistrySnapshot()
    )
    assert len(message.matters) == 5
    pension = next(m for m in message.matters if m.name == "养老保险关系转移接续")
    assert pension.time_limit_days == 45
    assert [(p.region, p.role) for p in pension.parts] == [
        ("510000", "receive"),
        ("330000", "assist"),
        ("500000", "handle"),
    ]
    assert {x.id: x.required for x in pension.materials}["contribution-proof"] is False
    assert pension.queries[0].purpose == "SI-TRANSFER"


def test_a_signed_snapshot_with_matters_verifies() -> None:
    authority = ed25519.Ed25519PrivateKey.generate()
    registry = _registry()
    signed = sign_snapshot(registry, authority)
    verified = SnapshotVerifier(authority.public_key()).verify(signed.jws, held_version=2, now=NOW)
    assert verified.registry.matters == registry.matters
    pension = next(m for m in registry.matters if m.name == "养老保险关系转移接续")
    assert verified.registry.matter(pension.code) == pension


def test_a_payload_from_before_the_catalogue_has_no_matters() -> None:
    payload = registry_to_payload(_registry())
    del payload["matters"]
    assert registry_from_payload(payload).matters == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["parts"][0].update(role="approve"), "role has unknown value 'approve'"),
        (lambda m: m["materials"][0].update(required="yes"), "required has the wrong type"),
        (lambda m: m["materials"][0].update(kind="letter"), "kind has unknown value 'letter'"),
        (lambda m: m["queries"][0].update(fields="name"), "fields has the wrong type"),
        (lambda m: m.update(time_limit_days=-1), "time_limit_days is negative"),
        (lambda m: m.pop("parts"), r"matters\[\d\]\.parts is missing"),
    ],
)
def test_matter_payload_reading_is_strict(change: Any, message: str) -> None:
    payload = registry_to_payload(_registry())
    change(_pension(payload))
    with pytest.raises(SnapshotFormatError, match=message):
        registry_from_payload(payload)


def test_a_matter_code_twice_is_refused() -> None:
    payload = registry_to_payload(_registry())
    payload["matters"].append(payload["matters"][0])
    with pytest.raises(SnapshotFormatError, match="a matter id appears twice"):
        registry_from_payload(payload)
