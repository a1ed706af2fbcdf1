"""The gateway path against the ceiling: a bare grpc.aio echo server, measured side by side.

Run: .venv/bin/python bench/query_path.py [--seconds 8] [--warmup 3] [--concurrency 32]
                                      [--channels 4] [--json FILE] [--redis URL]
                                      [--postgres DSN] [--workers 1,2] [--no-one-process]
                                      [--profile DIR]

One closed-loop load generator in THIS process (the "client process"; it never shares a GIL
with a server) drives, one after the other, the same targets through several topologies, all
started by the harness on loopback from one development PKI and one signed registry (gateway/
demo/federation.py: `build_pki`), with real Redis for the cache, the replay window and the quotas:

    echo         the ceiling: a bare `grpc.aio` server in its own process, over the same mutual
                 TLS as gateway 510000, answering every call with the bytes of a real sealed
                 `QueryResponse`; measured first, in the middle and last
    per region   ONE PROCESS PER REGION, as in production where each region's gateway runs on
                 its own machine: 330000, 510000 and 500000 each run their gateway and demo data
                 system in their own process (`--role region`), told their peers' ports in
                 advance; SQLite audit logs (WAL, synchronous=FULL). Every target, and the
                 open-loop pass at half load
    one process  the three gateways and data systems in one process, exactly as `tongban demo
                 --redis URL` starts them (`start_federation`); SQLite audit; the next database
                 of the same Redis (sharing one, it would be a replica of the per-region gateways
                 and share their report queue). (a), (b), (e): for comparison with the figures
                 before the per-region topology existed
    N workers    510000 as `tongban gateway serve --config FILE --workers N` (N = 1, 2): a full
                 TOML configuration with a PostgreSQL audit store (a fresh schema per N, dropped
                 at the end) and Redis, as replicas need; 500000 and 330000 are the per-region
                 processes above. (a) and (b)

Targets, all as 四川 agencies asking their gateway 510000:

    (a)   Query of one 重庆 (500000) citizen again and again (sc.hrss, si.participation,
          cache_scope "provider"): answered from 500000's Redis cache
    (b)   Query of a new citizen every time: two hops, the data system, an ES256 seal, its check
    (c)   BatchQuery of 5 items (3 to 500000, 2 to 330000), each answered from cache
    (d)   Credentials.Verify of one sealed answer (signature, chain, report)
    (e)   Query of one 重庆 business licence again and again (sc.amr, market.business_licence,
          cache_scope "requester"): the requesting gateway may answer repeats itself and report
          them to the owner (Peer.ReportAccess); without that it behaves like (a), and the
          output says which it saw. The reports travel after the answers: the harness waits for
          500000 to have recorded them all before the next phase

Honest about the quotas: the agreements allow 120 to 1200 queries a minute, which a benchmark
exceeds in a second. The harness publishes its own copy of conf/registry with every
`quota_per_minute` raised and every agreement id prefixed with this run's id (so that its quota
counters in the shared Redis never touch the real agreements'); the quota is still counted in
Redis on every query. The output says so. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import itertools
import json
import math
import os
import platform
import re
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import grpc
import redis
from google.protobuf import __version__ as protobuf_version

from gateway.demo.data import DemoData
from gateway.demo.federation import (
    DemoError,
    DemoOptions,
    Federation,
    Loopback,
    build_pki,
    demo_settings,
    start_federation,
    start_regions,
    stop_federation,
)
from gateway.demo.pki import DEV_CACHE_KEY, DEV_PSEUDONYM_KEY
from gateway.demo.stories import rpc_reason
from gateway.server import Gateway, freeze_startup_heap
from registry import CURRENT_SNAPSHOT, Inventory, KeyState, KeyUsage
from tongban.v1 import (
    credentials_pb2,
    credentials_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
)

REPO: Final = Path(__file__).resolve().parents[1]
SOURCE: Final = REPO / "conf" / "registry"
DEFAULT_REDIS: Final = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES: Final = "host=127.0.0.1 port=5432 user=postgres dbname=test"

# Who asks whom for what (an agreement of the demo registry: CY-SI-2026, 四川 asks 重庆).
AGENCY: Final = "sc.hrss"  # 四川省人力资源和社会保障厅
REQUESTER: Final = "510000"  # its gateway
PROVIDER: Final = "500000"  # 重庆
OTHER_PROVIDER: Final = "330000"  # 浙江: ZJ-SC-SI-2026 lets sc.hrss ask it too (batch items)
REGIONS: Final = (OTHER_PROVIDER, REQUESTER, PROVIDER)
DATASET: Final = "si.participation"  # cache_scope = "provider"
PURPOSE: Final = "SI-TRANSFER"
BATCH_ITEMS: Final = ((PROVIDER, 3), (OTHER_PROVIDER, 2))  # (region, items) of one BatchQuery
# (e): a dataset whose answers the requesting gateway may cache (LICENCE-CQ-2026).
LICENCE_AGENCY: Final = "sc.amr"  # 四川省市场监督管理局, also on gateway 510000
LICENCE_DATASET: Final = "market.business_licence"  # cache_scope = "requester"
LICENCE_PURPOSE: Final = "LICENCE-VERIFY"

BENCH_QUOTA: Final = 100_000_000  # quota_per_minute in the harness's registry copy
CALL_TIMEOUT: Final = 10.0  # seconds; a call slower than this counts as an error
SETUP_TIMEOUT: Final = 120.0  # seconds for a child process to start
OPEN_LOOP_MAX_IN_FLIGHT: Final = 2048  # an open-loop request due beyond this many is dropped
REPORT_DRAIN_TIMEOUT: Final = 30.0  # seconds to wait for (e)'s access reports to reach 500000
BALANCE_ATTEMPTS: Final = 40  # connections opened again to spread them evenly over workers
ECHO_SERVICE: Final = "tongban.bench.Echo"
ECHO_METHOD: Final = f"/{ECHO_SERVICE}/Echo"
SERVICE_PROCESSES: Final = ("redis-server", "postgres")  # their CPU is shown apart ("svc")

# The issue's targets (issue 8): QPS ratio to the echo ceiling, and p99 at half of max load.
RATIO_TARGETS: Final = {"hit": 0.6, "miss": 0.3}
P99_TARGETS_MS: Final = {"hit": 5.0, "miss": 15.0}

LABELS: Final = {
    "echo": "echo (the ceiling)",
    "hit": "(a) Query, cache hit",
    "miss": "(b) Query, miss, 2 hops",
    "batch": "(c) BatchQuery x5, hits",
    "verify": "(d) Credentials.Verify",
    "licence": "(e) requester-scope hit",
}
TARGETS: Final = ("hit", "miss", "batch", "verify", "licence")
ECHO_RUNS: Final = ("echo_first", "echo_mid", "echo_last")
WORKER_TARGETS: Final = ("hit", "miss", "verify")  # measured at 1 and 2 workers


def topology_title(key: str) -> str:
    if key == "region":
        return "per region"
    if key == "single":
        return "one process"
    if key.startswith("w"):
        n = int(key[1:])
        return f"510000 x{n} worker{'s' if n > 1 else ''}"
    return "echo process"


class BenchError(Exception):
    """The benchmark cannot run or its figures mean nothing; the message says why (one line)."""


# the registry copy ------------------------------------------------------------------------------
def bench_source(folder: Path, run_id: str) -> Path:
    """A copy of conf/registry whose agreements allow BENCH_QUOTA queries a minute, their ids
    prefixed with `run_id`: quota counters live in Redis per agreement id and minute, and this
    run must neither be refused by the real quotas nor use them up for anyone else."""
    target = folder / "source"
    shutil.copytree(SOURCE, target)
    agreements = target / "agreements.toml"
    text = agreements.read_text(encoding="utf-8")
    text, renamed = re.subn(
        r"^\[agreements\.([A-Za-z0-9._-]+)\]", rf"[agreements.B{run_id}-\1]", text, flags=re.M
    )
    text, raised = re.subn(
        r"^quota_per_minute\s*=\s*\d+", f"quota_per_minute = {BENCH_QUOTA}", text, flags=re.M
    )
    if not renamed or raised != renamed:
        raise BenchError(f"{agreements}: expected one quota_per_minute per agreement")
    agreements.write_text(text, encoding="utf-8")
    return target


# the child processes (this file again, with --role) -------------------------------------------------
def _tls_pair(pki: Path, owner: str) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM) of `owner`'s active TLS key in the dev PKI."""
    records = Inventory.load(pki).find(owner, KeyUsage.TLS, KeyState.ACTIVE)
    if not records:
        raise BenchError(f"{pki}: {owner} has no active TLS key")
    record = records[-1]
    return (pki / record.certificate).read_bytes(), (pki / record.private_key).read_bytes()


def _root(pki: Path, region: str) -> bytes:
    return (pki / "regions" / region / "ca" / "root.pem").read_bytes()


