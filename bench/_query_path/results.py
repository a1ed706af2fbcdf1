"""The figures of a run, from its phases: ratios to the ceiling, CPU per request, workers."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .common import (
    BATCH_ITEMS,
    BENCH_QUOTA,
    ECHO_RUNS,
    P99_TARGETS_MS,
    PROVIDER,
    RATIO_TARGETS,
    REQUESTER,
    WORKER_TARGETS,
)
from .environment import code_changes, machine
from .measure import Phase
from .runner import Bench


def results(args: argparse.Namespace, bench: Bench, wall: float) -> dict[str, Any]:
    phases = bench.phases
    echoes = [phases[k] for k in ECHO_RUNS if k in phases]
    ceiling = sum(p.qps for p in echoes) / len(echoes)
    echo_cpu = sum(p.server_cpu_us_per_request for p in echoes) / len(echoes)
    ratios: dict[str, dict[str, float]] = {}
    cpu_ratios: dict[str, dict[str, float]] = {}
    gateway_cpu: dict[str, dict[str, dict[str, float]]] = {}
    for key, p in phases.items():
        if p.topology == "echo" or p.mode != "closed" or "/profiled_" in key:
            continue
        ratios.setdefault(p.topology, {})[p.target] = p.qps / ceiling
        if p.server_cpu_us_per_request:
            cpu_ratios.setdefault(p.topology, {})[p.target] = echo_cpu / p.server_cpu_us_per_request
        gateway_cpu.setdefault(p.topology, {})[p.target] = per_gateway_cpu(p)
    workers = worker_figures(phases, [t for t in ratios if t.startswith("w")], gateway_cpu)
    return {
        "machine": machine(args.redis) | {"postgres_server": args.postgres_version},
        "settings": settings(args, bench),
        "ceiling_qps": ceiling,
        "echo_qps": {k: phases[k].qps for k in ECHO_RUNS if k in phases},
        "echo_server_cpu_us_per_request": echo_cpu,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "gateway_cpu_us_per_request": gateway_cpu,
        "gateway_cpu_ratios": {
            t: {
                target: {g: echo_cpu / us for g, us in by_gateway.items() if us}
                for target, by_gateway in values.items()
            }
            for t, values in gateway_cpu.items()
        },
        "ratio_targets": RATIO_TARGETS,
        "workers": workers,
        "worker_scaling": worker_scaling(workers),
        "p99_half_load_ms": {
            "hit": phases["region/hit_half"].p99_ms,
            "miss": phases["region/miss_half"].p99_ms,
        },
        "p99_targets_ms": P99_TARGETS_MS,
        "requester_cache": requester_cache(phases),
        "phases": {k: dataclasses.asdict(p) for k, p in phases.items()},
        "profiles": bench.profiles,
        "miss_pool_topped_up": bench.misses.top_ups,
        "notes": bench.notes,
        "failed_topologies": bench.failed,
        "commits": bench.commits,
        "code_changed": {
            when: changed
            for when, state in bench.code.items()
            if (changed := code_changes(bench.code["start"], state))
        },
        "wall_seconds": wall,
    }


def settings(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """How the run was made: its options, its messages' sizes, its registry copy and schemas."""
    return {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "channels": args.channels,
        "redis": args.redis,
        "one_process_redis": args.one_process_redis,
        "postgres": args.postgres if args.worker_counts else "",
        "worker_counts": args.worker_counts,
        "one_process": args.one_process,
        "run_id": bench.run_id,
        "request_bytes": bench.info["request_bytes"],
        "response_bytes": bench.info["response_bytes"],
        "jws_bytes": bench.info["jws_bytes"],
        "batch_items": sum(n for _, n in BATCH_ITEMS),
        "quota_per_minute": BENCH_QUOTA,
        "agreement_prefix": f"B{bench.run_id}-",
        "postgres_schemas": bench.info["schemas"],
    }


def worker_figures(
    phases: dict[str, Phase],
    topologies: list[str],
    gateway_cpu: dict[str, dict[str, dict[str, float]]],
) -> dict[int, dict[str, dict[str, float]]]:
    """For each N-workers topology ("w1", "w2"), by target: 510000's rate, latency and CPU."""
    workers: dict[int, dict[str, dict[str, float]]] = {}
    for t in topologies:
        workers[int(t[1:])] = {
            target: {
                "qps": phases[f"{t}/{target}"].qps,
                "p50_ms": phases[f"{t}/{target}"].p50_ms,
                "p99_ms": phases[f"{t}/{target}"].p99_ms,
                "requester_us_per_request": gateway_cpu[t][target].get(REQUESTER, 0.0),
                "requester_cores": sum(
                    c
                    for label, c in phases[f"{t}/{target}"].server_processes.items()
                    if label.startswith(REQUESTER)
                ),
            }
            for target in WORKER_TARGETS
            if f"{t}/{target}" in phases
        }
    return workers


def worker_scaling(
    workers: dict[int, dict[str, dict[str, float]]],
) -> dict[str, dict[str, float]]:
    """The rate at N workers over the rate at 1, by target ("2/1": {...}); {} without N=1."""
    scaling = {}
    if 1 in workers:
        for n, values in workers.items():
            if n != 1:
                scaling[f"{n}/1"] = {
                    t: values[t]["qps"] / workers[1][t]["qps"]
                    for t in WORKER_TARGETS
                    if t in values and t in workers[1]
                }
    return scaling


def per_gateway_cpu(p: Phase) -> dict[str, float]:
    """CPU µs per answered call spent by each gateway's process(es) alone (a region's
    workers and supervisor added up; "one process" holds all three)."""
    cores: dict[str, float] = {}
    for label, c in p.server_processes.items():
        gateway = label.split(" ")[0] if label[:1].isdigit() else label
        cores[gateway] = cores.get(gateway, 0.0) + c
    return {g: c / p.qps * 1e6 for g, c in cores.items() if p.qps and c > 0.005}


def requester_cache(phases: dict[str, Phase]) -> dict[str, Any]:
    """Did (e) reach the owner? The owner's (500000's) cache lookups per answered call: ~1 when
    every repeat still goes to 500000 (provider-side cache, as (a)); ~0 once 510000 answers
    repeats itself (requester-side cache, reported to the owner with Peer.ReportAccess)."""
    out: dict[str, Any] = {}
    for p in phases.values():
        if p.target != "licence":
            continue
        gateways = p.server.get("gateways", {})
        owner = gateways.get(PROVIDER, {}).get("cache", {})
        requester = gateways.get(REQUESTER, {}).get("cache", {})
        lookups = owner.get("hits", 0) + owner.get("misses", 0) + owner.get("coalesced", 0)
        share = lookups / p.completed_all if p.completed_all else 0.0
        out[p.topology] = {
            "answered": p.completed_all,
            "owner_audit_appended": gateways.get(PROVIDER, {}).get("audit", {}).get("appended", 0),
            "owner_cache_lookups": lookups,
            "owner_share": share,
            "requester_cache_hits": requester.get("hits", 0),
            "requester_side": share < 0.5,
            "reports_pending_at_end": p.reports_pending,
            "reports_drained_s": p.reports_drained_s,
            "owner_us_per_report": p.owner_us_per_report,
        }
    return out
