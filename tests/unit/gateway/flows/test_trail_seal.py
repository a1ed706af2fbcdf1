"""A region's sealed trail (`gateway.trail`): read from its own log by pseudonym, sealed with
its audit key, verified by the asking gateway against the registry, and each way an answer is
refused (forged, another region's, for another call or gateway, stale, malformed). Uses the
flows' federation (one dev PKI for the package). No network."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest
from audit_contract import KEY, make_record
from cryptography.hazmat.primitives.asymmetric import ed25519
from flow_support import NOW, audit_key
from support import Federation

from gateway.audit import AuditLog, MemoryAuditStore, Outcome, pseudonymize
from gateway.trail import (
    MAX_TRAIL_ENTRIES,
    TRAIL_CLOCK_SKEW,
    TrailEntry,
    TrailSealInvalid,
    read_trail,
    request_digest,
    seal_trail,
    verify_trail,
)
from registry import Registry
from signer import canonical_json, sign_json

ANSWERING = "510000"
HOME = "330000"
CITIZEN = "110105194912310021"  # make_record's subject
ASKED: dict[str, Any] = {
    "home_region": HOME,
    "region": ANSWERING,
    "subject_id": CITIZEN,
    "since": None,
    "until": None,
    "nonce": "n" * 32,
    "token": "header.payload.signature",
}
DIGEST = request_digest(**ASKED)


def entry(i: int) -> TrailEntry:
    return TrailEntry.from_record(ANSWERING, "audit.tongban/510000", i, make_record(i))


def sealed(fed: Federation, entries: list[TrailEntry] | None = None, **changes: Any) -> str:
    key, kid = audit_key(fed, changes.pop("signer", ANSWERING))
    made: dict[str, Any] = {
        "region": ANSWERING,
        "home_region": HOME,
        "digest": DIGEST,
        "truncated": False,
        "answered_at": NOW,
        "key": key,
        "kid": kid,
    }
    made.update(changes)
    return seal_trail([entry(0), entry(1)] if entries is None else entries, **made)


def verify(registry: Registry, jws: str, **changes: Any) -> Any:
    asked: dict[str, Any] = {
        "registry": registry,
        "region": ANSWERING,
        "home_region": HOME,
        "digest": DIGEST,
        "now": NOW,
    }
    asked.update(changes)
    return verify_trail(jws, **asked)


def test_a_sealed_trail_verifies_with_the_regions_audit_key(
    fed: Federation, registry: Registry
) -> None:
    trail = verify(registry, sealed(fed))
    assert trail.entries == (entry(0), entry(1))
    assert trail.entries[0].outcome is Outcome.ALLOWED
    assert trail.truncated is False
    assert trail.kid == audit_key(fed, ANSWERING)[1]


def _forged(jws: str) -> str:
    header, payload, signature = jws.split(".")
    document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    document["entries"][0]["cache_hit"] = not document["entries"][0]["cache_hit"]
    body = base64.urlsafe_b64encode(canonical_json(document)).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


def _loose(fed: Federation) -> str:
    """A true signature over a payload that is not canonical JSON."""
    key, kid = audit_key(fed, ANSWERING)
    document = json.loads(_payload(sealed(fed)))
    return sign_json(
        json.dumps(document, indent=1).encode(),
        key,
        typ="tongban.subject-trail+jws",
        kid=kid,
        algorithms=("EdDSA",),
        headers={"x5t#S256": kid},
    )


def _payload(jws: str) -> bytes:
    part = jws.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


REFUSED: dict[str, tuple[Any, dict[str, Any]]] = {
    "not sealed": (lambda fed: "", {}),
    "a payload changed after sealing": (lambda fed: _forged(sealed(fed)), {}),
    "sealed by another region's key": (lambda fed: sealed(fed, signer="500000"), {}),
    "a key the registry does not hold": (
        lambda fed: sealed(fed, key=ed25519.Ed25519PrivateKey.generate()),
        {},
    ),
    "another region's answer": (lambda fed: sealed(fed, region="500000"), {}),
    "for another gateway": (lambda fed: sealed(fed, home_region="500000"), {}),
    "for another call (a replay)": (
        lambda fed: sealed(fed, digest=request_digest(**{**ASKED, "nonce": "m" * 32})),
        {},
    ),
    "answered long ago": (
        lambda fed: sealed(fed, answered_at=NOW - TRAIL_CLOCK_SKEW - timedelta(seconds=1)),
        {},
    ),
    "too many entries": (lambda fed: sealed(fed, [entry(0)] * (MAX_TRAIL_ENTRIES + 1)), {}),
    "not canonical JSON": (_loose, {}),
    "verified as another region's": (sealed, {"region": "500000"}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_answer_is_refused(fed: Federation, registry: Registry, case: str) -> None:
    make, changes = REFUSED[case]
    with pytest.raises(TrailSealInvalid):
        verify(registry, make(fed), **changes)


def test_the_request_digest_names_every_part_of_the_call() -> None:
    changed = [
        request_digest(**{**ASKED, name: value})
        for name, value in (
            ("home_region", "500000"),
            ("region", "500000"),
            ("subject_id", "11010519491231002X"),
            ("since", NOW),
            ("until", NOW),
            ("nonce", "m" * 32),
            ("token", "another.token.here"),
        )
    ]
    assert len({DIGEST, *changed}) == len(changed) + 1
    assert CITIZEN not in DIGEST


async def test_a_log_is_read_by_pseudonym_oldest_first_and_bounded() -> None:
    log = AuditLog(
        MemoryAuditStore(),
        origin="audit.tongban/510000",
        key=ed25519.Ed25519PrivateKey.generate(),
        key_name="audit.tongban/510000",
    )
    await log.open()
    for i in range(7):
        subject = CITIZEN if i != 3 else "11010519491231002X"
        record = make_record(i, subject=subject)
        await log.append(dataclasses.replace(record, case_id="C" * 300 if i == 6 else ""))
    mine = pseudonymize(CITIZEN, KEY)
    entries, more = await read_trail(
        log, region=ANSWERING, subject=mine, since=None, until=None, limit=4
    )
    assert [e.audit_index for e in entries] == [0, 1, 2, 4]
    assert more
    entries, more = await read_trail(
        log, region=ANSWERING, subject=mine, since=make_record(2).time, until=None
    )
    assert [e.audit_index for e in entries] == [2, 4, 5, 6]
    assert not more
    assert entries[-1].case_id.startswith("sha256:")  # a long value: named by its digest
    assert entries[0].audit_id == "audit.tongban/510000#2"
    with pytest.raises(ValueError, match="one subject"):  # no pseudonym: no one's trail
        await read_trail(log, region=ANSWERING, subject="", since=None, until=None)
    await log.close()
