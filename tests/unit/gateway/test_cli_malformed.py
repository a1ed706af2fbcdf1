"""Every sub-command with a malformed value for each of its options, one at a time: a wrong
command line (the value's form) exits 2 with argparse's one-line usage error, a runtime failure
(a path that does not exist, a folder instead of a file, an unset variable) exits 1 with one
`tongban: ` line; never a traceback, never output on stdout.

Each row names a sub-command, the option and the bad value; `{pki}`, `{snapshot}`, `{file}`,
`{dir}`, `{db}` and `{cert}` stand for a working dev PKI, its published snapshot, an ordinary
file, a folder, an SQLite audit log and an audit certificate, so that the row's bad value is
the only thing wrong with the command line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import Run
from support import DEMO_SOURCE, Federation, make_federation

from gateway.audit import SqliteAuditStore
from registry import KeyState, KeyUsage

USAGE, FAILURE = 2, 1
UNSET = "TONGBAN_TEST_SURELY_UNSET"


@dataclass(frozen=True)
class Paths:
    pki: Path
    snapshot: Path
    file: Path
    dir: Path
    db: Path
    cert: Path
    key: Path
    seal_cert: Path
    missing: Path


@pytest.fixture(autouse=True)
def _logger_level_kept() -> Iterator[None]:
    """`tongban demo` quietens the `tongban` logger of its process: not for the tests after."""
    logger = logging.getLogger("tongban")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    root = tmp_path_factory.mktemp("malformed")
    fed: Federation = make_federation(root / "fed")
    fed.publish()
    (audit,) = fed.inventory().find("510000", KeyUsage.AUDIT, KeyState.ACTIVE)
    (seal,) = fed.inventory().find("330000", KeyUsage.SEAL, KeyState.ACTIVE)
    seal_cert = fed.pki / seal.certificate
    file = root / "plain.txt"
    file.write_text("not what any option wants\n", encoding="utf-8")
    folder = root / "folder"
    folder.mkdir()
    db = root / "audit.db"

    async def create() -> None:
        store = SqliteAuditStore(db)
        await store.open()
        await store.close()

    asyncio.run(create())
    return Paths(
        pki=fed.pki,
        snapshot=fed.current,
        file=file,
        dir=folder,
        db=db,
        cert=fed.pki / audit.certificate,
        key=fed.pki / seal.private_key,
        seal_cert=seal_cert,
        missing=root / "missing",
    )


def _argv(paths: Paths, argv: tuple[str, ...]) -> list[str]:
    values = {
        "pki": paths.pki,
        "snapshot": paths.snapshot,
        "file": paths.file,
        "dir": paths.dir,
        "db": paths.db,
        "cert": paths.cert,
        "key": paths.key,
        "seal_cert": paths.seal_cert,
        "missing": paths.missing,
        "source": DEMO_SOURCE,
    }
    return [a.format(**values) for a in argv]


VERIFY = ("verify", "{file}", "--snapshot", "{snapshot}", "--pki", "{pki}")
SERVE = ("gateway", "serve", "--pki", "{pki}", "--region", "330000", "--snapshot", "{snapshot}")
AUDIT_VERIFY = ("audit", "verify", "--sqlite", "{db}", "--pki", "{pki}", "--region", "510000")
AUDIT_QUERY = ("audit", "query", "--sqlite", "{db}")
AUDIT_PROOF = ("audit", "proof", "--sqlite", "{db}", "--pki", "{pki}", "--region", "510000")
AUDIT_PRUNE = (
    "audit", "prune", "--sqlite", "{db}", "--pki", "{pki}", "--region", "510000",
    "--operator", "o", "--reason", "r",
)  # fmt: skip
SEAL = ("seal", "{file}", "--key", "{key}", "--cert", "{seal_cert}")
TOKEN = ("token", "issue", "--pki", "{pki}", "--agency", "zj.hrss", "--operator", "op")
GENERATE = ("keys", "generate", "--pki", "{pki}", "--owner", "330000", "--usage", "seal")

ROWS: dict[str, tuple[tuple[str, ...], int]] = {
    # the top level
    "log-level-empty": (("--log-level", "", "keys"), USAGE),
    # pki init
    "pki-out-is-a-file": (("pki", "init", "--out", "{file}", "--regions", "330000"), FAILURE),
    "pki-regions-control": (("pki", "init", "--out", "{missing}", "--regions", "33\x000"), USAGE),
    "pki-source-missing": (
        ("pki", "init", "--out", "{missing}", "--regions", "330000", "--source", "{missing}"),
        FAILURE,
    ),
    "pki-passphrase-env-unset": (
        ("pki", "init", "--out", "{missing}", "--regions", "330000", "--passphrase-env", UNSET),
        FAILURE,
    ),
    "pki-passphrase-file-dir": (
        ("pki", "init", "--out", "{missing}", "--regions", "330000", "--passphrase-file", "{dir}"),
        FAILURE,
    ),
    # registry
    "build-source-is-a-file": (
        ("registry", "build", "--source", "{file}", "--pki", "{pki}"),
        FAILURE,
    ),
    "build-pki-missing": (("registry", "build", "--pki", "{missing}"), FAILURE),
    "build-out-is-a-dir": (("registry", "build", "--pki", "{pki}", "--out", "{dir}"), FAILURE),
    "publish-lifetime-negative": (
        ("registry", "publish", "--pki", "{pki}", "--out", "{dir}", "--lifetime", "-5d"),
        USAGE,
    ),
    "publish-lifetime-empty": (
        ("registry", "publish", "--pki", "{pki}", "--out", "{dir}", "--lifetime", ""),
        USAGE,
    ),
    "publish-out-is-a-file": (
        ("registry", "publish", "--pki", "{pki}", "--out", "{file}"),
        FAILURE,
    ),
    "show-snapshot-is-a-dir": (("registry", "show", "{dir}", "--pki", "{pki}"), FAILURE),
    "show-authority-missing": (
        ("registry", "show", "{snapshot}", "--authority", "{missing}"),
        FAILURE,
    ),
    "show-authority-is-a-dir": (
        ("registry", "show", "{snapshot}", "--authority", "{dir}"),
        FAILURE,
    ),
    "show-authority-not-pem": (
        ("registry", "show", "{snapshot}", "--authority", "{file}"),
        FAILURE,
    ),
    "show-pki-missing": (("registry", "show", "{snapshot}", "--pki", "{missing}"), FAILURE),
    "show-snapshot-not-jws": (("registry", "show", "{file}", "--pki", "{pki}"), FAILURE),
    # keys
    "generate-pki-missing": (
        ("keys", "generate", "--pki", "{missing}", "--owner", "330000", "--usage", "seal"),
        FAILURE,
    ),
    "generate-pki-is-a-file": (
        ("keys", "generate", "--pki", "{file}", "--owner", "330000", "--usage", "seal"),
        FAILURE,
    ),
    "generate-owner-empty": (
        ("keys", "generate", "--pki", "{pki}", "--owner", "", "--usage", "seal"),
        USAGE,
    ),
    "generate-owner-control": (
        ("keys", "generate", "--pki", "{pki}", "--owner", "a\nb", "--usage", "seal"),
        USAGE,
    ),
    "generate-validity-zero": ((*GENERATE, "--validity-days", "0"), USAGE),
    "generate-source-missing": ((*GENERATE, "--source", "{missing}"), FAILURE),
    "rotate-validity-negative": (
        (
            "keys",
            "rotate",
            "--pki",
            "{pki}",
            "--owner",
            "330000",
            "--usage",
            "seal",
            "--validity-days",
            "-1",
        ),
        USAGE,
    ),
    "revoke-kid-empty": (("keys", "revoke", "", "--pki", "{pki}", "--reason", "r"), USAGE),
    "revoke-reason-empty": (("keys", "revoke", "k", "--pki", "{pki}", "--reason", ""), USAGE),
    "revoke-reason-newline": (
        ("keys", "revoke", "k", "--pki", "{pki}", "--reason", "a\nb"),
        USAGE,
    ),
    "revoke-at-empty": (
        ("keys", "revoke", "k", "--pki", "{pki}", "--reason", "r", "--at", ""),
        USAGE,
    ),
    "revoke-pki-missing": (("keys", "revoke", "k", "--pki", "{missing}", "--reason", "r"), FAILURE),
    "expiring-within-empty": (("keys", "expiring", "--pki", "{pki}", "--within", ""), USAGE),
    "expiring-within-zero": (("keys", "expiring", "--pki", "{pki}", "--within", "0d"), USAGE),
    "expiring-within-float": (("keys", "expiring", "--pki", "{pki}", "--within", "1.5d"), USAGE),
    "expiring-pki-missing": (("keys", "expiring", "--pki", "{missing}"), FAILURE),
    "expiring-pki-is-a-file": (("keys", "expiring", "--pki", "{file}"), FAILURE),
    # seal
    "seal-file-missing": (("seal", "{missing}", "--key", "{key}", "--cert", "{cert}"), FAILURE),
    "seal-file-is-a-dir": (("seal", "{dir}", "--key", "{key}", "--cert", "{cert}"), FAILURE),
    "seal-key-missing": (("seal", "{file}", "--key", "{missing}", "--cert", "{cert}"), FAILURE),
    "seal-key-is-a-dir": (("seal", "{file}", "--key", "{dir}", "--cert", "{cert}"), FAILURE),
    "seal-key-not-pem": (("seal", "{file}", "--key", "{file}", "--cert", "{seal_cert}"), FAILURE),
    "seal-cert-missing": (("seal", "{file}", "--key", "{key}", "--cert", "{missing}"), FAILURE),
    "seal-content-type-newline": ((*SEAL, "--content-type", "text/plain\nX: y"), USAGE),
    "seal-content-type-empty": ((*SEAL, "--content-type", ""), USAGE),
    "seal-out-is-a-dir": ((*SEAL, "--out", "{dir}"), FAILURE),
    # verify
    "verify-file-missing": (
        ("verify", "{missing}", "--snapshot", "{snapshot}", "--pki", "{pki}"),
        USAGE,
    ),
    "verify-file-is-a-dir": (
        ("verify", "{dir}", "--snapshot", "{snapshot}", "--pki", "{pki}"),
        USAGE,
    ),
    "verify-snapshot-is-a-dir": (
        ("verify", "{file}", "--snapshot", "{dir}", "--pki", "{pki}"),
        USAGE,
    ),
    "verify-authority-missing": (
        ("verify", "{file}", "--snapshot", "{snapshot}", "--authority", "{missing}"),
        USAGE,
    ),
    "verify-payload-missing": ((*VERIFY, "--payload", "{missing}"), USAGE),
    "verify-region-bad": ((*VERIFY, "--region", "12345"), USAGE),
    "verify-region-empty": ((*VERIFY, "--region", ""), USAGE),
    "verify-at-bad": ((*VERIFY, "--at", "2026-13-01T00:00:00+00:00"), USAGE),
    "verify-expect-bad": ((*VERIFY, "--expect", "stamp"), USAGE),
    # token
    "token-pki-missing": (
        ("token", "issue", "--pki", "{missing}", "--agency", "zj.hrss", "--operator", "op"),
        FAILURE,
    ),
    "token-applicant-bad": ((*TOKEN, "--applicant", "110105194912310021"), FAILURE),
    "token-agency-unknown": (
        ("token", "issue", "--pki", "{pki}", "--agency", "nobody", "--operator", "op"),
        FAILURE,
    ),
    "token-agency-empty": (
        ("token", "issue", "--pki", "{pki}", "--agency", "", "--operator", "op"),
        USAGE,
    ),
    "token-operator-control": (
        ("token", "issue", "--pki", "{pki}", "--agency", "zj.hrss", "--operator", "a\x00b"),
        USAGE,
    ),
    "token-lifetime-long": ((*TOKEN, "--lifetime", "10m"), USAGE),
    # gateway serve: every address form
    "serve-provider-not-loopback": ((*SERVE, "--provider", "10.1.2.3:9500"), USAGE),
    "serve-provider-no-port": ((*SERVE, "--provider", "127.0.0.1"), USAGE),
    "serve-provider-port-zero": ((*SERVE, "--provider", "127.0.0.1:0"), USAGE),
    "serve-provider-port-huge": ((*SERVE, "--provider", "127.0.0.1:65536"), USAGE),
    "serve-provider-empty": ((*SERVE, "--provider", ""), USAGE),
    "serve-provider-ipv6-bare": ((*SERVE, "--provider", "::1:9500"), USAGE),
    "serve-provider-ipv6-not-an-address": ((*SERVE, "--provider", "[::zz]:9500"), USAGE),
    "serve-provider-bad-ipv4": ((*SERVE, "--provider", "127.0.0.300:9500"), USAGE),
    "serve-listen-bad-host": ((*SERVE, "--listen", "bad_host!:7330"), USAGE),
    "serve-listen-port-text": ((*SERVE, "--listen", "127.0.0.1:http"), USAGE),
    "serve-listen-control": ((*SERVE, "--listen", "127.0.0.1:73\n30"), USAGE),
    "serve-listen-empty": ((*SERVE, "--listen", ""), USAGE),
    "serve-listen-ipv6-bare": ((*SERVE, "--listen", "::1:0"), USAGE),
    "serve-listen-unresolvable": ((*SERVE, "--listen", "no-such-host.invalid:0"), FAILURE),
    "serve-listen-not-local": ((*SERVE, "--listen", "192.0.2.1:0"), FAILURE),
    "serve-follow-no-port": ((*SERVE, "--follow", "peer.example"), USAGE),
    "serve-follow-space": ((*SERVE, "--follow", "peer example:7330"), USAGE),
    "serve-peer-bad-port": ((*SERVE, "--peer", "510000=localhost:99999"), USAGE),
    "serve-peer-bad-region": ((*SERVE, "--peer", "999999=localhost:7510"), USAGE),
    "serve-peer-ipv6-bare": ((*SERVE, "--peer", "510000=::1:7510"), USAGE),
    "serve-region-empty": (("gateway", "serve", "--pki", "{pki}", "--region", ""), USAGE),
    "serve-workers-zero": ((*SERVE, "--workers", "0"), USAGE),
    "serve-workers-text": ((*SERVE, "--workers", "many"), USAGE),
    "serve-config-is-a-dir": (("gateway", "serve", "--config", "{dir}"), FAILURE),
    "serve-config-not-toml": (("gateway", "serve", "--config", "{key}"), FAILURE),
    "serve-pki-missing": (
        (
            "gateway",
            "serve",
            "--pki",
            "{missing}",
            "--region",
            "330000",
            "--snapshot",
            "{snapshot}",
        ),
        FAILURE,
    ),
    "serve-snapshot-is-a-dir": (
        ("gateway", "serve", "--pki", "{pki}", "--region", "330000", "--snapshot", "{dir}"),
        FAILURE,
    ),
    "serve-audit-db-is-a-dir": (
        (*SERVE, "--listen", "127.0.0.1:0", "--audit-db", "{dir}"),
        FAILURE,
    ),
    "serve-bootstrap-ca-missing": (
        (
            "gateway",
            "serve",
            "--pki",
            "{pki}",
            "--region",
            "330000",
            "--follow",
            "localhost:7510",
            "--bootstrap-ca",
            "{missing}",
        ),
        FAILURE,
    ),
    "serve-redis-env-unset": ((*SERVE, "--redis-env", UNSET), FAILURE),
    "serve-passphrase-env-unset": ((*SERVE, "--passphrase-env", UNSET), FAILURE),
    # provider serve
    "provider-listen-not-loopback": (
        ("provider", "serve", "--region", "330000", "--listen", "0.0.0.0:0"),
        USAGE,
    ),
    "provider-listen-bad": (("provider", "serve", "--region", "330000", "--listen", "x"), USAGE),
    "provider-region-bad": (("provider", "serve", "--region", "33"), USAGE),
    # audit
    "audit-verify-sqlite-missing": (
        ("audit", "verify", "--sqlite", "{missing}", "--pki", "{pki}", "--region", "510000"),
        FAILURE,
    ),
    "audit-verify-sqlite-is-a-dir": (
        ("audit", "verify", "--sqlite", "{dir}", "--pki", "{pki}", "--region", "510000"),
        FAILURE,
    ),
    "audit-verify-sqlite-not-a-db": (
        ("audit", "verify", "--sqlite", "{file}", "--pki", "{pki}", "--region", "510000"),
        FAILURE,
    ),
    "audit-verify-region-bad": (
        ("audit", "verify", "--sqlite", "{db}", "--pki", "{pki}", "--region", "5100"),
        USAGE,
    ),
    "audit-verify-origin-empty": ((*AUDIT_VERIFY, "--origin", ""), USAGE),
    "audit-verify-key-name-space": ((*AUDIT_VERIFY, "--key-name", "a b"), USAGE),
    "audit-verify-checkpoint-is-a-dir": ((*AUDIT_VERIFY, "--checkpoint", "{dir}"), FAILURE),
    "audit-verify-checkpoint-missing": ((*AUDIT_VERIFY, "--checkpoint", "{missing}"), FAILURE),
    "audit-verify-audit-cert-not-pem": (
        ("audit", "verify", "--sqlite", "{db}", "--audit-cert", "{file}", "--region", "510000"),
        FAILURE,
    ),
    "audit-verify-postgres-env-unset": (
        ("audit", "verify", "--postgres-env", UNSET, "--pki", "{pki}", "--region", "510000"),
        FAILURE,
    ),
    "audit-verify-schema-bad": (
        (
            "audit",
            "verify",
            "--postgres-env",
            UNSET,
            "--schema",
            "A-B",
            "--pki",
            "{pki}",
            "--region",
            "510000",
        ),
        USAGE,
    ),
    "audit-query-since-bad": ((*AUDIT_QUERY, "--since", "yesterday"), USAGE),
    "audit-query-until-empty": ((*AUDIT_QUERY, "--until", ""), USAGE),
    "audit-query-limit-zero": ((*AUDIT_QUERY, "--limit", "0"), USAGE),
    "audit-query-after-negative": ((*AUDIT_QUERY, "--after", "-1"), USAGE),
    "audit-query-subject-short": ((*AUDIT_QUERY, "--subject", "abc"), USAGE),
    "audit-query-provider-region-bad": ((*AUDIT_QUERY, "--provider-region", "999999"), USAGE),
    "audit-query-provider-region-empty": ((*AUDIT_QUERY, "--provider-region", ""), USAGE),
    "audit-query-outcome-bad": ((*AUDIT_QUERY, "--outcome", "maybe"), USAGE),
    "audit-query-agency-empty": ((*AUDIT_QUERY, "--agency", ""), USAGE),
    "audit-query-purpose-control": ((*AUDIT_QUERY, "--purpose", "SI\x00"), USAGE),
    "audit-query-dataset-empty": ((*AUDIT_QUERY, "--dataset", ""), USAGE),
    "audit-query-pseudonym-key-missing": (
        (*AUDIT_QUERY, "--subject-id", "x", "--pseudonym-key-file", "{missing}"),
        FAILURE,
    ),
    "audit-query-pseudonym-key-is-a-dir": (
        (*AUDIT_QUERY, "--subject-id", "x", "--pseudonym-key-file", "{dir}"),
        FAILURE,
    ),
    "audit-proof-index-negative": ((*AUDIT_PROOF, "--index", "-1"), USAGE),
    "audit-proof-size-zero": ((*AUDIT_PROOF, "--index", "0", "--size", "0"), USAGE),
    "audit-proof-consistency-text": ((*AUDIT_PROOF, "--consistency", "one"), USAGE),
    "audit-prune-older-than-bad": ((*AUDIT_PRUNE, "--older-than", "1y"), USAGE),
    "audit-prune-operator-empty": (
        (
            "audit",
            "prune",
            "--sqlite",
            "{db}",
            "--pki",
            "{pki}",
            "--region",
            "510000",
            "--operator",
            "",
            "--reason",
            "r",
        ),
        USAGE,
    ),
    "audit-prune-audit-key-missing": (
        (
            "audit",
            "prune",
            "--sqlite",
            "{db}",
            "--audit-key",
            "{missing}",
            "--region",
            "510000",
            "--operator",
            "o",
            "--reason",
            "r",
        ),
        FAILURE,
    ),
    # demo
    "demo-redis-not-a-url": (("demo", "--redis", "localhost:6379"), USAGE),
    "demo-postgres-not-a-dsn": (("demo", "--postgres", "host=x =y"), USAGE),
    "demo-dir-is-a-file": (("demo", "--dir", "{file}"), FAILURE),
    "demo-source-missing": (("demo", "--source", "{missing}"), FAILURE),
}


@pytest.mark.parametrize(("argv", "code"), ROWS.values(), ids=ROWS.keys())
def test_a_malformed_value_is_one_line_and_the_promised_exit_code(
    run: Run, paths: Paths, argv: tuple[str, ...], code: int
) -> None:
    status, out, err = run(*_argv(paths, argv))
    assert "Traceback" not in err
    assert (status, out) == (code, ""), err
    lines = err.splitlines()
    assert len(lines) == 1, err
    if code == USAGE:
        assert lines[0].startswith("tongban"), err
        assert ": error: " in lines[0], err
    else:
        assert lines[0].startswith("tongban: "), err