async def _start_echo(pki: Path, answer: bytes) -> tuple[grpc.aio.Server, int]:
    """The ceiling: a grpc.aio server with no interceptor and no work, over the same mutual TLS
    as gateway 510000 (its certificate; client certificates of any demo region required). It
    returns `answer` without parsing the request (the bytes go through unserialised)."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return answer

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    chain, key = _tls_pair(pki, REQUESTER)
    roots = b"".join(_root(pki, region) for region in REGIONS)
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=roots, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


class GcPauses:
    """The garbage collector's pauses in a child process, by generation (`gc.callbacks`).
    `snapshot()` gives counts and total time so far, and the longest pause since the last
    snapshot (the client process takes one before and after each phase)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.total_us = [0, 0, 0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        took = time.perf_counter() - self._started
        self.collections[generation] += 1
        self.total_us[generation] += int(took * 1e6)
        self.longest_ms[generation] = max(self.longest_ms[generation], took * 1e3)

    def snapshot(self) -> dict[str, dict[str, float]]:
        out = {
            f"gen{g}": {
                "collections": self.collections[g],
                "total_us": self.total_us[g],
                "longest_ms": round(self.longest_ms[g], 3),
            }
            for g in range(3)
        }
        self.longest_ms = [0.0, 0.0, 0.0]
        return out


def _gateway_stats(gateway: Gateway) -> dict[str, Any]:
    """A gateway's answers from cache or not, and how many audit records each durable commit
    carried (the group-commit factor)."""
    entry: dict[str, Any] = {}
    if gateway.query_path is not None:
        entry["cache"] = dataclasses.asdict(gateway.query_path.cache.counters)
    if gateway.audit is not None:
        store = gateway.audit.store
        entry["audit"] = {
            name: getattr(store, name)
            for name in ("appended", "commits", "largest_batch")
            if isinstance(getattr(store, name, None), int)
        }
    return entry


def _emit(message: dict[str, Any]) -> None:
    """One JSON line to the client process (stdout is reserved for these)."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _answer_commands(stats: Callable[[], dict[str, Any]]) -> None:
    """Commands from the client process, one a line: "stats" or "stop" (EOF stops too)."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "stats":
            return
        _emit(stats())


async def _serve_one_process(folder: Path, source: Path, redis_url: str, label: str) -> None:
    """--role one-process: the three demo gateways and data systems in this one process."""
    fed = Federation(folder=folder, source=source)
    options = DemoOptions(source=source, folder=folder, redis_url=redis_url)
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        await start_federation(fed, options, secrets.token_hex(3))
        freeze_startup_heap()  # as `tongban gateway serve` does once its gateway has started
        _emit({"ready": True, "gateway_ports": {r: g.port for r, g in fed.gateways.items()}})
        await _answer_commands(
            lambda: {
                "gateways": {r: _gateway_stats(g) for r, g in fed.gateways.items()},
                "gc": {label: pauses.snapshot()},
            }
        )
    finally:
        await stop_federation(fed, options)


async def _serve_region(
    folder: Path, redis_url: str, region: str, ports: dict[str, int], label: str
) -> None:
    """--role region: one region's gateway and its demo data system, in this process, its
    peers at the given ports (each in its own process): what `start_federation` does for one
    region, with a SQLite audit log of its own."""
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    home = folder / f"region-{region}"
    home.mkdir(exist_ok=True)
    loopback = Loopback(dict(ports))
    try:
        await start_regions(
            loopback,
            folder / "pki",
            regions=[region],
            snapshot_file=lambda _: folder / "published" / CURRENT_SNAPSHOT,
            audit_db=lambda _: home / f"audit-{region}.db",
            redis_url=redis_url,
            configure=demo_settings,  # as start_federation configures each demo gateway
        )
        freeze_startup_heap()
        running = loopback.gateways[region]
        _emit(
            {
                "ready": True,
                "gateway_port": running.port,
                "provider_port": loopback.providers[region][1],
            }
        )
        await _answer_commands(
            lambda: {
                "gateways": {region: _gateway_stats(running)},
                "gc": {label: pauses.snapshot()},
            }
        )
    finally:
        await loopback.stop(0.5)


async def _serve_echo(pki: Path, answer_file: Path) -> None:
    """--role echo: the ceiling, alone in this process."""
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    server, port = await _start_echo(pki, answer_file.read_bytes())
    try:
        freeze_startup_heap()
        _emit({"ready": True, "echo_port": port})
        await _answer_commands(lambda: {"gateways": {}, "gc": {"echo": pauses.snapshot()}})
    finally:
        await server.stop(0.5)


def child_main(args: argparse.Namespace) -> int:
    """The child process roles: everything the client process measures runs in one of these."""
    try:
        if args.role == "one-process":
            asyncio.run(_serve_one_process(args.folder, args.source, args.redis, args.label))
        elif args.role == "region":
            ports = {k: int(v) for k, v in (p.split("=") for p in args.ports.split(","))}
            asyncio.run(_serve_region(args.folder, args.redis, args.region, ports, args.label))
        else:
            asyncio.run(_serve_echo(args.folder / "pki", args.answer))
    except (BenchError, DemoError, OSError, grpc.aio.AioRpcError) as exc:
        message = (
            f"{exc.code().name} {rpc_reason(exc)}: {exc.details()}"
            if isinstance(exc, grpc.aio.AioRpcError)
            else str(exc)
        )
        _emit({"error": f"{type(exc).__name__}: {message}"})
        return 1
    except Exception as exc:  # unexpected: the traceback goes to the child's log
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        raise
    return 0


# CPU accounting (/proc) --------------------------------------------------------------------------
TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class PidTimes:
    user: float  # seconds
    system: float  # seconds
    threads: dict[str, float]  # seconds of user + system time by thread group

    @property
    def total(self) -> float:
        return self.user + self.system


def _comm(stat: str) -> str:
    """The (thread) name in a /proc/<pid>/stat line, digits dropped so numbered threads group."""
    return re.sub(r"[\d_-]+$", "", stat[stat.index("(") + 1 : stat.rindex(")")]) or "?"


def _times(stat: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks, fields 14 and 15 of a /proc/<pid>/stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def pid_times(pid: int) -> PidTimes | None:
    """CPU time used so far by a process: user and system time of the whole process, and user +
    system time by thread: "main (event loop)" is the thread that runs every Python handler; the
    others by their kernel name (gRPC's C-core threads name themselves; Python's own threads,
    the audit writers among them, show as "python"). None when the process is gone."""
    try:
        user, system = _times(Path(f"/proc/{pid}/stat").read_text())
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    threads: Counter[str] = Counter()
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = "main (event loop)" if task.name == str(pid) else _comm(stat)
        if name.startswith("python"):
            name = "Python threads (audit writers, gRPC poller)"
        threads[name] += sum(_times(stat))
    return PidTimes(user / TICKS, system / TICKS, {name: t / TICKS for name, t in threads.items()})


def service_ticks() -> dict[int, int]:
    """CPU ticks so far of every Redis and PostgreSQL server process on the machine (by pid)."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] in SERVICE_PROCESSES:
            out[int(entry.name)] = sum(_times(stat))
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / TICKS  # guest time is in user already


# the processes as the client process sees them ----------------------------------------------------
class Child:
    """A child process running this file with --role: started at once, `wait_ready()` reads its
    first message (so several can start side by side); then stats and stop over stdin/stdout."""

    def __init__(self, label: str, argv: list[str], log_path: Path) -> None:
        self.label = label
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(  # noqa: S603 - this same file, by this same interpreter
            [sys.executable, str(Path(__file__).resolve()), *argv, "--label", label],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO,
        )
        self.pid = self._proc.pid
        self.info: dict[str, Any] = {}

    def wait_ready(self, timeout: float = SETUP_TIMEOUT) -> dict[str, Any]:
        self.info = self._read(timeout)
        if "error" in self.info:
            raise BenchError(f"the {self.label} process failed to start: {self.info['error']}")
        return self.info

    def processes(self) -> list[tuple[str, int]]:
        return [(self.label, self.pid)]

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            self._proc.poll()
            state = (
                f"exited with {self._proc.returncode}"
                if self._proc.returncode is not None
                else f"did not answer in {timeout:.0f} s"
            )
            raise BenchError(f"the {self.label} process {state}; {last_line(self.log_path)}")
        message: dict[str, Any] = json.loads(line)
        return message

    def stats(self) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write("stats\n")
        self._proc.stdin.flush()
        return self._read(30)

    def stop(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write("stop\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()


def last_line(log_path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [
            s
            for s in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            if s.strip()
        ]
        if lines:
            return f"its log ({log_path.name}) ends: {lines[-1].strip()[:300]}"
    return "its log is empty"


class CliGateway:
    """510000 as `tongban gateway serve --config FILE --workers N` (the real CLI): N=1 runs the
    gateway in the CLI process itself; N>1 forks N workers sharing the port (SO_REUSEPORT).
    Counters come from its `/metrics` (all workers added up)."""

    def __init__(self, config: Path, workers: int, env: dict[str, str], log_path: Path) -> None:
        self.workers = workers
        self.log_path = log_path
        self.metrics_port = 0
        self._log = log_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(  # noqa: S603 - the project's own CLI, by this interpreter
            [sys.executable, "-m", "gateway.cli", "gateway", "serve", "--config", str(config),
             "--workers", str(workers)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "COLUMNS": "240"},
        )  # fmt: skip
        self.pid = self._proc.pid
        self.worker_pids: dict[int, int] = {}  # worker number -> pid

    def wait_ready(self, timeout: float = SETUP_TIMEOUT) -> None:
        """Until every worker says it listens (N=1: the gateway itself)."""
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while len(self.worker_pids) < self.workers:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._proc.stdout], [], [], max(0.0, left))
            line = self._proc.stdout.readline() if ready else ""
            if not line:
                self._proc.poll()
                state = (
                    f"exited with {self._proc.returncode}"
                    if self._proc.returncode is not None
                    else f"did not start in {timeout:.0f} s"
                )
                said = f"; it printed: {seen[-1].strip()[:200]}" if seen else ""
                raise BenchError(
                    f"`tongban gateway serve --workers {self.workers}` {state}; "
                    f"{last_line(self.log_path)}{said}"
                )
            seen.append(line)
            if match := re.search(r"worker (\d+)/\d+ \(pid (\d+)\) listening", line):
                self.worker_pids[int(match.group(1))] = int(match.group(2))
            elif self.workers == 1 and re.search(r"Gateway \d+ listening on port \d+", line):
                self.worker_pids[1] = self.pid

    def processes(self) -> list[tuple[str, int]]:
        if self.workers == 1:
            return [(f"{REQUESTER} (CLI)", self.pid)]
        return [(f"{REQUESTER} supervisor", self.pid)] + [
            (f"{REQUESTER} worker {n}", pid) for n, pid in sorted(self.worker_pids.items())
        ]

    def stats(self) -> dict[str, Any]:
        """510000's counters from its /metrics: audit appends are counted as they happen; the
        cache and commit totals of a worker that did not answer the scrape lag by up to 5 s."""
        try:
            with urllib.request.urlopen(  # loopback, a port the harness chose
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
            ) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError) as exc:
            raise BenchError(f"the 510000 /metrics cannot be read: {exc}") from exc
        total: Counter[str] = Counter()
        for line in text.splitlines():
            if match := re.fullmatch(r"([a-z_]+)(\{[^}]*\})? (\S+)", line):
                name, labels, value = match.groups()
                if name == "tongban_cache_lookups_total":
                    result = re.search(r'result="(\w+)"', labels or "")
                    key = {"hit": "hits", "miss": "misses", "error": "errors"}.get(
                        result.group(1) if result else "", ""
                    )
                    if key:
                        total[f"cache.{key}"] += int(float(value))
                elif name == "tongban_audit_appends_total":
                    total["audit.appended"] += int(float(value))
                elif name == "tongban_audit_commits_total":
                    total["audit.commits"] += int(float(value))
        entry: dict[str, dict[str, int]] = {}
        for key, value in total.items():
            section, name = key.split(".")
            entry.setdefault(section, {})[name] = value
        return {"gateways": {REQUESTER: entry}, "gc": {}}

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # the supervisor stops its workers
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for pid in self.worker_pids.values():  # a worker left behind by a killed supervisor
            if pid != self.pid and Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()


class Harness:
    """Every process the harness started, the PostgreSQL schemas it made, and their ending."""

    def __init__(self, folder: Path, postgres: str) -> None:
        self.folder = folder
        self.postgres = postgres
        self.children: list[Child | CliGateway] = []
        self.schemas: list[str] = []

    def start(self, label: str, argv: list[str]) -> Child:
        child = Child(label, argv, self.folder / f"{re.sub(r'[^a-z0-9]+', '-', label)}.log")
        self.children.append(child)
        return child

    def start_cli(self, config: Path, workers: int, env: dict[str, str]) -> CliGateway:
        cli = CliGateway(config, workers, env, self.folder / f"cli-{workers}-workers.log")
        self.children.append(cli)
        return cli

    def stop(self, child: Child | CliGateway) -> None:
        child.stop()
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def pids(self) -> list[int]:
        return [pid for child in self.children for _, pid in child.processes()]

    def create_schema(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        self.schemas.append(name)
        try:
            with psycopg.connect(self.postgres, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise BenchError(f"PostgreSQL: cannot create schema {name}: {_one_line(exc)}") from exc

    def close(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
        self.children.clear()
        if self.schemas:
            import psycopg
            from psycopg import sql

            try:
                with psycopg.connect(self.postgres, autocommit=True, connect_timeout=5) as conn:
                    for name in self.schemas:
                        conn.execute(
                            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                        )
            except psycopg.Error as exc:
                print(
                    f"bench: could not drop the schemas {', '.join(self.schemas)}: "
                    f"{_one_line(exc)}",
                    file=sys.stderr,
                )
            self.schemas.clear()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


# subjects ---------------------------------------------------------------------------------------
class DemoSubjects:
    """Ids that a demo region's data system holds a `dataset` record of (citizens, or businesses
    for market.business_licence), in the order of `DemoData.population` / `businesses` (the
    same list in every process: the data is deterministic). `take(n)` hands out the next n,
    never one twice."""

    def __init__(self, region: str, dataset: str = DATASET) -> None:
        self._data = DemoData(region)
        self._dataset = dataset
        self._held: list[str] = []
        self._scanned = 0
        self._next = 0

    def take(self, n: int) -> list[str]:
        while len(self._held) < self._next + n:
            want = self._next + n - len(self._held)
            size = self._scanned + want * 2 + 16
            pool = (
                self._data.businesses(size)
                if self._dataset == LICENCE_DATASET
                else self._data.population(size)
            )
            for subject in pool[self._scanned :]:
                if self._data.record(self._dataset, subject) is not None:
                    self._held.append(subject)
            self._scanned = len(pool)
        taken = self._held[self._next : self._next + n]
        self._next += n
        return taken


class MissPool:
    """Distinct subjects for (b), made outside the windows (~40 µs each); topped up inside a
    window only when more were needed than `ensure` foresaw (counted)."""

    def __init__(self, subjects: DemoSubjects) -> None:
        self._subjects = subjects
        self._pool: deque[str] = deque()
        self.top_ups = 0

    def ensure(self, n: int) -> None:
        if len(self._pool) < n:
            self._pool.extend(self._subjects.take(n - len(self._pool)))

    def __call__(self) -> str:
        if not self._pool:
            self.top_ups += 1
            self._pool.extend(self._subjects.take(1000))
        return self._pool.popleft()


# measuring --------------------------------------------------------------------------------------
Call = Callable[[], Awaitable[object]]


@dataclass
class Phase:
    """What one measurement saw. Latencies in milliseconds; CPU in cores (1.0 = one full core)."""

    topology: str  # "echo", "region", "single", "w1", "w2"
    target: str
    mode: str  # "closed" (fixed calls in flight) or "open" (fixed rate)
    seconds: float
    completed: int  # answered inside the measured window
    completed_all: int  # answered during the whole phase, warm-up included
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    server_cpu: float  # the measured processes together
    client_cpu: float
    server_cpu_us_per_request: float
    services_cpu: float  # Redis and PostgreSQL server processes (whoever uses them)
    idle_cpu: float  # the harness's other processes (idle topologies, supervisor)
    other_cpu: float  # cores used by everything else on the machine (noise: other processes)
    server_system_share: float  # of the measured processes' CPU time, the share in the kernel
    server_processes: dict[str, float]  # cores used, by measured process
    server_threads: dict[str, float]  # cores used, by "process: thread group"
    offered_rate: float | None = None
    dropped: int = 0
    connections: dict[str, int] = field(default_factory=dict)  # by worker, for N workers
    # (e): access reports the owner had not recorded when the phase ended, and the seconds they
    # took to arrive after it (None: not all within REPORT_DRAIN_TIMEOUT)
    reports_pending: int = 0
    reports_drained_s: float | None = 0.0
    server: dict[str, Any] = field(default_factory=dict)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Sample:
    wall: float
    pids: dict[int, PidTimes]  # every process of the harness
    client: float
    machine: float
    services: dict[int, int]


class Window:
    """Counts calls that complete inside [start, end) and samples CPU at both edges."""

    def __init__(
        self,
        measured: list[tuple[str, int]],
        harness: Callable[[], list[int]],
        warmup: float,
        seconds: float,
    ) -> None:
        self.measured = measured
        self.harness = harness
        self.begin = time.perf_counter()
        self.start = self.begin + warmup
        self.end = self.start + seconds
        self.latencies: list[float] = []
        self.completed_all = 0
        self.errors: Counter[str] = Counter()
        self._samples: list[Sample] = []

    def done(self, due: float, finished: float) -> None:
        self.completed_all += 1
        if self.start <= finished < self.end:
            self.latencies.append(finished - due)

    def failed(self, finished: float, exc: grpc.aio.AioRpcError | CallFailed) -> None:
        if self.start <= finished < self.end:
            self.errors[failure(exc)] += 1

    async def sample_cpu(self) -> None:
        """Runs alongside the load: samples at the start and the end of the window."""
        for edge in (self.start, self.end):
            await asyncio.sleep(max(0.0, edge - time.perf_counter()))
            pids = {pid: t for pid in self.harness() if (t := pid_times(pid)) is not None}
            self._samples.append(
                Sample(
                    time.perf_counter(), pids, time.process_time(), machine_busy(), service_ticks()
                )
            )

    def phase(self, topology: str, target: str, mode: str, offered: float | None) -> Phase:
        s0, s1 = self._samples
        wall = s1.wall - s0.wall

        def used(pid: int) -> float:
            after = s1.pids.get(pid)
            before = s0.pids.get(pid)
            if after is None:
                return 0.0
            return after.total - (before.total if before is not None else 0.0)

        processes: dict[str, float] = {}
        threads: dict[str, float] = {}
        system = 0.0
        for label, pid in self.measured:
            processes[label] = processes.get(label, 0.0) + used(pid)
            after, before = s1.pids.get(pid), s0.pids.get(pid)
            if after is None:
                continue
            system += after.system - (before.system if before else 0.0)
            for name, t in after.threads.items():
                was = before.threads.get(name, 0.0) if before else 0.0
                threads[f"{label}: {name}"] = threads.get(f"{label}: {name}", 0.0) + t - was
        server = sum(processes.values())
        harness = sum(used(pid) for pid in set(s0.pids) | set(s1.pids))
        services = sum(t - s0.services.get(pid, 0) for pid, t in s1.services.items()) / TICKS
        client = s1.client - s0.client
        ordered = sorted(self.latencies)
        n = len(ordered)
        return Phase(
            topology=topology,
            target=target,
            mode=mode,
            seconds=wall,
            completed=n,
            completed_all=self.completed_all,
            qps=n / wall,
            p50_ms=percentile(ordered, 0.50) * 1e3,
            p95_ms=percentile(ordered, 0.95) * 1e3,
            p99_ms=percentile(ordered, 0.99) * 1e3,
            mean_ms=(sum(ordered) / n * 1e3) if n else 0.0,
            max_ms=(ordered[-1] * 1e3) if n else 0.0,
            errors=dict(self.errors),
            server_cpu=server / wall,
            client_cpu=client / wall,
            server_cpu_us_per_request=(server / n * 1e6) if n else 0.0,
            services_cpu=services / wall,
            idle_cpu=max(0.0, harness - server) / wall,
            other_cpu=max(0.0, (s1.machine - s0.machine) - harness - client - services) / wall,
            server_system_share=system / max(server, 1e-9),
            server_processes={k: round(v / wall, 3) for k, v in processes.items()},
            server_threads={
                k: round(v / wall, 3)
                for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
                if v > 0
            },
            offered_rate=offered,
        )


async def closed_loop(calls: list[Call], window: Window, *, concurrency: int) -> tuple[Window, int]:
    """`concurrency` workers, spread over the channels, each sending its next call as soon as
    its last one is answered, until the window ends; the window is the last `seconds`."""

    async def worker(call: Call) -> None:
        while (sent := time.perf_counter()) < window.end:
            try:
                await call()
            except (grpc.aio.AioRpcError, CallFailed) as exc:
                window.failed(time.perf_counter(), exc)
            else:
                window.done(sent, time.perf_counter())

    sampler = asyncio.create_task(window.sample_cpu())
    await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(concurrency)))
    await sampler
    return window, 0


async def open_loop(calls: list[Call], window: Window, *, rate: float) -> tuple[Window, int]:
    """Calls sent at `rate` a second whatever the answers do, round-robin over the channels;
    a call's latency counts from when it was due, so a late send counts against the server
    (no coordinated omission). Returns the window and how many were dropped (too many in
    flight)."""
    in_flight: set[asyncio.Task[None]] = set()
    dropped = 0

    async def one(call: Call, due: float) -> None:
        try:
            await call()
        except (grpc.aio.AioRpcError, CallFailed) as exc:
            window.failed(time.perf_counter(), exc)
        else:
            window.done(due, time.perf_counter())

    sampler = asyncio.create_task(window.sample_cpu())
    interval = 1.0 / rate
    for n in itertools.count():
        due = window.begin + n * interval
        if due >= window.end:
            break
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        if len(in_flight) >= OPEN_LOOP_MAX_IN_FLIGHT:
            dropped += window.start <= due
            continue
        task = asyncio.create_task(one(calls[n % len(calls)], due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    await sampler
    return window, dropped


def connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on local `port` held by each pid (from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = pid
    counts = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01" and fields[9] in inodes:
                    counts[inodes[fields[9]]] += 1
    return counts


class Load:
    """The client side: channels as sc.hrss (and sc.amr for (e)) to the echo server and to the
    gateway 510000 of the topology being measured, request tokens, and a call factory per
    target. Every Query carries a fresh request_id (the replay window refuses a repeat), made
    unique across runs by this run's id."""

    def __init__(self, pki: Path, channels: int, run_id: str) -> None:
        self.fed = Federation(folder=pki.parent, source=SOURCE)  # for its `token()` only
        self.channels = channels
        # A local subchannel pool: otherwise channels with the same target share one connection.
        self._options = [("grpc.use_local_subchannel_pool", 1)]
        self._credentials = {}
        for agency in (AGENCY, LICENCE_AGENCY):
            chain, key = _tls_pair(pki, agency)
            self._credentials[agency] = grpc.ssl_channel_credentials(
                _root(pki, REQUESTER), key, chain
            )
        self.echo_channels: list[grpc.aio.Channel] = []
        self.gateway_channels: list[grpc.aio.Channel] = []
        self.licence_channels: list[grpc.aio.Channel] = []
        self._ids = itertools.count()
        self._run_id = run_id
        self.case_id = f"CASE-{datetime.now(UTC):%Y%m%d}-B{run_id.upper()}"
        self.tokens: list[tuple[tuple[str, str], ...]] = []
        self.licence_tokens: list[tuple[tuple[str, str], ...]] = []

    def _channel(self, port: int, agency: str = AGENCY) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            f"localhost:{port}", self._credentials[agency], self._options
        )

    def open_echo(self, port: int) -> None:
        self.echo_channels = [self._channel(port) for _ in range(self.channels)]

    async def open_gateway(self, port: int, workers: list[int] | None = None) -> dict[int, int]:
        """Channels to a gateway 510000 (closing those to the previous one). With `workers`
        (the pids of processes sharing the port), a connection that lands on a worker already
        holding its share is opened again, up to BALANCE_ATTEMPTS times: a few connections
        hashed by the kernel can all land on one worker, where a balancer in front of many
        clients spreads them evenly. Returns the connections by worker pid."""
        await self.close_gateway()
        if not workers or len(workers) == 1:
            self.gateway_channels = [self._channel(port) for _ in range(self.channels)]
            if not workers:
                self.licence_channels = [
                    self._channel(port, LICENCE_AGENCY) for _ in range(self.channels)
                ]
                return {}
            for channel in self.gateway_channels:
                await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT)
            return await _settled(
                lambda: connections_by_pid(workers, port), dict.fromkeys(workers, 0), self.channels
            )
        share = math.ceil(self.channels / len(workers))
        attempts = 0
        for _ in range(self.channels):
            while True:
                before = connections_by_pid(workers, port)
                channel = self._channel(port)
                await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT)
                after = await _settled(lambda: connections_by_pid(workers, port), before, +1)
                landed = [pid for pid in workers if after[pid] > before[pid]]
                if not landed or after[landed[0]] <= share or attempts >= BALANCE_ATTEMPTS:
                    self.gateway_channels.append(channel)
                    break
                attempts += 1
                await channel.close()
                await _settled(lambda: connections_by_pid(workers, port), after, -1)
        return connections_by_pid(workers, port)

    async def close_gateway(self) -> None:
        for channel in (*self.gateway_channels, *self.licence_channels):
            await channel.close()
        self.gateway_channels, self.licence_channels = [], []

    def refresh_tokens(self) -> None:
        """One token per channel, issued now: a token lives 5 minutes; each phase takes new."""
        self.tokens = [self.fed.token(AGENCY) for _ in range(self.channels)]
        self.licence_tokens = [self.fed.token(LICENCE_AGENCY) for _ in self.licence_channels]

    async def close(self) -> None:
        await self.close_gateway()
        for channel in self.echo_channels:
            await channel.close()

    def request_id(self) -> str:
        return f"bench-{self._run_id}-{next(self._ids)}"

    def query(
        self,
        subject: str,
        region: str = PROVIDER,
        dataset: str = DATASET,
        purpose: str = PURPOSE,
    ) -> exchange_pb2.QueryRequest:
        return exchange_pb2.QueryRequest(
            provider_region=region,
            dataset=dataset,
            purpose=purpose,
            subject_id=subject,
            case_id=self.case_id,
            request_id=self.request_id(),
        )

    def echo_calls(self, subject: str) -> list[Call]:
        """The same request message and metadata as (a), to a server that does nothing."""
        calls: list[Call] = []
        for channel, token in zip(self.echo_channels, self.tokens, strict=True):
            method = channel.unary_unary(
                ECHO_METHOD,
                request_serializer=exchange_pb2.QueryRequest.SerializeToString,
                response_deserializer=exchange_pb2.QueryResponse.FromString,
            )

            async def call(method: Any = method, token: Any = token) -> object:
                return await method(self.query(subject), metadata=token, timeout=CALL_TIMEOUT)

            calls.append(call)
        return calls

    def query_calls(self, subjects: Callable[[], str]) -> list[Call]:
        calls: list[Call] = []
        for channel, token in zip(self.gateway_channels, self.tokens, strict=True):
            stub = exchange_pb2_grpc.DataExchangeStub(channel)

            async def call(stub: Any = stub, token: Any = token) -> object:
                return await stub.Query(
                    self.query(subjects()), metadata=token, timeout=CALL_TIMEOUT
                )

            calls.append(call)
        return calls

    def licence_calls(self, business: str) -> list[Call]:
        """(e): sc.amr asks 500000 for one business licence (cache_scope "requester")."""
        calls: list[Call] = []
        for channel, token in zip(self.licence_channels, self.licence_tokens, strict=True):
            stub = exchange_pb2_grpc.DataExchangeStub(channel)

            async def call(stub: Any = stub, token: Any = token) -> object:
                request = self.query(business, PROVIDER, LICENCE_DATASET, LICENCE_PURPOSE)
                return await stub.Query(request, metadata=token, timeout=CALL_TIMEOUT)

            calls.append(call)
        return calls

    def batch_calls(self, items: list[tuple[str, str]]) -> list[Call]:
        calls: list[Call] = []
        for channel, token in zip(self.gateway_channels, self.tokens, strict=True):
            stub = exchange_pb2_grpc.DataExchangeStub(channel)

            async def call(stub: Any = stub, token: Any = token) -> object:
                request = exchange_pb2.BatchQueryRequest(
                    items=[self.query(subject, region) for region, subject in items],
                    request_id=self.request_id(),
                )
                answer = await stub.BatchQuery(request, metadata=token, timeout=CALL_TIMEOUT)
                failed = [r for r in answer.items if r.status.code != 0]
                if failed:  # an item's refusal travels inside an OK answer: count it as one
                    status = failed[0].status
                    raise CallFailed(f"batch item: code {status.code} {status.message[:60]}")
                return answer

            calls.append(call)
        return calls

    def verify_calls(self, jws: str) -> list[Call]:
        calls: list[Call] = []
        for channel in self.gateway_channels:
            stub = credentials_pb2_grpc.CredentialsStub(channel)
            request = credentials_pb2.VerifyRequest(jws=jws)

            async def call(stub: Any = stub, request: Any = request) -> object:
                report = await stub.Verify(request, timeout=CALL_TIMEOUT)
                if report.indication != credentials_pb2.TOTAL_PASSED:
                    raise CallFailed(f"Verify: {report.indication} {report.sub_indication}")
                return report

            calls.append(call)
        return calls


