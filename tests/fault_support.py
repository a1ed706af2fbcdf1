"""Helpers for the fault-injection and rotation-under-load tests (importable as `fault_support`).

- `Tally` / `pump`: client traffic that keeps querying, paced by the clock, until told to stop,
  recording every call — when it was sent and ended, in which phase of the test, its status
  code and ErrorInfo reason, the answer — and printing the one-line report the tests assert.
- `running_gateways`: the three-region loopback cluster of `query_support.running_cluster`,
  with a hook to change each region's configuration (PostgreSQL audit) and its data system.
- `TcpProxy`: a loopback TCP proxy the test can cut (every connection closed at once, new ones
  refused) and restore, to take PostgreSQL away from a gateway without touching the server.
- `bad_server_codes`: UNKNOWN / INTERNAL statuses a gateway ended calls with (its own
  `grpc_server_handled_total`), which must stay zero whatever the fault.
- `check_audit_ids`: every audit id a client was given names a stored record of that request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from query_support import Cluster, cluster_on_free_ports
from support import Federation

from gateway.audit import AuditLog
from gateway.config import GatewayConfig
from gateway.demo.data import DemoData
from gateway.demo.federation import Configure
from gateway.server import Gateway, create_gateway
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

__all__ = [
    "BAD_CODES",
    "Shot",
    "Tally",
    "TcpProxy",
    "bad_server_codes",
    "check_audit_ids",
    "held_subjects",
    "metric_value",
    "pump",
    "query_maker",
    "reason_of",
    "records",
    "restart",
    "running_gateways",
    "wait_until",
]

BAD_CODES = ("UNKNOWN", "INTERNAL")


def reason_of(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a rich status ('-' when the status carries none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return "-"


@dataclass
class Shot:
    """One call: what was asked, when, in which phase, and how it ended."""

    stream: str  # which traffic stream (e.g. "sc.hrss->500000")
    request_id: str
    phase_sent: str
    sent: float  # time.monotonic()
    done: float = 0.0
    phase_done: str = ""
    code: str = ""  # "OK" or the status code's name
    reason: str = ""
    response: exchange_pb2.QueryResponse | None = None

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def elapsed(self) -> float:
        return self.done - self.sent


@dataclass
class Tally:
    """Every call of one test, and the phase the test is in."""

    name: str
    phase: str = "start"
    shots: list[Shot] = field(default_factory=list)
    audit_checked: int = 0
    marks: dict[str, float] = field(default_factory=dict)  # phase -> when it began

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.marks[phase] = time.monotonic()

    @property
    def sent(self) -> int:
        return len(self.shots)

    @property
    def succeeded(self) -> int:
        return sum(s.ok for s in self.shots)

    def refused(self, shots: Iterable[Shot] | None = None) -> Counter[str]:
        return Counter(
            f"{s.code}/{s.reason}" for s in (self.shots if shots is None else shots) if not s.ok
        )

    def where(self, **match: str) -> list[Shot]:
        return [s for s in self.shots if all(getattr(s, k) == v for k, v in match.items())]

    def line(self, extra: str = "") -> str:
        refused = self.refused()
        by_reason = ", ".join(f"{k} {v}" for k, v in sorted(refused.items()))
        text = (
            f"[{self.name}] sent {self.sent}, succeeded {self.succeeded}, "
            f"refused {sum(refused.values())}{f' ({by_reason})' if by_reason else ''}, "
            f"audit records checked {self.audit_checked}"
        )
        return f"{text}; {extra}" if extra else text

    def report(self, extra: str = "") -> str:
        text = self.line(extra)
        print(f"\n{text}")
        return text


Make = Callable[[int], exchange_pb2.QueryRequest]


async def pump(
    tally: Tally,
    stream: str,
    stub: exchange_pb2_grpc.DataExchangeAsyncStub | Callable[[], Any],
    make: Make,
    metadata: tuple[tuple[str, str], ...],
    *,
    stop: asyncio.Event,
    timeout: float,
    rate: float | None = None,
    limit: int | None = None,
) -> None:
    """Query until `stop` is set (or `limit` calls were made). With `rate`, a call starts at most
    `rate` times a second, paced by the clock: a stream runs for as long as the test's phase
    needs, however slowly a loaded machine answers, and a minute of it never sends more than
    60 x `rate` calls (an agreement's quota is counted per minute). A stream that fell behind (a
    slow answer) goes on from now and does not catch up in a burst. `stub` is a stub, or a
    function giving an async context manager that yields one per call (a fresh channel: a new
    TLS handshake per call)."""
    n = 0
    due = time.monotonic()
    while not stop.is_set() and (limit is None or n < limit):
        if rate is not None:
            wait = due - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set():
                    return
            due = max(due, time.monotonic()) + 1 / rate
        query = make(n)
        shot = Shot(stream, query.request_id, tally.phase, time.monotonic())
        tally.shots.append(shot)
        n += 1
        try:
            if isinstance(stub, exchange_pb2_grpc.DataExchangeStub):
                answer = await stub.Query(query, metadata=metadata, timeout=timeout)
            else:
                async with stub() as fresh:
                    answer = await fresh.Query(query, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            shot.code, shot.reason = exc.code().name, reason_of(exc)
        else:
            shot.code, shot.response = "OK", answer
        shot.done, shot.phase_done = time.monotonic(), tally.phase


def query_maker(
    provider_region: str, dataset: str, purpose: str, subjects: list[str], *, offset: int = 0
) -> Make:
    def make(n: int) -> exchange_pb2.QueryRequest:
        return exchange_pb2.QueryRequest(
            provider_region=provider_region,
            dataset=dataset,
            purpose=purpose,
            subject_id=subjects[(n + offset) % len(subjects)],
            case_id=f"CASE-2026-{n:04d}",
            request_id=f"req-{secrets.token_hex(8)}",
        )

    return make


def held_subjects(region: str, dataset: str, count: int = 40) -> list[str]:
    """Ids `region`'s demo data system holds a `dataset` record for."""
    data = DemoData(region)
    people = (
        data.businesses(count) if dataset == "market.business_licence" else data.population(count)
    )
    return [p for p in people if data.record(dataset, p) is not None]


