"""The `tongban` command line, driven through `main(argv)`: help, bad command lines (exit 2, one
line), refusals (exit 1, one readable message, no traceback) and the operator flows."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_support import Run
from support import DEMO_REGIONS, DEMO_SOURCE, Federation, make_federation

from registry import (
    CURRENT_SNAPSHOT,
    TRUSTED_ROOT,
    Inventory,
    KeyEntry,
    KeyState,
    KeyUsage,
    Registry,
    SnapshotVerifier,
    load_source,
    load_trusted_root,
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """One published federation for the tests that only read it (or are refused before writing)."""
    fed = make_federation(tmp_path_factory.mktemp("shared"))
    fed.publish()
    return fed


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """A second federation: its authority key is not the shared one's."""
    return make_federation(tmp_path_factory.mktemp("other"))


def read_snapshot(fed: Federation) -> Registry:
    verifier = SnapshotVerifier(load_trusted_root(fed.pki / TRUSTED_ROOT))
    return verifier.verify(fed.current.read_bytes(), held_version=None, now=None).registry


def key_in(registry: Registry, kid: str) -> KeyEntry:
    (entry,) = [k for k in registry.keys if k.kid == kid]
    return entry


# 1. help -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "usage", "description"),
    [
        pytest.param([], "usage: tongban", "Tongban (通办)", id="tongban"),
        pytest.param(["pki"], "usage: tongban pki", "Development PKI", id="pki"),
        pytest.param(
            ["pki", "init"], "usage: tongban pki init", "Create the registry", id="pki-init"
        ),
        pytest.param(["registry"], "usage: tongban registry", "The signed", id="registry"),
        pytest.param(
            ["registry", "build"], "usage: tongban registry build", "Validate the", id="build"
        ),
        pytest.param(
            ["registry", "publish"], "usage: tongban registry publish", "Build the", id="publish"
        ),
        pytest.param(["registry", "show"], "usage: tongban registry show", "Verify a", id="show"),
        pytest.param(["keys"], "usage: tongban keys", "Generate, rotate", id="keys"),
        pytest.param(
            ["keys", "generate"], "usage: tongban keys generate", "Issue a first", id="generate"
        ),
        pytest.param(["keys", "rotate"], "usage: tongban keys rotate", "Issue a", id="rotate"),
        pytest.param(["keys", "revoke"], "usage: tongban keys revoke", "Mark a key", id="revoke"),
        pytest.param(
            ["keys", "expiring"], "usage: tongban keys expiring", "List unrevoked", id="expiring"
        ),
        pytest.param(["gateway"], "usage: tongban gateway", "Run a region", id="gateway"),
        pytest.param(["gateway", "serve"], "usage: tongban gateway serve", "Serve the", id="serve"),
        pytest.param(["token"], "usage: tongban token", "Request tokens", id="token"),
        pytest.param(
            ["token", "issue"], "usage: tongban token issue", "Play the identity", id="token-issue"
        ),
        pytest.param(["demo"], "usage: tongban demo", "scripted scenarios", id="demo"),
    ],
)
def test_help(run: Run, argv: list[str], usage: str, description: str) -> None:
    code, out, err = run(*argv, "--help")
    assert code == 0
    assert err == ""
    assert out.startswith(usage)
    assert description in out


