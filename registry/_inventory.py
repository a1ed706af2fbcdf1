"""The key inventory: every key a federation's PKI has issued, and where it is in its life.

The inventory is `keys.json` in the PKI folder, written by `tongban pki init` and the
`tongban keys` commands and read by `tongban registry build|publish`. It holds paths to
certificates and (for the owner's own use) private keys; only certificates ever reach a snapshot.

Lifecycle, one owner and usage at a time::

    generate ──▶ active                      (the owner had no active key)
    rotate   ──▶ pending ──publish──▶ pending, published ──publish──▶ active
                                                     the old active key ──▶ retiring
    revoke   ──▶ revoked (with a time and a reason), from any state

A new key is published as `pending` first and only becomes `active` at the following publish,
so every gateway holds it before its owner signs with it: rotation never fails a verification.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509

from registry._crl import REVOCATION_REASONS
from registry._files import write_atomically
from registry._model import KeyEntry, KeyState, KeyUsage
from registry._pki import IssuedKey
from registry.errors import KeyLifecycleError

__all__ = ["INVENTORY_FILE", "Inventory", "KeyRecord"]

INVENTORY_FILE = "keys.json"
_FORMAT = "tongban.keys/v1"


class NewPki(Protocol):
    """A PKI folder just created, with every key it issued (`gateway.demo.pki.DevPki`)."""

    @property
    def root(self) -> Path: ...

    @property
    def keys(self) -> Sequence[IssuedKey]: ...


@dataclass(frozen=True, slots=True)
class KeyRecord:
    kid: str
    usage: KeyUsage
    owner: str
    region: str
    algorithm: str
    state: KeyState
    certificate: str  # path relative to the PKI folder
    # path relative to the PKI folder (or absolute), a PKCS#11 URI (key in a module), or "" for
    # a certificate imported without its key (`import-cert --key-held-by-owner`)
    private_key: str
    created_at: datetime
    published_in: int | None = None  # first snapshot version that carried this key
    published_at: datetime | None = None
    activated_at: datetime | None = None
    retiring_at: datetime | None = None
    revoked_at: datetime | None = None
    revocation_reason: str = ""

    def located_private_key(self) -> str:
        """`private_key`, refused when this PKI folder does not know where the key is."""
        if not self.private_key:
            raise KeyLifecycleError(
                f"{self.owner}'s {self.usage.value} key {self.kid} is held by {self.owner}: its "
                "certificate was imported without its key, so it is not used from this PKI folder"
            )
        return self.private_key

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if isinstance(value, datetime):
                out[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            elif isinstance(value, KeyUsage | KeyState):
                out[name] = value.value
            else:
                out[name] = value
        return out

    @classmethod
    def from_issued(cls, root: Path, key: IssuedKey, state: KeyState, now: datetime) -> KeyRecord:
        """The record of a key the PKI has just issued (paths kept relative to `root`)."""
        return cls(
            kid=key.kid,
            usage=KeyUsage(key.usage),
            owner=key.owner,
            region=key.region,
            algorithm=key.algorithm,
            state=state,
            certificate=str(key.certificate_path.relative_to(root)),
            private_key=key.key_uri or str(key.key_path.relative_to(root)),
            created_at=now,
            activated_at=now if state is KeyState.ACTIVE else None,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> KeyRecord:
        try:
            times = {
                name: datetime.fromisoformat(data[name]).astimezone(UTC) if data.get(name) else None
                for name in ("published_at", "activated_at", "retiring_at", "revoked_at")
            }
            return cls(
                kid=str(data["kid"]),
                usage=KeyUsage(data["usage"]),
                owner=str(data["owner"]),
                region=str(data["region"]),
                algorithm=str(data["algorithm"]),
                state=KeyState(data["state"]),
                certificate=str(data["certificate"]),
                private_key=str(data["private_key"]),
                created_at=datetime.fromisoformat(data["created_at"]).astimezone(UTC),
                published_in=int(data["published_in"])
                if data.get("published_in") is not None
                else None,
                revocation_reason=str(data.get("revocation_reason", "")),
                **times,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise KeyLifecycleError(
                f"{where}: a key entry is malformed ({exc.__class__.__name__}: {exc})"
            ) from exc


class Inventory:
    """The keys of one PKI folder. Mutations return nothing and are saved by `save()`."""

    def __init__(self, root: Path, records: Iterable[KeyRecord] = ()) -> None:
        self.root = root
        self._records: dict[str, KeyRecord] = {r.kid: r for r in records}

    @property
    def path(self) -> Path:
        return self.root / INVENTORY_FILE

    @classmethod
    def for_new_pki(cls, pki: NewPki, now: datetime) -> Inventory:
        """The inventory of a PKI just created by `init_dev_pki`: every key active."""
        return cls(
            pki.root, (KeyRecord.from_issued(pki.root, k, KeyState.ACTIVE, now) for k in pki.keys)
        )

    @classmethod
    def load(cls, root: Path) -> Inventory:
        path = root / INVENTORY_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise KeyLifecycleError(
                f"{path}: no key inventory here (run `tongban pki init` first)"
            ) from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyLifecycleError(f"{path}: cannot be read ({exc.__class__.__name__})") from exc
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise KeyLifecycleError(f"{path}: not a Tongban key inventory ({_FORMAT})")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise KeyLifecycleError(f"{path}: 'keys' must be a list")
        return cls(root, (KeyRecord.from_json(e, str(path)) for e in entries))

    def save(self) -> None:
        document = {"format": _FORMAT, "keys": [r.to_json() for r in self.records()]}
        data = json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"
        write_atomically(self.path, data, mode=0o600)  # it names every private key file

    def records(self) -> list[KeyRecord]:
        return sorted(
            self._records.values(), key=lambda r: (r.owner, r.usage.value, r.created_at, r.kid)
        )

    def get(self, kid: str) -> KeyRecord:
        record = self._records.get(kid)
        if record is None:
            raise KeyLifecycleError(f"no key {kid!r} in {self.path}")
        return record

    def find(self, owner: str, usage: KeyUsage, state: KeyState | None = None) -> list[KeyRecord]:
        return [
            r
            for r in self.records()
            if r.owner == owner and r.usage is usage and (state is None or r.state is state)
        ]

    def add(self, record: KeyRecord) -> None:
        if record.kid in self._records:
            raise KeyLifecycleError(f"key {record.kid} is already in the inventory")
        self._records[record.kid] = record

    def revoke(self, kid: str, *, at: datetime, reason: str) -> KeyRecord:
        record = self.get(kid)
        if record.state is KeyState.REVOKED:
            raise KeyLifecycleError(
                f"key {kid} is already revoked (at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ})"
            )
        if reason not in REVOCATION_REASONS:
            raise KeyLifecycleError(
                f"{reason!r} is not a revocation reason (one of {', '.join(REVOCATION_REASONS)})"
            )
        revoked = replace(record, state=KeyState.REVOKED, revoked_at=at, revocation_reason=reason)
        self._records[kid] = revoked
        return revoked

    def advance_for_publish(self, version: int, now: datetime) -> list[str]:
        """Apply the lifecycle moves a publish of `version` makes; return what changed, for people.

        - a pending key already carried by an earlier snapshot becomes active, and the keys that
          were active for the same owner and usage become retiring;
        - a pending key not yet published is marked as published in this version.
        """
        changes: list[str] = []
        for record in self.records():
            if record.state is not KeyState.PENDING:
                continue
            if record.published_in is None:
                self._records[record.kid] = replace(record, published_in=version, published_at=now)
                changes.append(f"{record.kid} ({record.owner} {record.usage}) published as pending")
                continue
            for old in self.find(record.owner, record.usage, KeyState.ACTIVE):
                self._records[old.kid] = replace(old, state=KeyState.RETIRING, retiring_at=now)
                changes.append(f"{old.kid} ({old.owner} {old.usage}) active -> retiring")
            self._records[record.kid] = replace(record, state=KeyState.ACTIVE, activated_at=now)
            changes.append(f"{record.kid} ({record.owner} {record.usage}) pending -> active")
        for record in self.records():
            if record.published_in is None:
                self._records[record.kid] = replace(record, published_in=version, published_at=now)
        return changes

    def entries(self, default_published_at: datetime) -> tuple[KeyEntry, ...]:
        """The registry's view of every key: certificates only, never a private key path."""
        out: list[KeyEntry] = []
        for record in self.records():
            path = self.root / record.certificate
            try:
                certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
            except (OSError, ValueError, IndexError) as exc:
                raise KeyLifecycleError(
                    f"{path}: certificate of key {record.kid} cannot be read"
                ) from exc
            out.append(
                KeyEntry(
                    kid=record.kid,
                    usage=record.usage,
                    owner=record.owner,
                    region=record.region,
                    algorithm=record.algorithm,
                    state=record.state,
                    certificate=certificate.public_bytes(_DER),
                    not_before=certificate.not_valid_before_utc,
                    not_after=certificate.not_valid_after_utc,
                    published_at=record.published_at or default_published_at,
                    activated_at=record.activated_at,
                    retiring_at=record.retiring_at,
                    revoked_at=record.revoked_at,
                    revocation_reason=record.revocation_reason,
                )
            )
        return tuple(out)


from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

_DER = Encoding.DER
