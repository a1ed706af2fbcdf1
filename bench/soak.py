"""Soak: what a long-running gateway holds after thousands of registry versions under load.

    .venv/bin/python bench/soak.py                    # 3,000 versions, a few minutes
    .venv/bin/python bench/soak.py --versions 20000 --seconds 1800 --json out/soak.json

It starts the demo's three gateways and data systems in this process (`gateway.demo.federation`'s
`start_federation`: real mutual TLS on loopback, SQLite audit logs; Redis only with
`--redis URL`), then, at the same time:

- publishes `--versions` registry versions, signed by the registry authority and offered to
  each gateway's store as a registry source would (every `--reload-tls-every` versions each
  gateway also reloads its TLS pair, as on SIGHUP, which replaces every peer channel);
- runs a closed-loop client load of `--concurrency` callers (四川人社 asking 重庆 for
  social-insurance records, hits and misses; 四川市场监管 asking for business licences, which
  the requesting gateway answers from its own cache and reports to the owner; seal checks).

It samples the process's resident memory (VmRSS), open file descriptors, asyncio tasks,
threads, and the gateways' peer channels (live, draining, closing) once the first `--warmup`
versions are applied and again after the last one, each time with the callers held between
two calls and the queued access reports sent (so that both count what is held, not what is on
its way), prints a table, and exits 1 when anything grew beyond its tolerance or a call failed
(0 when flat, 2 when it cannot run). The load stops by itself after the last version (and
after at least `--seconds`). bench/README.md explains the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import grpc

# Run as a script, this file's folder (bench/) comes first on sys.path, where a module may
# shadow a package of the project (bench/gateway.py did): take bench/ out.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gateway.demo.federation import (  # noqa: E402 - after the sys.path fix above
    DemoOptions,
    Federation,
    build_pki,
    start_federation,
    stop_federation,
)
from gateway.demo.stories import query, rpc_reason  # noqa: E402
from registry import build_registry, load_source, sign_snapshot  # noqa: E402
from signer import load_private_key  # noqa: E402
from tongban.v1 import credentials_pb2, credentials_pb2_grpc, exchange_pb2_grpc  # noqa: E402

REPO: Final = Path(__file__).resolve().parents[1]
SOURCE: Final = REPO / "conf" / "registry"
SOAK_QUOTA: Final = 100_000_000  # quota_per_minute in the soak's registry copy
CALL_TIMEOUT: Final = 10.0  # seconds
TOKEN_SECONDS: Final = 240  # a caller takes a new token this often (tokens live 300 s)

# (agency, provider region, dataset, purpose): what the callers ask, in turn.
ASKS: Final = (
    ("sc.hrss", "500000", "si.participation", "SI-TRANSFER"),
    ("sc.hrss", "500000", "si.participation", "SI-TRANSFER"),
    ("sc.hrss", "330000", "si.participation", "SI-TRANSFER"),
    ("sc.amr", "500000", "market.business_licence", "LICENCE-VERIFY"),
)


class SoakError(Exception):
    """The soak cannot run; the message says why (one line)."""


@dataclass(frozen=True)
class Sample:
    at_version: int
    rss_kib: int
    fds: int
    tasks: int
    threads: int
    channels: int  # peer channels, live and draining, over the three gateways
    objects: int  # objects the garbage collector tracks
    task_kinds: dict[str, int]  # asyncio tasks by coroutine

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024


@dataclass
class Load:
    calls: Counter[str] = dataclasses.field(default_factory=Counter)  # by outcome
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    going: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # cleared: hold
    in_flight: int = 0

    async def quiet(self, fed: Federation) -> None:
        """Hold the callers once their calls are answered, send the access reports queued
        for them, and let the servers' tasks end: a sample then counts what is held, not what
        is on its way."""
        self.going.clear()
        while self.in_flight:
            await asyncio.sleep(0.01)
        for gateway in fed.gateways.values():
            if gateway.query_path is not None and gateway.query_path.reporter is not None:
                await gateway.query_path.reporter.flush()
        await asyncio.sleep(0.3)


def soak_source(folder: Path, run_id: str) -> Path:
    """A copy of conf/registry whose quotas the load cannot use up, agreement ids prefixed with
    `run_id` (quota counters in a shared Redis never touch the real agreements')."""
    target = folder / "source"
    shutil.copytree(SOURCE, target)
    agreements = target / "agreements.toml"
    text = agreements.read_text(encoding="utf-8")
    text, renamed = re.subn(
        r"^\[agreements\.([A-Za-z0-9._-]+)\]", rf"[agreements.S{run_id}-\1]", text, flags=re.M
    )
    text, raised = re.subn(
        r"^quota_per_minute\s*=\s*\d+", f"quota_per_minute = {SOAK_QUOTA}", text, flags=re.M
    )
    if not renamed or raised != renamed:
        raise SoakError(f"{agreements}: expected one quota_per_minute per agreement")
    agreements.write_text(text, encoding="utf-8")
    return target


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise SoakError(f"/proc/self/status has no {field}")


SNAPSHOTS: list[tracemalloc.Snapshot] = []  # with --tracemalloc: one per sample


def sample(fed: Federation, version: int) -> Sample:
    gc.collect()
    if tracemalloc.is_tracing():
        SNAPSHOTS.append(tracemalloc.take_snapshot())
    channels = 0
    for gateway in fed.gateways.values():
        if gateway.peers is not None:
            channels += gateway.peers.live + gateway.peers.draining + gateway.peers.closing
    return Sample(
        at_version=version,
        rss_kib=_status_kib("VmRSS"),
        fds=len(os.listdir("/proc/self/fd")),
        tasks=len(asyncio.all_tasks()),
        threads=threading.active_count(),
        channels=channels,
        objects=len(gc.get_objects()),
        task_kinds=dict(Counter(_task_kind(t) for t in asyncio.all_tasks())),
    )


def _task_kind(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or type(coro).__name__


async def caller(fed: Federation, load: Load, number: int, subjects: dict[str, list[str]]) -> None:
    """One closed-loop caller: the next call as soon as the last one is answered."""
    agencies = {agency for agency, *_ in ASKS}
    async with contextlib.AsyncExitStack() as stack:
        stubs = {}
        for agency in sorted(agencies):
            channel = await stack.enter_async_context(fed.channel(agency))
            stubs[agency] = (
                exchange_pb2_grpc.DataExchangeStub(channel),
                credentials_pb2_grpc.CredentialsStub(channel),
            )
        tokens: dict[str, tuple[float, Any]] = {}
        n = number
        while not load.stop.is_set():
            agency, provider, dataset, purpose = ASKS[n % len(ASKS)]
            pool = subjects[f"{provider}/{dataset}"]
            subject = pool[(n * 7) % len(pool)]
            n += 1
            issued, metadata = tokens.get(agency, (0.0, None))
            if metadata is None or time.monotonic() - issued > TOKEN_SECONDS:
                metadata = fed.token(agency)
                tokens[agency] = (time.monotonic(), metadata)
            exchange, credentials = stubs[agency]
            await load.going.wait()
            if load.stop.is_set():
                break
            load.in_flight += 1
            try:
                answer = await exchange.Query(
                    query(provider, dataset, purpose, subject),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT,
                )
                load.calls["hit" if answer.cache_hit else "miss"] += 1
                if n % 10 == 0:
                    report = await credentials.Verify(
                        credentials_pb2.VerifyRequest(jws=answer.record.jws), timeout=CALL_TIMEOUT
                    )
                    passed = report.indication == credentials_pb2.TOTAL_PASSED
                    load.calls["verify" if passed else "verify failed"] += 1
            except grpc.aio.AioRpcError as exc:
                load.calls[f"{exc.code().name} {rpc_reason(exc)}"] += 1
            finally:
                load.in_flight -= 1


async def publisher(
    fed: Federation,
    args: argparse.Namespace,
    on_version: Any,
) -> None:
    """Sign and offer versions 2.. (the demo published 1) to every gateway's store."""
    source = load_source(fed.source)
    # Two of the dev root's three authority keys: its threshold.
    authorities = [
        load_private_key(fed.pki / "authority" / f"{n}.key") for n in ("national", "province-1")
    ]
    now = datetime.now(UTC)
    base = build_registry(source, fed.pki, version=1, issued_at=now)
    lifetime = base.expires_at - base.issued_at
    first = max(g.store.status().version or 0 for g in fed.gateways.values()) + 1
    for version in range(first, first + args.versions):
        issued = datetime.now(UTC) - timedelta(seconds=1)
        registry = dataclasses.replace(
            base, version=version, issued_at=issued, expires_at=issued + lifetime
        )
        snapshot = sign_snapshot(registry, *authorities)  # type: ignore[arg-type]
        for gateway in fed.gateways.values():
            gateway.store.offer(snapshot.jws)
        if args.reload_tls_every and version % args.reload_tls_every == 0:
            for gateway in fed.gateways.values():
                gateway.reload_tls(gateway.config)  # as on SIGHUP: every peer channel is replaced
        await on_version(version - first + 1, version)
        await asyncio.sleep(args.pause)


async def soak(args: argparse.Namespace, folder: Path) -> int:
    run_id = secrets.token_hex(3)
    source = soak_source(folder, run_id)
    build_pki(folder, source)
    fed = Federation(folder=folder, source=source)
    # the soak queries conditional data with made-up case ids: cases do not bind them
    options = DemoOptions(source=source, folder=folder, redis_url=args.redis, bind_queries=False)
    await start_federation(fed, options, run_id)
    args.peer_pairs = len(fed.gateways) * (len(fed.gateways) - 1)
    load = Load()
    samples: list[Sample] = []
    trend: list[Sample] = []
    started = time.monotonic()
    try:
        subjects = {f"{p}/{d}": fed.citizens(p, d, args.subjects) for _, p, d, _ in ASKS}
        load.going.set()
        callers = [
            asyncio.create_task(caller(fed, load, i, subjects), name=f"soak-caller-{i}")
            for i in range(args.concurrency)
        ]
        warmup = min(args.warmup, max(args.versions - 1, 0))
        every = max(args.versions // 10, 1)

        async def on_version(done: int, version: int) -> None:
            if done == warmup:
                await load.quiet(fed)
                samples.append(sample(fed, version))
                load.going.set()
            if done % every == 0 or done == args.versions:
                trend.append(sample(fed, version))
                s = trend[-1]
                print(
                    f"  v{version:>6}  {time.monotonic() - started:6.0f} s  rss {s.rss_mib:7.1f} MiB"
                    f"  fds {s.fds:4}  tasks {s.tasks:4}  threads {s.threads:3}  channels "
                    f"{s.channels:3}  calls {sum(load.calls.values()):,}",
                    flush=True,
                )

        await publisher(fed, args, on_version)
        while time.monotonic() - started < args.seconds:
            await asyncio.sleep(1)
        await asyncio.sleep(args.settle)  # replaced channels drain; the load goes on
        await load.quiet(fed)
        samples.append(
            sample(fed, max(g.store.status().version or 0 for g in fed.gateways.values()))
        )
        load.stop.set()
        load.going.set()
        await asyncio.gather(*callers, return_exceptions=True)
    finally:
        load.stop.set()
        load.going.set()
        await stop_federation(fed, options)
    return report(args, samples, load, time.monotonic() - started)


LIMITS: Final = (
    # (what, attribute, unit, option)
    ("resident memory", "rss_mib", "MiB", "rss_mib"),
    ("open file descriptors", "fds", "", "fds"),
    ("asyncio tasks", "tasks", "", "tasks"),
    ("threads", "threads", "", "threads"),
    # at most one live channel per (gateway, peer region); none draining once calls are over
    ("peer channels", "channels", "", "peer_pairs"),
)


def report(args: argparse.Namespace, samples: list[Sample], load: Load, seconds: float) -> int:
    start, end = samples[0], samples[-1]
    calls = sum(load.calls.values())
    print()
    print(
        f"{args.versions:,} registry versions in {seconds:.0f} s, {calls:,} calls "
        f"({calls / max(seconds, 1e-9):.0f}/s): "
        + ", ".join(f"{k} {v:,}" for k, v in load.calls.most_common())
    )
    print(f"start: after version {start.at_version} (warm-up); end: after version {end.at_version}")
    print()
    print(f"{'':24}{'start':>10}{'end':>10}{'growth':>10}{'limit':>10}  verdict")
    # the limit is on the growth, except for peer channels: at most one per gateway and peer
    grew = []
    rows = []
    for what, attribute, unit, option in LIMITS:
        a, b = getattr(start, attribute), getattr(end, attribute)
        if option == "peer_pairs":
            limit = args.peer_pairs
            ok = b <= limit  # an absolute bound: a channel may open or close between samples
        else:
            limit = getattr(args, f"max_{option}")
            ok = b - a <= limit
        if not ok:
            grew.append(what)
        fmt = "{:>10.1f}" if unit else "{:>10}"
        print(
            f"{what + (' (' + unit + ')' if unit else ''):24}"
            + fmt.format(a)
            + fmt.format(b)
            + fmt.format(b - a)
            + fmt.format(limit)
            + f"  {'flat' if ok else 'GREW'}"
        )
        rows.append({"what": what, "start": a, "end": b, "limit": limit, "ok": ok})
    print(
        f"{'gc-tracked objects':24}{start.objects:>10}{end.objects:>10}{end.objects - start.objects:>10}"
    )
    kinds = Counter(end.task_kinds)
    kinds.subtract(start.task_kinds)
    if any(kinds.values()):
        print(
            "asyncio tasks by coroutine, end - start: "
            + ", ".join(f"{k} {v:+}" for k, v in sorted(kinds.items()) if v)
        )
    if len(SNAPSHOTS) >= 2 and args.tracemalloc:
        print(f"Python allocations that grew most between the samples (top {args.tracemalloc}):")
        for stat in SNAPSHOTS[-1].compare_to(SNAPSHOTS[0], "lineno")[: args.tracemalloc]:
            print(f"  {stat}")
    errors = {k: v for k, v in load.calls.items() if k not in ("hit", "miss", "verify")}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "versions": args.versions,
                    "seconds": seconds,
                    "calls": dict(load.calls),
                    "start": dataclasses.asdict(start),
                    "end": dataclasses.asdict(end),
                    "rows": rows,
                },
                indent=2,
            )
        )
    print()
    if grew:
        print(f"soak: GREW: {', '.join(grew)}")
        return 1
    if calls == 0 or errors:
        print(f"soak: flat, but calls failed: {errors or 'no call was answered'}")
        return 1
    print("soak: flat")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--versions", type=int, default=3000, help="registry versions to publish")
    parser.add_argument(
        "--seconds", type=float, default=0, help="run the load at least this long (default 0)"
    )
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between versions")
    parser.add_argument("--concurrency", type=int, default=8, help="callers (closed loop)")
    parser.add_argument("--subjects", type=int, default=30, help="subjects asked about per dataset")
    parser.add_argument("--warmup", type=int, default=300, help="versions before the first sample")
    parser.add_argument(
        "--reload-tls-every", type=int, default=100, help="versions between TLS reloads (0: none)"
    )
    parser.add_argument(
        "--settle", type=float, default=12.0, help="seconds of load after the last version"
    )
    parser.add_argument("--redis", default="", help="Redis URL (default: in-memory backends)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="N",
        help="trace Python allocations (slower) and print the N lines whose memory grew most",
    )
    parser.add_argument("--max-rss-mib", type=float, default=48.0)
    parser.add_argument("--max-fds", type=int, default=16)
    parser.add_argument("--max-tasks", type=int, default=16)
    parser.add_argument("--max-threads", type=int, default=4)
    args = parser.parse_args(argv)
    if args.versions < 2:
        parser.error("--versions is at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.tracemalloc:
        tracemalloc.start(1)
    with tempfile.TemporaryDirectory(prefix="tongban-soak-") as name:
        try:
            return asyncio.run(soak(args, Path(name)))
        except SoakError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
