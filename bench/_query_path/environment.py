"""What the run stands on: its copy of the registry, the dev PKI's TLS keys, Redis, PostgreSQL,
the machine and the checked-out code, and the configuration of `tongban gateway serve`."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import grpc
import redis
from google.protobuf import __version__ as protobuf_version

from gateway._ports import free_loopback_port
from gateway.demo.pki import DEV_CACHE_KEY, DEV_PSEUDONYM_KEY
from registry import CURRENT_SNAPSHOT, Inventory, KeyState, KeyUsage

from .common import BENCH_QUOTA, REPO, REQUESTER, SOURCE, BenchError, one_line


def bench_source(folder: Path, run_id: str) -> Path:
    """A copy of conf/registry whose agreements allow BENCH_QUOTA queries a minute, their ids
    prefixed with `run_id`: quota counters live in Redis per agreement id and minute, and this
    run must neither be refused by the real quotas nor use them up for anyone else."""
    target = folder / "source"
    shutil.copytree(SOURCE, target)
    agreements = target / "agreements.toml"
    text = agreements.read_text(encoding="utf-8")
    text, renamed = re.subn(
        r"^\[agreements\.([A-Za-z0-9._-]+)\]", rf"[agreements.B{run_id}-\1]", text, flags=re.M
    )
    text, raised = re.subn(
        r"^quota_per_minute\s*=\s*\d+", f"quota_per_minute = {BENCH_QUOTA}", text, flags=re.M
    )
    if not renamed or raised != renamed:
        raise BenchError(f"{agreements}: expected one quota_per_minute per agreement")
    agreements.write_text(text, encoding="utf-8")
    return target


def tls_pair(pki: Path, owner: str) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM) of `owner`'s active TLS key in the dev PKI."""
    records = Inventory.load(pki).find(owner, KeyUsage.TLS, KeyState.ACTIVE)
    if not records:
        raise BenchError(f"{pki}: {owner} has no active TLS key")
    record = records[-1]
    return (pki / record.certificate).read_bytes(), (pki / record.private_key).read_bytes()


def region_root(pki: Path, region: str) -> bytes:
    return (pki / "regions" / region / "ca" / "root.pem").read_bytes()


def machine(redis_url: str) -> dict[str, Any]:
    import cryptography
    import redis as redis_py

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu": model,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "redis_py": redis_py.__version__,
        "cryptography": cryptography.__version__,
        "sqlite": sqlite3.sqlite_version,
        "commit": git_commit(),
    }
    with contextlib.suppress(redis.RedisError, OSError):
        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        info["redis_server"] = client.info("server").get("redis_version", "?")
        client.close()
    return info


