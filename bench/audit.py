"""Durable audit appends per second: SQLite and PostgreSQL, with 1 and 64 concurrent writers.

    .venv/bin/python bench/audit.py [--seconds 3] [--json out/bench-audit.json]
                                    [--postgres "host=127.0.0.1 user=postgres dbname=test"]
                                    [--stores sqlite,postgres]

Every append is awaited until its record is durable (SQLite WAL with synchronous=FULL; a
committed PostgreSQL transaction), exactly as the gateway awaits it before answering. Records
are the size of a typical query's audit record. PostgreSQL uses a throw-away schema that is
dropped at the end. Targets (issue 4): >= 20k/s SQLite and >= 5k/s PostgreSQL with 64 writers.

The writers cycle through 4096 records made in advance, one second apart, each writer from its
own offset: the times arrive out of order, so each index keyed by time takes its entries at
scattered places. `--ordered` appends records made in advance in time order instead (a
gateway stamps each record as it appends it), `ORDERED_PER_SECOND` of them per measured second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audit_contract import make_record

from gateway.audit import AuditRecord, AuditStore
from gateway.audit._postgres import PostgresAuditStore
from gateway.audit._sqlite import SqliteAuditStore

DEFAULT_PG = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"


RECORDS = [make_record(i) for i in range(4096)]  # built before timing: the store is measured
ORDERED: list[AuditRecord] = []  # --ordered: records in time order, appended in that order
ORDERED_PER_SECOND = 40_000  # records made for --ordered per measured second


async def measure(store: AuditStore, writers: int, seconds: float) -> tuple[float, int]:
    """Appends per second over `seconds` with `writers` concurrent closed-loop appenders."""
    await store.open()
    counter = 0
    stop = 0.0  # set once the warm-up is over: every case measures `seconds`

    async def writer(w: int) -> None:
        nonlocal counter
        i = 0
        while time.perf_counter() < stop:
            if ORDERED:  # the next record in time order, whichever writer is free
                record = ORDERED[(writers + counter) % len(ORDERED)]
            else:
                record = RECORDS[(w * 64 + i) % len(RECORDS)]
            counter += 1
            await store.append(record)
            i += 1

    for w in range(writers):  # warm-up: one append each
        await store.append((ORDERED or RECORDS)[w])
    started = time.perf_counter()
    stop = started + seconds
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - started
    await store.close()
    return counter / elapsed, counter


def run(
    name: str, make: Callable[[], AuditStore], seconds: float, results: dict[str, float]
) -> None:
    for writers in (1, 64):
        rate, count = asyncio.run(measure(make(), writers, seconds))
        results[f"{name}_{writers}"] = rate
        print(
            f"  {name:<10} {writers:>3} writers  {rate:>9,.0f} appends/s  ({count:,} durable appends)",
            flush=True,
        )


def _stores(text: str) -> tuple[str, ...]:
    stores = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not stores or set(stores) - {"sqlite", "postgres"}:
        raise argparse.ArgumentTypeError(f"{text!r}: sqlite, postgres or both (sqlite,postgres)")
    return stores


def run_postgres(dsn: str, seconds: float, results: dict[str, float]) -> None:
    """The PostgreSQL cases in a throw-away schema per case, dropped at the end."""
    schema = f"tongban_bench_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        counter = iter(range(100))
        run(
            "postgres",
            lambda: PostgresAuditStore(dsn, schema=f"{schema}_{next(counter)}"),
            seconds,
            results,
        )
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"{schema}%",)
            ).fetchall():
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(row[0])))


def main() -> int:
    logging.getLogger("tongban.audit").setLevel(
        logging.ERROR
    )  # the throw-away schema's owner warning
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measured time per case (default 3)"
    )
    parser.add_argument(
        "--postgres", default=os.environ.get("TONGBAN_TEST_PG", DEFAULT_PG), help="superuser DSN"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--ordered",
        action="store_true",
        help="append records in time order, as a gateway does (see the module docstring)",
    )
    parser.add_argument(
        "--stores",
        type=_stores,
        default=("sqlite", "postgres"),
        help="which stores to measure, comma-separated (default sqlite,postgres)",
    )
    args = parser.parse_args()
    if args.ordered:
        ORDERED.extend(make_record(i) for i in range(int(ORDERED_PER_SECOND * args.seconds) + 64))
    print(
        f"machine: {os.cpu_count()} cpus, Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}"
    )
    results: dict[str, float] = {}
    if "sqlite" in args.stores:
        with tempfile.TemporaryDirectory() as folder:
            run(
                "sqlite",
                lambda: SqliteAuditStore(Path(folder) / f"audit-{secrets.token_hex(4)}.db"),
                args.seconds,
                results,
            )
    if "postgres" in args.stores:
        run_postgres(args.postgres, args.seconds, results)
    verdict = {
        f"{store}_64 >= {target}": results[f"{store}_64"] >= target
        for store, target in (("sqlite", 20_000), ("postgres", 5_000))
        if store in args.stores
    }
    for target, met in verdict.items():
        print(f"  target {target}: {'met' if met else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"appends_per_second": results, "targets": verdict}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
