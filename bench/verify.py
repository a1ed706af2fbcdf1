"""How fast Tongban validates a seal, next to the bare signature check it rests on: ES256
(JAdES) and SM2 (GB/T 38540), side by side.

Run: .venv/bin/python bench/verify.py [--seconds 2] [--rounds 10] [--json FILE]

In one run it builds a development federation in a temporary folder, seals a typical ~2 KB
JSON answer with region 330000's ES256 seal key, makes a test SM2 PKI (root, seal maker,
signer) with a GB/T 38540 seal and an SES_Signature over the same answer, and measures, in
interleaved rounds:

    (a) SealVerifier.validate() of that one seal, caches warm
    (b) cryptography's ES256 verify of the same signature (DER made once, outside the loop)
    (c) SealVerifier.validate() of distinct seals: a pool of seals, each with its own `iat`,
        larger than the parsed-header cache, so every header is parsed afresh
    (d) GmVerifier.validate_signature() of the SES_Signature and the answer, caches warm
    (e) Sm2PublicKey.verify() of the same SM2 signature over the same TBS_Sign (the same
        library, gmssl-pyx through signer/_sm2.py; the key loaded once, outside the loop)
    (f) GmVerifier.validate_signature() of distinct SES_Signatures by the same signer, each
        with its own signing time: a pool larger than what the verifier remembers

It prints verifications per second (median over rounds), the medians of the per-round ratios
a/b, c/b, d/e, f/e (seal validation over raw verification) and e/b, d/a (SM2 over ES256),
and the machine. Nothing is asserted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cryptography
from _verify_sm2 import Sm2Setup, build_sm2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.demo.pki import init_dev_pki
from registry import (
    Inventory,
    KeyState,
    KeyUsage,
    RegistryTrust,
    SnapshotVerifier,
    load_source,
    load_trusted_root,
    publish,
)
from registry._pki import AgencySpec, RegionSpec
from signer import FileKeyProvider, SealVerifier, parse_compact, seal
from signer._jades import MAX_CACHED_HEADERS

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "conf" / "registry"
REGION = "330000"
TARGET_RATIO = 0.8  # the target for a/b and d/e


@dataclass
class Setup:
    verifier: SealVerifier
    jws: str
    raw_verify: Callable[[], None]
    pool: list[str]
    payload_bytes: int
    now: datetime


def typical_answer() -> bytes:
    """A ~2 KB JSON answer, like a social-insurance record query returns."""
    records = []
    month = 0
    while True:
        month += 1
        records.append(
            {
                "缴费年月": f"2025{month % 12 + 1:02d}",
                "险种": "企业职工基本养老保险",
                "缴费基数": "8765.00",
                "单位缴费": "1402.40",
                "个人缴费": "701.20",
                "缴费状态": "已到账",
            }
        )
        answer = {
            "request_id": "b2c1f0e4-6f2a-4d8e-9a55-3f1c2e7d9a10",
            "dataset": "zj.hrss/social-insurance-payments",
            "purpose": "330000-GR-0042",
            "subject": {
                "姓名": "张三",
                "证件类型": "居民身份证",
                "证件号码脱敏": "3301**********1234",
            },
            "records": records,
        }
        data = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        if len(data) >= 2000:
            return data


def build(root: Path, pool_size: int) -> Setup:
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    source = load_source(SOURCE)
    pki = init_dev_pki(
        root / "pki",
        [RegionSpec(r.code, r.name) for r in source.regions],
        [AgencySpec(a.id, a.name, a.region, a.uscc) for a in source.agencies],
        now=created,
    )
    Inventory.for_new_pki(pki, created).save()
    publish(SOURCE, root / "pki", root / "published", now=created + timedelta(minutes=1))
    authority = load_trusted_root(root / "pki" / "authority" / "root.json")
    registry = (
        SnapshotVerifier(authority)
        .verify((root / "published" / "current.jws").read_bytes(), held_version=None, now=None)
        .registry
    )

    (record,) = Inventory.load(root / "pki").find(REGION, KeyUsage.SEAL, KeyState.ACTIVE)
    provider = FileKeyProvider(root / "pki" / record.private_key, root / "pki" / record.certificate)
    now = created + timedelta(minutes=90)  # the pool signs up to ~35 minutes before
    verifier = SealVerifier(RegistryTrust(registry), clock=lambda: now)
    payload = typical_answer()
    jws = seal(payload, provider, signing_time=now - timedelta(minutes=1))

    parsed = parse_compact(jws)
    der = encode_dss_signature(
        int.from_bytes(parsed.signature[:32], "big"), int.from_bytes(parsed.signature[32:], "big")
    )
    signing_input = parsed.signing_input()
    public_key = provider.certificate_chain[0].public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    algorithm = ec.ECDSA(hashes.SHA256())

    def raw_verify() -> None:
        public_key.verify(der, signing_input, algorithm)

    base = now - timedelta(minutes=2)
    pool = [
        seal(payload, provider, signing_time=base - timedelta(seconds=i)) for i in range(pool_size)
    ]
    assert len({j.split(".", 1)[0] for j in pool}) == pool_size  # every header differs
    for candidate in (jws, pool[0], pool[-1]):
        report = verifier.validate(candidate)
        assert report.passed, report.message
    raw_verify()
    return Setup(verifier, jws, raw_verify, pool, len(payload), now)


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Operations per second of `operation`, run in batches for about `seconds`."""
    count = 0
    batch = 20
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            operation()
        count += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cryptography": cryptography.__version__,
        "openssl": _openssl_version(),
        "gmssl_pyx": _version_of("gmssl-pyx"),
    }