def git_commit() -> str:
    """The checked-out commit, read from .git without running git ("" when unknown). In a
    worktree .git is a file naming the worktree's folder, whose `commondir` holds the refs."""
    git = common = REPO / ".git"
    with contextlib.suppress(OSError):
        if git.is_file():
            git = REPO / git.read_text().strip().removeprefix("gitdir: ")
            shared = git / "commondir"
            common = git / shared.read_text().strip() if shared.exists() else git
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        for folder in (git, common):
            if (folder / ref).exists():
                return (folder / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    return ""


CODE_FOLDERS: Final = ("gateway", "signer", "registry", "proto/tongban")


def code_state() -> dict[str, tuple[int, int]]:
    """(size, mtime) of every Python file the gateways run: a child process started after one
    of them changed runs other code than one started before (other people edit meanwhile)."""
    state: dict[str, tuple[int, int]] = {}
    for folder in CODE_FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                state[str(path.relative_to(REPO))] = (stat.st_size, stat.st_mtime_ns)
    return state


def code_changes(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def check_redis(url: str) -> None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BenchError(
            f"Redis at {url} is not reachable ({type(exc).__name__}: {one_line(exc)}); "
            "start it or give --redis URL"
        ) from exc


def other_database(url: str) -> str:
    """The same Redis, the next logical database (mod 16): the one-process topology's gateways
    must not share state with the per-region ones. A 510000 sharing their Redis would be their
    replica: it would share the queue of access reports (one stream per region and cache key,
    delivered by any replica), and the idle per-region processes would work for it."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "unix":
        db = int(query.get("db", "0") or 0)
        query["db"] = str((db + 1) % 16)
        return f"unix://{parts.netloc}{parts.path}?{urlencode(query)}"
    db = int(parts.path.strip("/") or query.pop("db", "0") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 1) % 16}", query=urlencode(query)))


def check_postgres(dsn: str) -> str:
    """The server's version; BenchError (one line) when it does not answer."""
    try:
        import psycopg
    except ImportError as exc:
        raise BenchError("psycopg is not installed: needed for --workers") from exc
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except (psycopg.Error, OSError) as exc:
        raise BenchError(
            f"PostgreSQL at {dsn!r} does not accept a connection ({type(exc).__name__}: "
            f"{one_line(exc)}); "
            "start it, give --postgres DSN, or --workers '' to skip the worker runs"
        ) from exc
    return str(row[0]) if row else "?"


def free_port() -> int:
    """A port for a server that must know it before it starts: the gateway's own picker (below
    the ephemeral range, where outgoing connections take theirs)."""
    return free_loopback_port()


def cli_config(
    folder: Path,
    *,
    port: int,
    metrics: int,
    schema: str,
    provider: str,
    peers: dict[str, str],
) -> Path:
    """A full (non-dev) configuration of 510000 for `tongban gateway serve --config`, from the
    dev PKI: PostgreSQL audit (DSN in TONGBAN_BENCH_PG), Redis (URL in TONGBAN_BENCH_REDIS), the
    data system and peers of the per-region topology; queries not bound to cases, as in the
    bench's other gateways."""
    pki = folder / "pki"
    inventory = Inventory.load(pki)
    (tls,) = inventory.find(REQUESTER, KeyUsage.TLS, KeyState.ACTIVE)
    (audit,) = inventory.find(REQUESTER, KeyUsage.AUDIT, KeyState.ACTIVE)
    seals = [r for r in inventory.find(REQUESTER, KeyUsage.SEAL) if r.state is not KeyState.REVOKED]

    def q(value: object) -> str:
        return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string

    text = f"""[gateway]
region = {q(REQUESTER)}
listen = {q(f"127.0.0.1:{port}")}
grace_seconds = 1
metrics_listen = {q(f"127.0.0.1:{metrics}")}

[tls]
certificate = {q(pki / tls.certificate)}
private_key = {q(pki / tls.private_key)}

[registry]
trusted_root = {q(pki / "authority" / "root.json")}
snapshot_file = {q(folder / "published" / CURRENT_SNAPSHOT)}
poll_seconds = 2
"""
    for seal in seals:
        text += f"""
[[seal.keys]]
certificate = {q(pki / seal.certificate)}
private_key = {q(pki / seal.private_key)}
"""
    text += f"""
[audit]
store = "postgres"
dsn_env = "TONGBAN_BENCH_PG"
owner_dsn_env = "TONGBAN_BENCH_PG"
schema = {q(schema)}
key = {q(pki / audit.private_key)}
pseudonym_key_file = {q(pki / DEV_PSEUDONYM_KEY)}

[exchange]
provider = {q(provider)}
redis_url_env = "TONGBAN_BENCH_REDIS"
cache_key_file = {q(pki / DEV_CACHE_KEY)}

[cases]
bind_queries = false  # the bench queries conditional data with made-up case ids

[peers]
"""
    text += "".join(f"{q(region)} = {q(endpoint)}\n" for region, endpoint in peers.items())
    path = folder / f"gateway-{REQUESTER}-{schema}.toml"
    path.write_text(text, encoding="utf-8")
    return path
