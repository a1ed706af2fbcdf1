"""The gateway's /metrics on a running three-region cluster: allowed, cached, denied and failing
queries show in the contract's series (docs/monitoring.md), a live scrape passes
`promtool check metrics`, and a key rotation shows in the certificate expiry gauges without a
restart."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from query_support import CALL_TIMEOUT, Cluster, bearer, request, running_cluster
from support import Federation, credentials_as

from gateway.demo.config import config_for_dev_pki
from gateway.errors import ConfigError
from gateway.server import create_gateway
from registry import KeyUsage, rotate_key
from tongban.v1 import credentials_pb2, credentials_pb2_grpc

pytestmark = pytest.mark.integration

REDIS = "redis://127.0.0.1:6379/0"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(cluster: Cluster, region: str, path: str = "/metrics") -> tuple[int, str, str]:
    port = cluster.gateways[region].metrics_port
    assert port, "the gateway was started with metrics_listen"
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}")


async def samples(cluster: Cluster, region: str) -> Samples:
    status, _, text = await scrape(cluster, region)
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


async def test_queries_show_in_the_contract_series(federation: Federation, tmp_path: Path) -> None:
    async with running_cluster(federation, tmp_path, redis_url=REDIS, metrics=True) as cluster:
        subject = cluster.subject("330000", "si.participation")
        stranger = cluster.subject("510000", "si.participation")  # 330000 holds no record
        async with cluster.exchange("sc.hrss") as stub:
            token = bearer(cluster.token("sc.hrss"))
            request_ids = []
            for _ in range(2):  # allowed, then a cache hit at the owner's gateway
                query = request("330000", "si.participation", "SI-TRANSFER", subject)
                request_ids.append(query.request_id)
                await stub.Query(query, metadata=token, timeout=CALL_TIMEOUT)
            denied = request("330000", "si.participation", "MED-REG", subject)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Query(denied, metadata=token, timeout=CALL_TIMEOUT)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            missing = request("330000", "si.participation", "SI-TRANSFER", stranger)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Query(missing, metadata=token, timeout=CALL_TIMEOUT)
            assert failed.value.code() is grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await stub.Query(  # no token
                    request("330000", "si.participation", "SI-TRANSFER", subject),
                    timeout=CALL_TIMEOUT,
                )
            assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED

        requester = await samples(cluster, "510000")
        query_calls = {"grpc_service": "tongban.v1.DataExchange", "grpc_method": "Query"}
        assert value(requester, "grpc_server_started_total", **query_calls) == 5
        assert value(requester, "grpc_server_handled_total", **query_calls, grpc_code="OK") == 2
        for code in ("PermissionDenied", "NotFound", "Unauthenticated"):
            assert value(requester, "grpc_server_handled_total", **query_calls, grpc_code=code) == 1
        assert value(requester, "grpc_server_handling_seconds_count", **query_calls) == 5
        # grpc_type is what the proto says, though unary requests are served as streams (T15)
        unary = {**query_calls, "grpc_type": "unary"}
        assert value(requester, "grpc_server_started_total", **unary) == 5
        assert value(requester, "grpc_server_msg_received_total", **unary) == 5
        streaming_in = [
            name
            for name, labels in requester
            if name.startswith("grpc_server_")
            and dict(labels).get("grpc_type") in ("client_stream", "bidi_stream")
        ]
        assert streaming_in == []
        decisions = "tongban_authorisation_decisions_total"
        assert value(requester, decisions, outcome="allowed") == 2
        assert value(requester, decisions, outcome="denied", reason="PURPOSE_NOT_APPROVED") == 1
        assert value(requester, decisions, outcome="denied", reason="TOKEN_INVALID") == 1
        assert value(requester, decisions, outcome="denied", reason="SUBJECT_NOT_FOUND") == 1
        assert value(requester, decisions, outcome="denied") == 3
        assert value(requester, "tongban_seal_verifications_total", indication="TOTAL_PASSED") == 2
        assert value(requester, "tongban_peer_calls_total", peer_region="330000", code="OK") == 2
        # the purpose denial and the anonymous call never leave the requester's gateway
        assert (
            value(requester, "tongban_peer_calls_total", peer_region="330000", code="NotFound") == 1
        )
        assert value(requester, "tongban_peer_calls_total", peer_region="330000") == 3
        # each call was preceded by the check of the peer's server certificate (one probe
        # handshake, then the registry's current CRL answers: the dev certificates name no OCSP)
        checks = "tongban_peer_certificate_checks_total"
        assert value(requester, checks, peer_region="330000", result="good") == 3
        assert value(requester, "tongban_audit_appends_total") == 5  # every call is recorded
        assert value(requester, "tongban_audit_append_failures_total") == 0
        assert 1 <= value(requester, "tongban_audit_commits_total") <= 5  # batches of appends
        assert value(requester, "tongban_registry_version") >= 1
        assert (
            value(requester, "tongban_registry_expiry_timestamp_seconds")
            > datetime.now(UTC).timestamp()
        )

        provider = await samples(cluster, "330000")
        assert value(provider, "tongban_cache_lookups_total", result="hit") == 1
        assert value(provider, "tongban_cache_lookups_total", result="miss") >= 1
        assert value(provider, "tongban_cache_circuit_open") == 0
        forwards = {"grpc_service": "tongban.v1.Peer", "grpc_method": "Forward"}
        assert value(provider, "grpc_server_handled_total", **forwards, grpc_code="OK") == 2
        assert value(provider, "tongban_peer_calls_total", peer_region="local", code="OK") >= 2

        forward = {"grpc_service": "tongban.v1.Peer", "grpc_method": "Forward"}
        to_zj = {**forward, "peer_region": "330000"}
        assert value(requester, "grpc_client_started_total", **to_zj) == 3
        assert value(requester, "grpc_client_handled_total", **to_zj, grpc_code="OK") == 2
        assert value(requester, "grpc_client_handled_total", **to_zj, grpc_code="NotFound") == 1
        fetch = {"grpc_service": "tongban.v1.DataProvider", "peer_region": "local"}
        assert value(provider, "grpc_client_handled_total", **fetch, grpc_code="OK") >= 2

        sent = [subject, stranger, "CASE-2026-0001", *request_ids, "经办人"]
        for region in cluster.gateways:
            _, _, text = await scrape(cluster, region)
            for secret in sent:  # no citizen, case, request or operator id in any label
                assert secret not in text
        _, content_type, _ = await scrape(cluster, "510000")
        assert content_type.startswith("text/plain; version=")
        assert (await scrape(cluster, "510000", "/readyz"))[0] == 200
        assert (await scrape(cluster, "510000", "/healthz"))[0] == 200


async def test_a_live_scrape_passes_promtool(federation: Federation, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make promtool`", pytrace=False)
    async with running_cluster(federation, tmp_path, metrics=True) as cluster:
        subject = cluster.subject("330000", "si.participation")
        async with cluster.exchange("sc.hrss") as stub:
            answer = await stub.Query(
                request("330000", "si.participation", "SI-TRANSFER", subject),
                metadata=bearer(cluster.token("sc.hrss")),
                timeout=CALL_TIMEOUT,
            )
        async with grpc.aio.secure_channel(
            f"localhost:{cluster.ports['510000']}", credentials_as(federation, "sc.hrss", "510000")
        ) as channel:
            verify = credentials_pb2_grpc.CredentialsStub(channel).Verify
            tampered = answer.record.jws[:-4] + (
                "AAAA" if answer.record.jws[-4:] != "AAAA" else "BBBB"
            )
            for jws in (answer.record.jws, tampered):
                await verify(credentials_pb2.VerifyRequest(jws=jws), timeout=CALL_TIMEOUT)
        found = await samples(cluster, "510000")
        verified = "tongban_seal_verifications_total"
        assert value(found, verified, indication="TOTAL_PASSED") == 2  # the query's, Verify's
        assert value(found, verified, indication="TOTAL_FAILED") == 1
        for region in ("510000", "330000"):
            _, _, text = await scrape(cluster, region)
            checked = subprocess.run(
                [promtool, "check", "metrics"],
                input=text,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_rotation_shows_in_the_expiry_gauges_without_a_restart(
    federation: Federation, tmp_path: Path
) -> None:
    async with running_cluster(federation, tmp_path, metrics=True) as cluster:
        expiry = "tongban_certificate_expiry_timestamp_seconds"
        old = federation.active("330000", KeyUsage.SEAL)
        before = await samples(cluster, "510000")
        assert value(before, expiry, kid=old, usage="seal") > 0
        version = value(before, "tongban_registry_version")

        # what `tongban keys rotate` does, then a publish the gateways pick up from the file
        now = datetime.now(UTC)
        key = rotate_key(federation.pki, "330000", KeyUsage.SEAL, now=now).successor
        federation.publish(now=now)

        async def rotated() -> Samples:
            for _ in range(100):
                found = await samples(cluster, "510000")
                if value(found, "tongban_registry_version") > version:
                    return found
                await asyncio.sleep(0.1)
            raise AssertionError("the gateway did not pick up the new snapshot")

        after = await rotated()
        assert value(after, expiry, kid=key.kid, usage="seal", owner="330000") > now.timestamp()
        assert value(after, expiry, kid=old, usage="seal") > 0  # both trusted during rotation
        assert value(after, "tongban_certificate_not_before_timestamp_seconds", kid=key.kid) > 0


async def test_a_metrics_port_in_use_is_a_clear_configuration_error(
    federation: Federation, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = config_for_dev_pki(
            federation.pki,
            "330000",
            listen="127.0.0.1:0",
            snapshot_file=federation.current,
            audit_db=tmp_path / "audit.db",
        )
        config = dataclasses.replace(
            config, metrics_listen=f"127.0.0.1:{taken.getsockname()[1]}", grace_seconds=0.1
        )
        with pytest.raises(
            ConfigError, match=r"gateway\.metrics_listen: 127\.0\.0\.1:\d+ is already in use"
        ):
            await create_gateway(config)
