"""Real processes for the fault suite (issue 14): importable as `faults.harness`.

A `Deployment` is two gateways, each `python -m gateway.cli gateway serve --config FILE` in
its own process (四川 510000 the requester, 浙江 330000 the owner of the data asked for), 浙江's
data system (`tongban provider serve`, the demo one), and, as a scenario asks, the test's own
`redis-server` and a private PostgreSQL instance (`PrivatePostgres`: initdb in a temporary
folder, run as the `postgres` user, on a free port; never the machine's shared servers). Each
gateway's configuration is a TOML file written from the dev PKI's keys, with short bounds on
every dependency (`BOUNDS`), so a refusal comes well before the client's deadline.

`Traffic` is closed-loop clients of 四川's agencies asking for 浙江's data: business licences
(`cache_scope = "requester"`: after the first answer, 四川 answers a repeat from its own cache
and reports the access to 浙江) cycling through a few businesses, and social-insurance records
(provider scope: each a `Peer.Forward` to 浙江, which asks its data system) for a new citizen
each time.

`Ledger` reads both audit stores (the SQLite file read-only, or the private PostgreSQL) and
checks the invariant the suite is about: every answer a client received has its record on the
requester (`DataExchange/Query`, allowed) and on the owner (`Peer/Forward` for a miss or
`Peer/ReportAccess` for a requester-side cache hit, allowed), by request id.

`TONGBAN_FAULTS_LONG=1` (`make faults`) makes the faults longer and repeats each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from fault_support import Shot, Tally, held_subjects, pump, query_maker
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from query_support import Cluster, bearer
from support import (
    REPO,
    Federation,
    RedisServer,
    credentials_as,
    free_port,
    start_on_free_ports,
)

from gateway.demo.config import config_for_dev_pki
from gateway.demo.pki import DEV_CACHE_KEY, DEV_PSEUDONYM_KEY
from tongban.v1 import exchange_pb2_grpc

LONG = os.environ.get("TONGBAN_FAULTS_LONG", "") == "1"
FAULT_SECONDS = 10.0 if LONG else 2.5  # how long each fault lasts
ROUNDS = 3 if LONG else 1  # faults per scenario, each followed by a recovery
CLIENTS = 2 if LONG else 1  # closed-loop clients per traffic stream
CLIENT_DEADLINE = 10.0  # seconds: every client call's deadline, far above BOUNDS
START_SECONDS = 60.0  # a hang guard for a process to start serving; never asserted
RECORD_WAIT = 20.0  # seconds after recovery for every answer's records to be on both sides
SETTLE_SECONDS = 0.5  # traffic goes on this long after service came back
STOP_SECONDS = 5.0  # a graceful stop (grace_seconds 1) that takes longer than this hangs
REQUESTER, OWNER = "510000", "330000"  # 四川 asks 浙江
LICENCE = ("market.business_licence", "LICENCE-VERIFY")  # cache_scope "requester"
SI = ("si.participation", "SI-TRANSFER")  # cache_scope "provider"
QUERY_RPC = "/tongban.v1.DataExchange/Query"
OWNER_RPCS = frozenset({"/tongban.v1.Peer/Forward", "/tongban.v1.Peer/ReportAccess"})


@dataclass(frozen=True)
class Bounds:
    """The bound on each dependency, as both gateways are configured (seconds)."""

    redis: float = 0.25
    provider: float = 0.75
    append: float = 1.0
    peer: float = 2.0  # above provider + append: what the owner may take itself
    breaker_failures: int = 3
    breaker_window: float = 10.0
    breaker_open: float = 1.0


BOUNDS = Bounds()


# processes -----------------------------------------------------------------------------------
class Served:
    """One process of the deployment: started, signalled, waited for; stderr kept in a file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stderr_files: list[Path] = []

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        stderr = self.workdir / f"{self.name}-{self.starts}.err"
        self.stderr_files.append(stderr)
        with stderr.open("wb") as err:
            self.process = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=err
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stderr(self) -> str:
        return "".join(f.read_text(errors="replace") for f in self.stderr_files if f.exists())

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL (a stopped process too); returns once it is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def interrupt(self) -> None:
        """SIGINT: the graceful stop begins (`wait_stopped` waits for it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGINT)

    def wait_stopped(self, timeout: float = STOP_SECONDS) -> int:
        """The exit code after `interrupt`; SIGKILL and -9 if it did not stop in time."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class PrivatePostgres:
    """A PostgreSQL instance of the tests' own: initdb in a temporary folder owned by the
    `postgres` user (initdb refuses root), trust authentication, TCP on a free loopback port,
    its unix socket in that folder. stop -m immediate / start, freeze (SIGSTOP of the
    postmaster and every backend) / thaw."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tongban-faults-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.frozen: list[int] = []
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert bins, "PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)"
        self.bin = bins[-1].parent

    def _as_postgres(self, *argv: str) -> None:
        user = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        subprocess.run([*user, *argv], check=True, capture_output=True, timeout=60, cwd=self.folder)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.start()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c max_connections=50 -c shared_buffers=16MB"
        )
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.folder / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop_immediate(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def freeze(self) -> None:
        """SIGSTOP the postmaster, then each of its children (backends, writer, WAL...)."""
        master = self.postmaster()
        os.kill(master, signal.SIGSTOP)
        self.frozen = [master]
        for child in children_of(master):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                self.frozen.append(child)

    def thaw(self) -> None:
        for pid in reversed(self.frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def dsn(self, port: int | None = None) -> str:
        return (
            f"host=127.0.0.1 port={port or self.port} user=postgres dbname=postgres "
            "connect_timeout=2"
        )

    def close(self) -> None:
        self.thaw()
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop_immediate()
        shutil.rmtree(self.folder, ignore_errors=True)

    def drop_schema(self, schema: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.init()
        yield pg
    finally:
        pg.close()


# configuration ---------------------------------------------------------------------------------
def _toml(value: str | Path) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


@dataclass(frozen=True)
class AuditPlace:
    """Where one gateway's audit log lives: a SQLite file, or a schema of the private
    PostgreSQL reached at `port` (its own, or a proxy's)."""

    sqlite: Path | None = None
    schema: str = ""
    port: int = 0


def gateway_toml(
    fed: Federation,
    region: str,
    *,
    listen: str,
    metrics_listen: str,
    audit: AuditPlace,
    provider: str,
    peers: dict[str, str],
    redis: bool,
    bounds: Bounds = BOUNDS,
    bind_queries: bool = False,
    max_material_bytes: int = 0,
) -> str:
    """A full (not dev_pki) configuration file of `region`'s gateway: the dev PKI's keys named
    file by file, the bounds of `bounds`; the DSN and Redis URL in environment variables.
    Queries are bound to cases only with `bind_queries` (the fault suite's traffic names made-up
    case ids); `max_material_bytes` is the `[cases]` limit when given (else the default)."""
    dev = config_for_dev_pki(fed.pki, region, listen=listen, snapshot_file=fed.current)
    assert dev.audit is not None
    lines = [
        "[gateway]",
        f"region = {_toml(region)}",
        f"listen = {_toml(listen)}",
        "grace_seconds = 1",
        f"metrics_listen = {_toml(metrics_listen)}",
        "[tls]",
        f"certificate = {_toml(dev.tls_certificate)}",
        f"private_key = {_toml(dev.tls_private_key)}",
        "[registry]",
        f"trusted_root = {_toml(dev.trust_anchor)}",
        f"snapshot_file = {_toml(fed.current)}",
        "[audit]",
        f"key = {_toml(dev.audit.key)}",
        f"pseudonym_key_file = {_toml(fed.pki / DEV_PSEUDONYM_KEY)}",
        f"append_timeout_seconds = {bounds.append}",
    ]
    if audit.sqlite is not None:
        lines += ['store = "sqlite"', f"path = {_toml(audit.sqlite)}"]
    else:
        lines += ['store = "postgres"', 'dsn_env = "TONGBAN_FAULTS_DSN"']
        lines += [f"schema = {_toml(audit.schema)}"]
    lines += [
        "[exchange]",
        f"cache_key_file = {_toml(fed.pki / DEV_CACHE_KEY)}",
        f"redis_timeout_seconds = {bounds.redis}",
        f"provider_timeout_seconds = {bounds.provider}",
        f"peer_timeout_seconds = {bounds.peer}",
        f"breaker_failures = {bounds.breaker_failures}",
        f"breaker_window_seconds = {bounds.breaker_window}",
        f"breaker_open_seconds = {bounds.breaker_open}",
    ]
    if provider:
        lines.append(f"provider = {_toml(provider)}")
    if redis:
        lines.append('redis_url_env = "TONGBAN_FAULTS_REDIS"')
    for seal_certificate, seal_key in dev.seal_keys:
        lines += [
            "[[seal.keys]]",
            f"certificate = {_toml(seal_certificate)}",
            f"private_key = {_toml(seal_key)}",
        ]
    lines += ["[cases]", f"bind_queries = {str(bind_queries).lower()}"]
    if max_material_bytes:
        lines.append(f"max_material_bytes = {max_material_bytes}")
    lines.append("[peers]")
    lines += [f"{_toml(code)} = {_toml(endpoint)}" for code, endpoint in peers.items()]
    return "\n".join(lines) + "\n"


# the deployment --------------------------------------------------------------------------------
AGENCY_OF = {REQUESTER: "sc.amr", OWNER: "zj.amr"}  # who asks a gateway for its health


@dataclass
class Deployment:
    """Two gateways, the owner's data system, optionally Redis and PostgreSQL; see the module
    docstring."""

    fed: Federation
    workdir: Path
    redis: RedisServer | None
    pg: PrivatePostgres | None
    audit: dict[str, AuditPlace]
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    provider_port: int = 0
    gateways: dict[str, Served] = field(default_factory=dict)
    provider: Served | None = None
    tally: Tally = field(default_factory=lambda: Tally("-"))  # the running scenario's calls
    start_seconds: float = 0.0  # until every process served

    @property
    def requester(self) -> Served:
        return self.gateways[REQUESTER]

    @property
    def owner(self) -> Served:
        return self.gateways[OWNER]

    def cluster(self) -> Cluster:
        return Cluster(self.fed, dict(self.ports))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("TONGBAN_FAULTS_REDIS", "TONGBAN_FAULTS_DSN"):
            env.pop(name, None)
        if self.redis is not None:
            env["TONGBAN_FAULTS_REDIS"] = self.redis.url
        if self.pg is not None:
            port = next((a.port for a in self.audit.values() if a.port), self.pg.port)
            env["TONGBAN_FAULTS_DSN"] = self.pg.dsn(port)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def prepare(self) -> None:
        self.ports = {REQUESTER: free_port(), OWNER: free_port()}
        self.metrics_ports = {REQUESTER: free_port(), OWNER: free_port()}
        self.provider_port = free_port()
        env = self._env()
        python = [sys.executable, "-m", "gateway.cli"]
        self.provider = Served(
            "provider-330000",
            [*python, "provider", "serve", "--region", OWNER,
             "--listen", f"127.0.0.1:{self.provider_port}"],
            self.workdir, env,
        )  # fmt: skip
        for region, other in ((REQUESTER, OWNER), (OWNER, REQUESTER)):
            config = self.workdir / f"gateway-{region}.toml"
            config.write_text(
                gateway_toml(
                    self.fed,
                    region,
                    listen=f"127.0.0.1:{self.ports[region]}",
                    metrics_listen=f"127.0.0.1:{self.metrics_ports[region]}",
                    audit=self.audit[region],
                    provider=f"127.0.0.1:{self.provider_port}" if region == OWNER else "",
                    peers={other: f"localhost:{self.ports[other]}"},
                    redis=self.redis is not None,
                ),
                encoding="utf-8",
            )
            self.gateways[region] = Served(
                f"gateway-{region}",
                [*python, "gateway", "serve", "--config", str(config)],
                self.workdir,
                env,
            )

    async def start(self) -> float:
        """Every process started at once; returns the seconds until all serve."""
        started = time.monotonic()
        assert self.provider is not None
        self.provider.start()
        for gateway in self.gateways.values():
            gateway.start()
        await wait_listening(self.provider, self.provider_port)
        await asyncio.gather(*(self.wait_serving(region) for region in self.gateways))
        return time.monotonic() - started

    async def wait_serving(self, region: str) -> float:
        """Until `region`'s gateway answers its health check SERVING (it must not exit)."""
        started = time.monotonic()
        process = self.gateways[region]
        while True:
            assert process.alive(), f"{process.name} exited: {process.stderr()[-3000:]}"
            with contextlib.suppress(grpc.aio.AioRpcError):
                async with client_channel(self, AGENCY_OF[region], region) as channel:
                    answer = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2.0
                    )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            assert time.monotonic() - started < START_SECONDS, (
                f"{process.name} not serving: {process.stderr()[-3000:]}"
            )
            await asyncio.sleep(0.1)

    async def restart(self, region: str) -> float:
        """A new process for a stopped or killed gateway (same configuration, port and audit
        log); the seconds until it serves."""
        self.gateways[region].start()
        return await self.wait_serving(region)

    def bad_server_codes(self) -> dict[str, int]:
        """UNKNOWN / INTERNAL statuses each live gateway ended calls with (its /metrics)."""
        found = {}
        for region, gateway in self.gateways.items():
            if gateway.alive():
                found[region] = bad_codes(scrape(self.metrics_ports[region]))
        return found

    def stop(self) -> dict[str, int]:
        """Graceful stop of every process still running; their exit codes."""
        running = {
            name: process
            for name, process in [*self.gateways.items(), ("provider", self.provider)]
            if process is not None and process.process is not None
        }
        for process in running.values():
            process.interrupt()
        deadline = time.monotonic() + STOP_SECONDS  # one bound for all: they stop together
        return {
            name: process.wait_stopped(max(0.1, deadline - time.monotonic()))
            for name, process in running.items()
        }

    def kill_all(self) -> None:
        for process in [*self.gateways.values(), self.provider]:
            if process is not None:
                process.kill()


