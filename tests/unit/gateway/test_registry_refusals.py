"""A gateway refuses a snapshot short of the root's threshold, signed twice by one key, by a key
outside the root, or under a root that does not chain: the snapshot held stays in force, the
refusal is one log line naming counts and keyids (never key material) and one metric reason."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import CollectorRegistry
from support import make_federation

from gateway.metrics import GatewayMetrics
from registry import (
    TRUSTED_ROOT,
    FileSnapshotSource,
    RegistryStore,
    SnapshotVerifier,
    authority_key_id,
    load_trusted_root,
    next_root,
    read_root,
    sign_root,
    sign_snapshot,
)
from signer import load_private_key

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ed25519.Ed25519PrivateKey]]:
    fed = make_federation(tmp_path_factory.mktemp("fed"), now=NOW - timedelta(minutes=5))
    fed.publish(now=NOW - timedelta(minutes=1))
    keys = []
    for name in ("national", "province-1", "province-2"):
        key = load_private_key(fed.pki / "authority" / f"{name}.key")
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        keys.append(key)
    return fed.pki, keys


def _next(store: RegistryStore) -> object:
    registry = store.current()
    return replace(registry, version=registry.version + 1, issued_at=NOW)


def _twice(store: RegistryStore, keys: list[ed25519.Ed25519PrivateKey]) -> str:
    document = json.loads(sign_snapshot(_next(store), keys[0]).jws)  # type: ignore[arg-type]
    document["signatures"] *= 2
    return json.dumps(document)


def _unchained(store: RegistryStore, keys: list[ed25519.Ed25519PrivateKey], pki: Path) -> str:
    # Root 2 signed only by a newcomer: the old root's threshold is not met.
    newcomer = ed25519.Ed25519PrivateKey.generate()
    made = next_root(
        read_root(pki / TRUSTED_ROOT).root, add=[(newcomer.public_key(), "x")], threshold=1, now=NOW
    )
    bad = sign_root(made, newcomer)
    return sign_snapshot(_next(store), newcomer, roots=(bad,)).jws  # type: ignore[arg-type]


Make = Callable[[RegistryStore, list[ed25519.Ed25519PrivateKey], Path], str]
CASES: dict[str, tuple[Make, str, str]] = {
    "BELOW_THRESHOLD": (
        lambda s, k, _: sign_snapshot(_next(s), k[0]).jws,  # type: ignore[arg-type]
        "2 of 3 needed, 1 valid",
        "national",
    ),
    "DUPLICATE_SIGNER": (lambda s, k, _: _twice(s, k), "more than once", "national"),
    "UNTRUSTED_SIGNER": (
        lambda s, k, _: (
            sign_snapshot(  # type: ignore[arg-type]
                _next(s), k[0], ed25519.Ed25519PrivateKey.generate()
            ).jws
        ),
        "does not name",
        "",
    ),
    "ROOT_CHAIN": (_unchained, "counted against the keys of root 1", ""),
}


@pytest.mark.parametrize("reason", list(CASES))
def test_a_refused_snapshot_keeps_the_held_one_logs_one_line_and_counts_its_reason(
    reason: str,
    held: tuple[Path, list[ed25519.Ed25519PrivateKey]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pki, keys = held
    store = RegistryStore(SnapshotVerifier(load_trusted_root(pki / TRUSTED_ROOT)))
    published = pki.parent / "published" / "current.jws"
    assert store.offer(published.read_bytes())
    version = store.current().version
    make, message, named = CASES[reason]
    incoming = tmp_path / "current.jws"
    incoming.write_text(make(store, keys, pki))
    with caplog.at_level(logging.WARNING, logger="tongban.registry"):
        assert not FileSnapshotSource(incoming, store).poll()
    assert store.current().version == version  # the held snapshot stays in force
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert message in line
    if named == "national":
        assert authority_key_id(keys[0].public_key()) in line
    assert "PRIVATE" not in line
    assert "BEGIN" not in line
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.observe_registry(store.current(), store.status())
    assert metrics.registry.get_sample_value("tongban_registry_root_version") == 1
    assert (
        metrics.registry.get_sample_value("tongban_registry_refused_total", {"reason": reason}) == 1
    )
