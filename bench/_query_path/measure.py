"""Measuring: a window that counts calls and samples CPU at its edges, and the closed and open
loops that drive the calls."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from gateway.demo.stories import rpc_reason

from .common import OPEN_LOOP_MAX_IN_FLIGHT
from .cpu import TICKS, PidTimes, machine_busy, pid_times, service_ticks

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
    # (e), per region: 500000's CPU µs per access it recorded, from the phase's start until the
    # reports were drained (None: the owner shares its process, or recorded nothing)
    owner_us_per_report: float | None = None
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