async def wait_listening(process: Served, port: int) -> None:
    started = time.monotonic()
    while True:
        assert process.alive(), f"{process.name} exited: {process.stderr()[-3000:]}"
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        assert time.monotonic() - started < START_SECONDS, f"{process.name} does not listen"
        await asyncio.sleep(0.05)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def bad_codes(metrics: str) -> int:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("grpc_server_handled_total{") and any(
            f'grpc_code="{code}"' in line for code in ("UNKNOWN", "INTERNAL")
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@contextlib.asynccontextmanager
async def deployment(
    fed: Federation,
    workdir: Path,
    *,
    redis: bool,
    pg: PrivatePostgres | None = None,
    pg_port: int = 0,
) -> AsyncIterator[Deployment]:
    """A running deployment: its audit logs in the private PostgreSQL when `pg` is given
    (reached at `pg_port`, e.g. a proxy's, else its own port; a fresh schema per gateway),
    else SQLite files in `workdir`; the test's own Redis when `redis`."""
    server = RedisServer(free_port(), workdir) if redis else None
    if pg is not None:
        suffix = secrets.token_hex(3)
        audit = {
            region: AuditPlace(schema=f"faults_{region}_{suffix}", port=pg_port or pg.port)
            for region in (REQUESTER, OWNER)
        }
    else:
        audit = {
            region: AuditPlace(sqlite=workdir / f"audit-{region}.db")
            for region in (REQUESTER, OWNER)
        }
    made = Deployment(fed, workdir, server, pg, audit)
    try:
        if server is not None:
            server.start()

        async def launch() -> float:
            made.prepare()
            try:
                return await made.start()
            except BaseException:  # a port taken meanwhile: all again, on new ports
                made.kill_all()
                for place in audit.values():
                    if place.sqlite is not None:
                        for kept in place.sqlite.parent.glob(f"{place.sqlite.name}*"):
                            kept.unlink()
                    elif pg is not None:
                        with contextlib.suppress(psycopg.Error):
                            pg.drop_schema(place.schema)
                raise

        made.start_seconds = await start_on_free_ports(launch)
        yield made
    finally:
        made.kill_all()
        if server is not None:
            server.kill()
        if pg is not None:
            for place in audit.values():
                with contextlib.suppress(psycopg.Error):
                    pg.drop_schema(place.schema)


# clients ---------------------------------------------------------------------------------------
CLIENT_OPTIONS = (
    # a restarted gateway is found again within half a second, not gRPC's default backoff
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


def client_channel(dep: Deployment, agency: str, region: str) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"localhost:{dep.ports[region]}",
        credentials_as(dep.fed, agency, region),
        options=CLIENT_OPTIONS,
    )


@dataclass(frozen=True)
class Stream:
    agency: str
    dataset: tuple[str, str]
    subjects: int  # cycle through this many (repeats: cache hits), or 0: a new one each call
    rate: float  # calls a second at most, the stream's clients together

    @property
    def name(self) -> str:
        return f"{self.agency}->{OWNER} {self.dataset[0]}"


# Below LICENCE-ZJ-2026's quota (1200 a minute: 2 x 6 a second, 720) and ZJ-SC-SI-2026's (300 a
# minute: 3 a second, 180), however long a test runs.
STREAMS = (
    Stream("sc.amr", LICENCE, 5, 6.0),
    Stream("sc.hsa", LICENCE, 5, 6.0),
    Stream("sc.hrss", SI, 0, 3.0),
)


@contextlib.asynccontextmanager
async def traffic(
    dep: Deployment, tally: Tally, streams: tuple[Stream, ...] = STREAMS
) -> AsyncIterator[asyncio.Event]:
    """Closed-loop clients (CLIENTS per stream), each on its own channel to 四川's gateway;
    stopped and awaited when the block ends (or when the event it yields is set)."""
    stop = asyncio.Event()
    cluster = dep.cluster()
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for number, stream in enumerate(streams):
            subjects = held_subjects(OWNER, stream.dataset[0], 600 if not stream.subjects else 40)
            for client in range(CLIENTS):
                channel = await stack.enter_async_context(
                    client_channel(dep, stream.agency, REQUESTER)
                )
                pool = subjects[: stream.subjects] if stream.subjects else subjects
                offset = 0 if stream.subjects else (number * CLIENTS + client) * 150
                tasks.append(
                    asyncio.create_task(
                        pump(
                            tally,
                            stream.name,
                            exchange_pb2_grpc.DataExchangeStub(channel),
                            query_maker(OWNER, *stream.dataset, pool, offset=offset),
                            bearer(cluster.token(stream.agency, lifetime=300)),
                            stop=stop,
                            timeout=CLIENT_DEADLINE,
                            rate=stream.rate / CLIENTS,  # the same rate whatever CLIENTS: quotas
                        )
                    )
                )
        try:
            yield stop
        finally:
            stop.set()
            await asyncio.gather(*tasks)


# the stores ------------------------------------------------------------------------------------
Record = tuple[str, str, str]  # (request_id, rpc, outcome)


def sqlite_records(path: Path) -> list[Record]:
    """Every record of a SQLite audit log, read-only (the gateway may be writing)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT canonical FROM audit_records ORDER BY idx").fetchall()
    finally:
        conn.close()
    found = []
    for (canonical,) in rows:
        record = json.loads(canonical)
        found.append((record["request_id"], record["rpc"], record["outcome"]))
    return found


def postgres_records(dsn: str, schema: str) -> list[Record]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT request_id, rpc, outcome FROM {}.records ORDER BY idx").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


@dataclass
class Ledger:
    """What each side's audit store holds of the tally's calls."""

    requester: list[Record]
    owner: list[Record]

    @classmethod
    async def read(cls, dep: Deployment) -> Ledger:
        def one(region: str) -> list[Record]:
            place = dep.audit[region]
            if place.sqlite is not None:
                return sqlite_records(place.sqlite)
            assert dep.pg is not None
            return postgres_records(dep.pg.dsn(), place.schema)

        requester, owner = await asyncio.gather(
            asyncio.to_thread(one, REQUESTER), asyncio.to_thread(one, OWNER)
        )
        return cls(requester, owner)

    def missing(self, answered: list[Shot]) -> tuple[list[str], list[str]]:
        """Request ids of answers without their allowed record: (on the requester, on the
        owner)."""
        mine = {
            r for r, rpc, outcome in self.requester if rpc == QUERY_RPC and outcome == "allowed"
        }
        theirs = {r for r, rpc, outcome in self.owner if rpc in OWNER_RPCS and outcome == "allowed"}
        ids = [s.request_id for s in answered]
        return [r for r in ids if r not in mine], [r for r in ids if r not in theirs]

    def released_unrecorded_as_failed(self, refused: list[Shot]) -> list[str]:
        """Refused calls whose last requester record says "allowed": an answer recorded as
        released that the client never received."""
        last: dict[str, str] = {}
        for request_id, rpc, outcome in self.requester:
            if rpc == QUERY_RPC:
                last[request_id] = outcome
        return [s.request_id for s in refused if last.get(s.request_id) == "allowed"]

    def reported(self, answered: list[Shot]) -> int:
        """Answers 浙江 knows of by 四川's access report (a hit of 四川's own cache)."""
        ids = {r for r, rpc, _ in self.owner if rpc == "/tongban.v1.Peer/ReportAccess"}
        return sum(1 for s in answered if s.request_id in ids)


async def wait_for_records(
    dep: Deployment, answered: list[Shot], timeout: float = RECORD_WAIT
) -> tuple[Ledger, float, tuple[list[str], list[str]]]:
    """Poll both stores until every answer has its records on both sides, or `timeout`;
    returns the last reading, how long it took, and what was still missing."""
    started = time.monotonic()
    while True:
        ledger = await Ledger.read(dep)
        missing = ledger.missing(answered)
        if not missing[0] and not missing[1]:
            return ledger, time.monotonic() - started, missing
        if time.monotonic() - started > timeout:
            return ledger, time.monotonic() - started, missing
        await asyncio.sleep(0.25)


# the run of one scenario -----------------------------------------------------------------------
@dataclass
class Fault:
    """How a scenario breaks the deployment and repairs it. `begin` and `end` (functions or
    coroutine functions) are called in turn, `seconds` apart; the fault's window lasts from the
    call of `begin` to the return of `end` (a process restart counts until the new process
    serves), and service must come back after it. `lost_connection`: calls ended by the loss
    of the requester's process itself (UNAVAILABLE with no status details) are expected within
    that window (and the client's reconnect backoff after it)."""

    name: str
    begin: Callable[[], Any]
    end: Callable[[], Any]
    reasons: frozenset[str]  # the ErrorInfo reasons a refusal may give
    lost_connection: bool = False
    seconds: float = FAULT_SECONDS
    own_cache_again: bool = False  # wait for 四川 to answer a repeat from its own cache again


@dataclass
class Outcome:
    tally: Tally
    windows: list[tuple[float, float]]  # (fault began, fault ended) per round
    back_after: list[float]  # per round: seconds from the fault's end to service back
    ledger: Ledger
    record_wait: float
    missing: tuple[list[str], list[str]]
    bad_codes: dict[str, int]
    exit_codes: dict[str, int]
    tracebacks: dict[str, int]
    log_lines: dict[str, int]
    start_seconds: float  # the processes' start-up
    run_seconds: float  # traffic, faults, records and the stop
    own_cache_after: list[float]  # per round: seconds until 四川 answered from its cache again
    stop_seconds: float  # the graceful stop of every process


async def _maybe(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value


async def run_scenario(dep: Deployment, fault: Fault) -> Outcome:
    """Traffic; ROUNDS times: the fault for `fault.seconds`, repaired, traffic until every
    stream was answered again (then SETTLE_SECONDS more); then the records of every answer are
    waited for on both sides, and the deployment is stopped gracefully."""
    tally = Tally(fault.name)
    dep.tally = tally
    began_scenario = time.monotonic()
    windows: list[tuple[float, float]] = []
    back_after: list[float] = []
    own_cache_after: list[float] = []
    names = {s.name for s in STREAMS}
    async with asyncio.timeout(240 if not LONG else 1200):
        async with traffic(dep, tally):
            tally.enter("up")
            await until(
                lambda: all(
                    len([s for s in tally.where(stream=stream.name) if s.ok])
                    >= CLIENTS * stream.subjects + 2
                    for stream in STREAMS
                ),
                "answers on every stream before the fault, repeats from 四川's cache among them",
            )
            for number in range(ROUNDS):
                began = time.monotonic()
                tally.enter(f"faulting {number + 1}")  # a call may be cut while `begin` runs
                try:
                    await _maybe(fault.begin())
                    tally.enter(f"fault {number + 1}")
                    await asyncio.sleep(fault.seconds)
                finally:  # repaired whatever happens: the next scenario may share a server
                    await _maybe(fault.end())
                ended = time.monotonic()
                tally.enter(f"fault {number + 1} repaired")  # service not back everywhere yet
                windows.append((began, ended))
                await until(
                    lambda ended=ended: (
                        names <= {s.stream for s in tally.shots if s.ok and s.sent >= ended}
                    ),
                    "answers on every stream after the fault",
                )
                tally.enter(f"recovered {number + 1}")
                back = max(
                    min(s.done for s in tally.shots if s.ok and s.sent >= ended and s.stream == n)
                    for n in names
                )
                back_after.append(back - ended)
                if fault.own_cache_again:
                    own_cache_after.append(await own_cache_again(dep, ended))
                await asyncio.sleep(SETTLE_SECONDS)
        bad = dep.bad_server_codes()
        answered = [s for s in tally.shots if s.ok]
        ledger, waited, missing = await wait_for_records(dep, answered)
        stopping = time.monotonic()
        # In a thread: the event loop keeps running what the test serves the gateways (a TCP
        # proxy to PostgreSQL), which a blocking wait would freeze exactly when they stop.
        exits = await asyncio.to_thread(dep.stop)
        stop_seconds = time.monotonic() - stopping
    tracebacks = {name: p.stderr().count("Traceback") for name, p in dep.gateways.items()}
    lines = {name: len(p.stderr().splitlines()) for name, p in dep.gateways.items()}
    return Outcome(
        tally,
        windows,
        back_after,
        ledger,
        waited,
        missing,
        bad,
        exits,
        tracebacks,
        lines,
        dep.start_seconds,
        time.monotonic() - began_scenario,
        own_cache_after,
        stop_seconds,
    )


async def own_cache_again(dep: Deployment, since: float) -> float:
    """Seconds from `since` until an answer sent after it came from 四川's own cache (浙江
    holds its access report); fails after RECORD_WAIT."""
    while True:
        after = [s for s in dep.tally.shots if s.ok and s.sent >= since]
        if (await Ledger.read(dep)).reported(after):
            return time.monotonic() - since
        assert time.monotonic() - since < RECORD_WAIT, (
            f"四川 answered nothing from its own cache in the {RECORD_WAIT:g} s after the fault "
            "ended (a cache that does not come back by itself)"
        )
        await asyncio.sleep(0.25)


async def until(predicate: Callable[[], bool], what: str, timeout: float = START_SECONDS) -> None:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def own_cache_text(outcome: Outcome) -> str:
    if not outcome.own_cache_after:
        return ""
    times = ", ".join(f"{t:.1f}s" for t in outcome.own_cache_after)
    return f", the first {times} after the fault ended"


def judge(outcome: Outcome, fault: Fault) -> None:
    """Print the scenario's line, then assert what every scenario must hold."""
    tally = outcome.tally
    refused = [s for s in tally.shots if not s.ok]
    by_reason = Counter(f"{s.code}/{s.reason}" for s in refused)
    answered = [s for s in tally.shots if s.ok]
    hits = sum(1 for s in answered if s.response is not None and s.response.cache_hit)
    slowest = max((s.elapsed for s in refused), default=0.0)
    after = [s for s in answered if s.sent >= outcome.windows[-1][1]]
    missing_mine, missing_theirs = outcome.missing
    tally.audit_checked = 2 * len(answered) - len(missing_mine) - len(missing_theirs)
    line = (
        f"[{fault.name}] sent {tally.sent}, answered {len(answered)} ({hits} from 四川's cache), "
        f"refused {len(refused)} ({', '.join(f'{k} {v}' for k, v in sorted(by_reason.items())) or '-'}); "
        f"records checked: 四川 {len(answered) - len(missing_mine)}/{len(answered)}, "
        f"浙江 {len(answered) - len(missing_theirs)}/{len(answered)} "
        f"({outcome.ledger.reported(answered)} by 四川's access reports: "
        f"{outcome.ledger.reported([s for s in answered if s.phase_sent == 'up'])} before the "
        f"fault, {outcome.ledger.reported(after)} after the last"
        f"{own_cache_text(outcome)}) after {outcome.record_wait:.1f}s; "
        f"slowest refusal {slowest:.2f}s; first success on every stream "
        f"{', '.join(f'{b:.2f}s' for b in outcome.back_after)} after the fault ended; "
        f"tracebacks {outcome.tracebacks}, log lines {outcome.log_lines}; processes up in "
        f"{outcome.start_seconds:.1f}s, scenario {outcome.run_seconds:.1f}s (stop "
        f"{outcome.stop_seconds:.1f}s)"
    )
    print(f"\n{line}")
    # Never UNKNOWN or INTERNAL, neither seen by a client nor counted by a gateway.
    assert not [s for s in refused if s.code in ("UNKNOWN", "INTERNAL")], line
    assert all(v == 0 for v in outcome.bad_codes.values()), (outcome.bad_codes, line)
    # Every refusal UNAVAILABLE with its reason, ended before the client's deadline.
    lost = []
    for shot in refused:
        if fault.lost_connection and (shot.code, shot.reason) == ("UNAVAILABLE", "-"):
            # sent or ended between a fault's start and the return of service on every stream
            # (phases, not clock times)
            assert shot.phase_sent.startswith("fault") or shot.phase_done.startswith("fault"), (
                f"{shot.request_id}: the connection was lost outside the fault",
                line,
            )
            lost.append(shot)
            continue
        # UNAVAILABLE with its reason: a call that outlived its deadline would have ended
        # DEADLINE_EXCEEDED instead
        assert (shot.code, shot.reason in fault.reasons) == ("UNAVAILABLE", True), (
            f"{shot.request_id}: {shot.code}/{shot.reason} after {shot.elapsed:.2f}s",
            line,
        )
    # Service came back by itself on every stream after each fault: run_scenario waited for an
    # answer on every stream (the times are printed, never asserted).
    # Nothing recorded as released that was not (a call cut by the requester's own death may
    # have been recorded before the process died with its answer).
    kept = [s for s in refused if s not in lost]
    unreleased = outcome.ledger.released_unrecorded_as_failed(kept)
    assert not unreleased, (
        f"refused, yet recorded by 四川 as answered: {unreleased[:5]}",
        [r for r in outcome.ledger.requester if r[0] in unreleased[:5]],
        line,
    )
    # Every answer a client received has its durable record on both sides: 0 lost.
    assert not missing_mine, (f"{len(missing_mine)} answers unknown to 四川's log", line)
    assert not missing_theirs, (f"{len(missing_theirs)} answers unknown to 浙江's log", line)
    # The gateways stopped gracefully, and a repeated error was not logged with a traceback
    # each time.
    assert all(code == 0 for code in outcome.exit_codes.values()), (outcome.exit_codes, line)


__all__ = [
    "BOUNDS",
    "CLIENT_DEADLINE",
    "FAULT_SECONDS",
    "LONG",
    "OWNER",
    "REQUESTER",
    "ROUNDS",
    "Deployment",
    "Fault",
    "Ledger",
    "Outcome",
    "PrivatePostgres",
    "deployment",
    "judge",
    "private_postgres",
    "run_scenario",
]
