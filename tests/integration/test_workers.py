"""`tongban gateway serve --workers N` as a real process: N workers share the gRPC and metrics
ports, `/metrics` adds up every worker's calls, a worker that dies is started again, Ctrl-C
stops them all; a configuration replicas could not share (SQLite audit, memory cache, port 0)
is refused before any worker starts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pg_support import SUPERUSER_DSN, superuser
from psycopg import sql
from support import (
    REPO,
    Federation,
    credentials_as,
    free_port,
    make_federation,
    refusal_event,
)

from gateway.demo.pki import DEV_CACHE_KEY, DEV_PSEUDONYM_KEY
from registry import KeyState, KeyUsage
from tongban.v1 import registry_pb2, registry_pb2_grpc

pytestmark = pytest.mark.integration

START_TIMEOUT = 60.0  # seconds for every worker to announce itself on a loaded 2-core machine


def _config(fed: Federation, folder: Path, *, port: int, metrics: int, schema: str) -> Path:
    """A full (non-dev) configuration of region 330000 with PostgreSQL audit and Redis."""
    inventory = fed.inventory()
    (tls,) = inventory.find("330000", KeyUsage.TLS, KeyState.ACTIVE)
    (audit,) = inventory.find("330000", KeyUsage.AUDIT, KeyState.ACTIVE)
    seals = inventory.find("330000", KeyUsage.SEAL)
    pki = fed.pki
    text = f"""
[gateway]
region = "330000"
listen = "127.0.0.1:{port}"
grace_seconds = 1
metrics_listen = "127.0.0.1:{metrics}"

[tls]
certificate = "{pki / tls.certificate}"
private_key = "{pki / tls.private_key}"

[registry]
trusted_root = "{pki / "authority" / "root.json"}"
snapshot_file = "{fed.current}"
poll_seconds = 0.5
"""
    for seal in seals:
        text += f"""
[[seal.keys]]
certificate = "{pki / seal.certificate}"
private_key = "{pki / seal.private_key}"
"""
    text += f"""
[audit]
store = "postgres"
dsn_env = "TEST_WORKERS_DSN"
owner_dsn_env = "TEST_WORKERS_DSN"
schema = "{schema}"
key = "{pki / audit.private_key}"
pseudonym_key_file = "{pki / DEV_PSEUDONYM_KEY}"

