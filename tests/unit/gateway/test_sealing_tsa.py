"""`RegionSealer` with the gateway's TSA client (`[timestamp]`): JAdES seals get a `sigTst`, SM2
seals a `timeStamp`, both from a real TSA on loopback (`openssl ts -reply`) and checked by
`openssl ts -verify`; a TSA that does not answer leaves the seal without a time-stamp, logged
and counted (the failure policy of `gateway.timestamps`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from support import Federation, make_federation
from tsa_support import Tsa, running_tsa

from gateway._wiring import load_seal_keys
from gateway.config import TimestampConfig
from gateway.demo.config import config_for_dev_pki
from gateway.errors import ConfigError
from gateway.metrics import GatewayMetrics
from gateway.sealing import RegionSealer
from gateway.services.credentials import report_message
from gateway.timestamps import make_time_stamper
from registry import (
    TRUSTED_ROOT,
    KeyState,
    KeyUsage,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    load_trusted_root,
)
from signer import FileKeyProvider, GmVerifier, SealVerifier, TimeStampClient, parse_jws
from signer._ses_asn1 import parse_signature

NOW = datetime.now(UTC).replace(microsecond=0)
REGION = "330000"


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tsa]:
    with running_tsa(tmp_path_factory.mktemp("tsa")) as running:
        yield running


def _registry(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / TRUSTED_ROOT))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


def _config(tsa: Tsa, folder: Path, url: str) -> TimestampConfig:
    anchors = folder / "tsa-roots.pem"
    anchors.write_bytes(tsa.root.public_bytes(Encoding.PEM))
    return TimestampConfig(anchors, url, timeout_seconds=1.0)


async def test_jades_seals_are_time_stamped_and_seal_anyway_when_the_tsa_is_down(
    tsa: Tsa, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fed = make_federation(tmp_path / "fed", now=NOW - timedelta(days=1))
    fed.publish(now=NOW - timedelta(hours=1))
    registry = _registry(fed)
    (record,) = fed.inventory().find(REGION, KeyUsage.SEAL, KeyState.ACTIVE)
    provider = FileKeyProvider(fed.pki / record.private_key, fed.pki / record.certificate)
    metrics = GatewayMetrics()
    config = _config(tsa, tmp_path, tsa.url)
    stamper = make_time_stamper(config, metrics)
    assert stamper is not None
    sealer = RegionSealer(REGION, {provider.kid: provider}, stamper=stamper)
    asked = datetime.now(UTC)  # the TSA's clock, not the seal's claimed NOW (taken at import)
    sealed = await sealer.seal(registry, b'{"a": 1}', content_type="application/json", now=NOW)
    (token,) = parse_jws(sealed.jws)[1].time_stamps
    signature_b64 = json.loads(sealed.jws)["signature"].encode("ascii")
    assert tsa.verify(token, signature_b64) == "Verification: OK"
    report = SealVerifier(RegistryTrust(registry), tsa_anchors=config.anchors()).validate(
        sealed.jws
    )
    assert report.passed, report.message
    assert report.proof_of_existence is not None
    assert abs(report.proof_of_existence - asked) < timedelta(minutes=2)
    message = report_message(report)  # the wire's ValidationReport carries it too
    assert message.proof_of_existence.ToDatetime(UTC) == report.proof_of_existence
    assert message.time_stamp_authority == "CN=tsa,O=Region"
    ok = metrics.registry.get_sample_value("tongban_timestamp_requests_total", {"result": "ok"})
    assert ok == 1
    # the TSA does not answer: the seal is made, compact (baseline-B), logged and counted
    down = make_time_stamper(_config(tsa, tmp_path, "http://127.0.0.1:9/tsr"), metrics)
    assert down is not None
    with caplog.at_level(logging.WARNING):
        plain = await RegionSealer(REGION, {provider.kid: provider}, stamper=down).seal(
            registry, b"x", content_type="application/json", now=NOW
        )
    assert plain.jws.count(".") == 2
    assert "a JAdES seal made without a time-stamp: the TSA is not reachable" in caplog.text
    labels = {"result": "unreachable"}
    assert metrics.registry.get_sample_value("tongban_timestamp_requests_total", labels) == 1
    assert make_time_stamper(TimestampConfig(config.tsa_certificates), metrics) is None


async def test_an_sm2_seal_carries_a_time_stamp_openssl_verifies(tsa: Tsa, tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "fed", now=NOW - timedelta(hours=1), seal_algorithm="SM2")
    fed.publish(now=NOW - timedelta(minutes=30))
    registry = _registry(fed)
    config = config_for_dev_pki(fed.pki, REGION, listen="127.0.0.1:0", snapshot_file=fed.current)
    held = dict(load_seal_keys(config))
    stamper = TimeStampClient(tsa.url, anchors=[tsa.root])
    sealer = RegionSealer(REGION, held, stamper=stamper)  # type: ignore[arg-type]
    sealed = await sealer.seal(registry, b"payload", content_type="application/json", now=NOW)
    view = parse_signature(sealed.ses_signature)
    assert view.time_stamp is not None
    assert tsa.verify(view.time_stamp, view.signature) == "Verification: OK"
    gm = GmVerifier(RegistryTrust(registry), tsa_anchors=[tsa.root])  # as [timestamp] gives
    report = gm.validate_signature(sealed.ses_signature, b"payload")
    assert report.passed, report.message
    assert report.proof_of_existence is not None
    assert "the TSA chains to a configured TSA anchor" in next(
        c.detail for c in report.checks if c.name == "time-stamp"
    )


def test_timestamp_config_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"timestamp\.url: 'ftp://x' is not an http"):
        TimestampConfig(tmp_path / "a.pem", "ftp://x")
    with pytest.raises(ConfigError, match=r"timestamp\.timeout_seconds"):
        TimestampConfig(tmp_path / "a.pem", "http://tsa", timeout_seconds=0)
    with pytest.raises(ConfigError, match=r"a\.pem: cannot be read"):
        TimestampConfig(tmp_path / "a.pem").anchors()
    (tmp_path / "b.pem").write_text("not PEM")
    with pytest.raises(ConfigError, match="not a PEM bundle of certificates"):
        TimestampConfig(tmp_path / "b.pem").anchors()
