"""The configuration reference (gateway/config_reference.py) and its copy in docs/operators.md.

The loader in gateway/config.py has no list of the keys it accepts: each `_Section` records the
keys it is asked for, and `done()` refuses the others. These tests run the real loader on files
that use every section and record those keys, so the reference's table of keys can neither
miss a key nor list one the loader would refuse.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
from support import make_federation

from gateway import config as config_module
from gateway import config_reference as reference
from gateway.config import GatewayConfig
from gateway.demo.config import load_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
OPERATORS = ROOT / "docs" / "operators.md"
HEX_KEY = "00112233445566778899aabbccddeeff" * 2 + "\n"  # 64 hex digits, also >= 16 bytes


def loader_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """Record, per section, the keys the loader reads (array entries as `seal.keys`)."""
    recorded: dict[str, set[str]] = {}
    original = config_module._Section.done

    def done(self: config_module._Section) -> None:
        recorded.setdefault(re.sub(r"\[\d+\]$", "", self.name), set()).update(self.used)
        original(self)

    monkeypatch.setattr(config_module._Section, "done", done)
    return recorded


def full_config(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration with every section, and the files and variables it names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("passphrase", "pseudonym.key", "cache.key"):
        (folder / name).write_text(HEX_KEY)
    for variable in ("TEST_DSN", "TEST_OWNER_DSN", "TEST_REDIS"):
        monkeypatch.setenv(variable, f"{variable.lower()}-value")
    path = folder / "gateway.toml"
    path.write_text(
        """
[gateway]
region = "330000"
listen = "127.0.0.1:7330"
metrics_listen = "127.0.0.1:8330"

[tls]
certificate = "tls.pem"
private_key = "tls.key"
passphrase_file = "passphrase"

[registry]
trusted_root = "root.json"
snapshot_file = "current.jws"

[[seal.keys]]
certificate = "seal.pem"
private_key = "seal.key"

[audit]
store = "postgres"
dsn_env = "TEST_DSN"
owner_dsn_env = "TEST_OWNER_DSN"
key = "audit.key"
pseudonym_key_file = "pseudonym.key"

[exchange]
provider = "127.0.0.1:9330"
redis_url_env = "TEST_REDIS"
cache_key_file = "cache.key"

[peers]
"510000" = "127.0.0.1:7510"

[timestamp]
url = "http://127.0.0.1:8318/tsr"
tsa_certificates = "tsa-roots.pem"
timeout_seconds = 5.0

[cases]
bind_queries = true
""",
        "utf-8",
    )
    return path


def reference_keys(*, dev_only: bool = False) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for key in reference.KEYS:
        if key.section != "peers" and (key.dev or not dev_only):
            keys.setdefault(key.section, set()).add(key.name)
    return keys


# The committed copy ---------------------------------------------------------------------------
def test_the_committed_reference_is_current() -> None:
    text = OPERATORS.read_text("utf-8")
    block = text.split(reference.BEGIN_MARKER, 1)[1].split(reference.END_MARKER, 1)[0]
    assert block == "\n" + reference.render() + "\n", (
        "docs/operators.md is out of date: run "
        "`python -m gateway.config_reference --write docs/operators.md`"
    )
    assert reference.main(["--check", str(OPERATORS)]) == 0


# Every key the loader accepts, and no other ------------------------------------------------------
def test_the_reference_lists_exactly_the_keys_the_loader_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = loader_keys(monkeypatch)
    config = GatewayConfig.from_file(full_config(tmp_path, monkeypatch))
    assert config.audit is not None
    assert config.exchange is not None
    assert config.seal_keys
    assert dict(config.peers) == {"510000": "127.0.0.1:7510"}  # [peers] is not a _Section
    assert recorded.pop("seal") == {"keys"}  # the array itself; its entries are seal.keys
    expected = reference_keys()
    expected["gateway"].discard("dev_pki")  # switches to the dev loader, read there
    assert recorded == expected
    sections = {section.name for section in reference.SECTIONS}
    assert sections == {*recorded, "peers"}


def test_the_reference_lists_exactly_the_keys_of_a_dev_pki_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_federation(tmp_path)
    monkeypatch.setenv("TEST_REDIS", "redis://127.0.0.1:1/0")
    path = tmp_path / "gateway.toml"
    path.write_text(
        """
[gateway]
region = "330000"
listen = "127.0.0.1:7330"
dev_pki = "pki"
grace_seconds = 2
metrics_listen = "127.0.0.1:8330"

[registry]
snapshot_file = "published/current.jws"
follow = "127.0.0.1:7510"
bootstrap_ca_file = "pki/roots.pem"
poll_seconds = 1

[audit]
path = "audit.db"

[exchange]
provider = "127.0.0.1:9330"
redis_url_env = "TEST_REDIS"