# the cluster ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def running_gateways(
    fed: Federation,
    tmp_path: Path,
    *,
    redis_url: str = "",
    configure: Configure | None = None,
    providers: Mapping[str, grpc.aio.Server] | None = None,
    provider_ports: Mapping[str, int] | None = None,
) -> AsyncIterator[Cluster]:
    """Three gateways as `query_support.running_cluster` builds them (SQLite audit logs in
    `tmp_path`), with `configure(region, config)` applied to each configuration and, for a
    region in `providers`, that (started) server as its data system instead of the demo one."""

    def settings(region: str, config: GatewayConfig) -> GatewayConfig:
        config = dataclasses.replace(config, grace_seconds=0.2, poll_seconds=0.1)
        return config if configure is None else configure(region, config)

    async with cluster_on_free_ports(
        fed,
        snapshot_file=lambda region: fed.current,
        audit_db=lambda region: tmp_path / f"audit-{region}.db",
        redis_url=redis_url,
        provider_ports={r: (provider_ports or {})[r] for r in providers or {}},
        configure=settings,
        bind_queries=False,  # these suites query conditional data with made-up case ids
    ) as cluster:
        yield cluster


async def restart(cluster: Cluster, region: str) -> Gateway:
    """A new gateway for `region` with the configuration (and port, and audit log) of the one
    that was stopped."""
    gateway, _ = await create_gateway(cluster.gateways[region].config)
    cluster.gateways[region] = gateway
    return gateway


def bad_server_codes(gateway: Gateway) -> int:
    """Calls this gateway ended with UNKNOWN or INTERNAL (its grpc_server_handled_total)."""
    total = 0.0
    for metric in gateway.metrics.registry.collect():
        if metric.name != "grpc_server_handled":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("grpc_code") in BAD_CODES:
                total += sample.value
    return int(total)


def metric_value(gateway: Gateway, name: str, **labels: str) -> float:
    value = gateway.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


async def check_audit_ids(audit: AuditLog, shots: Iterable[Shot]) -> int:
    """Every answered shot's audit id names a stored, allowed record of that very request (in
    `audit`'s log); returns how many were checked. Raises AssertionError naming the first
    missing or mismatched one."""
    answered = [s for s in shots if s.ok and s.response is not None]
    prefix = f"{audit.origin}#"
    head = await audit.store.head()
    for shot in answered:
        audit_id = shot.response.audit_id  # type: ignore[union-attr]
        assert audit_id.startswith(prefix), audit_id
        index = int(audit_id.removeprefix(prefix))
        assert index < head.size, f"{audit_id}: beyond the log's size {head.size}"
        rows = await audit.store.rows(index, index + 1)
        assert rows, f"{audit_id} was given to a client but is not in the log"
        record = json.loads(rows[0].canonical)
        assert record["request_id"] == shot.request_id, (audit_id, record["request_id"])
        assert record["outcome"] == "allowed", (audit_id, record["outcome"])
    return len(answered)


async def records(audit: AuditLog) -> list[dict[str, Any]]:
    """Every stored record of a log, decoded (small test logs only)."""
    head = await audit.store.head()
    return [json.loads(r.canonical) for r in await audit.store.rows(0, head.size)]


# a TCP proxy that can be cut ------------------------------------------------------------------
class TcpProxy:
    """Loopback TCP proxy to `target`. `cut()` closes every connection at once and refuses new
    ones (the listening socket is closed: connection refused); `restore()` listens again on the
    same port. `freeze()` holds every byte in both directions, connections staying open and new
    ones accepted (what a client sees of a server stopped with SIGSTOP: no error, no answer);
    `thaw()` lets the held bytes through."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # accepted while up
        self.severed = 0  # open connections closed by a cut
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def start(self) -> int:
        assert self._server is None
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def restore(self) -> None:
        await self.start()

    async def cut(self) -> None:
        server, self._server = self._server, None
        assert server is not None
        server.close()  # no new connections from now on
        self.severed += len(self._open) // 2  # each connection is two sockets
        for writer in list(self._open):
            writer.transport.abort()  # RST: the peer's next read or write fails at once
        self._open.clear()
        await server.wait_closed()
        await self._settle()

    async def close(self) -> None:
        self.thaw()
        if self._server is not None:
            await self.cut()
        await self._settle()

    async def _settle(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            if self._server is None:  # cut while connecting
                up_writer.transport.abort()
                writer.transport.abort()
                return
            self.connections += 1
            self._open.update((writer, up_writer))
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], what: str, timeout: float
) -> float:
    """Poll `predicate` until true; return how long it took; fail naming `what` after `timeout`."""
    started = time.monotonic()
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
