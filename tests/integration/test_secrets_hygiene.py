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
from leak_support import demo_subjects, leaks, pki_secrets
from support import REPO, RedisServer, free_port

from gateway.demo.stories import SCENARIOS

pytestmark = pytest.mark.integration

DEMO_TIMEOUT = 120.0


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
            assert f"{len(SCENARIOS)} of {len(SCENARIOS)} scenarios behaved as expected." in text
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
    subjects = demo_subjects()
    secrets = pki_secrets(folder)
    assert len(secrets) > 30
    problems = leaks("log", logs, subjects, secrets)
    problems += leaks("metrics", "\n".join(metrics), subjects, secrets)
    problems += leaks("redis keys", "\n".join(keys), subjects, secrets)
    for db in sorted(folder.glob("audit-*.db")):
        with sqlite3.connect(db) as conn:
            rows = "\n".join(
                bytes(r[0]).decode("utf-8", "replace")
                for r in conn.execute("SELECT canonical FROM audit_records")
            )
        assert rows, f"{db.name} holds no record"
        problems += leaks(f"audit {db.name}", rows, subjects, secrets)
    assert problems == []