# 2. bad command lines --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param([], "required: COMMAND", id="no-command"),
        pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown-command"),
        pytest.param(["keys"], "required: VERB", id="no-verb"),
        pytest.param(["keys", "frob"], "invalid choice: 'frob'", id="unknown-verb"),
        pytest.param(["pki", "init", "--regions", "330000"], "--out", id="pki-init-no-out"),
        pytest.param(
            ["pki", "init", "--out", "x", "--regions", "999999"], "999999", id="regions-unknown"
        ),
        pytest.param(
            ["pki", "init", "--out", "x", "--regions", ""], "--regions", id="regions-empty"
        ),
        pytest.param(
            ["pki", "init", "--out", "x", "--regions", "330000,abc"], "abc", id="regions-one-bad"
        ),
        pytest.param(
            ["keys", "expiring", "--pki", "p", "--within", "30x"], "'30x'", id="within-bad-unit"
        ),
        pytest.param(
            ["keys", "expiring", "--pki", "p", "--within", "99999999999d"],
            "--within",
            id="within-overflow",
        ),
        pytest.param(
            ["keys", "revoke", "K", "--pki", "p", "--reason", "r", "--at", "2026-01-01T00:00:00"],
            "with an offset",
            id="at-no-offset",
        ),
        pytest.param(
            ["keys", "revoke", "K", "--pki", "p", "--reason", "r", "--at", "yesterday"],
            "--at",
            id="at-not-a-time",
        ),
        pytest.param(
            [
                "keys",
                "revoke",
                "K",
                "--pki",
                "p",
                "--reason",
                "r",
                "--at",
                "0001-01-01T00:00:00+01:00",
            ],
            "--at",
            id="at-overflow",
        ),
        pytest.param(
            ["keys", "rotate", "--pki", "p", "--owner", "330000", "--usage", "bogus"],
            "invalid choice: 'bogus'",
            id="usage-bogus",
        ),
        pytest.param(
            [
                "keys",
                "generate",
                "--pki",
                "p",
                "--owner",
                "330000",
                "--usage",
                "seal",
                "--algorithm",
                "RS1",
            ],
            "--algorithm",
            id="algorithm-bogus",
        ),
        pytest.param(
            [
                "keys",
                "generate",
                "--pki",
                "p",
                "--owner",
                "330000",
                "--usage",
                "seal",
                "--validity-days",
                "ten",
            ],
            "--validity-days",
            id="validity-not-int",
        ),
        pytest.param(
            [
                "pki",
                "init",
                "--out",
                "x",
                "--regions",
                "330000",
                "--passphrase-file",
                "f",
                "--passphrase-env",
                "V",
            ],
            "not allowed with",
            id="two-passphrases",
        ),
        pytest.param(
            ["registry", "show", "s.jws", "--authority", "a.pem", "--pki", "p"],
            "not allowed with",
            id="show-authority-and-pki",
        ),
        pytest.param(["registry", "show"], "snapshot", id="show-no-snapshot"),
        pytest.param(["registry", "publish", "--pki", "p"], "--out", id="publish-no-out"),
        pytest.param(["gateway", "serve", "--region", "999999"], "--region", id="serve-bad-region"),
        pytest.param(["registry", "show", "s.jws"], "give --authority", id="show-no-trust"),
        pytest.param(["gateway", "serve"], "give --config FILE, or --pki", id="serve-nothing"),
        pytest.param(
            ["gateway", "serve", "--pki", "p", "--region", "330000"],
            "--pki needs --snapshot FILE or --follow",
            id="serve-pki-without-registry",
        ),
        pytest.param(
            ["gateway", "serve", "--pki", "p"],
            "give --config FILE, or --pki DIR with --region",
            id="serve-pki-without-region",
        ),
        pytest.param(
            ["gateway", "serve", "--config", "c.toml", "--provider", "127.0.0.1:9330"],
            "--provider goes with --pki, not with --config",
            id="serve-config-with-a-pki-option",
        ),
        pytest.param(
            ["gateway", "serve", "--config", "c.toml", "--passphrase-env", "V"],
            "--passphrase-env goes with --pki",
            id="serve-config-with-a-passphrase-option",
        ),
        pytest.param(["--log-level", "LOUD", "keys"], "--log-level", id="log-level"),
        pytest.param(
            ["registry", "publish", "--pki", "p", "--out", "o", "--lifetime", "99999999d"],
            "at most 36500d",
            id="lifetime-huge",
        ),
        pytest.param(
            ["registry", "publish", "--pki", "p", "--out", "o", "--lifetime", "0s"],
            "more than 0",
            id="lifetime-zero",
        ),
        pytest.param(
            [
                "keys",
                "rotate",
                "--pki",
                "p",
                "--owner",
                "330000",
                "--usage",
                "seal",
                "--validity-days",
                "10000000",
            ],
            "from 1 to 3650",
            id="validity-huge",
        ),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(run: Run, argv: list[str], fragment: str) -> None:
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tongban")
    assert "error:" in lines[0]
    assert fragment in lines[0]


