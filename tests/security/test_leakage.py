"""Subject-id leakage: after allowed, cached, refused and not-found queries through three
gateways sharing a real Redis, no raw subject id appears in a log line (DEBUG, every logger),
a metric, a Redis key or value, an error message, or an audit record; the audit holds the
keyed pseudonym and the cache key only a hash over it. docs/threats.md T13."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from query_support import CALL_TIMEOUT, bearer, request, running_cluster
from redis.asyncio import Redis
from support import Federation

from gateway.audit import pseudonymize
from gateway.demo.data import DemoData

pytestmark = pytest.mark.integration

REDIS = "redis://127.0.0.1:6379/0"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
        return text


def an_unknown_citizen(region: str, held: set[str]) -> str:
    """A valid citizen id of `region` that its demo data system holds no record for."""
    data = DemoData(region)
    return next(
        p
        for p in data.population(400)
        if p not in held and data.record("si.participation", p) is None
    )


async def test_no_raw_subject_id_in_logs_metrics_redis_errors_or_audit(
    federation: Federation, tmp_path: Path, caplog: pytest.LogCaptureFixture, kit: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_cluster(federation, tmp_path, redis_url=REDIS, metrics=True) as cluster:
        allowed = cluster.subject("330000", "si.participation")
        refused = cluster.subject("330000", "si.participation", n=1)
        missing = an_unknown_citizen("330000", {allowed, refused})
        invalid = allowed[:-1] + ("0" if allowed[-1] != "0" else "1")  # bad check character
        subjects = {allowed, refused, missing, invalid}
        errors: list[str] = []
        async with cluster.exchange("sc.hrss") as stub:
            token = cluster.token("sc.hrss")
            for query in (
                request("330000", "si.participation", "SI-TRANSFER", allowed),
                request("330000", "si.participation", "SI-TRANSFER", allowed),  # a cache hit
                request(
                    "330000",
                    "si.participation",
                    "SI-TRANSFER",
                    refused,
                    fields=("bank_account",),
                ),
                request("330000", "si.participation", "SI-TRANSFER", missing),
                request("330000", "si.participation", "SI-TRANSFER", invalid),
            ):
                try:
                    await stub.Query(query, metadata=bearer(token), timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"{exc.code().name} {exc.details()}")
        assert len(errors) == 3, errors  # FIELD_NOT_ALLOWED, SUBJECT_NOT_FOUND, SUBJECT_ID_INVALID

        metrics = [
            await asyncio.to_thread(scrape, gateway.metrics_port)
            for gateway in cluster.gateways.values()
        ]
        audit = [
            record.canonical.decode()
            for region in cluster.ports
            for record in await kit.audited(cluster, region)
        ]
        pseudonym_key = cluster.gateways["330000"].config.audit.pseudonym_key  # type: ignore[union-attr]
        client = Redis.from_url(REDIS)
        try:
            redis_keys = [key.decode() async for key in client.scan_iter(match="*", count=500)]
            redis_values = [await client.get(key) for key in redis_keys if key.startswith("tb:c:")]
        finally:
            await client.aclose()

    logs = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records, "nothing was logged at DEBUG"
    assert any(key.startswith("tb:c:") for key in redis_keys)
    assert any(key.startswith("tb:replay:") for key in redis_keys)
    places = {
        "a log line": [logs],
        "a metric": metrics,
        "an error message": errors,
        "an audit record": audit,
        "a Redis key": redis_keys,
        "a Redis value": [v.decode("latin-1") for v in redis_values if v is not None],
    }
    for where, texts in places.items():
        for subject in subjects:
            assert all(subject not in text for text in texts), f"a raw subject id in {where}"
    # The audit keeps the keyed pseudonym; Redis not even that (the cache key is a hash).
    assert any(pseudonymize(allowed, pseudonym_key) in record for record in audit)
    assert all(pseudonymize(allowed, pseudonym_key) not in key for key in redis_keys)
