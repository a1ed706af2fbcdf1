"""What witnessing costs a region's log: checkpoints without and with a witnessing round.

    .venv/bin/python bench/witnessing.py [--seconds 3] [--json out/bench-witnessing.json]

For N records per checkpoint (N = 100 and 1000), two figures side by side, records per second:

- **without**: N durable appends to a SQLite audit log (one writer, each awaited), then a signed
  checkpoint: the path as it was before witnessing;
- **with**: the same, then one witnessing round for the two other regions of the demo: the
  submitter's consistency proof from the size each witness holds, each witness's
  `Witness.add_checkpoint` (the log's signature, the proof, the compare-and-swap of its state in
  its own SQLite audit store, its cosignature), the submitter's check of each cosignature and
  keeping it beside the checkpoint.

The two witnesses run in this process: the gRPC hop between gateways (mutual TLS on loopback,
about a peer call each; `bench/query_path.py` measures those) is not in the figure. Nothing is
asserted about speed; it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audit_contract import make_record
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import (
    AuditLog,
    SqliteAuditStore,
    Witness,
    cosign,
    verify_cosignature,
    witness_store_for,
)

LOG_REGION = "510000"
WITNESS_REGIONS = ("330000", "500000")
ORIGIN = f"audit.tongban/{LOG_REGION}"
RECORDS = [make_record(i) for i in range(4096)]  # built before timing


class Round:
    """A log and its two witnesses, each in its own SQLite audit store under `folder`."""

    def __init__(self, folder: Path, witnessed: bool) -> None:
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.log = AuditLog(
            SqliteAuditStore(folder / "log.db"), origin=ORIGIN, key=self.key, key_name=ORIGIN
        )
        self.witnessed = witnessed
        self.stores = [SqliteAuditStore(folder / f"witness-{r}.db") for r in WITNESS_REGIONS]
        self.witness_keys = [ed25519.Ed25519PrivateKey.generate() for _ in WITNESS_REGIONS]
        self.witnesses = [
            Witness(
                f"witness.tongban/{region}",
                lambda body, at, key=key, region=region: cosign(
                    body, key, f"witness.tongban/{region}", at
                ),
                witness_store_for(store),
                lambda origin: [(ORIGIN, self.key.public_key())] if origin == ORIGIN else [],
            )
            for region, key, store in zip(
                WITNESS_REGIONS, self.witness_keys, self.stores, strict=True
            )
        ]
        self.sizes = [0 for _ in WITNESS_REGIONS]
        self.appended = 0
        self.witnessing_seconds = 0.0  # spent in witnessing rounds (after each checkpoint)

    async def open(self) -> None:
        await self.log.open()
        for store in self.stores:
            await store.open()

    async def close(self) -> None:
        await self.log.close()
        for store in self.stores:
            await store.close()

    async def checkpoint_of(self, records: int) -> None:
        for _ in range(records):
            await self.log.append(RECORDS[self.appended % len(RECORDS)])
            self.appended += 1
        checkpoint = await self.log.checkpoint()
        if not self.witnessed:
            return
        started = time.perf_counter()
        kept = witness_store_for(self.log.store)
        for i, witness in enumerate(self.witnesses):
            old = self.sizes[i]
            proof = (
                (await self.log.consistency_proof(old, checkpoint.size))[0]
                if 0 < old < checkpoint.size
                else []
            )
            made = await witness.add_checkpoint(old, proof, checkpoint.note)
            value = made.line.rstrip("\n").split(" ")[2]
            checked = verify_cosignature(
                value, checkpoint.body, self.witness_keys[i].public_key(), witness.name
            )
            assert checked is not None
            await kept.add_cosignature(checkpoint.size, checkpoint.root, checked)
            self.sizes[i] = checkpoint.size
        self.witnessing_seconds += time.perf_counter() - started


async def measure(witnessed: bool, records: int, seconds: float) -> tuple[float, int, float]:
    """Records per second, checkpoints included, over about `seconds`; the rounds; and the
    mean seconds of one witnessing round."""
    with tempfile.TemporaryDirectory() as folder:
        bench = Round(Path(folder), witnessed)
        await bench.open()
        try:
            await bench.checkpoint_of(records)  # warm-up: the first round (no proof yet)
            bench.witnessing_seconds = 0.0
            rounds = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds or rounds < 1:
                await bench.checkpoint_of(records)
                rounds += 1
            elapsed = time.perf_counter() - started
        finally:
            await bench.close()
    return rounds * records / elapsed, rounds, bench.witnessing_seconds / rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measured time per case (default 3)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"SQLite {__import__('sqlite3').sqlite_version}; {len(WITNESS_REGIONS)} witnesses, "
        "in process (no gRPC hop)"
    )
    print(
        f"  {'records/checkpoint':>18}  {'without':>14}  {'with witnessing':>16}  {'cost':>6}"
        f"  {'one round':>10}"
    )
    results: dict[str, dict[str, float]] = {}
    for records in (100, 1000):
        without, _, _ = asyncio.run(measure(False, records, args.seconds))
        with_, rounds, round_seconds = asyncio.run(measure(True, records, args.seconds))
        cost = 1 - with_ / without
        results[str(records)] = {
            "without": without,
            "with": with_,
            "cost": cost,
            "round_ms": round_seconds * 1000,
        }
        print(
            f"  {records:>18}  {without:>10,.0f} r/s  {with_:>12,.0f} r/s  {cost:>6.1%}"
            f"  {round_seconds * 1000:>7.2f} ms  ({rounds} witnessed checkpoints)",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"records_per_second": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