# 3. refusals -----------------------------------------------------------------------------------
@dataclass
class Ctx:
    shared: Federation
    other: Federation
    tmp: Path
    _fresh: Federation | None = field(default=None, repr=False)

    def fresh(self) -> Federation:
        """A federation of this test alone, for refusals that need a change made first."""
        if self._fresh is None:
            self._fresh = make_federation(self.tmp / "fresh")
        return self._fresh

    def broken_source(self) -> Path:
        source = self.tmp / "source"
        if not source.exists():
            shutil.copytree(DEMO_SOURCE, source)
            with (source / "regions.toml").open("a", encoding="utf-8") as handle:
                handle.write('\ncolour = "red"\n')  # lands in the last table, [regions.500000]
        return source

    def tampered(self) -> Path:
        envelope = json.loads(self.shared.current.read_text())
        payload = envelope["payload"]
        i = len(payload) // 2
        envelope["payload"] = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
        path = self.tmp / "tampered.jws"
        path.write_text(json.dumps(envelope) + "\n")
        return path

    def seal_kid(self) -> str:
        """The fresh federation's first seal key of 330000 (whatever its state now)."""
        (record,) = self.fresh().inventory().find("330000", KeyUsage.SEAL)
        return record.kid


Argv = Callable[[Ctx], Sequence[str | Path]]


@dataclass(frozen=True)
class Refusal:
    argv: Argv
    expect: Callable[[Ctx], Sequence[str | Path]]
    before: Callable[[Ctx], Sequence[Sequence[str | Path]]] = lambda c: ()
    lines: int = 1


