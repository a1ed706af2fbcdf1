"""The consent artefact's reader (`gateway.consent.read_consent`) and issuer: every claim out of
its grammar, each part of the JWS changed, a key that is not a token key, and times outside
the window are each refused CONSENT_INVALID with a message naming what is wrong, never an
exception of another kind; the issuer refuses the same values before signing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import Federation, make_federation

from gateway.consent import CONSENT_TYPE, ConsentError, issue_consent, read_consent
from registry import (
    TRUSTED_ROOT,
    KeyState,
    KeyUsage,
    Registry,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import canonical_json, key_reference, open_signing_key, sign_json

HOME = "500000"
CITIZEN = "11010519491231002X"


@dataclass(frozen=True)
class World:
    fed: Federation
    registry: Registry
    now: datetime


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A federation, its registry, and the time the consents are made and read at: a minute
    after its PKI was made (the token key's certificate starts then)."""
    fed = make_federation(tmp_path_factory.mktemp("consent-artefact"))
    fed.publish()
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / TRUSTED_ROOT))
    registry = verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry
    return World(fed, registry, now)


def signer(fed: Federation, owner: str, usage: KeyUsage) -> tuple[Any, str]:
    (entry,) = fed.inventory().find(owner, usage, KeyState.ACTIVE)[-1:]
    key = open_signing_key(key_reference(entry.located_private_key(), Path(fed.pki)), None)
    return key, entry.kid


