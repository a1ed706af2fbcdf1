"""Issue 20's figures beside their targets, in one command, with the echo ceiling of the same run.

Run: .venv/bin/python bench/targets.py [--quick] [--seconds 8] [--warmup 3] [--workers 1,2]
                                      [--audit-seconds 3] [--verify-seconds 4] [--json FILE]
                                      [--keep DIR] [--redis URL] [--postgres DSN]

It runs the harnesses that measure them, one after the other, each as documented in
bench/README.md and each writing its figures with --json, then prints every figure of the
issue's table beside its target:

    bench/query_path.py   the echo ceiling (a bare grpc.aio server: its CPU per call and its
                          rate) and, per region (one process per gateway), the gateways' CPU per
                          call as multiples of the echo server's, the rates as ratios to the
                          ceiling, the p99 at half of the maximum load; then 510000 as
                          `tongban gateway serve --workers N` (each worker count shown measured
                          or FAILED with its reason)
    bench/audit.py        SQLite audit appends per second, 64 writers, each append durable
    bench/verify.py       SealVerifier.validate() over cryptography's bare ES256 verify (a/b)

A harness that fails leaves its rows FAILED (with its last words) and the others stand. The
CPU figures are per gateway process ("as if each region had its own machine"), so a busy
machine moves the gateway and the echo server alike. --quick is a smoke run of seconds: its
figures mean nothing. Exit 0 when every harness gave its figures, 1 otherwise. This script is
not named bench/gateway.py (the issue's name): a script of that name shadows the `gateway`
package for every script in bench/ (tests/unit/test_bench_scripts.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REQUESTER, OWNER = "510000", "500000"


@dataclass(frozen=True)
class Figure:
    """One row of the issue's table: how to read it from the harnesses' figures."""

    name: str
    source: str  # the harness: "query_path", "audit" or "verify"
    unit: str  # "x echo" (CPU multiple of the echo server's), "ratio", "ms", "records/s"
    target: float
    at_most: bool  # the target is a ceiling (CPU, latency), else a floor
    today: str  # the "today" column, for the eye


FIGURES: tuple[Figure, ...] = (
    Figure("requester CPU per two-hop hit", "query_path", "x echo", 2.5, True, "6.9x"),
    Figure("owner CPU per hit from its cache", "query_path", "x echo", 2.2, True, "5.6x"),
    Figure("requester CPU per miss", "query_path", "x echo", 3.5, True, "9.0x"),
    Figure("owner CPU per miss (incl. ES256 seal)", "query_path", "x echo", 4.5, True, "11.4x"),
    Figure("owner CPU per reported access", "query_path", "x echo", 0.4, True, "5.4x"),
    Figure("requester-scope hit, ratio to echo", "query_path", "ratio", 0.45, False, "0.13"),
    Figure("two-hop hit, ratio to echo", "query_path", "ratio", 0.30, False, "0.13"),
    Figure("two-hop miss, ratio to echo", "query_path", "ratio", 0.20, False, "0.08"),
    Figure("BatchQuery of 5 across 2 regions, ratio", "query_path", "ratio", 0.10, False, "0.03"),
    Figure("p99 at half of max load, hit", "query_path", "ms", 5.0, True, "10.9"),
    Figure("p99 at half of max load, miss", "query_path", "ms", 10.0, True, "20.3"),
    Figure("SQLite audit, 64 writers, durable", "audit", "records/s", 25_000, False, "8-11k"),
    Figure("seal validation / raw ES256 (a/b)", "verify", "ratio", 0.85, False, "0.66-0.75"),
)


def query_path_values(r: dict[str, Any]) -> dict[str, float | None]:
    """The query-path figures of FIGURES from bench/query_path.py's --json (per region)."""
    echo_us = r["echo_server_cpu_us_per_request"]
    cpu = r["gateway_cpu_us_per_request"].get("region", {})
    ratios = r["ratios"].get("region", {})

    def times_echo(target: str, gateway: str) -> float | None:
        us = cpu.get(target, {}).get(gateway)
        return us / echo_us if us and echo_us else None

    report_us = r["requester_cache"].get("region", {}).get("owner_us_per_report")
    p99 = r.get("p99_half_load_ms", {})
    return {
        "requester CPU per two-hop hit": times_echo("hit", REQUESTER),
        "owner CPU per hit from its cache": times_echo("hit", OWNER),
        "requester CPU per miss": times_echo("miss", REQUESTER),
        "owner CPU per miss (incl. ES256 seal)": times_echo("miss", OWNER),
        "owner CPU per reported access": report_us / echo_us if report_us and echo_us else None,
        "requester-scope hit, ratio to echo": ratios.get("licence"),
        "two-hop hit, ratio to echo": ratios.get("hit"),
        "two-hop miss, ratio to echo": ratios.get("miss"),
        "BatchQuery of 5 across 2 regions, ratio": ratios.get("batch"),
        "p99 at half of max load, hit": p99.get("hit"),
        "p99 at half of max load, miss": p99.get("miss"),
    }