REFUSALS = {
    "pki-init-existing": Refusal(
        lambda c: [
            "pki",
            "init",
            "--out",
            c.shared.pki,
            "--regions",
            "330000",
            "--source",
            DEMO_SOURCE,
        ],
        lambda c: [c.shared.pki, "already contains a PKI", "refusing to overwrite"],
    ),
    "build-broken-source": Refusal(
        lambda c: ["registry", "build", "--source", c.broken_source(), "--pki", c.shared.pki],
        lambda c: [c.broken_source() / "regions.toml", "regions.500000.colour", "unknown key"],
    ),
    "build-out-missing-folder": Refusal(
        lambda c: [
            "registry",
            "build",
            "--source",
            DEMO_SOURCE,
            "--pki",
            c.shared.pki,
            "--out",
            c.tmp / "no" / "d.json",
        ],
        lambda c: [c.tmp / "no" / "d.json", "No such file or directory"],
    ),
    "publish-no-pki": Refusal(
        lambda c: [
            "registry",
            "publish",
            "--source",
            DEMO_SOURCE,
            "--pki",
            c.tmp / "nopki",
            "--out",
            c.tmp / "pub",
        ],
        lambda c: [c.tmp / "nopki" / "keys.json", "no key inventory", "pki init"],
    ),
    "publish-out-under-a-file": Refusal(
        lambda c: [
            "registry",
            "publish",
            "--source",
            DEMO_SOURCE,
            "--pki",
            c.shared.pki,
            "--out",
            c.shared.current / "x",
        ],
        lambda c: [c.shared.current / "x", "Not a directory"],
    ),
    "show-tampered": Refusal(
        lambda c: ["registry", "show", c.tampered(), "--pki", c.shared.pki],
        lambda c: ["signature", "does not verify"],
    ),
    "show-wrong-authority": Refusal(
        lambda c: [
            "registry",
            "show",
            c.shared.current,
            "--authority",
            c.other.pki / TRUSTED_ROOT,
        ],
        lambda c: [
            "which the trusted root does not name",
        ],
    ),
    "show-missing-file": Refusal(
        lambda c: ["registry", "show", c.tmp / "none.jws", "--pki", c.shared.pki],
        lambda c: [c.tmp / "none.jws", "cannot be read"],
    ),
    "generate-over-active": Refusal(
        lambda c: [
            "keys",
            "generate",
            "--pki",
            c.shared.pki,
            "--owner",
            "330000",
            "--usage",
            "seal",
            "--source",
            DEMO_SOURCE,
        ],
        lambda c: ["330000 already has an active seal key", "keys rotate"],
    ),
    "generate-unknown-owner": Refusal(
        lambda c: [
            "keys",
            "generate",
            "--pki",
            c.shared.pki,
            "--owner",
            "nobody",
            "--usage",
            "seal",
            "--source",
            DEMO_SOURCE,
        ],
        lambda c: ["'nobody'", "neither a region code nor an agency"],
    ),
    "rotate-twice": Refusal(
        lambda c: [
            "keys",
            "rotate",
            "--pki",
            c.fresh().pki,
            "--owner",
            "330000",
            "--usage",
            "seal",
        ],
        lambda c: ["already under way", "pending"],
        before=lambda c: [
            ["keys", "rotate", "--pki", c.fresh().pki, "--owner", "330000", "--usage", "seal"]
        ],
    ),
    "revoke-unknown-kid": Refusal(
        lambda c: [
            "keys",
            "revoke",
            "no-such-kid",
            "--pki",
            c.shared.pki,
            "--reason",
            "keyCompromise",
        ],
        lambda c: ["no key 'no-such-kid'", c.shared.pki / "keys.json"],
    ),
    "revoke-twice": Refusal(
        lambda c: [
            "keys",
            "revoke",
            "--pki",
            c.fresh().pki,
            "--reason",
            "keyCompromise",
            "--",  # a kid is base64url: one in 64 starts with "-"
            c.seal_kid(),
        ],
        lambda c: [c.seal_kid(), "already revoked"],
        before=lambda c: [
            ["keys", "revoke", "--pki", c.fresh().pki, "--reason", "superseded", "--", c.seal_kid()]
        ],
    ),
    "serve-missing-config": Refusal(
        lambda c: ["gateway", "serve", "--config", c.tmp / "missing.toml"],
        lambda c: [c.tmp / "missing.toml", "cannot be read"],
    ),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_is_one_message_and_exit_1(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    shared: Federation,
    other: Federation,
    tmp_path: Path,
    case: Refusal,
) -> None:
    ctx = Ctx(shared, other, tmp_path)
    for argv in case.before(ctx):
        assert run(*argv)[0] == 0
    monkeypatch.setenv("COLUMNS", "40")  # a narrow console must not cut the message into pieces
    code, out, err = run(*case.argv(ctx))
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("tongban: ")
    assert len(err.splitlines()) == case.lines, err
    for fragment in case.expect(ctx):
        assert str(fragment) in err


# 4. operator flows -----------------------------------------------------------------------------
PASSPHRASE_ENV = "TONGBAN_TEST_PASSPHRASE"


@pytest.mark.parametrize(
    ("options", "pem_header"),
    [
        pytest.param([], "-----BEGIN PRIVATE KEY-----", id="unencrypted"),
        pytest.param(
            ["--passphrase-env", PASSPHRASE_ENV],
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
            id="passphrase-env",
        ),
        pytest.param(
            ["--passphrase-file", "PASSFILE"],
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
            id="passphrase-file",
        ),
    ],
)
def test_pki_init(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    options: list[str],
    pem_header: str,
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    passfile = tmp_path / "passphrase"
    passfile.write_text("correct horse\n")
    options = [str(passfile) if o == "PASSFILE" else o for o in options]
    pki = tmp_path / "pki"
    code, out, err = run(
        "pki",
        "init",
        "--out",
        pki,
        "--regions",
        ",".join(DEMO_REGIONS),
        "--source",
        DEMO_SOURCE,
        *options,
    )
    assert (code, err) == (0, "")
    assert "Dev PKI created" in out
    for name in ("pki.json", "keys.json", "authority/national.key", "authority/root.json"):
        assert (pki / name).is_file(), name
    for region in DEMO_REGIONS:
        assert (pki / "regions" / region / "ca" / "root.pem").is_file()

    document = json.loads((pki / "keys.json").read_text())
    keys = document["keys"]
    agencies = load_source(DEMO_SOURCE).agencies
    assert {k["state"] for k in keys} == {"active"}
    assert {k["owner"] for k in keys} == set(DEMO_REGIONS) | {a.id for a in agencies}
    for region in DEMO_REGIONS:
        assert {k["usage"] for k in keys if k["owner"] == region} == {u.value for u in KeyUsage}
    assert len(keys) == len({k["kid"] for k in keys})

    private_keys = sorted(pki.rglob("*.key"))
    assert len(private_keys) > len(keys)  # leaf keys, CA keys and the authority key
    for path in private_keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert path.read_text().startswith(pem_header), path
    for k in keys:
        assert (pki / k["private_key"]).is_file()
        assert (pki / k["certificate"]).is_file()

    if options:  # an encrypted PKI publishes only with its passphrase
        published = tmp_path / "published"
        code, _, err = run(
            "registry", "publish", "--source", DEMO_SOURCE, "--pki", pki, "--out", published
        )
        assert code == 1
        assert "encrypted and no passphrase" in err
        code, out, err = run(
            "registry",
            "publish",
            "--source",
            DEMO_SOURCE,
            "--pki",
            pki,
            "--out",
            published,
            *options,
        )
        assert (code, err) == (0, "")
        assert "version 1" in out


@pytest.mark.parametrize("to_file", [False, True], ids=["stdout", "out-file"])
def test_registry_build_is_canonical_json(
    run: Run, shared: Federation, tmp_path: Path, to_file: bool
) -> None:
    draft = tmp_path / "draft.json"
    argv = ["registry", "build", "--source", DEMO_SOURCE, "--pki", shared.pki]
    code, out, err = run(*argv, *(["--out", draft] if to_file else []))
    assert (code, err) == (0, "")
    data = draft.read_bytes() if to_file else out.encode()
    if to_file:
        assert "Draft registry written" in out
        assert "Not signed" in out
    assert data.endswith(b"}\n")
    body = data[:-1]
    document = json.loads(body)
    again = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert again.encode() == body
    assert document["version"] == 0  # a draft, not a published version
    assert {r["code"] for r in document["regions"]} == set(DEMO_REGIONS)
    assert all("private" not in k for key in document["keys"] for k in key)


def test_publish_twice_makes_versions_1_and_2(run: Run, tmp_path: Path) -> None:
    fed = make_federation(tmp_path)
    argv = [
        "registry",
        "publish",
        "--source",
        DEMO_SOURCE,
        "--pki",
        fed.pki,
        "--out",
        fed.published,
    ]
    code, out, err = run(*argv)
    assert (code, err) == (0, "")
    assert "Published registry version 1" in out
    assert read_snapshot(fed).version == 1
    code, out, err = run(*argv)
    assert (code, err) == (0, "")
    assert "Published registry version 2" in out
    assert sorted(p.name for p in fed.published.glob("*.jws")) == [
        CURRENT_SNAPSHOT,
        "registry-1.jws",
        "registry-2.jws",
    ]
    assert (fed.published / "registry-2.jws").read_bytes() == fed.current.read_bytes()
    assert read_snapshot(fed).version == 2


def test_registry_show(run: Run, shared: Federation) -> None:
    code, out, err = run("registry", "show", shared.current, "--pki", shared.pki)
    assert (code, err) == (0, "")
    assert "version 1" in out
    assert "signature verified" in out
    source = load_source(DEMO_SOURCE)
    for region in source.regions:
        assert region.code in out
        assert region.name in out
    for agreement in source.agreements:
        assert agreement.id in out
    assert f"Matters ({len(source.matters)})" in out
    for matter in source.matters:
        assert matter.code in out
    assert "510000 receive → 330000 assist → 500000 handle" in out  # 多地联办, in order
    assert "active" in out
    assert shared.active("330000", KeyUsage.SEAL) in out  # whole kids, to paste into `keys revoke`


@pytest.mark.parametrize("trust", ["--pki", "--authority"])
def test_registry_show_json(run: Run, shared: Federation, trust: str) -> None:
    anchor = shared.pki if trust == "--pki" else shared.pki / TRUSTED_ROOT
    code, out, err = run("registry", "show", shared.current, trust, anchor, "--json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["version"] == 1
    assert document["name"] == load_source(DEMO_SOURCE).name
    assert {r["code"] for r in document["regions"]} == set(DEMO_REGIONS)


def test_key_rotation_and_revocation_through_the_cli(run: Run, tmp_path: Path) -> None:
    fed = make_federation(tmp_path)
    old = fed.active("330000", KeyUsage.SEAL)
    publish = [
        "registry",
        "publish",
        "--source",
        DEMO_SOURCE,
        "--pki",
        fed.pki,
        "--out",
        fed.published,
    ]

    # rotate: a pending successor, not yet published
    code, out, err = run("keys", "rotate", "--pki", fed.pki, "--owner", "330000", "--usage", "seal")
    assert (code, err) == (0, "")
    (pending,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.PENDING)
    new = pending.kid
    assert new != old
    assert new in out
    assert pending.published_in is None
    assert fed.inventory().get(old).state is KeyState.ACTIVE

    # first publish: still pending, but now carried by version 1; the old key still signs
    code, out, err = run(*publish)
    assert (code, err) == (0, "")
    assert f"{new} (330000 seal) published as pending" in out
    inventory = fed.inventory()
    assert inventory.get(new).state is KeyState.PENDING
    assert inventory.get(new).published_in == 1
    assert inventory.get(old).state is KeyState.ACTIVE
    snapshot = read_snapshot(fed)
    assert snapshot.version == 1
    assert key_in(snapshot, new).state is KeyState.PENDING
    assert key_in(snapshot, old).state is KeyState.ACTIVE

    # second publish: the successor is active, the old key retires
    code, out, err = run(*publish)
    assert (code, err) == (0, "")
    assert f"{old} (330000 seal) active -> retiring" in out
    assert f"{new} (330000 seal) pending -> active" in out
    inventory = fed.inventory()
    assert inventory.get(new).state is KeyState.ACTIVE
    assert inventory.get(old).state is KeyState.RETIRING
    snapshot = read_snapshot(fed)
    assert snapshot.version == 2
    assert key_in(snapshot, new).state is KeyState.ACTIVE
    assert key_in(snapshot, old).state is KeyState.RETIRING
    assert key_in(snapshot, old).retiring_at is not None

    # revoke with a time and a reason; the next publish carries it
    at = "2026-01-02T03:04:05+08:00"
    code, out, err = run(
        "keys", "revoke", "--pki", fed.pki, "--reason", "keyCompromise", "--at", at, "--", new
    )
    assert (code, err) == (0, "")
    assert "revoked at 2026-01-01 19:04:05Z" in out
    assert "no active seal key" in out  # the warning: generate one
    assert key_in(read_snapshot(fed), new).state is KeyState.ACTIVE  # not published yet
    code, _, err = run(*publish)
    assert (code, err) == (0, "")
    entry = key_in(read_snapshot(fed), new)
    assert entry.state is KeyState.REVOKED
    assert entry.revoked_at == datetime(2026, 1, 1, 19, 4, 5, tzinfo=UTC)
    assert entry.revocation_reason == "keyCompromise"
    assert key_in(read_snapshot(fed), old).state is KeyState.RETIRING


def test_keys_expiring_on_a_fresh_pki_lists_nothing(run: Run, shared: Federation) -> None:
    code, out, err = run("keys", "expiring", "--pki", shared.pki, "--within", "30d")
    assert (code, err) == (0, "")
    assert "No key" in out
    code, out, err = run("keys", "expiring", "--pki", shared.pki, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == []


def test_generate_after_revoke_then_expiring(run: Run, tmp_path: Path) -> None:
    fed = make_federation(tmp_path)
    old = fed.active("330000", KeyUsage.SEAL)
    code, _, err = run("keys", "revoke", "--pki", fed.pki, "--reason", "keyCompromise", "--", old)
    assert (code, err) == (0, "")
    code, out, err = run(
        "keys", "generate", "--pki", fed.pki, "--owner", "330000", "--usage", "seal",
        "--validity-days", "10", "--source", DEMO_SOURCE,
    )  # fmt: skip
    assert (code, err) == (0, "")
    new = fed.active("330000", KeyUsage.SEAL)
    assert new != old
    assert f"Generated seal key {new} for 330000" in out
    record = Inventory.load(fed.pki).get(new)
    assert stat.S_IMODE((fed.pki / record.private_key).stat().st_mode) == 0o600

    code, out, err = run("keys", "expiring", "--pki", fed.pki, "--within", "30d", "--json")
    assert (code, err) == (0, "")
    rows = json.loads(out)
    assert [r["kid"] for r in rows] == [new]  # the revoked key is not listed, the others are far
    (row,) = rows
    assert row["owner"] == "330000"
    assert row["usage"] == "seal"
    assert row["state"] == "active"
    assert row["days_left"] == pytest.approx(10, abs=0.2)

    code, out, err = run("keys", "expiring", "--pki", fed.pki, "--within", "30d")
    assert (code, err) == (0, "")
    assert "Expiring within 30 days" in out
    assert new in out
    code, out, _ = run("keys", "expiring", "--pki", fed.pki, "--within", "9d")
    assert "No key" in out


def test_tables_never_cut_a_kid_on_a_narrow_console(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped output is 80 columns wide: what operators copy or compare from the tables (kids,
    agreement ids, gateway addresses, times) stays whole, on one line, never cut with `…`."""
    fed = make_federation(tmp_path)
    fed.publish()
    registry = read_snapshot(fed)
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run("registry", "show", fed.current, "--pki", fed.pki)
    assert (code, err) == (0, "")
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for kid in (k.kid for k in fed.inventory().records()):
        assert kid in out, f"kid {kid} cut in the table"
    for agreement in registry.agreements:
        assert agreement.id in out
        assert f"{agreement.valid_until:%Y-%m-%d}" in out
    for region in registry.regions:
        assert region.endpoint in out
    assert f"issued {registry.issued_at:%Y-%m-%d %H:%M:%SZ}" in out
    assert f"expires {registry.expires_at:%Y-%m-%d %H:%M:%SZ}" in out


def test_keys_expiring_at_80_columns_and_as_json_carry_the_same_keys(
    run: Run, shared: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run("keys", "expiring", "--pki", shared.pki, "--within", "400d")
    assert (code, err) == (0, "")
    assert "…" not in out
    code, text, err = run("keys", "expiring", "--pki", shared.pki, "--within", "400d", "--json")
    assert (code, err) == (0, "")
    rows = json.loads(text)
    assert {row["kid"] for row in rows} == {r.kid for r in shared.inventory().records()}
    for row in rows:
        assert set(row) == {
            "kid", "owner", "usage", "algorithm", "state", "not_after", "days_left"
        }  # fmt: skip
        assert row["kid"] in out
        assert row["not_after"][:10] in out
        assert row["algorithm"] in out


def test_a_kid_that_starts_with_a_dash_is_revoked_after_double_dash(
    tmp_path: Path, run: Run
) -> None:
    """One kid in 64 starts with "-" (base64url); after "--" argparse takes it as the kid."""
    fed = make_federation(tmp_path)
    code, _, err = run("keys", "revoke", "--pki", fed.pki, "--reason", "superseded", "--", "-Abc")
    assert code == 1
    assert "no key '-Abc'" in err
    assert "Traceback" not in err


def test_a_kid_that_starts_with_a_dash_needs_no_double_dash(tmp_path: Path, run: Run) -> None:
    """As the docs show it, `keys revoke ... KID`: a kid beginning with "-" (one in 64) is the
    kid, not an unknown option (it was "the following arguments are required: kid")."""
    fed = make_federation(tmp_path)
    dashed = "-" + "A" * 42
    code, _, err = run("keys", "revoke", "--pki", fed.pki, "--reason", "superseded", dashed)
    assert code == 1
    assert f"no key '{dashed}'" in err
    code, _, err = run("keys", "revoke", dashed, "--pki", fed.pki, "--reason", "superseded")
    assert (code, f"no key '{dashed}'" in err) == (1, True)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["keys", "revoke", "-" + "B" * 42, "--pki", "p"],
            ["keys", "revoke", "--pki", "p", "--", "-" + "B" * 42],
        ),
        (["keys", "revoke", "--pki", "p", "K"], ["keys", "revoke", "--pki", "p", "K"]),
        (["keys", "revoke", "--", "-" + "B" * 42], ["keys", "revoke", "--", "-" + "B" * 42]),
        (["keys", "revoke", "-x"], ["keys", "revoke", "-x"]),  # not a kid: argparse says so
    ],
)
def test_operands_last(argv: list[str], expected: list[str]) -> None:
    from gateway.cli import operands_last

    assert operands_last(argv) == expected


def test_version_is_the_package_version(run: Run) -> None:
    from importlib.metadata import version

    code, out, err = run("--version")
    assert (code, out, err) == (0, f"tongban {version('tongban')}\n", "")