def claims(now: datetime, **changed: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "jti": "consent-test-0001",
        "iss": f"urn:tongban:idp:{HOME}",
        "sub": CITIZEN,
        "agencies": ["cq.hsa"],
        "regions": [],
        "purpose": "MED-REG",
        "datasets": [{"region": "510000", "dataset": "medical.insurance", "fields": ["name"]}],
        "nbf": int((now - timedelta(hours=1)).timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
        "iat": int(now.timestamp()),
        "max_uses": 3,
    }
    base.update(changed)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def signed(fed: Federation, payload: Any, *, typ: str = CONSENT_TYPE) -> str:
    key, kid = signer(fed, HOME, KeyUsage.TOKEN)
    body = canonical_json(payload) if isinstance(payload, dict) else payload
    return sign_json(body, key, typ=typ, kid=kid, algorithms=("ES256", "EdDSA"))


def refused(world: World, artefact: str, now: datetime | None = None) -> str:
    with pytest.raises(ConsentError) as caught:
        read_consent(artefact, world.registry, now or world.now)
    assert caught.value.reason == "CONSENT_INVALID"
    return str(caught.value)


def test_a_well_formed_consent_is_read(world: World) -> None:
    fed, now = world.fed, world.now
    consent = read_consent(signed(fed, claims(now)), world.registry, now)
    assert (consent.consent_id, consent.region, consent.subject) == (
        "consent-test-0001",
        HOME,
        CITIZEN,
    )
    assert consent.scope("510000", "medical.insurance") is not None
    assert consent.scope("510000", "other") is None


BAD_CLAIMS: list[tuple[str, dict[str, Any], str]] = [
    ("a claim missing", {"max_uses": _DROP}, "exactly the claims"),
    ("a claim too many", {"extra": 1}, "exactly the claims"),
    ("a bad consent id", {"jti": "a b"}, "'jti'"),
    ("an id too short", {"jti": "short"}, "'jti'"),
    ("another region's issuer", {"iss": "urn:tongban:idp:330000"}, "issuer"),
    ("a foreign issuer", {"iss": "https://idp.example"}, "issuer"),
    ("a subject that is no id", {"sub": "110105194912310021"}, "subject"),
    ("a subject of another type", {"sub": 110105}, "subject"),
    ("a purpose that is no id", {"purpose": "MED REG!"}, "purpose"),
    ("uses of zero", {"max_uses": 0}, "'max_uses'"),
    ("uses as true", {"max_uses": True}, "'max_uses'"),
    ("uses as text", {"max_uses": "3"}, "'max_uses'"),
    ("nobody may ask", {"agencies": [], "regions": []}, "no agency or region"),
    ("agencies not a list", {"agencies": "cq.hsa"}, "'agencies'"),
    ("a region that is no code", {"regions": ["5000"]}, "'regions'"),
    ("datasets not a list", {"datasets": {"region": "510000"}}, "'datasets'"),
    ("a dataset without fields", {"datasets": [{"region": "510000", "dataset": "x"}]}, "dataset"),
    (
        "a dataset with no region",
        {"datasets": [{"region": "", "dataset": "x", "fields": ["a"]}]},
        "dataset",
    ),
    ("a time that is text", {"exp": "tomorrow"}, "'exp'"),
    ("a time that is true", {"nbf": True}, "'nbf'"),
]


@pytest.mark.parametrize(("case", "changed", "named"), BAD_CLAIMS, ids=[c[0] for c in BAD_CLAIMS])
def test_a_claim_out_of_its_grammar_is_refused_naming_it(
    world: World, case: str, changed: dict[str, Any], named: str
) -> None:
    fed, now = world.fed, world.now
    message = refused(world, signed(fed, claims(now, **changed)))
    assert named in message, (case, message)
    assert CITIZEN not in message  # the subject is never in an error


def test_times_outside_the_window_are_refused(world: World) -> None:
    fed, now = world.fed, world.now
    later = claims(now, nbf=int((now + timedelta(hours=2)).timestamp()))
    assert "not valid yet" in refused(world, signed(fed, later))
    future = claims(now, iat=int((now + timedelta(hours=2)).timestamp()))
    assert refused(world, signed(fed, future))  # made after now: not yet, or not by that key
    assert "expired" in refused(world, signed(fed, claims(now)), now + timedelta(hours=2))


Tamper = Callable[[list[str]], list[str]]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _more_uses(payload: str) -> str:
    """The payload part with `max_uses` raised: what a holder would like it to say."""
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return _b64(canonical_json({**decoded, "max_uses": 999}))


TAMPERS: list[tuple[str, Tamper]] = [
    ("payload changed", lambda p: [p[0], _more_uses(p[1]), p[2]]),
    (
        "signature changed",
        lambda p: [p[0], p[1], p[2][:-4] + ("AAAA" if p[2][-4:] != "AAAA" else "BBBB")],
    ),
    ("signature dropped", lambda p: [p[0], p[1], ""]),
    (
        "header without kid",
        lambda p: [_b64(json.dumps({"alg": "ES256", "typ": CONSENT_TYPE}).encode()), p[1], p[2]],
    ),
    (
        "header alg none",
        lambda p: [_b64(json.dumps({"alg": "none", "typ": CONSENT_TYPE}).encode()), p[1], ""],
    ),
    ("two parts", lambda p: p[:2]),
    ("not base64", lambda p: [p[0], "***", p[2]]),
]


@pytest.mark.parametrize(("case", "tamper"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_a_changed_jws_is_refused(world: World, case: str, tamper: Tamper) -> None:
    fed, now = world.fed, world.now
    parts = signed(fed, claims(now)).split(".")
    assert refused(world, ".".join(tamper(parts)))


def test_the_wrong_type_key_or_size_is_refused(world: World) -> None:
    fed, now = world.fed, world.now
    assert "typ" in refused(world, signed(fed, claims(now), typ="JWT")).lower()
    audit_key, audit_kid = signer(
        fed, HOME, KeyUsage.AUDIT
    )  # a key the registry has, not a token key
    forged = sign_json(
        canonical_json(claims(now)),
        audit_key,
        typ=CONSENT_TYPE,
        kid=audit_kid,
        algorithms=("EdDSA",),
    )
    assert "token key" in refused(world, forged)
    assert "at most" in refused(world, "a" * 9000)
    assert "JSON" in refused(world, signed(fed, b"[not json"))
    assert "exactly the claims" in refused(world, signed(fed, b"[1, 2]"))


def test_the_issuer_refuses_what_the_reader_would(world: World) -> None:
    fed, now = world.fed, world.now
    key, kid = signer(fed, HOME, KeyUsage.TOKEN)
    good: dict[str, Any] = {
        "region": HOME,
        "subject": CITIZEN,
        "purpose": "MED-REG",
        "datasets": [("510000", "medical.insurance", ["name"])],
        "not_before": now,
        "expires_at": now + timedelta(days=1),
        "max_uses": 1,
        "now": now,
        "agencies": ["cq.hsa"],
    }
    issue_consent(key, kid, **good)
    for changed, words in (
        ({"consent_id": "a b"}, "consent id"),
        ({"subject": "110105194912310021"}, "subject"),
        ({"region": "5000"}, "region"),
        ({"agencies": []}, "agencies or regions"),
        ({"purpose": "MED REG"}, "registry ids"),
        ({"datasets": [("510000", "medical.insurance", [])]}, "datasets"),
        ({"max_uses": 0}, "max_uses"),
        ({"now": now.replace(tzinfo=None)}, "time zone"),
        ({"expires_at": now - timedelta(days=1)}, "expires after"),
    ):
        with pytest.raises(ValueError, match=words):
            issue_consent(key, kid, **{**good, **changed})
