"""Issue 14, point 4: logs stay readable in an outage. The requesting gateway's SQLite audit
file cannot be written (made immutable with ``chattr +i``: as root, permissions would not stop
the store) while agencies send a few hundred queries: every query is refused with
AUDIT_UNAVAILABLE, and the log the gateway writes (its one handler, `gateway.logs.make_handler`)
stays a few dozen lines, with at most one traceback per place, instead of one per request."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from query_support import CALL_TIMEOUT, bearer, request, running_cluster
from support import Federation, error_info

from gateway.logs import RepeatCollapser, make_handler

pytestmark = pytest.mark.integration

TEST_SECONDS = 180.0  # a hang guard for the whole test, never a bound it asserts
QUERIES = 300
IN_FLIGHT = 8
LICENCE = ("market.business_licence", "LICENCE-VERIFY")  # quota 1200/min per agreement
MAX_LINES = 50  # what an operator can read; the code it replaces wrote one or more per query


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """`paths` cannot be written, even by root, until the end (never the -shm file: SQLite maps
    it, and a write to an immutable mapping is a SIGBUS)."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run([chattr, "+i", *map(str, paths)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, paths)], check=True)


@contextlib.contextmanager
def gateway_log() -> Iterator[tuple[io.StringIO, RepeatCollapser]]:
    """The gateway's own log handler (JSON, collapsing repeats) on the root logger, at INFO."""
    stream = io.StringIO()
    collapser = RepeatCollapser()
    handler = make_handler("json", stream, collapser=collapser)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream, collapser
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_an_unwritable_sqlite_audit_file_leaves_a_readable_log(
    federation: Federation, tmp_path: Path
) -> None:
    reasons: collections.Counter[str] = collections.Counter()
    answered = 0
    with gateway_log() as (stream, collapser):
        async with (
            asyncio.timeout(TEST_SECONDS),
            running_cluster(federation, tmp_path) as cluster,
        ):
            token = cluster.token("sc.amr")
            subjects = [cluster.subject("330000", LICENCE[0], n=n) for n in range(20)]
            async with cluster.exchange("sc.amr") as stub:
                await stub.Query(
                    request("330000", *LICENCE, subjects[0]),
                    metadata=bearer(token),
                    timeout=CALL_TIMEOUT,
                )  # the store works before
                database = tmp_path / "audit-510000.db"
                with immutable(database, Path(f"{database}-wal")):
                    stream.seek(0)
                    stream.truncate()  # the outage's lines only
                    slots = asyncio.Semaphore(IN_FLIGHT)

                    async def ask(n: int) -> None:
                        nonlocal answered
                        async with slots:
                            try:
                                await stub.Query(
                                    request("330000", *LICENCE, subjects[n % len(subjects)]),
                                    metadata=bearer(token),
                                    timeout=CALL_TIMEOUT,
                                )
                            except grpc.aio.AioRpcError as exc:
                                reasons[f"{exc.code().name}/{error_info(exc).reason}"] += 1
                            else:
                                answered += 1

                    await asyncio.gather(*(ask(n) for n in range(QUERIES)))
                    collapser.flush()  # the counts still pending, as the interval's end would
                    outage = stream.getvalue()
    assert (answered, dict(reasons)) == (0, {"UNAVAILABLE/AUDIT_UNAVAILABLE": QUERIES})
    lines = [json.loads(line) for line in outage.splitlines()]
    access = [line for line in lines if line["logger"] == "tongban.access"]
    others = [line for line in lines if line["logger"] != "tongban.access"]
    # The owner (330000) audits each answer it gives: one access event each, never collapsed.
    # (Once the requester's audit breaker is open, the requester asks the owner no more.)
    assert access, "no access event: the scan is hollow"
    assert not [line for line in access if "repeated" in line]
    assert len({line["audit_id"] for line in access}) == len(access)
    summary = collections.Counter(f"{line['logger']}: {line['event']}"[:120] for line in others)
    assert len(others) < MAX_LINES, summary.most_common(10)
    places = collections.Counter(
        (line["logger"], str(line["event"])) for line in others if "exception" in line
    )
    assert all(n == 1 for n in places.values()), places
    # What was collapsed is counted, not lost.
    assert sum(int(line.get("repeated", 0)) for line in others) + len(others) >= QUERIES
