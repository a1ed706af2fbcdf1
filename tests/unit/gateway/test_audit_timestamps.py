"""Audit checkpoints time-stamped by a real TSA on loopback (`openssl ts -reply`): the gateway's
`AuditLog` asks for a token over each signed note (`checkpoint_stamper`), the SQLite store keeps
it beside the checkpoint, `openssl ts -verify` accepts it, and `tongban audit verify --tsa-ca`
checks it and prints its time. A TSA that does not answer leaves the checkpoint without one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_contract import make_record
from cli_support import Run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import Federation, make_federation
from tsa_support import Tsa, running_tsa

from gateway.audit import AuditLog, Checkpoint, SqliteAuditStore
from gateway.timestamps import checkpoint_stamper
from registry import KeyState, KeyUsage
from signer import TimeStampClient

REGION = "510000"
ORIGIN = f"audit.tongban/{REGION}"


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tsa]:
    with running_tsa(tmp_path_factory.mktemp("tsa")) as running:
        yield running


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return make_federation(tmp_path_factory.mktemp("audit-tsa"))


def _key(fed: Federation) -> ed25519.Ed25519PrivateKey:
    (record,) = fed.inventory().find(REGION, KeyUsage.AUDIT, KeyState.ACTIVE)
    key = serialization.load_pem_private_key((fed.pki / record.private_key).read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


async def _fill(path: Path, key: ed25519.Ed25519PrivateKey, stamper: TimeStampClient) -> Checkpoint:
    store = SqliteAuditStore(path)
    await store.open()
    try:
        for i in range(3):
            await store.append(make_record(i))
        log = AuditLog(store, origin=ORIGIN, key=key, key_name=ORIGIN)
        log.time_stamper = checkpoint_stamper(stamper)
        return await log.checkpoint()
    finally:
        await store.close()


def test_checkpoints_are_time_stamped_and_audit_verify_checks_them(
    tsa: Tsa, fed: Federation, run: Run, tmp_path: Path
) -> None:
    path = tmp_path / "audit-510000.db"
    stamper = TimeStampClient(tsa.url, anchors=[tsa.root])
    checkpoint = asyncio.run(_fill(path, _key(fed), stamper))
    assert checkpoint.time_stamp is not None
    assert tsa.verify(checkpoint.time_stamp, checkpoint.note.encode()) == "Verification: OK"
    (tmp_path / "tsa.pem").write_bytes(tsa.ca.root.read_bytes())
    options = ("audit", "verify", "--sqlite", path, "--pki", fed.pki, "--region", REGION)
    code, out, err = run(*options, "--tsa-ca", tmp_path / "tsa.pem")
    assert (code, err) == (0, "")
    assert "1 of 1 checkpoints time-stamped; the latest, size 3, existed at " in out
    assert "(time-stamp by CN=tsa,O=Region)" in out
    code, out, _ = run(*options, "--tsa-ca", tmp_path / "tsa.pem", "--json")
    assert code == 0
    stamps = json.loads(out)["time_stamps"]
    assert (stamps["stamped"], stamps["problems"], stamps["latest"]["size"]) == (1, [], 3)
    code, out, _ = run(*options)
    assert (code, out.splitlines()[1]) == (
        0,
        "1 of 1 checkpoints carry an RFC 3161 time-stamp (give --tsa-ca to check them)",
    )
    # anchors the TSA does not chain to: the time-stamp proves nothing, and that is an error
    (tmp_path / "other.pem").write_bytes((fed.pki / "roots.pem").read_bytes())
    code, out, _ = run(*options, "--tsa-ca", tmp_path / "other.pem")
    assert code == 1
    assert "the time-stamp of checkpoint size 3 proves nothing: the TSA certificate" in out


def test_a_checkpoint_is_kept_without_a_time_stamp_when_the_tsa_is_down(
    tsa: Tsa, fed: Federation, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = TimeStampClient("http://127.0.0.1:9/tsr", anchors=[tsa.root], timeout_seconds=1)
    checkpoint = asyncio.run(_fill(tmp_path / "audit.db", _key(fed), down))
    assert checkpoint.time_stamp is None
    assert "an audit checkpoint made without a time-stamp: the TSA is not reachable" in caplog.text
