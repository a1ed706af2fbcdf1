"""The gateway path against the ceiling: a bare grpc.aio echo server, measured side by side.

Run: .venv/bin/python bench/gateway.py [--seconds 8] [--warmup 3] [--concurrency 32]
                                      [--channels 4] [--json FILE] [--redis URL] [--profile DIR]

In one run it starts, in ONE child process (the "server process"):
    - the three demo gateways (330000, 510000, 500000) with their demo data systems, exactly as
      `tongban demo --redis URL` does (gateway/demo.py: `build_pki`, `start_federation`): real
      Redis for the cache, replay window and quotas, SQLite audit logs (WAL, synchronous=FULL)
    - a bare `grpc.aio` echo server over the same mutual TLS (510000's dev-PKI certificate,
      client certificates required) that answers every call with the bytes of a real
      `QueryResponse` (a sealed si.participation answer, measured at start-up)
and drives them from THIS process (the "client process"; it never shares a GIL with a server)
with one closed-loop load generator: `--channels` channels, `--concurrency` calls in flight,
a warm-up, then a measured window. Targets, all as 四川人社 (sc.hrss) asking its gateway 510000:

    echo  the ceiling: the same request, the same response size, no work (measured first and last)
    (a)   Query of one 重庆 (500000) citizen again and again: answered from 500000's Redis cache
    (b)   Query of a new citizen every time: two hops, the data system, an ES256 seal, its check
    (c)   BatchQuery of 5 items (3 to 500000, 2 to 330000), each answered from cache
    (d)   Credentials.Verify of one sealed answer (signature, chain, report)

then an open-loop pass (requests sent at a fixed rate, latency counted from the moment each was
due) at half of the maximum measured for (a) and (b), for the p99 at half load.

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
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
import redis
from google.protobuf import __version__ as protobuf_version

# Run as a script, this file's folder (bench/) comes first on sys.path, and `import gateway`
# would import this file, bench/gateway.py, instead of the gateway package: take bench/ out.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gateway.demo import (  # noqa: E402 - after the sys.path fix above
    DemoError,
    DemoOptions,
    Federation,
    build_pki,
    rpc_reason,
    start_federation,
    stop_federation,
)
from gateway.provider import DemoData  # noqa: E402
from registry import Inventory, KeyState, KeyUsage  # noqa: E402
from tongban.v1 import (  # noqa: E402
    credentials_pb2,
    credentials_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
)

REPO: Final = Path(__file__).resolve().parents[1]
SOURCE: Final = REPO / "conf" / "registry"
DEFAULT_REDIS: Final = "redis://127.0.0.1:6379/0"

# Who asks whom for what (an agreement of the demo registry: CY-SI-2026, 四川 asks 重庆).
AGENCY: Final = "sc.hrss"  # 四川省人力资源和社会保障厅
REQUESTER: Final = "510000"  # its gateway
PROVIDER: Final = "500000"  # 重庆
OTHER_PROVIDER: Final = "330000"  # 浙江: ZJ-SC-SI-2026 lets sc.hrss ask it too (batch items)
DATASET: Final = "si.participation"
PURPOSE: Final = "SI-TRANSFER"
BATCH_ITEMS: Final = ((PROVIDER, 3), (OTHER_PROVIDER, 2))  # (region, items) of one BatchQuery

BENCH_QUOTA: Final = 100_000_000  # quota_per_minute in the harness's registry copy
CALL_TIMEOUT: Final = 10.0  # seconds; a call slower than this counts as an error
SETUP_TIMEOUT: Final = 180.0  # seconds for the server process to build its PKI and start
OPEN_LOOP_MAX_IN_FLIGHT: Final = 2048  # an open-loop request due beyond this many is dropped
ECHO_SERVICE: Final = "tongban.bench.Echo"
ECHO_METHOD: Final = f"/{ECHO_SERVICE}/Echo"

# The targets (issue 8): QPS ratio to the echo ceiling, and p99 at half of max load.
RATIO_TARGETS: Final = {"hit": 0.6, "miss": 0.3}
P99_TARGETS_MS: Final = {"hit": 5.0, "miss": 15.0}

LABELS: Final = {
    "echo": "echo (the ceiling)",
    "hit": "(a) Query, cache hit",
    "miss": "(b) Query, miss, 2 hops",
    "batch": "(c) BatchQuery x5, hits",
    "verify": "(d) Credentials.Verify",
}


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


# the server process -------------------------------------------------------------------------------
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
    roots = b"".join(_root(pki, region) for region in (REQUESTER, PROVIDER, OTHER_PROVIDER))
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=roots, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


async def _sample_answer(fed: Federation) -> tuple[bytes, bytes, int]:
    """One real Query (sc.hrss asks 500000 for a citizen's si.participation record): the
    serialised request and response, and the length of the sealed record's JWS."""
    subject = DemoSubjects(PROVIDER).take(1)[0]
    async with fed.channel(AGENCY) as channel:
        request = exchange_pb2.QueryRequest(
            provider_region=PROVIDER,
            dataset=DATASET,
            purpose=PURPOSE,
            subject_id=subject,
            case_id=f"CASE-{datetime.now(UTC):%Y%m%d}-SAMPLE",
            request_id=f"bench-sample-{secrets.token_hex(8)}",
        )
        answer = await exchange_pb2_grpc.DataExchangeStub(channel).Query(
            request, metadata=fed.token(AGENCY), timeout=CALL_TIMEOUT
        )
    return request.SerializeToString(), answer.SerializeToString(), len(answer.record.jws)


class GcPauses:
    """The garbage collector's pauses in the server process, by generation (`gc.callbacks`).
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


def _server_stats(fed: Federation, pauses: GcPauses) -> dict[str, Any]:
    """Counters that explain a phase: by gateway, answers from cache or not and how many audit
    records each durable commit carried (the group-commit factor); the collector's pauses."""
    gateways: dict[str, Any] = {}
    for region, gateway in fed.gateways.items():
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
        gateways[region] = entry
    return {"gateways": gateways, "gc": pauses.snapshot()}


def _emit(message: dict[str, Any]) -> None:
    """One JSON line to the client process (stdout is reserved for these)."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _serve(folder: Path, source: Path, redis_url: str) -> None:
    await asyncio.to_thread(build_pki, folder, source)
    fed = Federation(folder=folder, source=source)
    options = DemoOptions(source=source, folder=folder, redis_url=redis_url)
    echo: grpc.aio.Server | None = None
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        await start_federation(fed, options, secrets.token_hex(3))
        request, answer, jws_bytes = await _sample_answer(fed)
        echo, echo_port = await _start_echo(fed.pki, answer)
        _emit(
            {
                "ready": True,
                "pid": os.getpid(),
                "echo_port": echo_port,
                "gateway_ports": {r: g.port for r, g in fed.gateways.items()},
                "request_bytes": len(request),
                "response_bytes": len(answer),
                "jws_bytes": jws_bytes,
            }
        )
        # Commands from the client process, one a line: "stats" or "stop" (EOF stops too).
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() == "stats":
                _emit(_server_stats(fed, pauses))
            else:
                break
    finally:
        if echo is not None:
            await echo.stop(0.5)
        await stop_federation(fed, options)


def server_main(folder: Path, source: Path, redis_url: str) -> int:
    """`--role server`: everything the client process measures, in this one process."""
    try:
        asyncio.run(_serve(folder, source, redis_url))
    except (BenchError, DemoError, OSError, grpc.aio.AioRpcError) as exc:
        message = (
            f"{exc.code().name} {rpc_reason(exc)}: {exc.details()}"
            if isinstance(exc, grpc.aio.AioRpcError)
            else str(exc)
        )
        _emit({"error": f"{type(exc).__name__}: {message}"})
        return 1
    except Exception as exc:  # unexpected: the traceback goes to the server log
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        raise
    return 0


@dataclass(frozen=True)
class CpuSample:
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


class ServerProcess:
    """The server process as the client process sees it: ports, CPU time, counters, stop."""

    def __init__(self, folder: Path, source: Path, redis_url: str) -> None:
        self.pki = folder / "pki"  # the dev PKI the server process builds there
        self.log_path = folder / "server.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(  # noqa: S603 - this same file, by this same interpreter
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--role",
                "server",
                "--folder",
                str(folder),
                "--source",
                str(source),
                "--redis",
                redis_url,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO,
        )
        self.pid = self._proc.pid
        self._ticks = os.sysconf("SC_CLK_TCK")
        try:
            self.info = self._read(SETUP_TIMEOUT)
            if "error" in self.info:
                raise BenchError(f"the server process failed to start: {self.info['error']}")
        except BaseException:
            self.stop()
            raise

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
            raise BenchError(f"the server process {state}; {self.last_log_line()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def last_log_line(self) -> str:
        self._log.flush()
        lines = [
            s
            for s in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            if s.strip()
        ]
        return f"its log ends: {lines[-1].strip()}" if lines else "its log is empty"

    def cpu(self) -> CpuSample:
        """CPU time used so far by the server process: user and system time of the whole
        process, and user + system time by thread: "main (event loop)" is the thread that runs
        every Python handler; the others by their kernel name (gRPC's C-core threads name
        themselves; Python's own threads, the audit writers among them, show as "python")."""
        try:
            user, system = _times(Path(f"/proc/{self.pid}/stat").read_text())
        except OSError as exc:
            raise BenchError(f"the server process is gone ({exc.strerror})") from exc
        threads: Counter[str] = Counter()
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            name = "main (event loop)" if task.name == str(self.pid) else _comm(stat)
            if name.startswith("python"):
                name = "Python threads (audit writers, gRPC poller)"
            threads[name] += sum(_times(stat))
        return CpuSample(
            user / self._ticks,
            system / self._ticks,
            {name: ticks / self._ticks for name, ticks in threads.items()},
        )

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


# subjects ---------------------------------------------------------------------------------------
class DemoSubjects:
    """Citizen ids that a demo region's data system holds a si.participation record of, in the
    order of `DemoData.population` (the same list in every process: the data is deterministic).
    `take(n)` hands out the next n, never one twice."""

    def __init__(self, region: str) -> None:
        self._data = DemoData(region)
        self._held: list[str] = []
        self._scanned = 0
        self._next = 0

    def take(self, n: int) -> list[str]:
        while len(self._held) < self._next + n:
            want = self._next + n - len(self._held)
            population = self._data.population(self._scanned + want * 2 + 16)
            for subject in population[self._scanned :]:
                if self._data.record(DATASET, subject) is not None:
                    self._held.append(subject)
            self._scanned = len(population)
        taken = self._held[self._next : self._next + n]
        self._next += n
        return taken


# the client process -------------------------------------------------------------------------------
Call = Callable[[], Awaitable[object]]


@dataclass
class Phase:
    """What one measurement saw. Latencies in milliseconds; CPU in cores (1.0 = one full core)."""

    target: str
    mode: str  # "closed" (fixed calls in flight) or "open" (fixed rate)
    seconds: float
    completed: int
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    server_cpu: float
    client_cpu: float
    server_cpu_us_per_request: float
    other_cpu: float  # cores used by everything else on the machine (noise: other processes)
    server_system_share: float  # of the server's CPU time, the share spent in the kernel
    server_threads: dict[str, float]  # cores used, by thread group (see ServerProcess.cpu)
    offered_rate: float | None = None
    dropped: int = 0
    server: dict[str, Any] = field(default_factory=dict)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is in user already


def _thread_cores(before: CpuSample, after: CpuSample, wall: float) -> dict[str, float]:
    """Cores used by each thread group between two samples, busiest first."""
    used = {name: (t - before.threads.get(name, 0.0)) / wall for name, t in after.threads.items()}
    return {name: round(c, 3) for name, c in sorted(used.items(), key=lambda kv: -kv[1]) if c > 0}


class Window:
    """Counts calls that complete inside [start, end) and samples CPU at both edges."""

    def __init__(self, server: ServerProcess, warmup: float, seconds: float) -> None:
        self.server = server
        self.begin = time.perf_counter()
        self.start = self.begin + warmup
        self.end = self.start + seconds
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        # (wall, server, client CPU seconds, the machine's busy CPU seconds)
        self._cpu: list[tuple[float, CpuSample, float, float]] = []

    def done(self, due: float, finished: float) -> None:
        if self.start <= finished < self.end:
            self.latencies.append(finished - due)

    def failed(self, finished: float, exc: grpc.aio.AioRpcError | CallFailed) -> None:
        if self.start <= finished < self.end:
            self.errors[failure(exc)] += 1

    async def sample_cpu(self) -> None:
        """Runs alongside the load: samples at the start and the end of the window."""
        for edge in (self.start, self.end):
            await asyncio.sleep(max(0.0, edge - time.perf_counter()))
            self._cpu.append(
                (time.perf_counter(), self.server.cpu(), time.process_time(), machine_busy())
            )

    def phase(self, target: str, mode: str, offered: float | None, dropped: int) -> Phase:
        (w0, s0, c0, m0), (w1, s1, c1, m1) = self._cpu
        wall = w1 - w0
        ours = (s1.total - s0.total) + (c1 - c0)
        ordered = sorted(self.latencies)
        n = len(ordered)
        return Phase(
            target=target,
            mode=mode,
            seconds=wall,
            completed=n,
            qps=n / wall,
            p50_ms=percentile(ordered, 0.50) * 1e3,
            p95_ms=percentile(ordered, 0.95) * 1e3,
            p99_ms=percentile(ordered, 0.99) * 1e3,
            mean_ms=(sum(ordered) / n * 1e3) if n else 0.0,
            max_ms=(ordered[-1] * 1e3) if n else 0.0,
            errors=dict(self.errors),
            server_cpu=(s1.total - s0.total) / wall,
            client_cpu=(c1 - c0) / wall,
            other_cpu=max(0.0, (m1 - m0 - ours) / wall),
            server_cpu_us_per_request=((s1.total - s0.total) / n * 1e6) if n else 0.0,
            server_system_share=(s1.system - s0.system) / max(s1.total - s0.total, 1e-9),
            server_threads=_thread_cores(s0, s1, wall),
            offered_rate=offered,
            dropped=dropped,
        )


async def closed_loop(
    calls: list[Call], server: ServerProcess, *, concurrency: int, warmup: float, seconds: float
) -> Window:
    """`concurrency` workers, spread over the channels, each sending its next call as soon as
    its last one is answered, for `warmup` + `seconds`; the window is the last `seconds`."""
    window = Window(server, warmup, seconds)

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
    return window


async def open_loop(
    calls: list[Call], server: ServerProcess, *, rate: float, warmup: float, seconds: float
) -> tuple[Window, int]:
    """Calls sent at `rate` a second whatever the answers do, round-robin over the channels;
    a call's latency counts from when it was due, so a late send counts against the server
    (no coordinated omission). Returns the window and how many were dropped (too many in
    flight)."""
    window = Window(server, warmup, seconds)
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


class Load:
    """The client side: channels as sc.hrss to the echo server and to gateway 510000, request
    tokens, and a call factory per target. Every Query carries a fresh request_id (the replay
    window refuses a repeat), made unique across runs by this run's id."""

    def __init__(self, pki: Path, info: dict[str, Any], channels: int, run_id: str) -> None:
        self.fed = Federation(folder=pki.parent, source=SOURCE)  # for its `token()` only
        chain, key = _tls_pair(pki, AGENCY)
        credentials = grpc.ssl_channel_credentials(_root(pki, REQUESTER), key, chain)
        # A local subchannel pool: otherwise channels with the same target share one connection.
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.echo_channels = [
            grpc.aio.secure_channel(f"localhost:{info['echo_port']}", credentials, options)
            for _ in range(channels)
        ]
        gateway = f"localhost:{info['gateway_ports'][REQUESTER]}"
        self.gateway_channels = [
            grpc.aio.secure_channel(gateway, credentials, options) for _ in range(channels)
        ]
        self._ids = itertools.count()
        self._run_id = run_id
        self.case_id = f"CASE-{datetime.now(UTC):%Y%m%d}-B{run_id.upper()}"
        self.tokens: list[tuple[tuple[str, str], ...]] = []
        self.refresh_tokens()

    def refresh_tokens(self) -> None:
        """One token per channel, issued now: a token lives 5 minutes; each phase takes new."""
        self.tokens = [self.fed.token(AGENCY) for _ in self.gateway_channels]

    async def close(self) -> None:
        for channel in (*self.echo_channels, *self.gateway_channels):
            await channel.close()

    def request_id(self) -> str:
        return f"bench-{self._run_id}-{next(self._ids)}"

    def query(self, subject: str, region: str = PROVIDER) -> exchange_pb2.QueryRequest:
        return exchange_pb2.QueryRequest(
            provider_region=region,
            dataset=DATASET,
            purpose=PURPOSE,
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
    ("demo data system", "/gateway/provider/"),
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


def check_redis(url: str) -> None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BenchError(
            f"Redis at {url} is not reachable ({type(exc).__name__}: {exc}); start it or give --redis URL"
        ) from exc


# the run ----------------------------------------------------------------------------------------
def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after - before, for the nested integer counters of `_server_stats`."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = _delta(before.get(key, {}), value)
        elif isinstance(value, int) and key != "largest_batch":
            out[key] = value - int(before.get(key, 0))
        else:
            out[key] = value
    return out


async def measure(args: argparse.Namespace, server: ServerProcess, run_id: str) -> dict[str, Any]:
    load = Load(server.pki, server.info, args.channels, run_id)
    cq, zj = DemoSubjects(PROVIDER), DemoSubjects(OTHER_PROVIDER)
    cq.take(1)  # the server's sample query used the first
    hit_subject = cq.take(1)[0]
    batch_items = [
        (region, subject)
        for region, count in BATCH_ITEMS
        for subject in (cq if region == PROVIDER else zj).take(count)
    ]
    phases: dict[str, Phase] = {}
    warmup, seconds = args.warmup, args.seconds

    async def run(
        key: str, target: str, make: Callable[[], list[Call]], rate: float | None = None
    ) -> Phase:
        load.refresh_tokens()
        before = server.stats()
        if rate is None:
            window = await closed_loop(
                make(), server, concurrency=args.concurrency, warmup=warmup, seconds=seconds
            )
            phase = window.phase(target, "closed", None, 0)
        else:
            window, dropped = await open_loop(
                make(), server, rate=rate, warmup=warmup, seconds=seconds
            )
            phase = window.phase(target, "open", rate, dropped)
        phase.server = _delta(before, server.stats())
        phases[key] = phase
        _progress(key, phase)
        if not phase.completed:
            raise BenchError(f"no call of {key} was answered in its window: {phase.errors}")
        return phase

    misses: Iterator[str] = iter(())
    top_ups = 0

    def next_miss() -> str:
        nonlocal misses, top_ups
        try:
            return next(misses)
        except StopIteration:  # more were asked for than estimated: top the pool up (~40 ms)
            top_ups += 1
            misses = iter(cq.take(1000))
            return next(misses)

    jws = ""
    try:
        await run("echo_first", "echo", lambda: load.echo_calls(hit_subject))
        hit = await run("hit", "hit", lambda: load.query_calls(lambda: hit_subject))
        # Distinct subjects for (b), its open-loop pass at half the rate and its profiled run:
        # a miss is at most as fast as a hit. Made now, outside any window (~40 µs each).
        passes = 1.5 + (1.0 if args.profile is not None else 0.0)
        needed = int(hit.qps * passes * (warmup + seconds) * 1.2) + 1000
        misses = iter(cq.take(needed))
        miss = await run("miss", "miss", lambda: load.query_calls(next_miss))
        await run("batch", "batch", lambda: load.batch_calls(batch_items))
        # (d) verifies a real sealed answer: the one (a) keeps getting from the cache.
        sample = await exchange_pb2_grpc.DataExchangeStub(load.gateway_channels[0]).Query(
            load.query(hit_subject), metadata=load.tokens[0], timeout=CALL_TIMEOUT
        )
        jws = sample.record.jws
        await run("verify", "verify", lambda: load.verify_calls(jws))
        await run("echo_last", "echo", lambda: load.echo_calls(hit_subject))
        await run("hit_half", "hit", lambda: load.query_calls(lambda: hit_subject), hit.qps / 2)
        await run("miss_half", "miss", lambda: load.query_calls(next_miss), miss.qps / 2)
        profiles: dict[str, Any] = {}
        if args.profile is not None:
            profiles = await profile(
                args=args,
                server=server,
                load=load,
                run=run,
                hit_subject=hit_subject,
                next_miss=next_miss,
            )
    finally:
        await load.close()
    return {"phases": phases, "profiles": profiles, "miss_pool_topped_up": top_ups}


async def profile(
    *,
    args: argparse.Namespace,
    server: ServerProcess,
    load: Load,
    run: Callable[..., Awaitable[Phase]],
    hit_subject: str,
    next_miss: Callable[[], str],
) -> dict[str, Any]:
    """(a) and (b) again with py-spy sampling the server process (GIL-holding samples, native
    frames too) during the measured window. These phases are reported apart: a sampler that
    pauses the process 200 times a second slows what it watches."""
    spy = py_spy()
    if spy is None:
        print("profile: py-spy not found (.venv/bin/pip install py-spy); skipped", flush=True)
        return {}
    folder: Path = args.profile
    folder.mkdir(parents=True, exist_ok=True)
    rate = 200
    out: dict[str, Any] = {}
    for key, make in (
        ("hit", lambda: load.query_calls(lambda: hit_subject)),
        ("miss", lambda: load.query_calls(next_miss)),
    ):
        raw = folder / f"{key}.txt"
        command = [
            spy,
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(max(1, round(args.seconds))),
            "--rate",
            str(rate),
            "--gil",  # what holds the GIL is what limits one process
            "--native",  # see into gRPC's Cython code (it pauses the process for each sample)
            "--full-filenames",
            "--format",
            "raw",
            "--output",
            str(raw),
        ]

        async def spied(command: list[str] = command) -> int:
            await asyncio.sleep(args.warmup)  # sample the measured window only
            process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, error = await process.communicate()
            if process.returncode:
                print(f"profile: py-spy failed: {error.decode().strip()[-200:]}", flush=True)
            return process.returncode or 0

        spying = asyncio.create_task(spied())
        await run(f"profiled_{key}", key, make)
        if await spying == 0 and raw.exists():
            out[key] = summarise_profile(raw, rate, max(1, round(args.seconds)))
            out[key]["file"] = str(raw)
    return out


def _progress(key: str, phase: Phase) -> None:
    errors = f", {sum(phase.errors.values())} failed" if phase.errors else ""
    print(
        f"  {key:<14} {phase.qps:>8,.0f}/s  p99 {phase.p99_ms:6.1f} ms{errors}",
        file=sys.stderr,
        flush=True,
    )


def results(
    args: argparse.Namespace, server: ServerProcess, run_id: str, measured: dict[str, Any]
) -> dict[str, Any]:
    phases: dict[str, Phase] = measured["phases"]
    ceiling = (phases["echo_first"].qps + phases["echo_last"].qps) / 2
    echo_cpu = (
        phases["echo_first"].server_cpu_us_per_request
        + phases["echo_last"].server_cpu_us_per_request
    ) / 2
    ratios = {k: phases[k].qps / ceiling for k in ("hit", "miss", "batch", "verify")}
    cpu_ratios = {
        k: echo_cpu / phases[k].server_cpu_us_per_request
        for k in ("hit", "miss", "batch", "verify")
        if phases[k].server_cpu_us_per_request
    }
    return {
        "machine": machine(args.redis),
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "channels": args.channels,
            "redis": args.redis,
            "run_id": run_id,
            "request_bytes": server.info["request_bytes"],
            "response_bytes": server.info["response_bytes"],
            "jws_bytes": server.info["jws_bytes"],
            "batch_items": sum(n for _, n in BATCH_ITEMS),
            "quota_per_minute": BENCH_QUOTA,
            "agreement_prefix": f"B{run_id}-",
        },
        "ceiling_qps": ceiling,
        "echo_server_cpu_us_per_request": echo_cpu,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "ratio_targets": RATIO_TARGETS,
        "p99_half_load_ms": {
            "hit": phases["hit_half"].p99_ms,
            "miss": phases["miss_half"].p99_ms,
        },
        "p99_targets_ms": P99_TARGETS_MS,
        "phases": {k: dataclasses.asdict(p) for k, p in phases.items()},
        "profiles": measured["profiles"],
        "miss_pool_topped_up": measured["miss_pool_topped_up"],
    }


def _verdict(value: float, target: float, *, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return "met" if met else "NOT met"


def print_report(r: dict[str, Any]) -> None:
    m, s, phases = r["machine"], r["settings"], r["phases"]
    print(
        f"machine: {m['nproc']} CPU(s) usable ({m['cpu_count']} online), {m['cpu']}, "
        f"{m['system']}; {m['python']}; grpcio {m['grpcio']}; Redis {m.get('redis_server', '?')}"
    )
    print(
        f"load: 1 client process, {s['channels']} channels, {s['concurrency']} calls in flight, "
        f"{s['warmup']:g} s warm-up + {s['seconds']:g} s measured per target; server process: "
        "3 gateways + 3 data systems + the echo server"
    )
    print(
        f"messages: request {s['request_bytes']} B, answer {s['response_bytes']} B "
        f"(sealed record's JWS {s['jws_bytes']} B); the echo server returns those answer bytes"
    )
    print(
        f"registry: a copy of conf/registry with quota_per_minute = {s['quota_per_minute']:,} "
        f"and agreement ids prefixed {s['agreement_prefix']} (quotas still counted in Redis)"
    )
    print()
    header = (
        f"{'target':<26} {'QPS':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'ratio':>6} {'target':>7}  {'srv µs/req':>10} {'srv CPU':>7} {'cli CPU':>7} "
        f"{'others':>6}"
    )
    print(header)
    print("-" * len(header))
    for key in ("echo_first", "hit", "miss", "batch", "verify", "echo_last"):
        p = phases[key]
        base = key.removeprefix("echo_") if key.startswith("echo") else ""
        label = f"{LABELS['echo']}, {base}" if base else LABELS[key]
        ratio = f"{r['ratios'][key]:.2f}" if key in r["ratios"] else ""
        target = f">={RATIO_TARGETS[key]:.1f}" if key in RATIO_TARGETS else ""
        print(
            f"{label:<26} {p['qps']:>7,.0f} {p['p50_ms']:>7.2f} {p['p95_ms']:>7.2f} "
            f"{p['p99_ms']:>7.2f} {ratio:>6} {target:>7}  {p['server_cpu_us_per_request']:>10,.0f} "
            f"{p['server_cpu']:>7.2f} {p['client_cpu']:>7.2f} {p['other_cpu']:>6.2f}"
        )
    print()
    print(f"ceiling: {r['ceiling_qps']:,.0f} QPS (mean of the two echo runs)")
    for key in ("hit", "miss"):
        print(
            f"{LABELS[key]}: {r['ratios'][key]:.2f} of the ceiling, target "
            f">= {RATIO_TARGETS[key]:.1f}: {_verdict(r['ratios'][key], RATIO_TARGETS[key])}"
        )
    batch = phases["batch"]
    print(
        f"{LABELS['batch']}: {r['ratios']['batch']:.2f} of the ceiling "
        f"({batch['qps'] * s['batch_items']:,.0f} items/s); {LABELS['verify']}: "
        f"{r['ratios']['verify']:.2f}"
    )
    print(
        "server CPU per request, echo / target (1.0 = as cheap as the echo): "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ratios"].items())
    )
    print()
    print("open loop at half of the maximum measured above (latency from when a call was due):")
    for key in ("hit", "miss"):
        p = phases[f"{key}_half"]
        limit = P99_TARGETS_MS[key]
        print(
            f"  {LABELS[key]:<24} {p['offered_rate']:>6,.0f}/s offered, {p['qps']:>6,.0f}/s "
            f"answered: p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, target <= "
            f"{limit:g} ms: {_verdict(p['p99_ms'], limit, at_most=True)} "
            f"(other processes: {p['other_cpu']:.2f} cores)"
        )
    print()
    for key in ("hit", "miss", "batch"):
        gateways = phases[key]["server"]["gateways"].values()
        cache = [g.get("cache", {}) for g in gateways]
        audit = [g.get("audit", {}) for g in gateways]
        appended = sum(a.get("appended", 0) for a in audit)
        commits = sum(a.get("commits", 0) for a in audit)
        print(
            f"server counters during {key}: cache {sum(c.get('hits', 0) for c in cache):,} hits "
            f"(+{sum(c.get('coalesced', 0) for c in cache):,} coalesced), "
            f"{sum(c.get('misses', 0) for c in cache):,} misses, "
            f"{sum(c.get('errors', 0) for c in cache)} errors; audit {appended:,} records in "
            f"{commits:,} commits ({appended / commits if commits else 0:.1f} per commit)"
        )
    for key in ("echo_first", "hit", "miss", "hit_half", "miss_half"):
        pauses = phases[key]["server"]["gc"]
        seconds = phases[key]["seconds"] + s["warmup"]
        print(
            f"collector during {key}: "
            + ", ".join(
                f"gen{g} {pauses[f'gen{g}']['collections']:,}x "
                f"(longest {pauses[f'gen{g}']['longest_ms']:.1f} ms)"
                for g in range(3)
            )
            + f"; {sum(v['total_us'] for v in pauses.values()) / 1e3 / seconds:.1f} ms a second"
        )
    print()
    for key in ("echo_first", "hit", "miss"):
        p = phases[key]
        threads = ", ".join(f"{name} {cores:.2f}" for name, cores in p["server_threads"].items())
        print(
            f"server threads during {key} (cores): {threads}; "
            f"{p['server_system_share']:.0%} of the server's CPU time in the kernel"
        )
    failed = {k: p["errors"] for k, p in phases.items() if p["errors"]}
    if failed:
        print(f"FAILED CALLS: {failed}")
    if r["miss_pool_topped_up"]:
        print(f"note: the pool of distinct subjects was topped up {r['miss_pool_topped_up']} times")
    for key, prof in r["profiles"].items():
        _print_profile(key, prof)


def _print_profile(key: str, prof: dict[str, Any]) -> None:
    if not prof.get("samples"):
        print(f"\nprofile of {key}: no samples")
        return
    print(
        f"\nprofile of the server process during {LABELS[key]} (py-spy, GIL-holding samples: "
        f"{prof['samples']:,}, GIL busy {prof['gil_busy']:.0%}); {prof['file']}"
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
        "--profile",
        type=Path,
        metavar="DIR",
        help="then run (a) and (b) again under py-spy; raw profiles go to DIR",
    )
    # Internal: the server process is this file again, with --role server.
    parser.add_argument(
        "--role", choices=("client", "server"), default="client", help=argparse.SUPPRESS
    )
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "server":
        return server_main(args.folder, args.source, args.redis)
    if args.seconds <= 0 or args.warmup < 0 or args.concurrency < 1 or args.channels < 1:
        parser.error("--seconds must be positive, --warmup not negative, the others at least 1")
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    check_redis(args.redis)
    run_id = secrets.token_hex(3)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tongban-bench-") as name:
        folder = Path(name)
        source = bench_source(folder, run_id)
        print(
            "starting the server process (dev PKI, registry, 3 gateways, echo) …", file=sys.stderr
        )
        server = ServerProcess(folder, source, args.redis)
        try:
            print(f"measuring (server process pid {server.pid}) …", file=sys.stderr, flush=True)
            measured = asyncio.run(measure(args, server, run_id))
        finally:
            server.stop()
        report = results(args, server, run_id, measured)
    report["wall_seconds"] = time.perf_counter() - started
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