def micro_seconds(r: dict[str, Any]) -> dict[str, float | None]:
    """The µs behind the CPU multiples, to print beside them."""
    cpu = r["gateway_cpu_us_per_request"].get("region", {})
    return {
        "requester CPU per two-hop hit": cpu.get("hit", {}).get(REQUESTER),
        "owner CPU per hit from its cache": cpu.get("hit", {}).get(OWNER),
        "requester CPU per miss": cpu.get("miss", {}).get(REQUESTER),
        "owner CPU per miss (incl. ES256 seal)": cpu.get("miss", {}).get(OWNER),
        "owner CPU per reported access": r["requester_cache"]
        .get("region", {})
        .get("owner_us_per_report"),
    }


@dataclass
class Harness:
    """One harness run: its command, and its figures or why there are none."""

    name: str
    argv: list[str]
    figures: dict[str, Any] | None = None
    failure: str = ""  # why its figures are missing (or incomplete)
    exit_code: int = 0


def harness_runs(args: argparse.Namespace, keep: Path) -> list[Harness]:
    """The three harnesses with this run's options, each writing its --json into `keep`."""
    quick = args.quick
    # --quick: 1 s windows, so that a loaded machine still answers a call of each in its window
    # --quick: 1 s windows, so that a loaded machine still answers calls of each phase in them
    seconds = args.seconds if args.seconds is not None else (1.0 if quick else 8.0)
    warmup = args.warmup if args.warmup is not None else (0.0 if quick else 3.0)
    workers = args.workers if args.workers is not None else ("" if quick else "1,2")
    load = ["--concurrency", "2", "--channels", "1"] if quick else []
    audit_s = args.audit_seconds if args.audit_seconds is not None else (0.3 if quick else 3.0)
    verify_s = args.verify_seconds if args.verify_seconds is not None else (0.1 if quick else 4.0)
    verify_extra = ["--rounds", "1", "--pool", "4"] if quick else []
    return [
        Harness("query_path", ["query_path.py", "--seconds", str(seconds), "--warmup",
                               str(warmup), *load, "--workers", workers, "--no-one-process",
                               "--redis", args.redis, "--postgres", args.postgres,
                               "--json", str(keep / "query_path.json")]),
        Harness("audit", ["audit.py", "--seconds", str(audit_s), "--stores", "sqlite",
                          "--json", str(keep / "audit.json")]),
        Harness("verify", ["verify.py", "--seconds", str(verify_s), *verify_extra,
                           "--json", str(keep / "verify.json")]),
    ]  # fmt: skip