async def _settled(
    count: Callable[[], dict[int, int]], before: dict[int, int], change: int
) -> dict[int, int]:
    """The connection counts once they moved by `change` in total (at most ~1 s)."""
    now = count()
    for _ in range(100):
        if sum(now.values()) - sum(before.values()) == change:
            break
        await asyncio.sleep(0.01)
        now = count()
    return now


class CallFailed(Exception):
    """A failure reported inside an OK answer (a batch item refused, a seal that failed)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def failure(exc: grpc.aio.AioRpcError | CallFailed) -> str:
    """How a failed call is counted: status code and ErrorInfo reason."""
    if isinstance(exc, CallFailed):
        return exc.what
    reason = rpc_reason(exc)
    return f"{exc.code().name} {reason}".strip()


# profiles ---------------------------------------------------------------------------------------
# Where a sample's time goes: walking from the leaf frame towards the root, the first frame that
# names one of these (in its file, or its function for the collector) decides. Native frames
# (libc, libpython) name none, so a syscall made by gRPC's Cython code counts as gRPC's.
AREAS: Final = (  # (area, substring of "function (file)")
    ("garbage collector", "gc_collect"),
    ("grpc (aio, cython, C core)", "/grpc/"),
    ("redis-py", "/redis/"),
    ("asyncio event loop", "/asyncio/"),
    ("asyncio event loop", "_asynciomodule"),
    ("audit log (gateway/audit, sqlite3)", "/gateway/audit/"),
    ("audit log (gateway/audit, sqlite3)", "sqlite3"),
    ("seal sign/verify (signer)", "/signer/"),
    ("cryptography", "/cryptography/"),
    ("registry", "/registry/"),
    ("tokens (gateway/tokens.py, PyJWT)", "/gateway/tokens.py"),
    ("tokens (gateway/tokens.py, PyJWT)", "/jwt/"),
    ("metrics (gateway/metrics, prometheus_client)", "/gateway/metrics/"),
    ("metrics (gateway/metrics, prometheus_client)", "/prometheus_client/"),
    ("protobuf", "/google/protobuf/"),
    ("json", "/json/"),
    ("demo data system", "/gateway/demo/"),
    ("other gateway code", "/gateway/"),
    ("threading / queue", "/threading.py"),
    ("threading / queue", "/queue.py"),
)


def _area(frames: list[tuple[str, str]]) -> str:
    for function, path in reversed(frames):
        text = f"{function} ({path})"
        for area, part in AREAS:
            if part in text:
                return area
    return "other (stdlib, interpreter)"


def _frame(text: str) -> tuple[str, str]:
    """("function", "file") of a py-spy raw frame "function (file:line)"."""
    match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", text)
    return (match.group(1), match.group(2)) if match else (text, "")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(REPO))
    return path


def _self_name(frames: list[tuple[str, str]]) -> str:
    """The frame a sample's self time is charged to. A native leaf (a syscall, the interpreter)
    is charged to the nearest frame of Python or of an extension module, naming the leaf:
    "grpc/_cython/cygrpc… > sendmsg" says that gRPC's Cython code was in sendmsg."""
    function, path = frames[-1]
    if path.endswith((".py", ">")):
        return f"{_short(path)}:{function}"
    for owner_function, owner_path in reversed(frames[:-1]):
        if owner_path.endswith((".py", ">")):
            return f"{_short(owner_path)}:{owner_function} > {function}"
        if ".cpython-" in owner_path:  # an extension module: its functions have no names
            return f"{_short(owner_path).split('.cpython-')[0]} > {function}"
    return f"{path}:{function}"