def _version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time per measurement, split over the rounds"
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument(
        "--pool",
        type=int,
        default=2 * MAX_CACHED_HEADERS,
        help=f"distinct seals for (c) and (f); more than the {MAX_CACHED_HEADERS}-entry caches",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.pool < 1:
        parser.error("--seconds must be positive, --rounds and --pool at least 1")
    return args


def _measure(setup: Setup, sm2: Sm2Setup, seconds: float, rounds: int) -> list[dict[str, float]]:
    """Verifications per second of (a) to (e), in `rounds` interleaved rounds."""
    position = 0

    def distinct() -> None:
        nonlocal position
        setup.verifier.validate(setup.pool[position])
        position = (position + 1) % len(setup.pool)

    measurements: dict[str, Callable[[], object]] = {
        "a": lambda: setup.verifier.validate(setup.jws),
        "b": setup.raw_verify,
        "c": distinct,
        "d": sm2.validate,
        "e": sm2.raw_verify,
        "f": sm2.distinct,
    }
    slice_ = seconds / rounds
    measured: list[dict[str, float]] = []
    for number in range(rounds):
        # Neither a seal validation nor its raw check always goes first.
        order = "abcdef" if number % 2 == 0 else "bacedf"
        measured.append({name: rate(measurements[name], slice_) for name in order})
    return measured


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with tempfile.TemporaryDirectory(prefix="tongban-bench-") as folder:
        setup = build(Path(folder), args.pool)
    sm2 = build_sm2(typical_answer(), setup.now, args.pool)
    rounds = _measure(setup, sm2, args.seconds, args.rounds)

    def ratio(top: str, bottom: str) -> float:
        return statistics.median([r[top] / r[bottom] for r in rounds])

    results = {
        "machine": machine(),
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "pool": len(setup.pool),
            "payload_bytes": setup.payload_bytes,
            "jws_bytes": len(setup.jws),
            "ses_signature_bytes": len(sm2.ses_signature),
        },
        "per_second": {name: statistics.median([r[name] for r in rounds]) for name in "abcdef"},
        "ratio_a_b": ratio("a", "b"),
        "ratio_c_b": ratio("c", "b"),
        "ratio_d_e": ratio("d", "e"),
        "ratio_f_e": ratio("f", "e"),
        "ratio_e_b": ratio("e", "b"),
        "ratio_d_a": ratio("d", "a"),
        "target_a_b": TARGET_RATIO,
        "target_d_e": TARGET_RATIO,
        "rounds": rounds,
    }
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 0


def _verdict(value: float, target: float) -> str:
    return f"{'meets' if value >= target else 'below'} the target {target:.2f}"


def _print(results: dict[str, Any]) -> None:
    m, s, per = results["machine"], results["settings"], results["per_second"]
    print(
        f"machine: {m['nproc']} CPU(s) usable ({m['cpu_count']} online), {m['cpu']}, "
        f"{m['system']}; {m['python']}; cryptography {m['cryptography']} ({m['openssl']}); "
        f"gmssl-pyx {m['gmssl_pyx']}"
    )
    print(
        f"seal: ES256, {s['payload_bytes']} B payload, {s['jws_bytes']} B compact JWS; "
        f"SM2, the same payload, {s['ses_signature_bytes']} B SES_Signature; "
        f"{s['rounds']} rounds of {s['seconds'] / s['rounds']:.2f} s per measurement; "
        f"pool of {s['pool']} distinct seals"
    )
    print()
    rows = [
        ("(a) validate(), same seal, warm", per["a"]),
        ("(b) cryptography ES256 verify", per["b"]),
        ("(c) validate(), distinct seals", per["c"]),
        ("(d) SM2 validate_signature(), warm", per["d"]),
        ("(e) SM2 verify (signer/_sm2.py)", per["e"]),
        ("(f) SM2 validate, distinct signatures", per["f"]),
    ]
    print(f"{'measurement':<36} {'verifications/s':>16} {'µs each':>9}")
    for label, value in rows:
        print(f"{label:<36} {value:>16,.0f} {1e6 / value:>9.1f}")
    print()
    print("median of per-round ratios:")
    print(
        f"a/b {results['ratio_a_b']:.3f}  (ES256 seal / raw: {_verdict(results['ratio_a_b'], results['target_a_b'])})"
    )
    print(f"c/b {results['ratio_c_b']:.3f}  (ES256 distinct seals / raw)")
    print(
        f"d/e {results['ratio_d_e']:.3f}  (SM2 seal / raw: {_verdict(results['ratio_d_e'], results['target_d_e'])})"
    )
    print(f"f/e {results['ratio_f_e']:.3f}  (SM2 distinct signatures / raw)")
    print(f"e/b {results['ratio_e_b']:.3f}  (raw SM2 / raw ES256)")
    print(f"d/a {results['ratio_d_a']:.3f}  (SM2 seal / ES256 seal)")


if __name__ == "__main__":
    sys.exit(main())
