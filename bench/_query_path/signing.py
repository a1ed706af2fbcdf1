"""What signing a forwarded request costs (issue 18): the requesting gateway's Ed25519
signature and the owner's verification of one `Peer.Forward`, measured in the client process
on the run's own PKI and registry, beside the per-region miss path (target (b)), whose every
forward now pays both."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.forward_signing import ForwardDocument, sign_forward, verify_forward
from gateway.policy import DataRequest
from registry import (
    CURRENT_SNAPSHOT,
    Inventory,
    KeyState,
    KeyUsage,
    SnapshotVerifier,
    load_trusted_root,
    pki_trusted_root_path,
)
from signer import load_private_key

from .common import PROVIDER, REQUESTER

MIN_ROUNDS = 200  # signatures (and verifications) measured at least


def _timed(work: Any, seconds: float) -> float:
    """Microseconds per call of `work()`, over at least `seconds` and MIN_ROUNDS calls."""
    rounds, started = 0, time.perf_counter()
    while rounds < MIN_ROUNDS or time.perf_counter() - started < seconds:
        work()
        rounds += 1
    return (time.perf_counter() - started) / rounds * 1e6


def request_signing(folder: Path, seconds: float = 1.0) -> dict[str, float]:
    """{sign_us, verify_us, per_forward_us, jws_bytes} for a forward like target (b)'s."""
    pki = folder / "pki"
    verifier = SnapshotVerifier(load_trusted_root(pki_trusted_root_path(pki)))
    snapshot = (folder / "published" / CURRENT_SNAPSHOT).read_bytes()
    registry = verifier.verify(snapshot, held_version=None, now=None).registry
    (record,) = Inventory.load(pki).find(REQUESTER, KeyUsage.AUDIT, KeyState.ACTIVE)
    key = load_private_key(pki / record.private_key)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    now = datetime.now(UTC)
    document = ForwardDocument(
        requesting_region=REQUESTER,
        owner_region=PROVIDER,
        request=DataRequest(
            provider_region=PROVIDER,
            dataset="si.participation",
            purpose="SI-TRANSFER",
            subject_id="11010519491231002X",
            fields=(),
            case_id="CASE-2026-0001",
            request_id="bench-0123456789abcdef",
        ),
        caller_agency="sc.hrss",
        caller_region=REQUESTER,
        caller_operator="经办人 张三",
        caller_thumbprint="t" * 43,
        credential_type="",
        requesting_gateway_audit_id="",
        issued_at=now,
    )
    jws = sign_forward(document, key, record.kid)

    def verify() -> None:
        verify_forward(
            jws, registry=registry, requesting_region=REQUESTER, owner_region=PROVIDER, now=now
        )

    sign_us = _timed(lambda: sign_forward(document, key, record.kid), seconds)
    verify_us = _timed(verify, seconds)
    return {
        "sign_us": sign_us,
        "verify_us": verify_us,
        "per_forward_us": sign_us + verify_us,
        "jws_bytes": float(len(jws)),
    }


def signing_line(r: dict[str, Any]) -> str | None:
    """The report's line: the cost per forward beside the miss path's CPU per request."""
    signing = r.get("request_signing")
    miss = r["phases"].get("region/miss")
    if not signing or not miss or not miss["server_cpu_us_per_request"]:
        return None
    path = miss["server_cpu_us_per_request"]
    cost = signing["per_forward_us"]
    return (
        f"request signing (Peer.Forward): sign {signing['sign_us']:,.0f} µs at 510000 + verify "
        f"{signing['verify_us']:,.0f} µs at the owner = {cost:,.0f} µs CPU per forward "
        f"({signing['jws_bytes']:,.0f}-byte JWS); the per-region miss path (b) costs "
        f"{path:,.0f} µs of server CPU per request with it, about {path - cost:,.0f} µs "
        f"without it ({cost / path:.1%})"
    )