def run_harness(harness: Harness, keep: Path) -> None:
    """Run one harness as documented (the script by its path, from the repository root); its
    output goes to `keep/NAME.out`, its progress (stderr) to this process's stderr as it comes."""
    out = keep / f"{harness.name}.out"
    json_path = Path(harness.argv[harness.argv.index("--json") + 1])
    json_path.unlink(missing_ok=True)
    print(f"targets: running bench/{' '.join(harness.argv)}", file=sys.stderr, flush=True)
    said: list[str] = []
    with out.open("w", encoding="utf-8") as stdout:
        try:
            process = subprocess.Popen(  # noqa: S603 - this repository's own benchmark scripts
                [sys.executable, f"bench/{harness.argv[0]}", *harness.argv[1:]],
                cwd=REPO,
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            harness.failure, harness.exit_code = f"could not start: {exc}", 1
            return
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                said.append(line.strip())
        harness.exit_code = process.wait()
    if json_path.is_file():
        harness.figures = json.loads(json_path.read_text(encoding="utf-8"))
    if harness.exit_code != 0:
        verdicts = [line for line in said if line.startswith("bench:")]
        last = (verdicts or said or ["no output"])[-1]
        harness.failure = f"exit code {harness.exit_code}: {last[:300]}"


def collect(harnesses: list[Harness]) -> dict[str, Any]:
    """Every figure of FIGURES with its target and verdict, the ceiling and the worker runs."""
    by_name = {h.name: h for h in harnesses}
    values: dict[str, float | None] = {}
    micros: dict[str, float | None] = {}
    qp = by_name["query_path"].figures
    if qp is not None:
        values |= query_path_values(qp)
        micros = micro_seconds(qp)
    audit = by_name["audit"].figures
    if audit is not None:
        values["SQLite audit, 64 writers, durable"] = audit["appends_per_second"].get("sqlite_64")
    verify = by_name["verify"].figures
    if verify is not None:
        values["seal validation / raw ES256 (a/b)"] = verify.get("ratio_a_b")
    rows = []
    for f in FIGURES:
        value = values.get(f.name)
        met = None if value is None else (value <= f.target if f.at_most else value >= f.target)
        rows.append(
            {"figure": f.name, "value": value, "unit": f.unit, "us": micros.get(f.name),
             "target": f.target, "at_most": f.at_most, "met": met, "today": f.today,
             "source": f.source, "failure": by_name[f.source].failure if value is None else ""}
        )  # fmt: skip
    return {
        "figures": rows,
        "ceiling": ceiling(qp),
        "workers": workers(qp),
        "requester_side": (qp or {}).get("requester_cache", {}).get("region", {}),
        "harnesses": {
            h.name: {"argv": h.argv, "exit_code": h.exit_code, "failure": h.failure}
            for h in harnesses
        },
        "notes": (qp or {}).get("notes", []),
        "code_changed": (qp or {}).get("code_changed", {}),
        "commit": (qp or {}).get("machine", {}).get("commit", ""),
        "machine": (qp or {}).get("machine", {}),
    }


def ceiling(qp: dict[str, Any] | None) -> dict[str, Any]:
    if qp is None:
        return {}
    return {
        "qps": qp["ceiling_qps"],
        "runs": qp["echo_qps"],
        "server_cpu_us_per_call": qp["echo_server_cpu_us_per_request"],
    }


def workers(qp: dict[str, Any] | None) -> dict[str, Any]:
    """Each `--workers N` topology asked for: its rates and 510000's CPU, or FAILED and why."""
    if qp is None:
        return {}
    out: dict[str, Any] = {}
    measured = qp.get("workers", {})
    for n in qp["settings"]["worker_counts"]:
        failed = qp.get("failed_topologies", {}).get(f"w{n}")
        values = measured.get(str(n), measured.get(n, {}))
        out[str(n)] = {"failed": failed, "targets": values}
    return out


def fmt_value(row: dict[str, Any]) -> str:
    value = row["value"]
    if value is None:
        return "FAILED"
    if row["unit"] == "x echo":
        us = f" ({row['us']:,.0f} µs)" if row["us"] else ""
        return f"{value:.2f}x{us}"
    if row["unit"] == "ms":
        return f"{value:.1f} ms"
    if row["unit"] == "records/s":
        return f"{value:,.0f}/s"
    return f"{value:.3f}" if row["source"] == "verify" else f"{value:.2f}"


def fmt_target(row: dict[str, Any]) -> str:
    sign = "<=" if row["at_most"] else ">="
    if row["unit"] == "x echo":
        return f"{sign} {row['target']:g}x"
    if row["unit"] == "ms":
        return f"{sign} {row['target']:g} ms"
    if row["unit"] == "records/s":
        return f"{sign} {row['target']:,.0f}/s"
    return f"{sign} {row['target']:.2f}"


def print_table(result: dict[str, Any], quick: bool) -> None:
    """The issue's table, measured: figure, this run, target, verdict, the issue's "today"."""
    c = result["ceiling"]
    m = result["machine"]
    if m:
        print(
            f"machine: {m.get('nproc', '?')} CPU(s) usable, {m.get('python', '?')}; "
            f"commit {result['commit'][:7] or '?'}"
        )
    if c:
        runs = ", ".join(f"{k.removeprefix('echo_')} {v:,.0f}" for k, v in c["runs"].items())
        print(
            f"echo ceiling (this run): {c['qps']:,.0f} calls/s (runs: {runs}); the echo server's "
            f"CPU per call {c['server_cpu_us_per_call']:,.0f} µs = 1x"
        )
    else:
        print("echo ceiling: not measured (bench/query_path.py failed)")
    if quick:
        print("QUICK RUN (--quick): a smoke test of seconds, its figures mean nothing")
    print()
    header = f"{'figure':<42} {'this run':>20} {'target':>14}  {'verdict':<8} {'issue today':>11}"
    print(header)
    print("-" * len(header))
    for row in result["figures"]:
        verdict = "-" if row["met"] is None else ("met" if row["met"] else "NOT met")
        print(
            f"{row['figure']:<42} {fmt_value(row):>20} {fmt_target(row):>14}  {verdict:<8} "
            f"{row['today']:>11}"
        )
    print_after(result)


def print_after(result: dict[str, Any]) -> None:
    """Why rows failed, whether (e) was answered by 510000, the worker runs, the notes."""
    seen = result["requester_side"]
    if seen:
        where = (
            "510000 answered repeats itself and reported them to 500000"
            if seen.get("requester_side")
            else "still answered by 500000's cache (requester-side caching not in effect)"
        )
        drained = seen.get("reports_drained_s")
        after = "" if drained is None else f"; the reports had all arrived {drained:.1f} s after"
        print(f"\nrequester-scope hit (per region): {where}{after}")
    failures = {r["source"]: r["failure"] for r in result["figures"] if r["failure"]}
    for source, why in failures.items():
        print(f"FAILED bench/{source}.py: {why}")
    for n, w in result["workers"].items():
        title = f"510000 as `tongban gateway serve --workers {n}`"
        if w["failed"]:
            print(f"{title}: FAILED, not measured: {w['failed']}")
            continue
        cells = ", ".join(
            f"{t} {v['qps']:,.0f}/s (510000 {v['requester_us_per_request']:,.0f} µs/call)"
            for t, v in w["targets"].items()
        )
        print(f"{title}: {cells or 'no figures'}")
    for note in result["notes"]:
        print(f"note: {note}")
    if result["code_changed"]:
        print("WARNING: the code changed during the run: re-run for figures of one version")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--seconds", type=float, help="query_path's window (default 8)")
    parser.add_argument("--warmup", type=float, help="query_path's warm-up (default 3)")
    parser.add_argument(
        "--workers", help="query_path's --workers (default 1,2; --quick: '' skips them)"
    )
    parser.add_argument("--audit-seconds", type=float, help="audit.py's --seconds (default 3)")
    parser.add_argument("--verify-seconds", type=float, help="verify.py's --seconds (default 4)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="for query_path")
    parser.add_argument(
        "--postgres",
        default="host=127.0.0.1 port=5432 user=postgres dbname=test",
        help="for query_path's worker runs",
    )
    parser.add_argument("--json", type=Path, help="also write the table's figures here")
    parser.add_argument(
        "--keep", type=Path, help="keep each harness's output and --json in this folder"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="tongban-targets-") as name:
        keep = args.keep or Path(name)
        keep.mkdir(parents=True, exist_ok=True)
        harnesses = harness_runs(args, keep)
        for harness in harnesses:
            run_harness(harness, keep)
        result = collect(harnesses)
    print()
    print_table(result, args.quick)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")
        print(f"figures written to {args.json}")
    incomplete = any(h.figures is None for h in harnesses) or any(
        w["failed"] for w in result["workers"].values()
    )
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
