"""`RegionSealer`: the region's active seal key, as the registry names it and the gateway holds
it, seals; anything else is SEAL_KEY_UNAVAILABLE. No network, no server."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from support import Federation, make_federation

from gateway.errors import GatewayError
from gateway.sealing import SEAL_IN_THREAD_BYTES, RegionSealer, SealKeyUnavailable
from registry import (
    TRUSTED_ROOT,
    KeyState,
    KeyUsage,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import FileKeyProvider, Indication, KeyModuleError, KeyProvider, SealVerifier

NOW = datetime(2026, 11, 21, 9, 30, 15, 123456, tzinfo=UTC)
REGION = "330000"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    federation = make_federation(tmp_path_factory.mktemp("fed"), now=NOW - timedelta(days=1))
    federation.publish(now=NOW - timedelta(hours=1))
    return federation


@pytest.fixture(scope="module")
def registry(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / TRUSTED_ROOT))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


def seal_key(fed: Federation, owner: str = REGION) -> KeyProvider:
    (record,) = fed.inventory().find(owner, KeyUsage.SEAL, KeyState.ACTIVE)
    return FileKeyProvider(fed.pki / record.private_key, fed.pki / record.certificate)


@pytest.mark.parametrize("size", [10, SEAL_IN_THREAD_BYTES + 1])  # inline, and in a thread
async def test_the_active_seal_key_seals_and_the_seal_verifies(
    fed: Federation, registry: Registry, size: int
) -> None:
    key = seal_key(fed)
    sealer = RegionSealer(REGION, {key.kid: key})
    payload = b"x" * size
    sealed = await sealer.seal(registry, payload, content_type="application/json", now=NOW)
    assert (sealed.kid, sealed.region) == (key.kid, REGION)
    assert sealed.sealed_at == NOW.replace(microsecond=0)
    report = SealVerifier(RegistryTrust(registry)).validate(sealed.jws, validation_time=NOW)
    assert report.indication is Indication.TOTAL_PASSED, report.message
    assert (report.signer_kid, report.signing_time) == (key.kid, sealed.sealed_at)


async def test_a_detached_seal_leaves_the_payload_out(fed: Federation, registry: Registry) -> None:
    key = seal_key(fed)
    sealed = await RegionSealer(REGION, {key.kid: key}).seal(
        registry, b"document", content_type="application/pdf", now=NOW, detached=True
    )
    assert sealed.jws.split(".")[1] == ""


async def test_a_key_the_gateway_does_not_hold_is_unavailable(
    fed: Federation, registry: Registry
) -> None:
    other = seal_key(fed, "510000")  # held, but not this region's active key
    sealer = RegionSealer(REGION, {other.kid: other})
    with pytest.raises(SealKeyUnavailable, match="this gateway does not hold it") as caught:
        await sealer.seal(registry, b"x", content_type="application/json", now=NOW)
    assert caught.value.reason == "SEAL_KEY_UNAVAILABLE"
    assert isinstance(caught.value, GatewayError)


def test_a_region_without_an_active_seal_key_is_unavailable(
    fed: Federation, registry: Registry
) -> None:
    key = seal_key(fed)
    without = dataclasses.replace(
        registry, keys=tuple(k for k in registry.keys if k.kid != key.kid)
    )
    with pytest.raises(SealKeyUnavailable, match="has no active seal key"):
        RegionSealer(REGION, {key.kid: key}).active_key(without, NOW)
    with pytest.raises(SealKeyUnavailable, match="has no active seal key"):  # not yet valid
        RegionSealer(REGION, {key.kid: key}).active_key(registry, NOW - timedelta(days=400))


def test_a_reload_is_seen_at_the_next_seal(fed: Federation, registry: Registry) -> None:
    keys: dict[str, KeyProvider] = {}
    sealer = RegionSealer(REGION, keys)
    with pytest.raises(SealKeyUnavailable):
        sealer.active_key(registry, NOW)
    key = seal_key(fed)
    keys[key.kid] = key  # what the gateway's reload does to its own map
    assert sealer.active_key(registry, NOW) is key


class _FailingModuleKey:
    """A key in a cryptographic module whose module has gone away."""

    def __init__(self, key: KeyProvider) -> None:
        self.kid, self.algorithm, self.certificate_chain = (
            key.kid,
            key.algorithm,
            key.certificate_chain,
        )

    def sign(self, signing_input: bytes) -> bytes:
        raise KeyModuleError(
            "signing with pkcs11:token=t;object=k: the module refused (DeviceRemoved)"
        )


async def test_a_key_that_cannot_sign_is_unavailable(
    fed: Federation, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    failing = _FailingModuleKey(seal_key(fed))
    sealer = RegionSealer(REGION, {failing.kid: failing})
    with pytest.raises(SealKeyUnavailable, match="its cryptographic module refused") as caught:
        await sealer.seal(registry, b"x", content_type="application/json", now=NOW)
    assert caught.value.reason == "SEAL_KEY_UNAVAILABLE"
    assert "pkcs11:" not in str(caught.value)  # where the module is stays in the log
    assert "(DeviceRemoved)" in caplog.text
