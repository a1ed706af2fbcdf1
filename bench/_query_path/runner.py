"""The sequence of one run: the topologies started one after the other, each measured."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gateway.demo.stories import rpc_reason
from tongban.v1 import exchange_pb2_grpc

from .common import (
    AGENCY,
    BATCH_ITEMS,
    CALL_TIMEOUT,
    LICENCE_AGENCY,
    LICENCE_DATASET,
    LICENCE_PURPOSE,
    OTHER_PROVIDER,
    PROVIDER,
    REGIONS,
    REPORT_DRAIN_TIMEOUT,
    REQUESTER,
    BenchError,
    say,
)
from .cpu import pid_times
from .environment import cli_config, code_state, free_port, git_commit
from .load import DemoSubjects, Load, MissPool
from .measure import Call, Phase, Window, closed_loop, open_loop
from .processes import Child, CliGateway, Harness
from .profiles import py_spy, summarise_profile


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
        self.failed: dict[str, str] = {}  # topology key -> why it could not be measured
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
        self.commits = {"start": git_commit()}

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
        owner = self.regions[PROVIDER].pid if topology.key == "region" else None
        cpu_before = pid_times(owner) if owner is not None else None
        phase = await self.run(
            key, topology, "licence", lambda: self.load.licence_calls(self.business)
        )
        await self.drain_reports(topology, phase, owner_before)
        cpu_after = pid_times(owner) if owner is not None else None
        recorded = _owner_appended(topology.stats()) - owner_before
        if cpu_before is not None and cpu_after is not None and recorded > 0:
            phase.owner_us_per_report = (cpu_after.total - cpu_before.total) / recorded * 1e6

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
        try:
            info = child.wait_ready()
            topology = Topology("single", [child], info["gateway_ports"][REQUESTER])
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
        # The work of a query at 510000 is in the CLI's processes; 500000's (and 330000's) in
        # their per-region processes: all are measured.
        topology = Topology(key, [cli, regions[PROVIDER], regions[OTHER_PROVIDER]], port)
        try:
            cli.wait_ready()
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
                await self.apart("single", lambda: self.one_process_phases(source))
            for workers in self.args.worker_counts:
                say(f"starting `tongban gateway serve --workers {workers}` for 510000 …")
                await self.apart(f"w{workers}", lambda n=workers: self.worker_phases(n))
            await self.echo("echo_last", echo)
            self.code["end"] = code_state()
            self.commits["end"] = git_commit()
        except grpc.aio.AioRpcError as exc:
            raise BenchError(_call_failed(exc)) from exc
        except TimeoutError as exc:
            raise BenchError("a channel to a gateway did not connect in time") from exc
        finally:
            await self.load.close()

    async def apart(self, key: str, phases: Callable[[], Awaitable[None]]) -> None:
        """A topology measured after the per-region one: when it cannot start or a call outside
        its windows fails, the run goes on without it and the report shows it failed, with why
        (the echo and per-region figures do not depend on it)."""
        try:
            await phases()
        except BenchError as exc:
            self.failed[key] = str(exc)
        except grpc.aio.AioRpcError as exc:
            self.failed[key] = _call_failed(exc)
        except TimeoutError:
            self.failed[key] = "a channel to its gateway did not connect in time"
        if key in self.failed:
            say(f"  {key} FAILED: {self.failed[key]}")


def _call_failed(exc: grpc.aio.AioRpcError) -> str:
    return (
        f"a call outside the measured windows failed: {exc.code().name} "
        f"{rpc_reason(exc)}: {exc.details()}"
    )


def _owner_appended(stats: dict[str, Any]) -> int:
    appended: int = stats["gateways"].get(PROVIDER, {}).get("audit", {}).get("appended", 0)
    return appended


def _progress(key: str, phase: Phase) -> None:
    errors = f", {sum(phase.errors.values())} failed" if phase.errors else ""
    print(
        f"  {key:<22} {phase.qps:>8,.0f}/s  p99 {phase.p99_ms:6.1f} ms{errors}",
        file=sys.stderr,
        flush=True,
    )
