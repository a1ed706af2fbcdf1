"""The key lifecycle steps that issue a key: a first key, and the rotation to a successor.

Both issue a leaf key from the owner's region CA in the PKI folder (`registry._pki`) and record
it in the key inventory, saved. A first key (`tongban keys generate`) is active at once; a
successor (`tongban keys rotate`) is pending: the next publish publishes it, the one after makes
it active and retires the key it succeeds, so that no verification fails during the rotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from registry._inventory import Inventory, KeyRecord
from registry._model import KeyState, KeyUsage
from registry._pki import ModuleKey, issue_key
from registry._pki_sm2 import add_region_eseal
from registry.errors import KeyLifecycleError

__all__ = ["Rotation", "add_key", "key_to_rotate", "rotate_key"]


@dataclass(frozen=True)
class Rotation:
    """A rotation under way: the successor (pending) of the owner's current active key."""

    successor: KeyRecord
    current: KeyRecord


def add_key(
    pki_root: Path,
    inventory: Inventory,
    *,
    region: str,
    owner: str,
    usage: KeyUsage,
    state: KeyState,
    now: datetime,
    algorithm: str = "ES256",
    passphrase: bytes | None = None,
    validity_days: int | None = None,
    module_key: ModuleKey | None = None,
) -> KeyRecord:
    """Issue a key from `region`'s CA for `owner` and record it in `inventory` (saved) in
    `state`; an SM2 seal key with its `SESeal` (`registry._pki_sm2`)."""
    key = issue_key(
        pki_root,
        region=region,
        owner=owner,
        usage=usage.value,
        algorithm=algorithm,
        passphrase=passphrase,
        now=now,
        validity_days=validity_days,
        module_key=module_key,
    )
    if key.algorithm == "SM2":
        add_region_eseal(pki_root, key, passphrase=passphrase, now=now)  # its SESeal beside it
    record = KeyRecord.from_issued(pki_root, key, state, now)
    inventory.add(record)
    inventory.save()
    return record


def rotate_key(
    pki_root: Path,
    owner: str,
    usage: KeyUsage,
    *,
    now: datetime,
    algorithm: str | None = None,
    passphrase: bytes | None = None,
    validity_days: int | None = None,
) -> Rotation:
    """What `tongban keys rotate` does: a pending successor of `owner`'s active `usage` key,
    issued by the same region's CA (see `key_to_rotate` for when it is refused), with the
    current key's algorithm unless another is given."""
    inventory = Inventory.load(pki_root)
    current = key_to_rotate(inventory, owner, usage)
    successor = add_key(
        pki_root,
        inventory,
        region=current.region,
        owner=owner,
        usage=usage,
        state=KeyState.PENDING,
        now=now,
        algorithm=algorithm or current.algorithm,
        passphrase=passphrase,
        validity_days=validity_days,
    )
    return Rotation(successor, current)


def key_to_rotate(inventory: Inventory, owner: str, usage: KeyUsage) -> KeyRecord:
    """`owner`'s active `usage` key, which a rotation succeeds. Refused (`KeyLifecycleError`)
    when there is none, or when a rotation of it is already under way (a pending key)."""
    active = inventory.find(owner, usage, KeyState.ACTIVE)
    if not active:
        raise KeyLifecycleError(
            f"{owner} has no active {usage.value} key to rotate: use `tongban keys generate`"
        )
    pending = inventory.find(owner, usage, KeyState.PENDING)
    if pending:
        raise KeyLifecycleError(
            f"a rotation of {owner}'s {usage.value} key is already under way "
            f"(pending {pending[0].kid})"
        )
    return active[-1]