def summarise_profile(raw: Path, rate: int, seconds: float, top: int = 15) -> dict[str, Any]:
    """From a py-spy raw (collapsed) file of GIL-holding samples: the share of samples by area
    (see AREAS), the frames with the most self time, and the gateway, signer and registry
    functions with the most inclusive time."""
    leaf: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        leaf[_self_name(frames)] += count
        areas[_area(frames)] += count
        own = {
            f"{_short(p)}:{f}"
            for f, p in frames
            if any(f"/{pkg}/" in p for pkg in ("gateway", "signer", "registry"))
            and "/site-packages/" not in p
        }
        for name in own:
            inclusive[name] += count
    if not total:
        return {"samples": 0}

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(n)]

    return {
        "samples": total,
        "gil_busy": total / (rate * seconds),  # share of the time some thread held the GIL
        "areas": shares(areas, len(AREAS)),
        "self": shares(leaf, top),
        "inclusive_gateway": shares(inclusive, top),
    }


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


# machine ----------------------------------------------------------------------------------------
def machine(redis_url: str) -> dict[str, Any]:
    import cryptography
    import redis as redis_py

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu": model,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "redis_py": redis_py.__version__,
        "cryptography": cryptography.__version__,
        "sqlite": sqlite3.sqlite_version,
        "commit": _commit(),
    }
    with contextlib.suppress(redis.RedisError, OSError):
        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        info["redis_server"] = client.info("server").get("redis_version", "?")
        client.close()
    return info


