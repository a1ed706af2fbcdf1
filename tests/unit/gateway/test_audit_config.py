"""The [audit] section: every store, every mistake named with file and key; the dev PKI's
audit setup; the gateway refusing an audit key that cannot sign checkpoints."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import Federation, make_federation

from gateway.config import AuditConfig, GatewayConfig
from gateway.demo.config import config_for_dev_pki
from gateway.errors import ConfigError
from gateway.server import build_audit_log
from registry import KeyState, KeyUsage
from signer import generate_private_key, write_private_key


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    federation = make_federation(tmp_path_factory.mktemp("fed"))
    federation.publish()
    return federation


def _write(tmp_path: Path, fed: Federation, audit: str) -> Path:
    tls_chain, tls_key = fed.tls_files("330000")
    (tmp_path / "pseudonym.secret").write_text("p" * 32 + "\n")
    (audit_record,) = fed.inventory().find("330000", KeyUsage.AUDIT, KeyState.ACTIVE)
    text = f"""
[gateway]
region = "330000"
listen = "127.0.0.1:0"
[tls]
certificate = "{tls_chain}"
private_key = "{tls_key}"
[registry]
trusted_root = "{fed.pki / "authority" / "root.json"}"
snapshot_file = "{fed.current}"
[audit]
key = "{fed.pki / audit_record.private_key}"
{audit}
"""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_sqlite_audit(tmp_path: Path, fed: Federation) -> None:
    config = GatewayConfig.from_file(
        _write(
            tmp_path,
            fed,
            'store = "sqlite"\npath = "audit.db"\npseudonym_key_file = "pseudonym.secret"\ncheckpoint_every_records = 50\ncheckpoint_every_seconds = 5',
        )
    )
    assert config.audit is not None
    assert (config.audit.store, config.audit.path, config.audit.checkpoint_every_records) == (
        "sqlite",
        tmp_path / "audit.db",
        50,
    )
    assert config.audit.pseudonym_key == b"p" * 32
    assert "p" * 32 not in repr(config)  # secrets stay out of reprs and so out of logs


def test_postgres_audit_reads_its_dsn_from_the_environment(
    tmp_path: Path, fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIT_DSN", "host=db user=gw password=s3cret")
    monkeypatch.setenv("PSEUDONYM", "q" * 20)
    config = GatewayConfig.from_file(
        _write(
            tmp_path,
            fed,
            'store = "postgres"\ndsn_env = "AUDIT_DSN"\npseudonym_key_env = "PSEUDONYM"',
        )
    )
    assert config.audit is not None
    assert config.audit.dsn == "host=db user=gw password=s3cret"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("audit", "key", "reason"),
    [
        (
            'store = "mongo"\npath = "a.db"\npseudonym_key_file = "pseudonym.secret"',
            "audit.store",
            "not one of",
        ),
        ('store = "sqlite"\npseudonym_key_file = "pseudonym.secret"', "audit.path", "needs a file"),
        (
            'store = "postgres"\npseudonym_key_file = "pseudonym.secret"',
            "audit.dsn_env",
            "needs a DSN",
        ),
        (
            'store = "postgres"\ndsn_env = "NOPE_NOT_SET"\npseudonym_key_file = "pseudonym.secret"',
            "audit.dsn_env",
            "NOPE_NOT_SET is not set",
        ),
        ('store = "memory"', "audit", "exactly one of pseudonym_key_file and pseudonym_key_env"),
        (
            'store = "memory"\npseudonym_key_file = "pseudonym.secret"\npseudonym_key_env = "X"',
            "audit",
            "exactly one",
        ),
        (
            'store = "memory"\npseudonym_key_file = "short.secret"',
            "audit.pseudonym_key",
            "at least 16 bytes",
        ),
        (
            'store = "memory"\npseudonym_key_file = "pseudonym.secret"\nretention = 3',
            "audit.retention",
            "unknown key",
        ),
        (  # the origin names the checkpoint key, and a signed-note key name has no spaces
            'store = "memory"\npseudonym_key_file = "pseudonym.secret"\norigin = "audit tongban"',
            "audit.origin",
            "no white space",
        ),
    ],
)
def test_audit_mistakes_name_file_and_key(
    tmp_path: Path, fed: Federation, audit: str, key: str, reason: str
) -> None:
    (tmp_path / "short.secret").write_text("short\n")
    path = _write(tmp_path, fed, audit)
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.from_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}")
    assert reason in message


def test_dev_pki_audits_in_memory_or_in_sqlite(tmp_path: Path, fed: Federation) -> None:
    memory = config_for_dev_pki(fed.pki, "510000", listen="127.0.0.1:0", snapshot_file=fed.current)
    assert memory.audit is not None
    assert (memory.audit.store, memory.audit.path) == ("memory", None)
    assert len(memory.audit.pseudonym_key) >= 16
    on_disk = config_for_dev_pki(
        fed.pki,
        "510000",
        listen="127.0.0.1:0",
        snapshot_file=fed.current,
        audit_db=tmp_path / "a.db",
    )
    assert on_disk.audit is not None
    assert (on_disk.audit.store, on_disk.audit.path) == ("sqlite", tmp_path / "a.db")
    log = build_audit_log(on_disk, clock=lambda: datetime.now(UTC))
    assert log is not None
    # C2SP: the key is named after the log; checkpoints signed under the old name still verify
    assert (log.origin, log.key_name) == ("audit.tongban/510000", "audit.tongban/510000")
    assert log.key_names == ("audit.tongban/510000", "audit-510000")


def test_an_audit_key_that_is_not_ed25519_is_refused(tmp_path: Path, fed: Federation) -> None:
    config = config_for_dev_pki(fed.pki, "330000", listen="127.0.0.1:0", snapshot_file=fed.current)
    assert config.audit is not None
    p256 = tmp_path / "p256.key"
    write_private_key(p256, generate_private_key("ES256"))
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        build_audit_log(
            dataclasses.replace(config, audit=dataclasses.replace(config.audit, key=p256)),
            clock=lambda: None,
        )  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match=r"audit\.key"):
        build_audit_log(
            dataclasses.replace(
                config, audit=dataclasses.replace(config.audit, key=tmp_path / "missing.key")
            ),
            clock=lambda: None,
        )  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="checkpoint_every_records"):
        AuditConfig(store="memory", key=p256, pseudonym_key=b"k" * 16, checkpoint_every_records=0)
