"""The report printed at the end of a run, from its figures (as written to --json)."""

from __future__ import annotations

from typing import Any

from .common import (
    LABELS,
    P99_TARGETS_MS,
    RATIO_TARGETS,
    REPORT_DRAIN_TIMEOUT,
    TARGETS,
    topology_title,
)
from .environment import CODE_FOLDERS
from .signing import signing_line


def _verdict(value: float, target: float, *, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return "met" if met else "NOT met"


def _row_label(key: str, p: dict[str, Any]) -> str:
    if p["topology"] == "echo":
        return f"echo process: {LABELS['echo']}, {key.removeprefix('echo_')}"
    return f"{topology_title(p['topology'])}: {LABELS[p['target']]}"


def print_report(r: dict[str, Any]) -> None:
    """The report of a run, from `results()` (or the --json file it wrote)."""
    _print_setup(r)
    _print_phases(r)
    _print_ratios(r)
    _print_workers(r)
    _print_failed(r)
    _print_open_loop(r)
    _print_requester_cache(r)
    _print_cores(r)
    line = signing_line(r)
    if line:
        print()
        print(line)
    _print_notes(r)


def _print_setup(r: dict[str, Any]) -> None:
    """The machine, the load, the messages, the registry copy and the topologies."""
    m, s = r["machine"], r["settings"]
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


def _print_phases(r: dict[str, Any]) -> None:
    """One row per closed-loop phase: rate, latency, ratio, CPU."""
    phases = r["phases"]
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


def _print_ratios(r: dict[str, Any]) -> None:
    """The ceiling, and the ratios to it by topology: of rates, of CPU per request."""
    m, s, phases = r["machine"], r["settings"], r["phases"]
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


def _print_workers(r: dict[str, Any]) -> None:
    """510000 as `tongban gateway serve --workers N`: figures and scaling."""
    m, phases = r["machine"], r["phases"]
    if r["workers"]:
        print()
        print(
            "510000 as `tongban gateway serve --workers N` (PostgreSQL audit; 500000 and 330000 "
            "per region; cores = 510000's processes):"
        )
        for n, values in sorted(r["workers"].items()):
            spread = phases.get(f"w{n}/hit", {}).get("connections", {})
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


def _print_failed(r: dict[str, Any]) -> None:
    """The topologies that could not be measured, and why: the others' figures stand."""
    failed = r.get("failed_topologies", {})
    if failed:
        print()
    for key, reason in failed.items():
        print(f"{topology_title(key)}: FAILED, not measured: {reason}")


def _print_open_loop(r: dict[str, Any]) -> None:
    """The open-loop phases at half of the maximum, against the p99 targets."""
    phases = r["phases"]
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


def _print_requester_cache(r: dict[str, Any]) -> None:
    """Whether (e) was answered by 510000 itself, and its access reports."""
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
        if seen.get("owner_us_per_report"):
            print(
                f"    500000 spent {seen['owner_us_per_report']:,.0f} µs of CPU per access it "
                "recorded (its process, from the phase's start until the reports had arrived)"
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


def _print_cores(r: dict[str, Any]) -> None:
    """Cores and counters by phase, the collector's pauses, the busiest threads."""
    phases = r["phases"]
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


def _print_notes(r: dict[str, Any]) -> None:
    """Failed calls, notes, code that changed during the run, and the profiles."""
    phases = r["phases"]
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