def _commit() -> str:
    """The checked-out commit, read from .git without running git ("" when unknown)."""
    git = REPO / ".git"
    with contextlib.suppress(OSError):
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    return ""


CODE_FOLDERS: Final = ("gateway", "signer", "registry", "proto/tongban")


def code_state() -> dict[str, tuple[int, int]]:
    """(size, mtime) of every Python file the gateways run: a child process started after one
    of them changed runs other code than one started before (other people edit meanwhile)."""
    state: dict[str, tuple[int, int]] = {}
    for folder in CODE_FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                state[str(path.relative_to(REPO))] = (stat.st_size, stat.st_mtime_ns)
    return state


def code_changes(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def check_redis(url: str) -> None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BenchError(
            f"Redis at {url} is not reachable ({type(exc).__name__}: {_one_line(exc)}); "
            "start it or give --redis URL"
        ) from exc


def other_database(url: str) -> str:
    """The same Redis, the next logical database (mod 16): the one-process topology's gateways
    must not share state with the per-region ones. A 510000 sharing their Redis would be their
    replica: it would share the queue of access reports (one stream per region and cache key,
    delivered by any replica), and the idle per-region processes would work for it."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "unix":
        db = int(query.get("db", "0") or 0)
        query["db"] = str((db + 1) % 16)
        return f"unix://{parts.netloc}{parts.path}?{urlencode(query)}"
    db = int(parts.path.strip("/") or query.pop("db", "0") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 1) % 16}", query=urlencode(query)))


def check_postgres(dsn: str) -> str:
    """The server's version; BenchError (one line) when it does not answer."""
    try:
        import psycopg
    except ImportError as exc:
        raise BenchError("psycopg is not installed: needed for --workers") from exc
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except (psycopg.Error, OSError) as exc:
        raise BenchError(
            f"PostgreSQL at {dsn!r} does not accept a connection ({type(exc).__name__}: "
            f"{_one_line(exc)}); "
            "start it, give --postgres DSN, or --workers '' to skip the worker runs"
        ) from exc
    return str(row[0]) if row else "?"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_config(
    folder: Path,
    *,
    port: int,
    metrics: int,
    schema: str,
    provider: str,
    peers: dict[str, str],
) -> Path:
    """A full (non-dev) configuration of 510000 for `tongban gateway serve --config`, from the
    dev PKI: PostgreSQL audit (DSN in TONGBAN_BENCH_PG), Redis (URL in TONGBAN_BENCH_REDIS), the
    data system and peers of the per-region topology."""
    pki = folder / "pki"
    inventory = Inventory.load(pki)
    (tls,) = inventory.find(REQUESTER, KeyUsage.TLS, KeyState.ACTIVE)
    (audit,) = inventory.find(REQUESTER, KeyUsage.AUDIT, KeyState.ACTIVE)
    seals = [r for r in inventory.find(REQUESTER, KeyUsage.SEAL) if r.state is not KeyState.REVOKED]

    def q(value: object) -> str:
        return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string

    text = f"""[gateway]
region = {q(REQUESTER)}
listen = {q(f"127.0.0.1:{port}")}
grace_seconds = 1
metrics_listen = {q(f"127.0.0.1:{metrics}")}

[tls]
certificate = {q(pki / tls.certificate)}
private_key = {q(pki / tls.private_key)}

[registry]
authority_public_key = {q(pki / "authority" / "authority.pub.pem")}
snapshot_file = {q(folder / "published" / CURRENT_SNAPSHOT)}
poll_seconds = 2
"""
    for seal in seals:
        text += f"""
[[seal.keys]]
certificate = {q(pki / seal.certificate)}
private_key = {q(pki / seal.private_key)}
"""
    text += f"""
[audit]
store = "postgres"
dsn_env = "TONGBAN_BENCH_PG"
owner_dsn_env = "TONGBAN_BENCH_PG"
schema = {q(schema)}
key = {q(pki / audit.private_key)}
pseudonym_key_file = {q(pki / DEV_PSEUDONYM_KEY)}

[exchange]
provider = {q(provider)}
redis_url_env = "TONGBAN_BENCH_REDIS"
cache_key_file = {q(pki / DEV_CACHE_KEY)}

[peers]
"""
    text += "".join(f"{q(region)} = {q(endpoint)}\n" for region, endpoint in peers.items())
    path = folder / f"gateway-{REQUESTER}-{schema}.toml"
    path.write_text(text, encoding="utf-8")
    return path


# the run ----------------------------------------------------------------------------------------
def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after - before, for the nested integer counters of the children's stats."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = _delta(before.get(key, {}), value)
        elif isinstance(value, int) and key != "largest_batch":
            out[key] = value - int(before.get(key, 0))
        else:
            out[key] = value
    return out


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"gateways": {}, "gc": {}}
    for part in parts:
        out["gateways"].update(part.get("gateways", {}))
        out["gc"].update(part.get("gc", {}))
    return out


@dataclass
class Topology:
    """What one phase measures: the 510000 (or echo) to call, the processes doing the work (their
    CPU is the "server" CPU) and where their counters come from."""

    key: str
    members: list[Child | CliGateway]
    port: int = 0

    def processes(self) -> list[tuple[str, int]]:
        return [p for member in self.members for p in member.processes()]

    def stats(self) -> dict[str, Any]:
        return _merge([member.stats() for member in self.members])