[exchange]
provider = "127.0.0.1:{free_port()}"
redis_url_env = "TEST_WORKERS_REDIS"
cache_key_file = "{pki / DEV_CACHE_KEY}"
"""
    path = folder / "gateway-330000.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"tongban_workers_{secrets.token_hex(4)}"
    yield name
    with superuser() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _start(config: Path, workers: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "gateway", "serve", "--config", str(config),
         "--workers", str(workers)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TEST_WORKERS_DSN": SUPERUSER_DSN,
            "TEST_WORKERS_REDIS": "redis://127.0.0.1:6379/0",
        },
    )  # fmt: skip


def _workers_announced(process: subprocess.Popen[str], count: int) -> dict[int, int]:
    """worker number -> pid, from the lines each worker prints once it listens."""
    assert process.stdout is not None
    found: dict[int, int] = {}
    seen: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while len(found) < count:
        line = process.stdout.readline()
        assert line, (
            "the supervisor ended:\n"
            + "".join(seen)
            + (process.stderr.read() if process.stderr else "")
        )
        seen.append(line)
        match = re.search(r"worker (\d+)/\d+ \(pid (\d+)\) listening", line)
        if match:
            found[int(match.group(1))] = int(match.group(2))
        assert time.monotonic() < deadline, "".join(seen)
    return found


async def _calls(fed: Federation, port: int, n: int) -> None:
    """n calls, each on a new connection (SO_REUSEPORT spreads connections, not calls)."""
    for _ in range(n):
        async with grpc.aio.secure_channel(
            f"localhost:{port}", credentials_as(fed, "zj.hrss", "330000")
        ) as channel:
            answer = await registry_pb2_grpc.RegistryStub(channel).GetSnapshot(
                registry_pb2.GetSnapshotRequest(), timeout=10
            )
            assert answer.snapshot.jws


def _connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on local `port` held by each pid (from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    counts = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
                counts[inodes[fields[9]]] += 1
    return counts


async def _spread(fed: Federation, port: int, pids: list[int], n: int) -> dict[int, int]:
    """n connections open at once, one call on each; then which worker holds each."""
    channels = [
        grpc.aio.secure_channel(f"localhost:{port}", credentials_as(fed, "zj.hrss", "330000"))
        for _ in range(n)
    ]
    try:
        for channel in channels:
            await registry_pb2_grpc.RegistryStub(channel).GetSnapshot(
                registry_pb2.GetSnapshotRequest(), timeout=10
            )
        return _connections_by_pid(pids, port)
    finally:
        for channel in channels:
            await channel.close()


def _handled(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^grpc_server_handled_total\{[^}]*grpc_method="GetSnapshot"[^}]*\} (\S+)$',
            text,
            re.M,
        )
    )


def test_two_workers_share_the_ports_and_their_metrics(tmp_path: Path, schema: str) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    port, metrics_port = free_port(), free_port()
    config = _config(fed, tmp_path, port=port, metrics=metrics_port, schema=schema)
    with _start(config, 2) as process:
        try:
            pids = _workers_announced(process, 2)
            assert len(set(pids.values())) == 2
            # The kernel spreads connections over both workers (SO_REUSEPORT).
            spread = asyncio.run(_spread(fed, port, list(pids.values()), 16))
            assert sum(spread.values()) == 16
            assert all(count > 0 for count in spread.values()), spread
            asyncio.run(_calls(fed, port, 14))
            # Every scrape, whichever worker answers it, counts the calls of both.
            assert [_handled(metrics_port) for _ in range(4)] == [30.0] * 4

            os.kill(pids[1], signal.SIGKILL)  # a worker dies: the supervisor starts it again
            again = _workers_announced(process, 1)
            assert again.keys() == {1}
            assert again[1] not in pids.values()
            asyncio.run(_calls(fed, port, 10))
            assert _handled(metrics_port) >= 10.0  # the dead worker's counts may go with it

            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert "Traceback" not in (process.stderr.read() if process.stderr else "")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("--workers", "2"), 1, 'several workers need store = "postgres"'),
        (
            ("--workers", "0"),
            2,
            "--workers: '0': the number of workers is a whole number from 1 to 64",
        ),
    ],
)
def test_a_configuration_workers_cannot_share_is_refused(
    tmp_path: Path, argv: tuple[str, ...], code: int, message: str
) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "gateway", "serve", "--pki", str(fed.pki),
         "--region", "330000", "--snapshot", str(fed.current), "--listen",
         f"127.0.0.1:{free_port()}", "--audit-db", str(tmp_path / "audit.db"), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    if code == 2:  # argparse's usage error: plain text, before any logging is set up
        assert message in done.stderr
    else:
        # stderr is not a terminal: the serving command's log, JSON lines, ends with the refusal.
        last = json.loads(done.stderr.splitlines()[-1])
        assert last["logger"] == "tongban.cli"
        assert message in last["event"]
    assert "Traceback" not in done.stderr


def test_port_zero_cannot_be_shared(tmp_path: Path, schema: str) -> None:
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    config = _config(fed, tmp_path, port=0, metrics=free_port(), schema=schema)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "gateway", "serve", "--config", str(config),
         "--workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "TEST_WORKERS_DSN": SUPERUSER_DSN,
             "TEST_WORKERS_REDIS": "redis://127.0.0.1:6379/0"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "give a fixed port, not 0" in done.stderr


@pytest.mark.parametrize("which", ["listen", "metrics_listen"])
def test_workers_refuse_a_port_another_process_holds(
    tmp_path: Path, schema: str, which: str
) -> None:
    """The workers bind with SO_REUSEPORT: a foreign listener that set it too (same user) would
    silently get a share of the connections, so the supervisor refuses a held port first."""
    fed = make_federation(tmp_path / "fed")
    fed.publish()
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        held = foreign.getsockname()[1]
        port, metrics = (held, free_port()) if which == "listen" else (free_port(), held)
        config = _config(fed, tmp_path, port=port, metrics=metrics, schema=schema)
        with _start(config, 2) as process:
            try:
                out, err = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # the workers started: they share the port
                process.kill()
                out, err = process.communicate()
    assert process.returncode == 1, out + err
    assert (
        refusal_event(err)
        == f"tongban: gateway.{which}: 127.0.0.1:{held} is already in use (another gateway?)"
    )
    assert "listening" not in out
