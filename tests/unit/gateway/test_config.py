"""Gateway configuration: TOML into a typed object; every mistake names the file and the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from support import Federation, make_federation

from gateway.cli import main
from gateway.config import ExchangeConfig, GatewayConfig, read_passphrase
from gateway.demo.config import config_for_dev_pki, load_config
from gateway.errors import ConfigError
from registry import TRUSTED_ROOT, KeyState, KeyUsage

Document = dict[str, Any]

VALID: Document = {
    "gateway": {"region": "330000", "listen": "127.0.0.1:7330", "grace_seconds": 3},
    "tls": {
        "certificate": "pki/regions/330000/keys/tls.pem",
        "private_key": "pki/regions/330000/keys/tls.key",
    },
    "registry": {
        "authority_public_key": "pki/authority/authority.pub.pem",
        "snapshot_file": "published/current.jws",
        "poll_seconds": 0.5,
    },
}


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(document: Document) -> str:
    scalars = [f"{k} = {toml_value(v)}" for k, v in document.items() if not isinstance(v, dict)]
    tables = [
        f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items())
        for name, body in document.items()
        if isinstance(body, dict)
    ]
    return "\n".join(scalars) + "\n" + "\n".join(tables)


def write(folder: Path, document: Document | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(document if isinstance(document, str) else to_toml(document), "utf-8")
    return path


def changed(section: str, key: str, value: Any) -> Document:
    """VALID with one key set (or, for value None, removed)."""
    document = copy.deepcopy(VALID)
    if value is None:
        del document[section][key]
    else:
        document[section][key] = value
    return document


@pytest.fixture(autouse=True)
def _no_passphrase_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TONGBAN_UNSET_PASSPHRASE", raising=False)


# from_file: the happy path ---------------------------------------------------------------------
def test_from_file_resolves_relative_paths_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "tongban"
    path = write(folder, VALID)
    config = GatewayConfig.from_file(path)
    assert config.region == "330000"
    assert config.listen == "127.0.0.1:7330"
    assert config.grace_seconds == 3.0
    assert config.poll_seconds == 0.5
    assert config.tls_certificate == folder / "pki/regions/330000/keys/tls.pem"
    assert config.tls_private_key == folder / "pki/regions/330000/keys/tls.key"
    assert config.authority_public_key == folder / "pki/authority/authority.pub.pem"
    assert config.snapshot_file == folder / "published/current.jws"
    assert config.follow == ""
    assert config.bootstrap_ca_file is None
    assert config.tls_passphrase is None
    assert config.seal_keys == ()


def with_seal_keys(*entries: str) -> str:
    """VALID plus `[[seal.keys]]` tables (to_toml knows no arrays of tables)."""
    return to_toml(VALID) + "".join(f"\n[[seal.keys]]\n{entry}\n" for entry in entries)


def test_from_file_reads_seal_keys(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    absolute = tmp_path / "hsm-export" / "seal.key"
    document = with_seal_keys(
        'certificate = "pki/seal-old.pem"\nprivate_key = "pki/seal-old.key"',
        f'certificate = "pki/seal-new.pem"\nprivate_key = {json.dumps(str(absolute))}',
    )
    config = GatewayConfig.from_file(write(folder, document))
    assert config.seal_keys == (
        (folder / "pki/seal-old.pem", folder / "pki/seal-old.key"),
        (folder / "pki/seal-new.pem", absolute),
    )
    assert (
        GatewayConfig.from_file(write(tmp_path / "empty", to_toml(VALID) + "[seal]\n")).seal_keys
        == ()
    )


def test_from_file_defaults_absolute_paths_and_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret" / "passphrase"
    secret.parent.mkdir()
    secret.write_bytes(b"s3cret\r\n")
    document = copy.deepcopy(VALID)
    del document["gateway"]["grace_seconds"]
    del document["registry"]["poll_seconds"]
    document["tls"]["passphrase_file"] = str(secret)  # absolute: kept as it is
    document["registry"]["follow"] = "gw.510000.example:7510"
    document["registry"]["bootstrap_ca_file"] = "ca/bundle.pem"
    config = GatewayConfig.from_file(write(tmp_path / "conf", document))
    assert config.grace_seconds == 5.0
    assert config.poll_seconds == 2.0
    assert config.tls_passphrase == b"s3cret"
    assert config.follow == "gw.510000.example:7510"
    assert config.bootstrap_ca_file == tmp_path / "conf" / "ca" / "bundle.pem"
    assert "s3cret" not in repr(config)  # the passphrase never shows in a log line

    monkeypatch.setenv("TONGBAN_TEST_PASSPHRASE", "from the environment")
    document["tls"] = {**VALID["tls"], "passphrase_env": "TONGBAN_TEST_PASSPHRASE"}
    config = GatewayConfig.from_file(write(tmp_path / "conf2", document))
    assert config.tls_passphrase == b"from the environment"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        pytest.param("registry", "snapshot_file", None, id="follow-only-with-bootstrap"),
        pytest.param("registry", "follow", "", id="snapshot-only-empty-follow"),
        pytest.param("gateway", "listen", "[::1]:0", id="ipv6-port-0"),
        pytest.param("gateway", "listen", "gw.example:65535", id="hostname-max-port"),
        pytest.param("gateway", "metrics_listen", "127.0.0.1:9330", id="metrics-listen"),
    ],
)
def test_from_file_accepts(tmp_path: Path, section: str, key: str, value: Any) -> None:
    document = changed(section, key, value)
    if key == "snapshot_file":
        document["registry"] |= {"follow": "peer:7510", "bootstrap_ca_file": "ca.pem"}
    config = GatewayConfig.from_file(write(tmp_path, document))
    assert config.region == "330000"


def test_cases_default_to_bound_queries_and_4_mib(tmp_path: Path) -> None:
    config = GatewayConfig.from_file(write(tmp_path, VALID))
    assert config.cases.bind_queries is True
    assert config.cases.max_material_bytes == 4 * 1024 * 1024
    limit = to_toml(VALID) + "[cases]\nbind_queries = false\nmax_material_bytes = 12582912\n"
    config = GatewayConfig.from_file(write(tmp_path / "conf2", limit))
    assert config.cases.bind_queries is False
    assert config.cases.max_material_bytes == 12 * 1024 * 1024


# from_file: every error names the file and the key ----------------------------------------------
def follow_only(bootstrap: bool) -> Document:
    document = changed("registry", "snapshot_file", None)
    document["registry"]["follow"] = "peer.example:7510"
    if bootstrap:
        document["registry"]["bootstrap_ca_file"] = ""
    return document


ERRORS: dict[str, tuple[Document | str, list[str]]] = {
    # missing keys and sections
    **{
        f"missing-{section}.{key}": (changed(section, key, None), [f"{section}.{key}", "missing"])
        for section, key in [
            ("gateway", "region"),
            ("gateway", "listen"),
            ("tls", "certificate"),
            ("tls", "private_key"),
        ]
    },
    "missing-registry-trust": (
        changed("registry", "authority_public_key", None),
        ["registry.trusted_root", "registry.authority_public_key", "exactly one"],
    ),
    "missing-section-tls": (
        {k: v for k, v in VALID.items() if k != "tls"},
        ["tls.certificate", "missing"],
    ),
    # unknown keys and sections
    **{
        f"unknown-key-in-{section}": (
            changed(section, "colour", "red"),
            [f"{section}.colour", "unknown key"],
        )
        for section in ("gateway", "tls", "registry")
    },
    "unknown-key-typo": (
        changed("registry", "snapshot_files", "x.jws"),
        ["registry.snapshot_files", "unknown key"],
    ),
    "unknown-section": ({**VALID, "metrics": {"port": 9100}}, ["[metrics]", "unknown section"]),
    # wrong types
    "section-not-a-table": ({**VALID, "gateway": "330000"}, ["[gateway]", "must be a table"]),
    "region-not-a-string": (changed("gateway", "region", 330000), ["gateway.region", "string"]),
    "listen-not-a-string": (changed("gateway", "listen", 7330), ["gateway.listen", "string"]),
    "certificate-not-a-string": (
        changed("tls", "certificate", ["a.pem"]),
        ["tls.certificate", "string"],
    ),
    "passphrase-env-not-a-string": (
        changed("tls", "passphrase_env", 1),
        ["tls.passphrase_env", "string"],
    ),
    "snapshot-file-not-a-string": (
        changed("registry", "snapshot_file", True),
        ["registry.snapshot_file", "string"],
    ),
    "grace-a-string": (
        changed("gateway", "grace_seconds", "5"),
        ["gateway.grace_seconds", "positive number"],
    ),
    "grace-zero": (
        changed("gateway", "grace_seconds", 0),
        ["gateway.grace_seconds", "positive number"],
    ),
    "poll-negative": (
        changed("registry", "poll_seconds", -1.5),
        ["registry.poll_seconds", "positive number"],
    ),
    "poll-boolean": (
        changed("registry", "poll_seconds", True),
        ["registry.poll_seconds", "positive number"],
    ),
    "poll-nan": (
        to_toml(VALID).replace("poll_seconds = 0.5", "poll_seconds = nan"),
        ["registry.poll_seconds", "positive number"],
    ),
    "grace-inf": (
        to_toml(VALID).replace("grace_seconds = 3", "grace_seconds = inf"),
        ["gateway.grace_seconds", "positive number"],
    ),
    # values
    "region-unknown": (changed("gateway", "region", "999999"), ["gateway.region", "'999999'"]),
    "region-not-province-level": (
        changed("gateway", "region", "330100"),
        ["gateway.region", "GB/T 2260"],
    ),
    **{
        f"listen-{name}": (changed("gateway", "listen", listen), ["gateway.listen", "host:port"])
        for name, listen in [
            ("no-port", "127.0.0.1"),
            ("no-host", ":7330"),
            ("port-not-a-number", "127.0.0.1:http"),
            ("port-too-large", "127.0.0.1:65536"),
            ("port-negative", "127.0.0.1:-1"),
            ("port-superscript-digits", "127.0.0.1:²³"),
            ("empty", ""),
            ("ipv6-without-brackets", "::1:7330"),
            ("ipv6-not-an-address", "[::zz]:7330"),
            ("host-not-a-name", "bad_host!:7330"),
            ("ipv4-out-of-range", "127.0.0.300:7330"),
            ("space", "127.0.0.1: 7330"),
            ("control-character", "127.0.0.1:73\x0030"),
        ]
    },
    "follow-without-port": (
        changed("registry", "follow", "peer.example"),
        ["registry.follow", "host:port"],
    ),
    "follow-port-zero": (
        changed("registry", "follow", "peer.example:0"),
        ["registry.follow", "from 1 to 65535"],
    ),
    "peer-ipv6-without-brackets": (
        to_toml(VALID) + '[peers]\n"510000" = "::1:7510"\n',
        ["peers.510000", "host:port"],
    ),
    **{
        f"metrics-listen-{name}": (
            changed("gateway", "metrics_listen", listen),
            ["gateway.metrics_listen", "host:port"],
        )
        for name, listen in [("no-port", "127.0.0.1"), ("port-too-large", "0.0.0.0:70000")]
    },
    "metrics-listen-not-a-string": (
        changed("gateway", "metrics_listen", 9330),
        ["gateway.metrics_listen", "string"],
    ),
    "neither-snapshot-nor-follow": (
        changed("registry", "snapshot_file", None),
        ["registry", "snapshot_file", "follow"],
    ),
    "empty-snapshot-and-follow": (
        changed("registry", "snapshot_file", ""),
        ["registry", "snapshot_file", "follow"],
    ),
    "follow-without-snapshot-or-bootstrap": (
        follow_only(bootstrap=False),
        ["registry.bootstrap_ca_file", "follow"],
    ),
    "follow-with-empty-bootstrap": (
        follow_only(bootstrap=True),
        ["registry.bootstrap_ca_file", "follow"],
    ),
    # secrets
    "passphrase-env-unset": (
        changed("tls", "passphrase_env", "TONGBAN_UNSET_PASSPHRASE"),
        ["tls.passphrase_env", "TONGBAN_UNSET_PASSPHRASE", "not set"],
    ),
    "passphrase-file-missing": (
        changed("tls", "passphrase_file", "secret/missing"),
        ["tls.passphrase_file", "secret/missing", "cannot be read"],
    ),
    # seal keys
    "seal-key-without-private-key": (
        with_seal_keys('certificate = "a.pem"'),
        ["seal.keys[0].private_key", "missing"],
    ),
    "seal-key-second-without-certificate": (
        with_seal_keys('certificate = "a.pem"\nprivate_key = "a.key"', 'private_key = "b.key"'),
        ["seal.keys[1].certificate", "missing"],
    ),
    "seal-key-unknown-key": (
        with_seal_keys('certificate = "a.pem"\nprivate_key = "a.key"\npassphrase = "x"'),
        ["seal.keys[0].passphrase", "unknown key"],
    ),
    "seal-unknown-key": (
        to_toml(VALID) + '[seal]\nkey = "a.pem"\n',
        ["seal.key", "unknown key"],
    ),
    "seal-keys-not-an-array": (
        to_toml(VALID) + '[seal]\nkeys = "a.pem"\n',
        ["seal.keys", "array of tables"],
    ),
    "seal-keys-entry-not-a-table": (
        to_toml(VALID) + '[seal]\nkeys = ["a.pem"]\n',
        ["seal.keys[0]", "must be a table"],
    ),
    "seal-key-path-not-a-string": (
        with_seal_keys('certificate = 1\nprivate_key = "a.key"'),
        ["seal.keys[0].certificate", "string"],
    ),
    "revocation-policy-unknown": (
        to_toml(VALID) + '[revocation]\nunreachable = "ignore"\n',
        ["revocation.unreachable", "'ignore' is not one of hard-fail, soft-fail"],
    ),
    "revocation-online-not-a-boolean": (
        to_toml(VALID) + '[revocation]\nonline = "yes"\n',
        ["revocation.online", "true or false"],
    ),
    "revocation-timeout-not-positive": (
        to_toml(VALID) + "[revocation]\ntimeout_seconds = 0\n",
        ["revocation.timeout_seconds", "positive number"],
    ),
    "revocation-unknown-key": (
        to_toml(VALID) + "[revocation]\ncrl_only = true\n",
        ["revocation.crl_only", "unknown key"],
    ),
    "cases-bind-queries-not-a-boolean": (
        to_toml(VALID) + '[cases]\nbind_queries = "no"\n',
        ["cases.bind_queries", "true or false"],
    ),
    "cases-material-limit-not-a-count": (
        to_toml(VALID) + "[cases]\nmax_material_bytes = 1.5\n",
        ["cases.max_material_bytes", "whole number of bytes"],
    ),
    "cases-material-limit-a-boolean": (
        to_toml(VALID) + "[cases]\nmax_material_bytes = true\n",
        ["cases.max_material_bytes", "whole number of bytes"],
    ),
    "cases-material-limit-over-12-mib": (
        to_toml(VALID) + "[cases]\nmax_material_bytes = 12582913\n",
        ["cases.max_material_bytes", "12582913 is not from 1 to 12582912 bytes"],
    ),
    "cases-material-limit-zero": (
        to_toml(VALID) + "[cases]\nmax_material_bytes = 0\n",
        ["cases.max_material_bytes", "not from 1"],
    ),
    "cases-unknown-key": (
        to_toml(VALID) + "[cases]\nbind = false\n",
        ["cases.bind", "unknown key"],
    ),
    # the file itself
    "not-toml": ("[gateway\nregion = ", ["not valid TOML"]),
}


@pytest.mark.parametrize(("document", "fragments"), ERRORS.values(), ids=ERRORS.keys())
def test_from_file_error_names_file_and_key(
    tmp_path: Path, document: Document | str, fragments: list[str]
) -> None:
    path = write(tmp_path, document)
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.from_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert message.count(str(path)) == 1  # named once, not repeated by nested wrapping
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_from_file_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="cannot be read") as caught:
        GatewayConfig.from_file(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_from_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(to_toml(VALID).encode() + b"# \xe9\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        GatewayConfig.from_file(path)


def test_config_file_error_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, changed("tls", "colour", "red"))
    assert main(["gateway", "serve", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"tongban: {path}: tls.colour: unknown key\n"


# read_passphrase --------------------------------------------------------------------------------
def test_read_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "p"
    secret.write_bytes(b"line\n")
    monkeypatch.setenv("TONGBAN_TEST_PASSPHRASE", "env value")
    assert read_passphrase(None, None) is None
    assert read_passphrase(None, "") is None
    assert read_passphrase(secret, None) == b"line"
    assert read_passphrase(None, "TONGBAN_TEST_PASSPHRASE") == b"env value"
    assert read_passphrase(secret, "TONGBAN_TEST_PASSPHRASE") == b"line"  # the file wins
    with pytest.raises(ConfigError, match=r"TONGBAN_UNSET_PASSPHRASE .*not set"):
        read_passphrase(None, "TONGBAN_UNSET_PASSPHRASE")
    with pytest.raises(ConfigError, match="passphrase file cannot be read"):
        read_passphrase(tmp_path / "nope", None)


# for_dev_pki ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return make_federation(tmp_path_factory.mktemp("dev"))


@pytest.mark.parametrize("region", ["330000", "510000", "500000"])
def test_for_dev_pki_picks_the_regions_active_tls_key(dev: Federation, region: str) -> None:
    snapshot = dev.published / "current.jws"
    config = config_for_dev_pki(
        dev.pki, region, listen="127.0.0.1:0", snapshot_file=snapshot, passphrase=b"pw"
    )
    certificate, private_key = dev.tls_files(region)
    assert config.region == region
    assert config.tls_certificate == certificate
    assert config.tls_private_key == private_key
    assert certificate.is_file()
    assert private_key.is_file()
    assert config.trusted_root == dev.pki / TRUSTED_ROOT
    assert config.trust_anchor.is_file()
    assert config.snapshot_file == snapshot
    assert config.tls_passphrase == b"pw"
    assert config.follow == ""


def test_for_dev_pki_ignores_a_pending_tls_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = make_federation(tmp_path)
    before = fed.tls_files("330000")
    assert (
        main(["keys", "rotate", "--pki", str(fed.pki), "--owner", "330000", "--usage", "tls"]) == 0
    )
    capsys.readouterr()
    (pending,) = fed.inventory().find("330000", KeyUsage.TLS, KeyState.PENDING)
    config = config_for_dev_pki(
        fed.pki, "330000", listen="127.0.0.1:0", snapshot_file=None, follow="peer:1"
    )
    assert (config.tls_certificate, config.tls_private_key) == before
    assert config.tls_certificate != fed.pki / pending.certificate


@pytest.mark.parametrize(
    ("region", "listen", "snapshot", "fragments"),
    [
        pytest.param(
            "440000", "127.0.0.1:0", True, ["440000", "no active TLS key"], id="region-not-in-pki"
        ),
        pytest.param("330000", "nowhere", True, ["gateway.listen", "host:port"], id="bad-listen"),
        pytest.param("330000", "127.0.0.1:0", False, ["snapshot_file", "follow"], id="no-registry"),
    ],
)
def test_for_dev_pki_refusals(
    dev: Federation, region: str, listen: str, snapshot: bool, fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_for_dev_pki(
            dev.pki, region, listen=listen, snapshot_file=dev.current if snapshot else None
        )
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_for_dev_pki_without_inventory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no key inventory"):
        config_for_dev_pki(tmp_path, "330000", listen="127.0.0.1:0", snapshot_file=None)


def test_for_dev_pki_holds_every_unrevoked_seal_key_of_the_region(tmp_path: Path) -> None:
    fed = make_federation(tmp_path)
    (old,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    config = config_for_dev_pki(fed.pki, "330000", listen="127.0.0.1:0", snapshot_file=fed.current)
    assert config.seal_keys == ((fed.pki / old.certificate, fed.pki / old.private_key),)

    rotate = ["keys", "rotate", "--pki", str(fed.pki), "--owner", "330000", "--usage", "seal"]
    assert main(rotate) == 0
    (pending,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.PENDING)
    config = config_for_dev_pki(fed.pki, "330000", listen="127.0.0.1:0", snapshot_file=fed.current)
    assert {certificate for certificate, _ in config.seal_keys} == {
        fed.pki / old.certificate,
        fed.pki / pending.certificate,
    }

    assert (
        main(["keys", "revoke", old.kid, "--pki", str(fed.pki), "--reason", "keyCompromise"]) == 0
    )
    config = config_for_dev_pki(fed.pki, "330000", listen="127.0.0.1:0", snapshot_file=fed.current)
    assert config.seal_keys == ((fed.pki / pending.certificate, fed.pki / pending.private_key),)
    # Agencies' seal keys are theirs, not the gateway's.
    assert all("agencies" not in str(c) for c, _ in config.seal_keys)


@pytest.mark.parametrize(
    ("provider", "fragment"),
    [
        ("10.1.2.3:9500", "is not a loopback address"),
        ("data.example:9500", "is not a loopback address"),
        ("127.0.0.1", "is not host:port"),
        ("[::1]:0", "from 1 to 65535"),
        ("::1:9500", "in brackets"),
    ],
)
def test_the_data_system_is_a_loopback_host_port(provider: str, fragment: str) -> None:
    """It is called without TLS: another machine's address is refused when the configuration
    is read, not with a traceback when the gateway builds its client."""
    with pytest.raises(ConfigError, match=r"^exchange\.provider: ") as caught:
        ExchangeConfig(cache_key=bytes(32), provider=provider)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("provider", ["127.0.0.1:9500", "[::1]:9500", "localhost:9500"])
def test_a_loopback_data_system_is_accepted(provider: str) -> None:
    assert ExchangeConfig(cache_key=bytes(32), provider=provider).provider == provider


def test_a_dev_pki_file_is_read_by_the_demo_loader_only(dev: Federation, tmp_path: Path) -> None:
    path = tmp_path / "dev.toml"
    path.write_text(
        f'[gateway]\nregion = "330000"\nlisten = "127.0.0.1:0"\ndev_pki = "{dev.pki}"\n\n'
        f'[registry]\nsnapshot_file = "{dev.published / "current.jws"}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"dev\.toml: \[gateway\] dev_pki: a development"):
        GatewayConfig.from_file(path)
    config = load_config(path)
    assert (config.region, config.tls_certificate) == ("330000", dev.tls_files("330000")[0])