class Bench:
    """The sequence of one run: start the topologies one after the other, measure each."""

    def __init__(self, args: argparse.Namespace, harness: Harness, run_id: str) -> None:
        self.args = args
        self.harness = harness
        self.run_id = run_id
        self.folder = harness.folder
        self.load = Load(self.folder / "pki", args.channels, run_id)
        self.phases: dict[str, Phase] = {}
        self.profiles: dict[str, Any] = {}
        self.notes: list[str] = []
        self.info: dict[str, Any] = {"schemas": []}
        cq = DemoSubjects(PROVIDER)
        zj = DemoSubjects(OTHER_PROVIDER)
        self.sample_subject = cq.take(1)[0]
        self.hit_subject = cq.take(1)[0]
        self.batch_items = [
            (region, subject)
            for region, count in BATCH_ITEMS
            for subject in (cq if region == PROVIDER else zj).take(count)
        ]
        self.business = DemoSubjects(PROVIDER, LICENCE_DATASET).take(1)[0]
        self.misses = MissPool(cq)
        self.fastest_hit = 0.0
        self.regions: dict[str, Child] = {}
        self.jws = ""  # a real sealed answer, for (d)
        self.code = {"start": code_state()}  # the code each topology's processes started with
        self.commits = {"start": _commit()}

    async def run(
        self,
        key: str,
        topology: Topology,
        target: str,
        make: Callable[[], list[Call]],
        *,
        rate: float | None = None,
        connections: dict[str, int] | None = None,
    ) -> Phase:
        self.load.refresh_tokens()
        if target == "miss":  # distinct subjects for the whole phase, made outside the window
            estimate = max(self.fastest_hit, 100.0) * 1.5
            self.misses.ensure(int(estimate * (self.args.warmup + self.args.seconds)) + 500)
        before = topology.stats()
        window = Window(
            topology.processes(), self.harness.pids, self.args.warmup, self.args.seconds
        )
        if rate is None:
            _, dropped = await closed_loop(make(), window, concurrency=self.args.concurrency)
        else:
            _, dropped = await open_loop(make(), window, rate=rate)
        phase = window.phase(topology.key, target, "closed" if rate is None else "open", rate)
        phase.dropped = dropped
        phase.connections = connections or {}
        phase.server = _delta(before, topology.stats())
        self.phases[key] = phase
        if target == "hit":
            self.fastest_hit = max(self.fastest_hit, phase.qps)
        _progress(key, phase)
        if not phase.completed:
            raise BenchError(f"no call of {key} was answered in its window: {phase.errors}")
        return phase

    # --- the per-region topology, the echo server ---------------------------------------------
    async def start_regions(self, source: Path) -> Topology:
        ports = {region: free_port() for region in REGIONS}
        spec = ",".join(f"{r}={p}" for r, p in ports.items())
        common = ["--role", "region", "--folder", str(self.folder), "--source", str(source),
                  "--redis", self.args.redis, "--ports", spec]  # fmt: skip
        children = {
            region: self.harness.start(region, [*common, "--region", region]) for region in REGIONS
        }
        self.code["region"] = code_state()
        for child in children.values():
            child.wait_ready()
        self.regions = children
        topology = Topology("region", list(children.values()), ports[REQUESTER])
        await self.load.open_gateway(topology.port)
        return topology

    async def start_echo(self) -> Topology:
        """A real answer first (sc.hrss asks 500000 through the per-region 510000): the echo
        server returns its bytes."""
        stub = exchange_pb2_grpc.DataExchangeStub(self.load.gateway_channels[0])
        try:
            answer = await stub.Query(
                self.load.query(self.sample_subject),
                metadata=self.load.fed.token(AGENCY),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise BenchError(
                f"the first query failed: {exc.code().name} {rpc_reason(exc)}: {exc.details()}"
            ) from exc
        raw = answer.SerializeToString()
        (self.folder / "answer.bin").write_bytes(raw)
        self.info.update(
            request_bytes=len(self.load.query(self.sample_subject).SerializeToString()),
            response_bytes=len(raw),
            jws_bytes=len(answer.record.jws),
        )
        echo = self.harness.start(
            "echo", ["--role", "echo", "--folder", str(self.folder), "--answer",
                     str(self.folder / "answer.bin")],
        )  # fmt: skip
        info = echo.wait_ready()
        self.load.open_echo(info["echo_port"])
        return Topology("echo", [echo], info["echo_port"])

    async def echo(self, key: str, echo: Topology) -> None:
        await self.run(key, echo, "echo", lambda: self.load.echo_calls(self.hit_subject))

    async def region_phases(self, topology: Topology) -> None:
        await self.load.open_gateway(topology.port)
        load = self.load
        hit = await self.run("region/hit", topology, "hit", self._hits)
        miss = await self.run("region/miss", topology, "miss", self._misses)
        await self.run(
            "region/batch", topology, "batch", lambda: load.batch_calls(self.batch_items)
        )
        # (d) verifies a real sealed answer: the one (a) keeps getting from the cache.
        sample = await exchange_pb2_grpc.DataExchangeStub(load.gateway_channels[0]).Query(
            load.query(self.hit_subject), metadata=load.fed.token(AGENCY), timeout=CALL_TIMEOUT
        )
        self.jws = jws = sample.record.jws
        await self.run("region/verify", topology, "verify", lambda: load.verify_calls(jws))
        await self.run("region/hit_half", topology, "hit", self._hits, rate=hit.qps / 2)
        await self.run("region/miss_half", topology, "miss", self._misses, rate=miss.qps / 2)
        await self.licence("region/licence", topology)
        if self.args.profile is not None:
            await self.profile(topology)

    def _hits(self) -> list[Call]:
        return self.load.query_calls(lambda: self.hit_subject)

    def _misses(self) -> list[Call]:
        return self.load.query_calls(self.misses)

    async def licence(self, key: str, topology: Topology) -> None:
        """(e), after one call that puts the licence in whichever cache may hold it."""
        stub = exchange_pb2_grpc.DataExchangeStub(self.load.licence_channels[0])
        request = self.load.query(self.business, PROVIDER, LICENCE_DATASET, LICENCE_PURPOSE)
        try:
            await stub.Query(
                request, metadata=self.load.fed.token(LICENCE_AGENCY), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            raise BenchError(
                f"(e) {LICENCE_AGENCY} asking {PROVIDER} for {LICENCE_DATASET} failed: "
                f"{exc.code().name} {rpc_reason(exc)}: {exc.details()}"
            ) from exc
        owner_before = _owner_appended(topology.stats())
        phase = await self.run(
            key, topology, "licence", lambda: self.load.licence_calls(self.business)
        )
        await self.drain_reports(topology, phase, owner_before)

    async def drain_reports(self, topology: Topology, phase: Phase, owner_before: int) -> None:
        """When 510000 answers (e) itself, it reports each answer to 500000 in batches, after
        the answer: wait until 500000 has recorded one access per answer, so that the backlog
        does not load the next phase, and note how long it took."""
        started = time.perf_counter()
        pending = phase.completed_all - (_owner_appended(topology.stats()) - owner_before)
        phase.reports_pending = max(0, pending)
        while pending > 0:
            if time.perf_counter() - started > REPORT_DRAIN_TIMEOUT:
                phase.reports_drained_s = None
                self.notes.append(
                    f"{phase.topology}: {pending:,} access reports of (e) had not reached 500000 "
                    f"{REPORT_DRAIN_TIMEOUT:g} s after the phase"
                )
                return
            await asyncio.sleep(0.2)
            pending = phase.completed_all - (_owner_appended(topology.stats()) - owner_before)
        phase.reports_drained_s = time.perf_counter() - started

    # --- one process ---------------------------------------------------------------------------
    async def one_process_phases(self, source: Path) -> None:
        child = self.harness.start(
            "one process",
            ["--role", "one-process", "--folder", str(self.folder), "--source", str(source),
             "--redis", self.args.one_process_redis],
        )  # fmt: skip
        self.code["single"] = code_state()
        info = child.wait_ready()
        topology = Topology("single", [child], info["gateway_ports"][REQUESTER])
        try:
            await self.load.open_gateway(topology.port)
            await self.run("single/hit", topology, "hit", self._hits)
            await self.run("single/miss", topology, "miss", self._misses)
            await self.licence("single/licence", topology)
        finally:
            await self.load.close_gateway()
            self.harness.stop(child)

    # --- N workers -------------------------------------------------------------------------------
    async def worker_phases(self, workers: int) -> None:
        schema = f"tongban_bench_{self.run_id}_w{workers}"
        self.harness.create_schema(schema)
        self.info["schemas"].append(schema)
        port, metrics = free_port(), free_port()
        regions = self.regions
        config = cli_config(
            self.folder,
            port=port,
            metrics=metrics,
            schema=schema,
            provider=f"127.0.0.1:{regions[REQUESTER].info['provider_port']}",
            peers={
                r: f"localhost:{regions[r].info['gateway_port']}" for r in REGIONS if r != REQUESTER
            },
        )
        cli = self.harness.start_cli(
            config,
            workers,
            {"TONGBAN_BENCH_PG": self.args.postgres, "TONGBAN_BENCH_REDIS": self.args.redis},
        )
        cli.metrics_port = metrics
        key = f"w{workers}"
        self.code[key] = code_state()
        cli.wait_ready()
        # The work of a query at 510000 is in the CLI's processes; 500000's (and 330000's) in
        # their per-region processes: all are measured.
        topology = Topology(key, [cli, regions[PROVIDER], regions[OTHER_PROVIDER]], port)
        try:
            spread = await self.load.open_gateway(port, list(cli.worker_pids.values()))
            by_worker = {
                f"worker {n}": spread.get(pid, 0) for n, pid in sorted(cli.worker_pids.items())
            }
            await self.run(f"{key}/hit", topology, "hit", self._hits, connections=by_worker)
            await self.run(f"{key}/miss", topology, "miss", self._misses, connections=by_worker)
            await self.run(
                f"{key}/verify",
                topology,
                "verify",
                lambda: self.load.verify_calls(self.jws),
                connections=by_worker,
            )
        finally:
            await self.load.close_gateway()
            self.harness.stop(cli)

    # --- profiles --------------------------------------------------------------------------------
    async def profile(self, topology: Topology) -> None:
        """(a) and (b) again with py-spy sampling the 510000 and 500000 processes (GIL-holding
        samples, native frames too) during the measured window. These phases are reported apart:
        a sampler that pauses the process 200 times a second slows what it watches."""
        spy = py_spy()
        if spy is None:
            self.notes.append("profile: py-spy not found (.venv/bin/pip install py-spy); skipped")
            return
        folder: Path = self.args.profile
        folder.mkdir(parents=True, exist_ok=True)
        rate = 200
        seconds = max(1, round(self.args.seconds))
        for key, make in (("hit", self._hits), ("miss", self._misses)):
            spied: dict[str, tuple[Path, asyncio.Task[int]]] = {}
            for region in (REQUESTER, PROVIDER):
                raw = folder / f"{key}-{region}.txt"
                command = [
                    spy, "record", "--pid", str(self.regions[region].pid), "--duration",
                    str(seconds), "--rate", str(rate),
                    "--gil",  # what holds the GIL is what limits one process
                    "--native",  # see into gRPC's Cython code (it pauses the process per sample)
                    "--full-filenames", "--format", "raw", "--output", str(raw),
                ]  # fmt: skip
                spied[region] = (raw, asyncio.create_task(self._spy(command)))
            await self.run(f"region/profiled_{key}", topology, key, make)
            for region, (raw, task) in spied.items():
                if await task == 0 and raw.exists():
                    summary = summarise_profile(raw, rate, seconds)
                    summary["file"] = str(raw)
                    self.profiles[f"{key}@{region}"] = summary

    async def _spy(self, command: list[str]) -> int:
        await asyncio.sleep(self.args.warmup)  # sample the measured window only
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, error = await process.communicate()
        if process.returncode:
            self.notes.append(f"profile: py-spy failed: {error.decode().strip()[-200:]}")
        return process.returncode or 0

    # --- the whole sequence ---------------------------------------------------------------------
    async def measure(self, source: Path) -> None:
        try:
            say("starting one process per region (330000, 510000, 500000) …")
            region = await self.start_regions(source)
            echo = await self.start_echo()
            say(f"measuring ({len(self.args.worker_counts)} worker runs after) …")
            await self.echo("echo_first", echo)
            await self.region_phases(region)
            await self.echo("echo_mid", echo)
            if self.args.one_process:
                say("starting the three gateways in one process …")
                await self.one_process_phases(source)
            for workers in self.args.worker_counts:
                say(f"starting `tongban gateway serve --workers {workers}` for 510000 …")
                await self.worker_phases(workers)
            await self.echo("echo_last", echo)
            self.code["end"] = code_state()
            self.commits["end"] = _commit()
        except grpc.aio.AioRpcError as exc:
            raise BenchError(
                f"a call outside the measured windows failed: {exc.code().name} "
                f"{rpc_reason(exc)}: {exc.details()}"
            ) from exc
        except TimeoutError as exc:
            raise BenchError("a channel to a gateway did not connect in time") from exc
        finally:
            await self.load.close()


def _owner_appended(stats: dict[str, Any]) -> int:
    appended: int = stats["gateways"].get(PROVIDER, {}).get("audit", {}).get("appended", 0)
    return appended


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(key: str, phase: Phase) -> None:
    errors = f", {sum(phase.errors.values())} failed" if phase.errors else ""
    print(
        f"  {key:<22} {phase.qps:>8,.0f}/s  p99 {phase.p99_ms:6.1f} ms{errors}",
        file=sys.stderr,
        flush=True,
    )


# results --------------------------------------------------------------------------------------
def results(args: argparse.Namespace, bench: Bench, wall: float) -> dict[str, Any]:
    phases = bench.phases
    echoes = [phases[k] for k in ECHO_RUNS if k in phases]
    ceiling = sum(p.qps for p in echoes) / len(echoes)
    echo_cpu = sum(p.server_cpu_us_per_request for p in echoes) / len(echoes)
    ratios: dict[str, dict[str, float]] = {}
    cpu_ratios: dict[str, dict[str, float]] = {}
    gateway_cpu: dict[str, dict[str, dict[str, float]]] = {}
    for key, p in phases.items():
        if p.topology == "echo" or p.mode != "closed" or "/profiled_" in key:
            continue
        ratios.setdefault(p.topology, {})[p.target] = p.qps / ceiling
        if p.server_cpu_us_per_request:
            cpu_ratios.setdefault(p.topology, {})[p.target] = echo_cpu / p.server_cpu_us_per_request
        gateway_cpu.setdefault(p.topology, {})[p.target] = per_gateway_cpu(p)
    workers: dict[int, dict[str, dict[str, float]]] = {}
    for t in ratios:
        if t.startswith("w"):
            workers[int(t[1:])] = {
                target: {
                    "qps": phases[f"{t}/{target}"].qps,
                    "p50_ms": phases[f"{t}/{target}"].p50_ms,
                    "p99_ms": phases[f"{t}/{target}"].p99_ms,
                    "requester_us_per_request": gateway_cpu[t][target].get(REQUESTER, 0.0),
                    "requester_cores": sum(
                        c
                        for label, c in phases[f"{t}/{target}"].server_processes.items()
                        if label.startswith(REQUESTER)
                    ),
                }
                for target in WORKER_TARGETS
                if f"{t}/{target}" in phases
            }
    scaling = {}
    if 1 in workers:
        for n, values in workers.items():
            if n != 1:
                scaling[f"{n}/1"] = {
                    t: values[t]["qps"] / workers[1][t]["qps"]
                    for t in WORKER_TARGETS
                    if t in values and t in workers[1]
                }
    return {
        "machine": machine(args.redis) | {"postgres_server": args.postgres_version},
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "channels": args.channels,
            "redis": args.redis,
            "one_process_redis": args.one_process_redis,
            "postgres": args.postgres if args.worker_counts else "",
            "worker_counts": args.worker_counts,
            "one_process": args.one_process,
            "run_id": bench.run_id,
            "request_bytes": bench.info["request_bytes"],
            "response_bytes": bench.info["response_bytes"],
            "jws_bytes": bench.info["jws_bytes"],
            "batch_items": sum(n for _, n in BATCH_ITEMS),
            "quota_per_minute": BENCH_QUOTA,
            "agreement_prefix": f"B{bench.run_id}-",
            "postgres_schemas": bench.info["schemas"],
        },
        "ceiling_qps": ceiling,
        "echo_qps": {k: phases[k].qps for k in ECHO_RUNS if k in phases},
        "echo_server_cpu_us_per_request": echo_cpu,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "gateway_cpu_us_per_request": gateway_cpu,
        "gateway_cpu_ratios": {
            t: {
                target: {g: echo_cpu / us for g, us in by_gateway.items() if us}
                for target, by_gateway in values.items()
            }
            for t, values in gateway_cpu.items()
        },
        "ratio_targets": RATIO_TARGETS,
        "workers": workers,
        "worker_scaling": scaling,
        "p99_half_load_ms": {
            "hit": phases["region/hit_half"].p99_ms,
            "miss": phases["region/miss_half"].p99_ms,
        },
        "p99_targets_ms": P99_TARGETS_MS,
        "requester_cache": requester_cache(phases),
        "phases": {k: dataclasses.asdict(p) for k, p in phases.items()},
        "profiles": bench.profiles,
        "miss_pool_topped_up": bench.misses.top_ups,
        "notes": bench.notes,
        "commits": bench.commits,
        "code_changed": {
            when: changed
            for when, state in bench.code.items()
            if (changed := code_changes(bench.code["start"], state))
        },
        "wall_seconds": wall,
    }


def per_gateway_cpu(p: Phase) -> dict[str, float]:
    """CPU µs per answered call spent by each gateway's process(es) alone (a region's
    workers and supervisor added up; "one process" holds all three)."""
    cores: dict[str, float] = {}
    for label, c in p.server_processes.items():
        gateway = label.split(" ")[0] if label[:1].isdigit() else label
        cores[gateway] = cores.get(gateway, 0.0) + c
    return {g: c / p.qps * 1e6 for g, c in cores.items() if p.qps and c > 0.005}


def requester_cache(phases: dict[str, Phase]) -> dict[str, Any]:
    """Did (e) reach the owner? The owner's (500000's) cache lookups per answered call: ~1 when
    every repeat still goes to 500000 (provider-side cache, as (a)); ~0 once 510000 answers
    repeats itself (requester-side cache, reported to the owner with Peer.ReportAccess)."""
    out: dict[str, Any] = {}
    for p in phases.values():
        if p.target != "licence":
            continue
        gateways = p.server.get("gateways", {})
        owner = gateways.get(PROVIDER, {}).get("cache", {})
        requester = gateways.get(REQUESTER, {}).get("cache", {})
        lookups = owner.get("hits", 0) + owner.get("misses", 0) + owner.get("coalesced", 0)
        share = lookups / p.completed_all if p.completed_all else 0.0
        out[p.topology] = {
            "answered": p.completed_all,
            "owner_audit_appended": gateways.get(PROVIDER, {}).get("audit", {}).get("appended", 0),
            "owner_cache_lookups": lookups,
            "owner_share": share,
            "requester_cache_hits": requester.get("hits", 0),
            "requester_side": share < 0.5,
            "reports_pending_at_end": p.reports_pending,
            "reports_drained_s": p.reports_drained_s,
        }
    return out


def _verdict(value: float, target: float, *, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return "met" if met else "NOT met"


def _row_label(key: str, p: dict[str, Any]) -> str:
    if p["topology"] == "echo":
        return f"echo process: {LABELS['echo']}, {key.removeprefix('echo_')}"
    return f"{topology_title(p['topology'])}: {LABELS[p['target']]}"


def print_report(r: dict[str, Any]) -> None:
    m, s, phases = r["machine"], r["settings"], r["phases"]
    print(
        f"machine: {m['nproc']} CPU(s) usable ({m['cpu_count']} online), {m['cpu']}, "
        f"{m['system']}; {m['python']}; grpcio {m['grpcio']}; Redis {m.get('redis_server', '?')}; "
        f"PostgreSQL {m.get('postgres_server') or '-'}; commit {m['commit'][:7] or '?'}"
    )
    print(
        f"load: 1 client process, {s['channels']} channels, {s['concurrency']} calls in flight, "
        f"{s['warmup']:g} s warm-up + {s['seconds']:g} s measured per target"
    )
    print(
        f"messages: request {s['request_bytes']} B, answer {s['response_bytes']} B "
        f"(sealed record's JWS {s['jws_bytes']} B); the echo server returns those answer bytes"
    )
    print(
        f"registry: a copy of conf/registry with quota_per_minute = {s['quota_per_minute']:,} "
        f"and agreement ids prefixed {s['agreement_prefix']} (quotas still counted in Redis)"
    )
    print("topologies (every process the harness starts shares the machine's cores):")
    print(
        "  echo process  a bare grpc.aio server alone in its process (the ceiling); "
        "its client is the same client process"
    )
    print(
        "  per region    one process per region (gateway + its data system), as in production "
        "where each region's gateway has its own machine; SQLite audit"
    )
    if s["one_process"]:
        print(
            "  one process   the 3 gateways + 3 data systems in one process, as `tongban demo` "
            f"starts them; SQLite audit; its own Redis database ({s['one_process_redis']}), so "
            "that it shares no state (report queue, cache) with the per-region gateways"
        )
    for n in s["worker_counts"]:
        print(
            f"  510000 x{n}     `tongban gateway serve --config --workers {n}` for 510000 "
            f"(PostgreSQL audit, schema tongban_bench_{s['run_id']}_w{n}, Redis); 500000 and "
            "330000 in their per-region processes"
        )
    print()
    header = (
        f"{'phase':<46} {'QPS':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'ratio':>6} {'target':>7}  {'srv µs/req':>10} {'srv CPU':>7} {'cli CPU':>7} "
        f"{'svc':>5} {'others':>6}"
    )
    print(header)
    print("-" * len(header))
    for key, p in phases.items():
        if p["mode"] != "closed" or "/profiled_" in key:
            continue
        ratio = r["ratios"].get(p["topology"], {}).get(p["target"])
        target = RATIO_TARGETS.get(p["target"])
        print(
            f"{_row_label(key, p):<46} {p['qps']:>7,.0f} {p['p50_ms']:>7.2f} {p['p95_ms']:>7.2f} "
            f"{p['p99_ms']:>7.2f} {'' if ratio is None else f'{ratio:.2f}':>6} "
            f"{'' if target is None else f'>={target:.1f}':>7}  "
            f"{p['server_cpu_us_per_request']:>10,.0f} {p['server_cpu']:>7.2f} "
            f"{p['client_cpu']:>7.2f} {p['services_cpu']:>5.2f} {p['other_cpu']:>6.2f}"
        )
    print()
    echo = ", ".join(f"{k.removeprefix('echo_')} {v:,.0f}" for k, v in r["echo_qps"].items())
    print(f"ceiling: {r['ceiling_qps']:,.0f} QPS (mean of the echo runs: {echo})")
    echo_cores = sum(phases[k]["server_cpu"] + phases[k]["client_cpu"] for k in r["echo_qps"])
    echo_cores /= len(r["echo_qps"])
    print(
        f"ratio to the ceiling, by topology. Every run shares the machine's {m['nproc']} cores: "
        f"the echo server and its client used {echo_cores:.2f} cores together; a gateway run's "
        'processes, the client, Redis and PostgreSQL share the same cores (see "cores" '
        "below). So a ratio compares what THIS machine answers through the gateway path with "
        "what it answers as bare calls, in each topology; the per-gateway CPU ratio after it "
        "charges each gateway only its own process's CPU, as if it had the machine to itself:"
    )
    columns = [t for t in TARGETS if any(t in v for v in r["ratios"].values())]
    print(f"  {'topology':<18}" + "".join(f"{LABELS[t][:3]:>8}" for t in columns))
    for topology, values in r["ratios"].items():
        cells = "".join(f"{values[t]:>8.2f}" if t in values else f"{'':>8}" for t in columns)
        print(f"  {topology_title(topology):<18}{cells}")
    for topology, values in r["ratios"].items():
        verdicts = "; ".join(
            f"{LABELS[t][:3]} {values[t]:.2f} (>= {RATIO_TARGETS[t]:.1f}: "
            f"{_verdict(values[t], RATIO_TARGETS[t])})"
            for t in ("hit", "miss")
            if t in values
        )
        print(f"  targets, {topology_title(topology)}: {verdicts}")
    print(
        "server CPU per request, echo / target (1.0 = as cheap as the echo; all the topology's "
        "gateway processes added up): "
        + "; ".join(
            f"{topology_title(t)} "
            + ", ".join(f"{LABELS[k][:3]} {v:.2f}" for k, v in values.items())
            for t, values in r["cpu_ratios"].items()
        )
    )
    print(
        f"per-gateway CPU per request, µs (and echo server's {r['echo_server_cpu_us_per_request']:,.0f}"
        " µs / it: the ratio each gateway would reach alone on its own machine, bound by its CPU):"
    )
    for topology, values in r["gateway_cpu_us_per_request"].items():
        cells = "; ".join(
            f"{LABELS[target][:3]} "
            + ", ".join(
                f"{g} {us:,.0f} ({r['gateway_cpu_ratios'][topology][target][g]:.2f})"
                for g, us in by_gateway.items()
            )
            for target, by_gateway in values.items()
            if by_gateway
        )
        print(f"  {topology_title(topology)}: {cells}")
    if "region/batch" in phases:
        batch = phases["region/batch"]
        print(f"(c) per region: {batch['qps'] * s['batch_items']:,.0f} items/s")
    if r["workers"]:
        print()
        print(
            "510000 as `tongban gateway serve --workers N` (PostgreSQL audit; 500000 and 330000 "
            "per region; cores = 510000's processes):"
        )
        for n, values in sorted(r["workers"].items()):
            spread = phases[f"w{n}/hit"]["connections"]
            where = ", ".join(f"{k}: {c}" for k, c in spread.items())
            print(f"  N={n} (client connections by worker: {where or '?'})")
            for t, v in values.items():
                print(
                    f"    {LABELS[t]:<24} {v['qps']:>7,.0f}/s  p50 {v['p50_ms']:6.2f} ms  "
                    f"p99 {v['p99_ms']:6.2f} ms  510000 {v['requester_cores']:.2f} cores, "
                    f"{v['requester_us_per_request']:,.0f} µs/req"
                )
        for name, values in r["worker_scaling"].items():
            n = name.split("/")[0]
            busy = max(
                phases[f"w{n}/{t}"]["server_cpu"]
                + phases[f"w{n}/{t}"]["client_cpu"]
                + phases[f"w{n}/{t}"]["services_cpu"]
                for t in values
            )
            print(
                f"  {name} workers: "
                + ", ".join(f"{LABELS[t][:3]} {v:.2f}x" for t, v in values.items())
                + f" (at {n} workers the gateways, the client, Redis and PostgreSQL used up to "
                f"{busy:.2f} of the {m['nproc']} cores)"
            )
    print()
    print(
        "open loop at half of the maximum measured above, per-region topology (latency from "
        "when a call was due):"
    )
    for key in ("hit", "miss"):
        p = phases[f"region/{key}_half"]
        limit = P99_TARGETS_MS[key]
        print(
            f"  {LABELS[key]:<24} {p['offered_rate']:>6,.0f}/s offered, {p['qps']:>6,.0f}/s "
            f"answered: p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, target <= "
            f"{limit:g} ms: {_verdict(p['p99_ms'], limit, at_most=True)} "
            f"(others: {p['other_cpu']:.2f} cores)"
        )
    print()
    for topology, seen in r["requester_cache"].items():
        where = (
            "answered by 510000 itself (requester-side cache)"
            if seen["requester_side"]
            else "still answered by 500000's cache: requester-side caching is not in effect, "
            "(e) behaves like (a)"
        )
        print(
            f"(e) {topology_title(topology)}: 500000 looked up its cache {seen['owner_cache_lookups']:,}"
            f" times for {seen['answered']:,} answers ({seen['owner_share']:.0%}); 510000's cache "
            f"hits {seen['requester_cache_hits']:,}; 500000 audited {seen['owner_audit_appended']:,} "
            f"accesses meanwhile: {where}"
        )
        if seen["reports_pending_at_end"]:
            drained = seen["reports_drained_s"]
            print(
                f"    {seen['reports_pending_at_end']:,} access reports had not reached 500000 when "
                "the phase ended; "
                + (
                    f"they arrived within {drained:.1f} s (the harness waited)"
                    if drained is not None
                    else f"not all arrived within {REPORT_DRAIN_TIMEOUT:g} s"
                )
            )
    print()
    for key, p in phases.items():
        if p["topology"] == "echo" or p["mode"] != "closed" or "/profiled_" in key:
            continue
        processes = ", ".join(f"{k} {v:.2f}" for k, v in p["server_processes"].items())
        counters = _counters(p["server"].get("gateways", {}))
        print(
            f"{key:<15} cores: {processes}; client {p['client_cpu']:.2f}, Redis+PostgreSQL "
            f"{p['services_cpu']:.2f}, idle harness {p['idle_cpu']:.2f}, others "
            f"{p['other_cpu']:.2f}; {counters}"
        )
    print()
    for key, p in phases.items():
        pauses = p["server"].get("gc", {})
        if p["mode"] != "closed" or not pauses or "/profiled_" in key:
            continue
        longest = ", ".join(
            f"{label} {v['gen2']['collections']}x gen2 (longest {v['gen2']['longest_ms']:.1f} ms), "
            f"gen0/1 longest {max(v['gen0']['longest_ms'], v['gen1']['longest_ms']):.1f} ms"
            for label, v in pauses.items()
        )
        print(f"collector during {key}: {longest}")
    for key in ("region/hit", "region/miss"):
        if key in phases:
            p = phases[key]
            threads = ", ".join(f"{n} {c:.2f}" for n, c in list(p["server_threads"].items())[:6])
            print(
                f"threads during {key} (cores): {threads}; {p['server_system_share']:.0%} of "
                "the servers' CPU time in the kernel"
            )
    failed = {k: p["errors"] for k, p in phases.items() if p["errors"]}
    if failed:
        print(f"FAILED CALLS: {failed}")
    if r["miss_pool_topped_up"]:
        print(f"note: the pool of distinct subjects was topped up {r['miss_pool_topped_up']} times")
    for note in r["notes"]:
        print(f"note: {note}")
    commits = " -> ".join(c[:7] or "?" for c in r["commits"].values())
    if not r["code_changed"] and len(set(r["commits"].values())) > 1:
        print(
            f"note: the commit moved during the run ({commits}), but no .py file of "
            f"{', '.join(CODE_FOLDERS)} changed: every process ran the same gateway code"
        )
    if r["code_changed"]:
        print(
            f"WARNING: the code changed during the run (commits {commits}); files changed "
            "since the start, by the moment a topology started: "
            + "; ".join(
                f"{when}: {', '.join(files[:6])}{' …' if len(files) > 6 else ''}"
                for when, files in r["code_changed"].items()
            )
            + ". Processes started at different moments ran different code: re-run for "
            "figures of one version."
        )
    for key, prof in r["profiles"].items():
        _print_profile(key, prof)


def _counters(gateways: dict[str, Any]) -> str:
    parts = []
    for region, entry in sorted(gateways.items()):
        cache, audit = entry.get("cache", {}), entry.get("audit", {})
        if not any(cache.values()) and not audit.get("appended"):
            continue
        commits = audit.get("commits", 0)
        batch = f" in {commits:,} commits" if commits else ""
        parts.append(
            f"{region} cache {cache.get('hits', 0):,} hits (+{cache.get('coalesced', 0):,}) "
            f"{cache.get('misses', 0):,} misses {cache.get('errors', 0)} errors, audit "
            f"{audit.get('appended', 0):,}{batch}"
        )
    return "; ".join(parts) or "no counters"


def _print_profile(key: str, prof: dict[str, Any]) -> None:
    target, _, region = key.partition("@")
    if not prof.get("samples"):
        print(f"\nprofile of {region} during {LABELS[target]}: no samples")
        return
    print(
        f"\nprofile of the {region} process during {LABELS[target]} (per region; py-spy, "
        f"GIL-holding samples: {prof['samples']:,}, GIL busy {prof['gil_busy']:.0%}); "
        f"{prof['file']}"
    )
    print("  by area (nearest named frame, see AREAS):")
    for name, share in prof["areas"]:
        if share >= 0.005:
            print(f"    {share:6.1%}  {name}")
    print("  most self time:")
    for name, share in prof["self"][:12]:
        print(f"    {share:6.1%}  {name}")
    print("  gateway/signer/registry functions, inclusive:")
    for name, share in prof["inclusive_gateway"][:15]:
        print(f"    {share:6.1%}  {name}")


def parse_workers(text: str) -> list[int]:
    if not text.strip():
        return []
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        counts = [0]
    if any(not 1 <= n <= 8 for n in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"{text!r}: distinct worker counts from 1 to 8, e.g. 1,2")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="measured window per target (default 8)"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="warm-up before each window (default 3)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="calls in flight, closed loop (default 32)"
    )
    parser.add_argument(
        "--channels", type=int, default=4, help="client channels (connections) (default 4)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--redis", default=DEFAULT_REDIS, help=f"Redis for the gateways (default {DEFAULT_REDIS})"
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        metavar="DSN",
        help="PostgreSQL for the worker runs' audit store: a role that may create schemas "
        f"(default {DEFAULT_POSTGRES!r})",
    )
    parser.add_argument(
        "--workers",
        dest="worker_counts",
        type=parse_workers,
        default=[1, 2],
        metavar="N,M",
        help="run 510000 as `tongban gateway serve --workers N` for each (default 1,2; '' skips)",
    )
    parser.add_argument(
        "--no-one-process",
        dest="one_process",
        action="store_false",
        help="skip the one-process topology",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="then run (a) and (b) again (per region) under py-spy; raw profiles go to DIR",
    )
    # Internal: the child processes are this file again, with --role.
    parser.add_argument(
        "--role",
        choices=("client", "region", "one-process", "echo"),
        default="client",
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--region", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--answer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role != "client":
        return child_main(args)
    if args.seconds <= 0 or args.warmup < 0 or args.concurrency < 1 or args.channels < 1:
        parser.error("--seconds must be positive, --warmup not negative, the others at least 1")
    signal.signal(signal.SIGTERM, _terminated)  # stop the children and drop the schemas too
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    check_redis(args.redis)
    args.one_process_redis = other_database(args.redis) if args.one_process else ""
    if args.one_process:
        check_redis(args.one_process_redis)
    args.postgres_version = check_postgres(args.postgres) if args.worker_counts else ""
    run_id = secrets.token_hex(3)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tongban-bench-") as name:
        folder = Path(name)
        source = bench_source(folder, run_id)
        say("building a dev PKI and a signed registry …")
        try:
            build_pki(folder, source)
        except DemoError as exc:
            raise BenchError(str(exc)) from exc
        harness = Harness(folder, args.postgres)
        try:
            bench = Bench(args, harness, run_id)
            asyncio.run(bench.measure(source))
        finally:
            harness.close()
        report = results(args, bench, time.perf_counter() - started)
    print()
    print_report(report)
    print(f"\nwhole run: {report['wall_seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
        print(f"results written to {args.json}")
    failed = {k: sum(p["errors"].values()) for k, p in report["phases"].items() if p["errors"]}
    if failed:
        print(f"bench: calls failed ({failed}): the figures are not valid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