[peers]
"510000" = "127.0.0.1:7510"

[cases]
bind_queries = false
""",
        "utf-8",
    )
    recorded = loader_keys(monkeypatch)
    assert not load_config(path).cases.bind_queries
    assert recorded == reference_keys(dev_only=True)


def test_every_key_has_a_row_in_its_sections_table() -> None:
    text = reference.render()
    parts = re.split(r"^### ", text, flags=re.MULTILINE)
    tables = {part.split("\n", 1)[0]: part for part in parts[1:]}
    for section in reference.SECTIONS:
        table = tables[f"`{section.header}`"]
        for key in reference.KEYS:
            if key.section == section.name:
                assert f"\n| `{key.name}` | " in table, (section.header, key.name)


_NO_DEFAULT = ("snapshot_file", "authority_public_key", "trusted_root")


def test_shown_defaults_are_what_the_loader_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only what is required, plus the two optional sections: every other key takes its default.
    (tmp_path / "pseudonym.key").write_text(HEX_KEY)
    (tmp_path / "cache.key").write_text(HEX_KEY)
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\nregion = "330000"\nlisten = "127.0.0.1:7330"\n'
        '[tls]\ncertificate = "tls.pem"\nprivate_key = "tls.key"\n'
        '[registry]\nauthority_public_key = "a.pem"\nsnapshot_file = "s.jws"\n'
        '[audit]\nstore = "memory"\nkey = "audit.key"\npseudonym_key_file = "pseudonym.key"\n'
        '[exchange]\ncache_key_file = "cache.key"\n'
        '[timestamp]\ntsa_certificates = "t.pem"\n',
        "utf-8",
    )
    config = GatewayConfig.from_file(path)
    objects = {
        config_module.GatewayConfig: config,
        config_module.AuditConfig: config.audit,
        config_module.ExchangeConfig: config.exchange,
        config_module.RevocationConfig: config.revocation,
        config_module.TimestampConfig: config.timestamp,
        config_module.CasesConfig: config.cases,
    }
    rows = {(row.section, row.key): row for row in reference.entries()}
    checked = 0
    for key in reference.KEYS:
        row = rows[(key.section, key.name)]
        # snapshot_file, and the two trust keys of which exactly one is given, have no default.
        if key.field is None or row.default == "—" or key.name in _NO_DEFAULT:
            continue
        value = getattr(objects[key.field[0]], key.field[1])
        if row.default == "unset":
            assert value in (None, ""), key.name
        else:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            assert row.default.strip("`").strip('"') == shown, key.name
        checked += 1
    assert checked >= 8


def test_each_key_sets_the_field_the_reference_names(tmp_path: Path) -> None:
    # Every key that maps to a field gets a value of its own; the field must hold it.
    (tmp_path / "pseudonym.key").write_text(HEX_KEY)
    (tmp_path / "cache.key").write_text(HEX_KEY)
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\nregion = "330000"\nlisten = "127.0.0.1:7331"\ngrace_seconds = 7\n'
        'metrics_listen = "127.0.0.1:8331"\n'
        '[tls]\ncertificate = "c.pem"\nprivate_key = "k.pem"\n'
        '[registry]\nauthority_public_key = "a.pem"\nsnapshot_file = "s.jws"\n'
        'follow = "127.0.0.1:7510"\nbootstrap_ca_file = "b.pem"\npoll_seconds = 3\n'
        '[audit]\nstore = "sqlite"\npath = "x.db"\nschema = "s1"\nkey = "audit.key"\n'
        'pseudonym_key_file = "pseudonym.key"\norigin = "o1"\n'
        "checkpoint_every_records = 17\ncheckpoint_every_seconds = 19\n"
        "append_timeout_seconds = 1.5\n"
        '[exchange]\nprovider = "127.0.0.1:9331"\ncache_key_file = "cache.key"\n'
        "redis_timeout_seconds = 0.3\nprovider_timeout_seconds = 1.25\n"
        "peer_timeout_seconds = 4.5\ntracker_peer_timeout_seconds = 2.5\n"
        "breaker_failures = 4\nbreaker_window_seconds = 8\n"
        "breaker_open_seconds = 1.75\nconsent_status_seconds = 12\n"
        '[revocation]\nonline = false\ntimeout_seconds = 2.5\nunreachable = "soft-fail"\n'
        '[timestamp]\nurl = "http://127.0.0.1:8318/tsr"\ntsa_certificates = "t.pem"\n'
        "timeout_seconds = 3.5\n"
        "[cases]\nbind_queries = false\nmax_material_bytes = 1048576\n",
        "utf-8",
    )
    config = GatewayConfig.from_file(path)
    document = tomllib.loads(path.read_text("utf-8"))
    objects = {
        config_module.GatewayConfig: config,
        config_module.AuditConfig: config.audit,
        config_module.ExchangeConfig: config.exchange,
        config_module.RevocationConfig: config.revocation,
        config_module.TimestampConfig: config.timestamp,
        config_module.CasesConfig: config.cases,
    }
    mapped = [key for key in reference.KEYS if key.field is not None]
    for key in mapped:
        if key.name == "trusted_root":  # the other of the two trust keys: checked on its own
            continue
        written = document[key.section][key.name]
        value = getattr(objects[key.field[0]], key.field[1])
        expected = tmp_path / written if isinstance(value, Path) else written
        assert value == expected, f"{key.section}.{key.name} -> {key.field[1]}"
    assert len(mapped) >= 15
    path.write_text(path.read_text("utf-8").replace("authority_public_key", "trusted_root"))
    assert GatewayConfig.from_file(path).trusted_root == tmp_path / "a.pem"
    both = path.read_text("utf-8").replace(
        'trusted_root = "a.pem"\n', 'trusted_root = "a"\nauthority_public_key = "b"\n'
    )
    path.write_text(both)
    with pytest.raises(ConfigError, match="exactly one of them"):
        GatewayConfig.from_file(path)


# The docstring parser ---------------------------------------------------------------------------
def test_docstring_comments_reads_the_commented_example() -> None:
    doc = """Intro, not read.

    [first]                   # about the section
    a = "x # not a comment"   # the comment of a
    b = 1
    c = 2                     # starts here
                              # and goes on here
    [[second.list]]
    d = "y"                   # in an array

    [peers]
    "510000" = "127.0.0.1:7510"

