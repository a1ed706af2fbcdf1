"""The benchmark scripts run as the README and bench/README.md show them (`.venv/bin/python
bench/NAME.py` from the repository root), with small sizes so that each takes seconds. Nothing
here looks at the figures: a benchmark's numbers are for people, never a test's verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pg_support import SUPERUSER_DSN
from support import RedisServer, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 600  # seconds: a hang guard on a loaded 2-core machine


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    # Exactly as documented: the script by its path, from the repository root, so that bench/
    # comes first on sys.path (where a script named like a package would shadow it).
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_bench_audit_runs(tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    done = run_bench(
        "audit.py", "--seconds", "0.05", "--postgres", SUPERUSER_DSN, "--json", str(out)
    )
    assert "sqlite" in done.stdout
    assert "postgres" in done.stdout
    figures = json.loads(out.read_text())
    assert set(figures["appends_per_second"]) == {
        "sqlite_1",
        "sqlite_64",
        "postgres_1",
        "postgres_64",
    }


def test_bench_witnessing_runs(tmp_path: Path) -> None:
    out = tmp_path / "witnessing.json"
    done = run_bench("witnessing.py", "--seconds", "0.05", "--json", str(out))
    assert "with witnessing" in done.stdout
    assert set(json.loads(out.read_text())["records_per_second"]) == {"100", "1000"}


def test_bench_redis_trips_runs(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)  # a Redis of its own, not the machine's
    server.start()
    try:
        runs = [
            run_bench(
                "redis_trips.py", "--redis", server.url, "--requests", "50", "--rounds", "1",
                *checks,
            )
            for checks in ((), ("--checks", "replay,quota"), ("--checks", "quota,cache"))
        ]  # fmt: skip
    finally:
        server.kill()
    for done in runs:
        assert "one trip / separate" in done.stdout or "NOT VALID" in done.stdout


def test_bench_verify_runs(tmp_path: Path) -> None:
    out = tmp_path / "verify.json"
    done = run_bench(
        "verify.py", "--seconds", "0.05", "--rounds", "1", "--pool", "4", "--json", str(out)
    )
    assert "a/b" in done.stdout
    assert "d/e" in done.stdout  # SM2 seal validation against the raw SM2 check
    assert out.is_file()


def test_bench_soak_runs(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = run_bench(
        "soak.py",
        "--versions",
        "40",
        "--warmup",
        "10",
        "--reload-tls-every",
        "15",
        "--concurrency",
        "2",
        "--settle",
        "0.5",
        # A short run measures its warm-up, not a trend: the verdict is make soak's to give.
        "--max-rss-mib",
        "512",
        "--max-fds",
        "64",
        "--max-tasks",
        "64",
        "--max-threads",
        "64",
        "--json",
        str(out),
    )
    assert "open file descriptors" in done.stdout, done.stdout
    assert json.loads(out.read_text()), "the soak wrote no figures"


def test_bench_targets_runs(tmp_path: Path) -> None:
    """Issue 20's table: every figure beside its target, from the harnesses it runs."""
    out = tmp_path / "targets.json"
    kept = tmp_path / "kept"
    done = run_bench(
        "targets.py",
        "--quick",
        "--postgres",
        SUPERUSER_DSN,
        "--json",
        str(out),
        "--keep",
        str(kept),
    )
    assert "echo ceiling (this run)" in done.stdout
    # query_path.py ran whole (this is its smoke run too): with the cost of signing each
    # forward beside the path that pays it (issue 18)
    path_output = (kept / "query_path.out").read_text(encoding="utf-8")
    assert "whole run" in path_output
    assert "request signing (Peer.Forward)" in path_output
    signing = json.loads((kept / "query_path.json").read_text(encoding="utf-8"))["request_signing"]
    assert signing["per_forward_us"] == signing["sign_us"] + signing["verify_us"] > 0
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert len(figures["figures"]) == 13
    missing = [row["figure"] for row in figures["figures"] if row["value"] is None]
    assert not missing, missing
    assert {h: v["exit_code"] for h, v in figures["harnesses"].items()} == {
        "query_path": 0,
        "audit": 0,
        "verify": 0,
    }
