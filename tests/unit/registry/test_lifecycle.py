"""Key lifecycle: rotation states publish by publish, signing picks the newest active key,
verification accepts pending, active and retiring keys and refuses revoked ones for signatures
dated after the revocation."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import Federation, make_federation

from registry import (
    Inventory,
    KeyEntry,
    KeyLifecycleError,
    KeyRecord,
    KeyRefused,
    KeyState,
    KeyUsage,
    Registry,
    SnapshotVerifier,
    load_trusted_root,
    rotate_key,
)

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
SEAL = KeyUsage.SEAL


def _rotate(fed: Federation, owner: str, usage: KeyUsage, now: datetime) -> str:
    """What `tongban keys rotate` does: a pending successor issued by the owner's region CA."""
    (_current,) = fed.inventory().find(owner, usage, KeyState.ACTIVE)  # exactly one
    return rotate_key(fed.pki, owner, usage, now=now).successor.kid


def _published(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / "authority" / "root.json"))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


@dataclass(frozen=True)
class Step:
    action: str  # "rotate" | "publish" | "revoke-old"
    old: KeyState | None  # expected state of the original key in the inventory after the step
    new: KeyState | None  # expected state of the successor (None: not issued yet)
    published_new: (
        KeyState | None
    )  # state of the successor in the published snapshot (None: absent)
    version: int


ROTATION = [
    Step("publish", KeyState.ACTIVE, None, None, 1),
    Step("rotate", KeyState.ACTIVE, KeyState.PENDING, None, 1),
    Step(
        "publish", KeyState.ACTIVE, KeyState.PENDING, KeyState.PENDING, 2
    ),  # every gateway learns it
    Step(
        "publish", KeyState.RETIRING, KeyState.ACTIVE, KeyState.ACTIVE, 3
    ),  # it signs, the old retires
    Step("publish", KeyState.RETIRING, KeyState.ACTIVE, KeyState.ACTIVE, 4),  # stable
    Step("revoke-old", KeyState.REVOKED, KeyState.ACTIVE, KeyState.ACTIVE, 4),
    Step("publish", KeyState.REVOKED, KeyState.ACTIVE, KeyState.ACTIVE, 5),
]


def test_rotation_moves_through_its_states_publish_by_publish(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, now=T0)
    old = fed.active("330000", SEAL)
    new: str | None = None
    now = T0
    for number, step in enumerate(ROTATION):
        now += timedelta(minutes=10)
        if step.action == "publish":
            fed.publish(now=now)
        elif step.action == "rotate":
            new = _rotate(fed, "330000", SEAL, now)
        else:
            inventory = fed.inventory()
            inventory.revoke(old, at=now, reason="superseded")
            inventory.save()
        inventory = fed.inventory()
        assert inventory.get(old).state is step.old, f"step {number} ({step.action}): old key"
        if step.new is None:
            assert new is None
            continue
        assert new is not None
        assert inventory.get(new).state is step.new, f"step {number} ({step.action}): new key"
        registry = _published(fed)
        assert registry.version == step.version
        entry = registry.key(new)
        assert (entry.state if entry else None) is step.published_new, f"step {number}: published"
    registry = _published(fed)
    old_entry = registry.key(old)
    assert old_entry is not None
    assert old_entry.retiring_at is not None
    assert old_entry.revoked_at is not None
    assert old_entry.revocation_reason == "superseded"


def test_signing_picks_the_newest_active_key_and_verification_accepts_the_overlap(
    tmp_path: Path,
) -> None:
    fed = make_federation(tmp_path, now=T0)
    old = fed.active("510000", SEAL)
    fed.publish(now=T0 + timedelta(minutes=1))
    new = _rotate(fed, "510000", SEAL, T0 + timedelta(minutes=2))
    fed.publish(now=T0 + timedelta(minutes=3))
    pending = _published(fed)
    signed_at = T0 + timedelta(minutes=4)
    assert pending.signing_key("510000", SEAL, signed_at).kid == old
    # A signer ahead of us may already use the pending key: it verifies.
    assert pending.verification_key(new, signed_at).kid == new
    fed.publish(now=T0 + timedelta(minutes=5))
    active = _published(fed)
    signed_at = T0 + timedelta(minutes=6)
    assert active.signing_key("510000", SEAL, signed_at).kid == new
    assert active.verification_key(old, signed_at).state is KeyState.RETIRING
    with pytest.raises(KeyRefused, match="only an active key signs"):
        active.key(old).check_may_sign(signed_at)  # type: ignore[union-attr]


@dataclass(frozen=True)
class VerifyCase:
    state: KeyState
    revoked_offset: timedelta | None  # revocation time relative to the signing time
    accepted: bool
    message: str = ""


VERIFY = {
    "pending": VerifyCase(KeyState.PENDING, None, True),
    "active": VerifyCase(KeyState.ACTIVE, None, True),
    "retiring": VerifyCase(KeyState.RETIRING, None, True),
    "revoked before the signature": VerifyCase(
        KeyState.REVOKED, -timedelta(seconds=1), False, "was revoked at"
    ),
    "revoked at the signing time": VerifyCase(
        KeyState.REVOKED, timedelta(0), False, "was revoked at"
    ),
    "revoked after the signature": VerifyCase(KeyState.REVOKED, timedelta(hours=1), True),
}


