"""The child process roles (this benchmark's script again, with --role): everything the client
process measures runs in one of these."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from gateway.demo.federation import (
    DemoError,
    DemoOptions,
    Federation,
    Loopback,
    demo_settings,
    start_federation,
    start_regions,
    stop_federation,
)
from gateway.demo.stories import rpc_reason
from gateway.server import Gateway, freeze_startup_heap
from registry import CURRENT_SNAPSHOT

from .common import ECHO_SERVICE, REGIONS, REQUESTER, BenchError
from .environment import region_root, tls_pair


async def _start_echo(pki: Path, answer: bytes) -> tuple[grpc.aio.Server, int]:
    """The ceiling: a grpc.aio server with no interceptor and no work, over the same mutual TLS
    as gateway 510000 (its certificate; client certificates of any demo region required). It
    returns `answer` without parsing the request (the bytes go through unserialised)."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return answer

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    chain, key = tls_pair(pki, REQUESTER)
    roots = b"".join(region_root(pki, region) for region in REGIONS)
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=roots, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


class GcPauses:
    """The garbage collector's pauses in a child process, by generation (`gc.callbacks`).
    `snapshot()` gives counts and total time so far, and the longest pause since the last
    snapshot (the client process takes one before and after each phase)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.total_us = [0, 0, 0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        took = time.perf_counter() - self._started
        self.collections[generation] += 1
        self.total_us[generation] += int(took * 1e6)
        self.longest_ms[generation] = max(self.longest_ms[generation], took * 1e3)

    def snapshot(self) -> dict[str, dict[str, float]]:
        out = {
            f"gen{g}": {
                "collections": self.collections[g],
                "total_us": self.total_us[g],
                "longest_ms": round(self.longest_ms[g], 3),
            }
            for g in range(3)
        }
        self.longest_ms = [0.0, 0.0, 0.0]
        return out


def _gateway_stats(gateway: Gateway) -> dict[str, Any]:
    """A gateway's answers from cache or not, and how many audit records each durable commit
    carried (the group-commit factor)."""
    entry: dict[str, Any] = {}
    if gateway.query_path is not None:
        entry["cache"] = dataclasses.asdict(gateway.query_path.cache.counters)
    if gateway.audit is not None:
        store = gateway.audit.store
        entry["audit"] = {
            name: getattr(store, name)
            for name in ("appended", "commits", "largest_batch")
            if isinstance(getattr(store, name, None), int)
        }
    return entry


def _emit(message: dict[str, Any]) -> None:
    """One JSON line to the client process (stdout is reserved for these)."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _answer_commands(stats: Callable[[], dict[str, Any]]) -> None:
    """Commands from the client process, one a line: "stats" or "stop" (EOF stops too)."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "stats":
            return
        _emit(stats())


async def _serve_one_process(folder: Path, source: Path, redis_url: str, label: str) -> None:
    """--role one-process: the three demo gateways and data systems in this one process."""
    fed = Federation(folder=folder, source=source)
    # the bench queries conditional data with made-up case ids: cases do not bind them
    options = DemoOptions(source=source, folder=folder, redis_url=redis_url, bind_queries=False)
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        await start_federation(fed, options, secrets.token_hex(3))
        freeze_startup_heap()  # as `tongban gateway serve` does once its gateway has started
        _emit({"ready": True, "gateway_ports": {r: g.port for r, g in fed.gateways.items()}})
        await _answer_commands(
            lambda: {
                "gateways": {r: _gateway_stats(g) for r, g in fed.gateways.items()},
                "gc": {label: pauses.snapshot()},
            }
        )
    finally:
        await stop_federation(fed, options)


async def _serve_region(
    folder: Path, redis_url: str, region: str, ports: dict[str, int], label: str
) -> None:
    """--role region: one region's gateway and its demo data system, in this process, its
    peers at the given ports (each in its own process): what `start_federation` does for one
    region, with a SQLite audit log of its own."""
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    home = folder / f"region-{region}"
    home.mkdir(exist_ok=True)
    loopback = Loopback(dict(ports))
    try:
        await start_regions(
            loopback,
            folder / "pki",
            regions=[region],
            snapshot_file=lambda _: folder / "published" / CURRENT_SNAPSHOT,
            audit_db=lambda _: home / f"audit-{region}.db",
            redis_url=redis_url,
            configure=demo_settings,  # as start_federation configures each demo gateway
            bind_queries=False,  # as the bench's federation (made-up case ids)
        )
        freeze_startup_heap()
        running = loopback.gateways[region]
        _emit(
            {
                "ready": True,
                "gateway_port": running.port,
                "provider_port": loopback.providers[region][1],
            }
        )
        await _answer_commands(
            lambda: {
                "gateways": {region: _gateway_stats(running)},
                "gc": {label: pauses.snapshot()},
            }
        )
    finally:
        await loopback.stop(0.5)


async def _serve_echo(pki: Path, answer_file: Path) -> None:
    """--role echo: the ceiling, alone in this process."""
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    server, port = await _start_echo(pki, answer_file.read_bytes())
    try:
        freeze_startup_heap()
        _emit({"ready": True, "echo_port": port})
        await _answer_commands(lambda: {"gateways": {}, "gc": {"echo": pauses.snapshot()}})
    finally:
        await server.stop(0.5)


def child_main(args: argparse.Namespace) -> int:
    """The child process roles: everything the client process measures runs in one of these."""
    try:
        if args.role == "one-process":
            asyncio.run(_serve_one_process(args.folder, args.source, args.redis, args.label))
        elif args.role == "region":
            ports = {k: int(v) for k, v in (p.split("=") for p in args.ports.split(","))}
            asyncio.run(_serve_region(args.folder, args.redis, args.region, ports, args.label))
        else:
            asyncio.run(_serve_echo(args.folder / "pki", args.answer))
    except (BenchError, DemoError, OSError, grpc.aio.AioRpcError) as exc:
        message = (
            f"{exc.code().name} {rpc_reason(exc)}: {exc.details()}"
            if isinstance(exc, grpc.aio.AioRpcError)
            else str(exc)
        )
        _emit({"error": f"{type(exc).__name__}: {message}"})
        return 1
    except Exception as exc:  # unexpected: the traceback goes to the child's log
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        raise
    return 0
