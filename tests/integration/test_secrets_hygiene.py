"""The whole demo at log level DEBUG, with Redis: no private key, passphrase, token or raw
subject id (citizen id or business USCC) in any log line, metric, Redis key or audit record."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from support import REPO, RedisServer, free_port

from gateway.demo import REGIONS
from gateway.provider import DemoData

pytestmark = pytest.mark.integration

DEMO_TIMEOUT = 120.0
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")  # a JWS/JWT: header.payload
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
BEARER = re.compile(r"Bearer\s+\S", re.I)


def _subjects() -> set[str]:
    """Every subject the demo can have asked about (it draws from the start of these lists)."""
    found: set[str] = set()
    for region in REGIONS:
        data = DemoData(region)
        found.update(data.population(600))
        found.update(data.businesses(1300))
    return found


def _secrets(folder: Path) -> list[tuple[str, str]]:
    """(what, text) of every secret the demo's PKI holds: private key bodies and dev secrets."""
    found = []
    for key in (folder / "pki").rglob("*.key"):
        body = "".join(
            line for line in key.read_text().splitlines() if line and not line.startswith("-----")
        )
        found.append((f"private key {key.name}", body[20:60]))  # a slice of the base64 body
    for secret in (folder / "pki").glob("*.secret"):
        found.append((f"dev secret {secret.name}", secret.read_text().strip()))
    return found


def _leaks(where: str, text: str, subjects: set[str], secrets: list[tuple[str, str]]) -> list[str]:
    problems = [f"{where}: {p.pattern}" for p in (JWT, PEM_PRIVATE, BEARER) if p.search(text)]
    problems += [f"{where}: {what}" for what, value in secrets if value and value in text]
    for candidate in re.findall(r"(?<![0-9A-Z])[0-9A-Z]{18}(?![0-9A-Z])", text):
        if candidate in subjects:
            problems.append(f"{where}: a raw subject id {candidate[:6]}…")
    return problems


def test_no_secret_or_subject_id_leaves_through_logs_metrics_redis_or_audit(
    tmp_path: Path,
) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    folder = tmp_path / "demo"
    log_file = tmp_path / "stderr.log"  # a file, not a pipe: DEBUG logging would fill a pipe
    try:
        with log_file.open("wb") as stderr, subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "--log-level", "DEBUG", "demo", "--serve",
             "--dir", str(folder), "--redis", server.url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as process:  # fmt: skip
            assert process.stdout is not None
            transcript: list[str] = []
            deadline = time.monotonic() + DEMO_TIMEOUT
            while not transcript or "Ctrl-C stops them." not in transcript[-1]:
                line = process.stdout.readline()
                assert line, "the demo ended early:\n" + "".join(transcript)
                transcript.append(line)
                assert time.monotonic() < deadline
            text = "".join(transcript)
            assert "8 of 8 scenarios behaved as expected." in text
            metrics = []
            for url in sorted(set(re.findall(r"http://127\.0\.0\.1:\d+/metrics", text))):
                with urllib.request.urlopen(url, timeout=10) as response:
                    metrics.append(response.read().decode())
            keys = [
                k.decode("utf-8", "replace") for k in redis.Redis.from_url(server.url).keys("*")
            ]
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        logs = log_file.read_text(encoding="utf-8", errors="replace")
    finally:
        server.kill()

    assert len(metrics) == 3
    assert keys, "the demo with --redis left nothing in Redis: the scan would prove nothing"
    assert logs.count("\n") > 20, "DEBUG logging produced almost nothing: nothing was scanned"
    subjects = _subjects()
    secrets = _secrets(folder)
    assert len(secrets) > 30
    problems = _leaks("log", logs, subjects, secrets)
    problems += _leaks("metrics", "\n".join(metrics), subjects, secrets)
    problems += _leaks("redis keys", "\n".join(keys), subjects, secrets)
    for db in sorted(folder.glob("audit-*.db")):
        with sqlite3.connect(db) as conn:
            rows = "\n".join(
                bytes(r[0]).decode("utf-8", "replace")
                for r in conn.execute("SELECT canonical FROM audit_records")
            )
        assert rows, f"{db.name} holds no record"
        problems += _leaks(f"audit {db.name}", rows, subjects, secrets)
    assert problems == []