@pytest.mark.parametrize("name", list(VERIFY))
def test_which_states_verify(name: str) -> None:
    case = VERIFY[name]
    signed_at = T0 + timedelta(days=10)
    entry = KeyEntry(
        kid="k",
        usage=SEAL,
        owner="330000",
        region="330000",
        algorithm="ES256",
        state=case.state,
        certificate=b"",
        not_before=T0,
        not_after=T0 + timedelta(days=365),
        published_at=T0,
        revoked_at=signed_at + case.revoked_offset if case.revoked_offset is not None else None,
        revocation_reason="keyCompromise" if case.revoked_offset is not None else "",
    )
    if case.accepted:
        entry.check_may_verify(signed_at)
    else:
        with pytest.raises(KeyRefused, match=case.message):
            entry.check_may_verify(signed_at)


def test_outside_certificate_validity_neither_signs_nor_verifies() -> None:
    entry = KeyEntry(
        "k", SEAL, "330000", "330000", "ES256", KeyState.ACTIVE, b"", T0, T0 + timedelta(days=1), T0
    )
    late = T0 + timedelta(days=2)
    with pytest.raises(KeyRefused, match="outside its certificate's validity"):
        entry.check_may_sign(late)
    with pytest.raises(KeyRefused, match="outside its certificate's validity"):
        entry.check_may_verify(late)
    registry = Registry("r", 1, T0, T0 + timedelta(days=7), 60, keys=(entry,))
    with pytest.raises(KeyRefused, match="has no active seal key"):
        registry.signing_key("330000", SEAL, late)
    with pytest.raises(KeyRefused, match="not in registry version 1"):
        registry.verification_key("unknown", T0)


def test_expiring_lists_unrevoked_keys_soonest_first() -> None:
    def key(kid: str, days: int, state: KeyState = KeyState.ACTIVE) -> KeyEntry:
        return KeyEntry(
            kid, SEAL, "330000", "330000", "ES256", state, b"", T0, T0 + timedelta(days=days), T0
        )

    registry = Registry(
        "r",
        1,
        T0,
        T0 + timedelta(days=7),
        60,
        keys=(key("a", 40), key("b", 5), key("c", 20), key("d", 3, KeyState.REVOKED)),
    )
    assert [k.kid for k in registry.expiring(T0, 30 * 86400)] == ["b", "c"]


def test_inventory_refusals(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, now=T0)
    inventory = fed.inventory()
    kid = fed.active("330000", SEAL)
    with pytest.raises(KeyLifecycleError, match="no key 'nope'"):
        inventory.get("nope")
    with pytest.raises(KeyLifecycleError, match="'stolen' is not a revocation reason"):
        inventory.revoke(kid, at=T0, reason="stolen")
    inventory.revoke(kid, at=T0, reason="keyCompromise")
    with pytest.raises(KeyLifecycleError, match="already revoked"):
        inventory.revoke(kid, at=T0, reason="superseded")
    with pytest.raises(KeyLifecycleError, match="already in the inventory"):
        inventory.add(inventory.get(kid))
    with pytest.raises(KeyLifecycleError, match="no key inventory here"):
        Inventory.load(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "keys.json").write_text('{"format": "other"}')
    with pytest.raises(KeyLifecycleError, match="not a Tongban key inventory"):
        Inventory.load(tmp_path / "bad")


def test_inventory_round_trips_and_holds_no_private_key_in_the_registry(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, now=T0)
    inventory = fed.inventory()
    record = inventory.get(fed.active("500000", KeyUsage.TOKEN))
    changed = replace(record, revocation_reason="x")
    assert KeyRecord.from_json(changed.to_json(), "t") == changed
    fed.publish(now=T0)
    payload = json.loads(fed.current.read_text())["payload"]
    text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    assert record.kid in text  # the decoded payload is what we think it is
    assert "PRIVATE KEY" not in text
    assert "private_key" not in text
    assert record.private_key not in text


def test_rotate_key_refuses_an_owner_without_an_active_key_and_a_second_rotation(
    tmp_path: Path,
) -> None:
    fed = make_federation(tmp_path, now=T0)
    old = fed.active("330000", SEAL)
    rotation = rotate_key(fed.pki, "330000", SEAL, now=T0 + timedelta(minutes=1))
    assert (rotation.current.kid, rotation.current.region) == (old, "330000")
    assert rotation.successor.state is KeyState.PENDING
    assert fed.inventory().find("330000", SEAL, KeyState.PENDING) == [rotation.successor]
    before = fed.inventory().records()
    with pytest.raises(
        KeyLifecycleError, match=rf"already under way \(pending {rotation.successor.kid}\)"
    ):
        rotate_key(fed.pki, "330000", SEAL, now=T0 + timedelta(minutes=2))
    inventory = fed.inventory()
    inventory.revoke(old, at=T0 + timedelta(minutes=3), reason="superseded")
    inventory.save()
    with pytest.raises(KeyLifecycleError, match="330000 has no active seal key to rotate"):
        rotate_key(fed.pki, "330000", SEAL, now=T0 + timedelta(minutes=4))
    assert len(fed.inventory().records()) == len(before)  # nothing issued by a refusal
