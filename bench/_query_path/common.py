"""The constants every part of the benchmark shares: who asks whom for what, limits, labels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = REPO / "bench" / "query_path.py"  # the child processes run it again, with --role
SOURCE: Final = REPO / "conf" / "registry"
DEFAULT_REDIS: Final = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES: Final = "host=127.0.0.1 port=5432 user=postgres dbname=test"

# Who asks whom for what (an agreement of the demo registry: CY-SI-2026, 四川 asks 重庆).
AGENCY: Final = "sc.hrss"  # 四川省人力资源和社会保障厅
REQUESTER: Final = "510000"  # its gateway
PROVIDER: Final = "500000"  # 重庆
OTHER_PROVIDER: Final = "330000"  # 浙江: ZJ-SC-SI-2026 lets sc.hrss ask it too (batch items)
REGIONS: Final = (OTHER_PROVIDER, REQUESTER, PROVIDER)
DATASET: Final = "si.participation"  # cache_scope = "provider"
PURPOSE: Final = "SI-TRANSFER"
BATCH_ITEMS: Final = ((PROVIDER, 3), (OTHER_PROVIDER, 2))  # (region, items) of one BatchQuery
# (e): a dataset whose answers the requesting gateway may cache (LICENCE-CQ-2026).
LICENCE_AGENCY: Final = "sc.amr"  # 四川省市场监督管理局, also on gateway 510000
LICENCE_DATASET: Final = "market.business_licence"  # cache_scope = "requester"
LICENCE_PURPOSE: Final = "LICENCE-VERIFY"

BENCH_QUOTA: Final = 100_000_000  # quota_per_minute in the harness's registry copy
CALL_TIMEOUT: Final = 10.0  # seconds; a call slower than this counts as an error
SETUP_TIMEOUT: Final = 120.0  # seconds for a child process to start
OPEN_LOOP_MAX_IN_FLIGHT: Final = 2048  # an open-loop request due beyond this many is dropped
REPORT_DRAIN_TIMEOUT: Final = 30.0  # seconds to wait for (e)'s access reports to reach 500000
BALANCE_ATTEMPTS: Final = 40  # connections opened again to spread them evenly over workers
ECHO_SERVICE: Final = "tongban.bench.Echo"
ECHO_METHOD: Final = f"/{ECHO_SERVICE}/Echo"
SERVICE_PROCESSES: Final = ("redis-server", "postgres")  # their CPU is shown apart ("svc")

# The targets (issue 8): QPS ratio to the echo ceiling, and p99 at half of max load.
RATIO_TARGETS: Final = {"hit": 0.6, "miss": 0.3}
P99_TARGETS_MS: Final = {"hit": 5.0, "miss": 15.0}

LABELS: Final = {
    "echo": "echo (the ceiling)",
    "hit": "(a) Query, cache hit",
    "miss": "(b) Query, miss, 2 hops",
    "batch": "(c) BatchQuery x5, hits",
    "verify": "(d) Credentials.Verify",
    "licence": "(e) requester-scope hit",
}
TARGETS: Final = ("hit", "miss", "batch", "verify", "licence")
ECHO_RUNS: Final = ("echo_first", "echo_mid", "echo_last")
WORKER_TARGETS: Final = ("hit", "miss", "verify")  # measured at 1 and 2 workers


def topology_title(key: str) -> str:
    if key == "region":
        return "per region"
    if key == "single":
        return "one process"
    if key.startswith("w"):
        n = int(key[1:])
        return f"510000 x{n} worker{'s' if n > 1 else ''}"
    return "echo process"


class BenchError(Exception):
    """The benchmark cannot run or its figures mean nothing; the message says why (one line)."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