Not read either:
    e = 3   # but this one is indented
"""
    assert reference.docstring_comments(doc) == {
        ("first", ""): "about the section",
        ("first", "a"): "the comment of a",
        ("first", "b"): "",
        ("first", "c"): "starts here and goes on here",
        ("second.list", ""): "",
        ("second.list", "d"): "in an array",
        ("peers", ""): "",
        ("peers", '"<region code>"'): "",
        ("", "e"): "but this one is indented",
    }


def test_a_key_without_any_description_is_refused() -> None:
    with pytest.raises(LookupError, match=r"gateway\.region: no description"):
        reference.entries(doc="")


def test_table_cells_never_break_the_table() -> None:
    text = reference.render()
    for line in text.splitlines():
        if line.startswith("| `"):
            assert line.count(" | ") == 4, line  # five columns, no stray "|"
    assert "<region>" not in text  # an HTML-looking tag would vanish when rendered


# The command line -------------------------------------------------------------------------------
def test_check_fails_on_a_modified_copy_and_write_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "operators.md"
    shutil.copy(OPERATORS, copy)
    assert reference.main(["--write", str(copy)]) == 0  # current, whatever the committed one
    current = copy.read_text("utf-8")
    row = next(line for line in current.splitlines() if line.startswith("| `grace_seconds` |"))
    copy.write_text(current.replace(row, row.removesuffix(" |") + " graceless |"), "utf-8")
    assert reference.main(["--check", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err
    assert "--write" in err
    assert "graceless" in err  # the diff shows what differs
    assert reference.main(["--write", str(copy)]) == 0
    assert copy.read_text("utf-8") == current
    assert reference.main(["--check", str(copy)]) == 0


def test_write_replaces_only_the_block(tmp_path: Path) -> None:
    copy = tmp_path / "doc.md"
    copy.write_text(
        f"before\n{reference.BEGIN_MARKER}\nstale\n{reference.END_MARKER}\nafter\n", "utf-8"
    )
    assert reference.main(["--write", str(copy)]) == 0
    text = copy.read_text("utf-8")
    assert text.startswith(f"before\n{reference.BEGIN_MARKER}\n")
    assert text.endswith(f"\n{reference.END_MARKER}\nafter\n")
    assert "stale" not in text


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        f"{reference.BEGIN_MARKER}\nonly the beginning\n",
        f"{reference.END_MARKER}\n{reference.BEGIN_MARKER}\n",
        f"{reference.BEGIN_MARKER}\n{reference.END_MARKER}\n{reference.BEGIN_MARKER}\n",
    ],
)
def test_a_file_without_one_block_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "doc.md"
    path.write_text(text, "utf-8")
    assert reference.main(["--check", str(path)]) == 1
    assert reference.main(["--write", str(path)]) == 1
    assert path.read_text("utf-8") == text
    assert "config-reference" in capsys.readouterr().err


def test_a_missing_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reference.main(["--check", str(tmp_path / "nowhere.md")]) == 1
    assert "nowhere.md" in capsys.readouterr().err


def test_without_options_it_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert reference.main([]) == 0
    assert capsys.readouterr().out == reference.render()
