"""`tongban audit verify --snapshot`: a checkpoint counts only with the registry's
witness_threshold of valid cosignatures by the witnesses of the other regions (their audit keys
in the registry); cosignatures by unknown keys or names do not count; the options are checked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from audit_contract import make_record
from cli_support import Run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import Federation, make_federation

from gateway.audit import AuditLog, SqliteAuditStore, cosign, witness_store_for
from registry import KeyState, KeyUsage

REGION = "510000"
ORIGIN = f"audit.tongban/{REGION}"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    made = make_federation(tmp_path_factory.mktemp("witness-cli"))
    made.publish()
    return made


def _audit_key(fed: Federation, region: str) -> ed25519.Ed25519PrivateKey:
    (record,) = fed.inventory().find(region, KeyUsage.AUDIT, KeyState.ACTIVE)
    key = serialization.load_pem_private_key((fed.pki / record.private_key).read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def _store(
    fed: Federation, path: Path, cosigners: list[tuple[str, ed25519.Ed25519PrivateKey]]
) -> None:
    """Five records, a checkpoint, and the cosignatures of (witness name, key) on it."""

    async def fill() -> None:
        store = SqliteAuditStore(path)
        await store.open()
        log = AuditLog(store, origin=ORIGIN, key=_audit_key(fed, REGION), key_name=ORIGIN)
        for i in range(5):
            await log.append(make_record(i))
        checkpoint = await log.checkpoint()
        kept = witness_store_for(store)
        for name, key in cosigners:
            made = cosign(checkpoint.body, key, name, 1_765_000_000)
            await kept.add_cosignature(checkpoint.size, checkpoint.root, made)
        await store.close()

    asyncio.run(fill())


def _verify(run: Run, fed: Federation, db: Path, *more: str | Path) -> tuple[int, str, str]:
    return run(
        "audit", "verify", "--sqlite", db, "--pki", fed.pki, "--region", REGION,
        "--snapshot", fed.current, *more,
    )  # fmt: skip


def test_one_valid_cosignature_meets_the_demo_threshold(
    run: Run, fed: Federation, tmp_path: Path
) -> None:
    db = tmp_path / "a.db"
    _store(fed, db, [("witness.tongban/330000", _audit_key(fed, "330000"))])
    code, out, err = _verify(run, fed, db)
    assert code == 0, err
    assert "INTACT" in out
    assert "WITNESSED — checkpoint size 5 cosigned by witness.tongban/330000 (1 required)" in out
    code, out, _ = _verify(run, fed, db, "--json")
    assert code == 0
    witnessing = json.loads(out)["witnessing"]
    assert witnessing["witnessed"] is True
    assert witnessing["latest_cosigners"] == ["witness.tongban/330000"]
    assert witnessing["witnessed_checkpoint"]["note"].endswith(
        "\n\u2014 witness.tongban/330000 "
        + witnessing["witnessed_checkpoint"]["note"].split(" ")[-1]
    )


@pytest.mark.parametrize(
    "cosigner",
    [
        "none",
        "a key the registry does not know",
        "the log's own region as its witness",
        "a region's key under another region's name",
    ],
)
def test_a_checkpoint_without_enough_valid_cosignatures_is_not_accepted(
    run: Run, fed: Federation, tmp_path: Path, cosigner: str
) -> None:
    cosigners = {
        "none": [],
        "a key the registry does not know": [
            ("witness.tongban/330000", ed25519.Ed25519PrivateKey.generate())
        ],
        "the log's own region as its witness": [
            (f"witness.tongban/{REGION}", _audit_key(fed, REGION))
        ],
        "a region's key under another region's name": [
            ("witness.tongban/500000", _audit_key(fed, "330000"))
        ],
    }[cosigner]
    db = tmp_path / "b.db"
    _store(fed, db, cosigners)
    code, out, _ = _verify(run, fed, db)
    assert code == 1
    assert "INTACT" in out
    assert "NOT WITNESSED — no checkpoint holds 1 valid cosignature(s)" in out


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--authority", "a.pem"], "--authority checks a registry snapshot: give --snapshot too"),
        (
            ["--snapshot", "s.jws", "--audit-cert", "c.pem", "--region", REGION],
            "--snapshot needs --authority or --pki",
        ),
        (
            [
                "--snapshot",
                "s.jws",
                "--audit-cert",
                "c.pem",
                "--authority",
                "a.pem",
                "--origin",
                "x",
            ],
            "--snapshot needs --region",
        ),
    ],
)
def test_option_mistakes_are_usage_errors(run: Run, argv: list[str], problem: str) -> None:
    base = ["audit", "verify", "--sqlite", "none.db"]
    if "--audit-cert" not in argv and "--pki" not in argv:
        base += ["--pki", "p", "--region", REGION]
    code, _, err = run(*base, *argv)
    assert code == 2
    assert problem in err
    assert "Traceback" not in err
