"""Kill -9 under load: every append that was acknowledged is in the file, and the log verifies.

A child process runs an `AuditLog` over a `SqliteAuditStore` with many concurrent appenders
(checkpointing every 100 records) and prints each index as soon as its `append` returns. The
parent reads the acknowledgements, SIGKILLs the child mid-stream, and does it again on the same
file (a restart after a crash must continue the same tree); then it reopens the store: every
acknowledged index is stored and `AuditLog.verify()` with the stored checkpoints is intact.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit._log import AuditLog
from gateway.audit._sqlite import SqliteAuditStore

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
ORIGIN = "audit.test/510000"
KEY_NAME = "audit-510000"
SEED = bytes(range(32))
APPENDERS = 64
ROUNDS = 3
ACKS_PER_ROUND = 3000  # kill once this many appends were acknowledged in the round
ROUND_SECONDS = 6.0  # or kill the child after this long in a round, start-up included
FIRST_ACK_SECONDS = 120.0  # a hang guard: a round waits this long for its first acknowledgement

CHILD = f"""
import asyncio, sys
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric import ed25519
from audit_contract import make_record
from gateway.audit._log import AuditLog
from gateway.audit._sqlite import SqliteAuditStore

async def main(path, appenders, round_):
    store = SqliteAuditStore(Path(path))
    log = AuditLog(store, origin={ORIGIN!r}, key=ed25519.Ed25519PrivateKey.from_private_bytes({SEED!r}),
                   key_name={KEY_NAME!r}, checkpoint_every_records=100)
    await log.open()
    out = sys.stdout

    async def appender(worker):
        i = 0
        while True:
            appended = await log.append(make_record(round_ * 10**8 + worker * 10**6 + i))
            out.write(f"{{appended.index}}\\n")
            out.flush()
            i += 1

    await asyncio.gather(*(appender(w) for w in range(appenders)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def _parse(data: bytes) -> tuple[list[int], bytes]:
    """Complete lines are acknowledgements; a partial last line is not (yet)."""
    *lines, rest = data.split(b"\n")
    return [int(line) for line in lines], rest


def _crash_once(path: Path, round_: int, stderr: Path) -> list[int]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    with stderr.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(APPENDERS), str(round_)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    assert child.stdout is not None
    acked: list[int] = []
    pending = b""
    started = time.monotonic()
    try:
        fd = child.stdout.fileno()
        # Kill after ACKS_PER_ROUND acknowledgements or ROUND_SECONDS, whichever comes first,
        # but never before the first: a round that killed nothing acknowledged proves nothing.
        while len(acked) < ACKS_PER_ROUND and time.monotonic() - started < (
            ROUND_SECONDS if acked else FIRST_ACK_SECONDS
        ):
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break  # the child ended by itself: reported below
            lines, pending = _parse(pending + chunk)
            acked.extend(lines)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=5)
    # What the child wrote before it died was acknowledged too.
    lines, _ = _parse(pending + child.stdout.read())
    acked.extend(lines)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL, stderr.read_text()
    assert acked, f"no acknowledgement before the kill: {stderr.read_text()}"
    return acked


async def test_acknowledged_appends_survive_kill_9_and_the_log_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    started = time.monotonic()
    acked: list[int] = []
    for round_ in range(ROUNDS):
        acked.extend(_crash_once(path, round_, tmp_path / f"child-{round_}.err"))
    assert len(acked) == len(set(acked)), "an index was acknowledged twice"

    store = SqliteAuditStore(path)
    await store.open()
    try:
        head = await store.head()
        stored = {row.index for row in await store.rows(0, head.size)}
        missing = sorted(set(acked) - stored)
        assert not missing, f"acknowledged but not stored: {missing[:10]}"
        assert stored == set(range(head.size))
        log = AuditLog(
            store,
            origin=ORIGIN,
            key=ed25519.Ed25519PrivateKey.from_private_bytes(SEED),
            key_name=KEY_NAME,
        )
        result = await log.verify()
        checkpoints = len(await store.checkpoints())
    finally:
        await store.close()
    elapsed = time.monotonic() - started
    print(
        f"\nkill -9 x{ROUNDS}: acknowledged {len(acked)}, stored {head.size}, "
        f"verified {result.records_checked} against {result.checkpoints_checked} checkpoints "
        f"({checkpoints} stored), intact={result.intact}, {elapsed:.1f} s"
    )
    assert result.intact, result.problem
    assert result.records_checked == head.size
    assert checkpoints > 0
