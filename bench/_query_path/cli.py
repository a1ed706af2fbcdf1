"""The command line: options, the run from start to end, and the child roles."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from gateway.demo.federation import DemoError, build_pki

from .children import child_main
from .common import DEFAULT_POSTGRES, DEFAULT_REDIS, BenchError, say
from .environment import bench_source, check_postgres, check_redis, other_database
from .processes import Harness
from .report import print_report
from .results import results
from .runner import Bench
from .signing import request_signing


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


def main(argv: list[str] | None = None, *, description: str = "") -> int:
    parser = build_parser(description)
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


def build_parser(description: str) -> argparse.ArgumentParser:
    """The options of bench/query_path.py, and the internal ones of its child processes."""
    parser = argparse.ArgumentParser(description=description)
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
    # Internal: the child processes are bench/query_path.py again, with --role.
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
    return parser


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
        say("measuring request signing …")
        report["request_signing"] = request_signing(folder)
    print()
    print_report(report)
    print(f"\nwhole run: {report['wall_seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
        print(f"results written to {args.json}")
    if report["failed_topologies"]:
        print(
            f"bench: {', '.join(report['failed_topologies'])} could not be measured (see above)",
            file=sys.stderr,
        )
    failed = {k: sum(p["errors"].values()) for k, p in report["phases"].items() if p["errors"]}
    if failed:
        print(f"bench: calls failed ({failed}): the figures are not valid", file=sys.stderr)
        return 1
    return 1 if report["failed_topologies"] else 0
