"""bench/query_path.py's harness (issue 20): it reads every line its children write, however they
arrive, and a topology that fails leaves the others' figures printed, the failed one shown as
FAILED with its reason. Nothing here measures anything."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from _query_path.common import BenchError  # noqa: E402
from _query_path.environment import code_state, git_commit  # noqa: E402
from _query_path.measure import Phase  # noqa: E402
from _query_path.processes import CliGateway, LineReader  # noqa: E402
from _query_path.report import print_report  # noqa: E402
from _query_path.results import results  # noqa: E402
from _query_path.runner import Bench, Topology  # noqa: E402


def test_two_lines_that_arrive_together_are_both_read() -> None:
    """The defect behind "the second worker never reported listening within 120 s": a buffered
    readline() after select() kept the second of two lines that arrived in one read, unseen."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"first\nsecond\nthird")
        reader = LineReader(read_end)
        deadline = time.monotonic() + 2
        assert reader.readline(deadline) == "first\n"
        assert reader.readline(deadline) == "second\n"
        assert reader.readline(time.monotonic() + 0.05) == ""  # "third" has no newline yet
        os.write(write_end, b" part\n")
        assert reader.readline(time.monotonic() + 2) == "third part\n"
        os.close(write_end)
        write_end = -1
        assert reader.readline(time.monotonic() + 2) == ""  # the pipe ended
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def _fake_supervisor(tmp_path: Path, lines: str, *, then: str = "time.sleep(30)") -> list[str]:
    script = tmp_path / "supervisor.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.stdout.write({lines!r})
            sys.stdout.flush()
            {then}
            """
        )
    )
    return [sys.executable, str(script)]


def test_both_workers_are_seen_when_they_announce_themselves_at_once(tmp_path: Path) -> None:
    lines = (
        "Gateway 510000: starting 2 workers on 127.0.0.1:1.\n"
        "Gateway 510000 worker 2/2 (pid 4242) listening on port 1 (mutual TLS).\n"
        "Gateway 510000 worker 1/2 (pid 4241) listening on port 1 (mutual TLS).\n"
    )
    cli = CliGateway(
        tmp_path / "unused.toml", 2, {}, tmp_path / "cli.log", _fake_supervisor(tmp_path, lines)
    )
    try:
        started = time.monotonic()
        cli.wait_ready(timeout=20)
        assert cli.worker_pids == {1: 4241, 2: 4242}
        assert time.monotonic() - started < 10  # read at once, not at the deadline
    finally:
        cli.stop()


def test_a_worker_that_never_listens_is_named(tmp_path: Path) -> None:
    lines = "Gateway 510000 worker 1/2 (pid 4241) listening on port 1 (mutual TLS).\n"
    cli = CliGateway(
        tmp_path / "unused.toml", 2, {}, tmp_path / "cli.log", _fake_supervisor(tmp_path, lines)
    )
    try:
        with pytest.raises(BenchError, match=r"did not start in 1 s \(workers \[2\] had not"):
            cli.wait_ready(timeout=1)
    finally:
        cli.stop()


def test_a_supervisor_that_exits_says_so(tmp_path: Path) -> None:
    command = _fake_supervisor(tmp_path, "starting\n", then="sys.exit(3)")
    cli = CliGateway(tmp_path / "unused.toml", 2, {}, tmp_path / "cli.log", command)
    try:
        with pytest.raises(BenchError, match="exited with 3"):
            cli.wait_ready(timeout=20)
    finally:
        cli.stop()


def _phase(topology: str, target: str, qps: float, **extra: Any) -> Phase:
    label = "echo" if topology == "echo" else "510000"
    cores = {label: 0.5} if topology == "echo" else {"510000": 0.6, "500000": 0.4}
    return Phase(
        topology=topology, target=target, mode=extra.pop("mode", "closed"), seconds=1.0,
        completed=int(qps), completed_all=int(qps), qps=qps, p50_ms=1.0, p95_ms=2.0,
        p99_ms=3.0, mean_ms=1.0, max_ms=4.0, errors={}, server_cpu=sum(cores.values()),
        client_cpu=0.3, server_cpu_us_per_request=sum(cores.values()) / qps * 1e6,
        services_cpu=0.1, idle_cpu=0.0, other_cpu=0.0, server_system_share=0.2,
        server_processes=cores, server_threads={}, **extra,
    )  # fmt: skip


def _bench_with_a_failing_topology() -> Bench:
    """A Bench whose topologies are stand-ins (no process started): the per-region topology and
    `--workers 1` give figures, `--workers 2` fails to start as it did in the outside run."""
    bench = Bench.__new__(Bench)
    bench.args = argparse.Namespace(
        one_process=False, worker_counts=[1, 2], redis="redis://127.0.0.1:1/0", seconds=1.0,
        warmup=0.0, concurrency=1, channels=1, one_process_redis="", postgres="",
        postgres_version="", profile=None,
    )  # fmt: skip
    bench.run_id, bench.phases, bench.failed, bench.notes, bench.profiles = "f00", {}, {}, [], {}
    bench.code, bench.commits = {"start": code_state()}, {"start": git_commit()}
    bench.info = {"schemas": [], "request_bytes": 100, "response_bytes": 3000, "jws_bytes": 2700}
    bench.misses = SimpleNamespace(top_ups=0)

    async def close() -> None:
        return None

    bench.load = SimpleNamespace(close=close)

    async def start_regions(source: Path) -> Topology:
        return Topology("region", [], 1)

    async def start_echo() -> Topology:
        return Topology("echo", [], 2)

    async def echo(key: str, topology: Topology) -> None:
        bench.phases[key] = _phase("echo", "echo", 1000.0)

    async def region_phases(topology: Topology) -> None:
        for target, qps in (("hit", 130.0), ("miss", 80.0), ("batch", 30.0), ("verify", 470.0)):
            bench.phases[f"region/{target}"] = _phase("region", target, qps)
        for target in ("hit", "miss"):
            bench.phases[f"region/{target}_half"] = _phase(
                "region", target, 50.0, mode="open", offered_rate=50.0
            )
        bench.phases["region/licence"] = _phase("region", "licence", 130.0)

    async def worker_phases(workers: int) -> None:
        if workers == 2:
            raise BenchError(
                "`tongban gateway serve --workers 2` did not start in 120 s (workers [2] had "
                "not said they listen)"
            )
        for target, qps in (("hit", 110.0), ("miss", 70.0), ("verify", 400.0)):
            bench.phases[f"w1/{target}"] = _phase("w1", target, qps)

    bench.start_regions = start_regions  # type: ignore[method-assign]
    bench.start_echo = start_echo  # type: ignore[method-assign]
    bench.echo = echo  # type: ignore[method-assign]
    bench.region_phases = region_phases  # type: ignore[method-assign]
    bench.worker_phases = worker_phases  # type: ignore[method-assign]
    return bench


def test_a_failed_topology_is_reported_and_the_others_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = _bench_with_a_failing_topology()
    asyncio.run(bench.measure(Path("unused")))
    assert set(bench.failed) == {"w2"}
    assert "echo_last" in bench.phases  # the run went on after the failed topology
    report = results(bench.args, bench, 1.0)
    assert report["failed_topologies"] == bench.failed
    print_report(report)
    out = capsys.readouterr().out
    assert "510000 x2 workers: FAILED, not measured: `tongban gateway serve --workers 2`" in out
    assert "per region: (a) Query, cache hit" in out  # the others' tables are printed
    assert "510000 x1 worker: (a) Query, cache hit" in out
    assert "N=1" in out
    assert "N=2" not in out
