"""`tongban gateway serve --config conf/demo/gateway-<region>.toml` and `tongban provider serve`
as real processes: a query crosses them, health is NOT_SERVING until a registry is held, and
every process stops cleanly on SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from query_support import CALL_TIMEOUT, Cluster, bearer, request
from support import REPO, credentials_as, free_port, interrupted_at_end, make_federation, running

from gateway.demo.config import config_for_dev_pki, load_config
from gateway.demo.data import DemoData

pytestmark = pytest.mark.integration

DEMO = REPO / "conf" / "demo"


def test_the_committed_demo_configs_parse(tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "out" / "demo")
    (tmp_path / "conf" / "demo").mkdir(parents=True)
    for region in ("330000", "510000", "500000"):
        copy = tmp_path / "conf" / "demo" / f"gateway-{region}.toml"
        copy.write_text(
            (DEMO / f"gateway-{region}.toml").read_text(encoding="utf-8"), encoding="utf-8"
        )
        config = load_config(copy)
        assert config.region == region
        assert config.audit is not None
        assert config.audit.store == "sqlite"
        assert config.exchange is not None
        assert config.tls_certificate.resolve().parent.parent.parent.parent == fed.pki.resolve()
        assert config.seal_keys


def _process(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    with interrupted_at_end(10) as started:
        yield started


async def _wait_serving(fed_pki_owner: tuple[object, str], port: int, region: str) -> None:
    fed, agency = fed_pki_owner
    deadline = time.monotonic() + 20
    while True:
        try:
            async with grpc.aio.secure_channel(
                f"localhost:{port}", credentials_as(fed, agency, region)
            ) as channel:  # type: ignore[arg-type]
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, f"gateway {region} did not come up"
        await asyncio.sleep(0.2)


async def test_a_query_crosses_gateway_and_provider_processes(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    fed = make_federation(tmp_path / "out" / "demo")
    fed.publish()
    (tmp_path / "conf" / "demo").mkdir(parents=True)
    ports = {r: (free_port(), free_port()) for r in ("330000", "510000")}
    metrics_port = {r: free_port() for r in ports}
    for region in ("330000", "510000"):
        text = (DEMO / f"gateway-{region}.toml").read_text(encoding="utf-8")
        text = re.sub(
            rf"127\.0\.0\.1:{_demo_port(region, 'metrics')}\b",
            f"127.0.0.1:{metrics_port[region]}",
            text,
        )
        for code, (gateway_port, provider_port) in ports.items():
            text = re.sub(
                rf"127\.0\.0\.1:{_demo_port(code, 'gateway')}\b", f"127.0.0.1:{gateway_port}", text
            )
            text = re.sub(
                rf"localhost:{_demo_port(code, 'gateway')}\b", f"localhost:{gateway_port}", text
            )
            text = re.sub(
                rf"127\.0\.0\.1:{_demo_port(code, 'provider')}\b",
                f"127.0.0.1:{provider_port}",
                text,
            )
        # the query below names a made-up case id: its case binding is not what is tested here
        text += "\n[cases]\nbind_queries = false\n"
        (tmp_path / "conf" / "demo" / f"gateway-{region}.toml").write_text(text, encoding="utf-8")
        processes.append(
            _process(
                "provider", "serve", "--region", region, "--listen", f"127.0.0.1:{ports[region][1]}"
            )
        )
        processes.append(
            _process(
                "gateway",
                "serve",
                "--config",
                str(tmp_path / "conf" / "demo" / f"gateway-{region}.toml"),
            )
        )
    await _wait_serving((fed, "sc.hrss"), ports["510000"][0], "510000")
    await _wait_serving((fed, "zj.hrss"), ports["330000"][0], "330000")
    cluster = Cluster(fed, {r: p[0] for r, p in ports.items()}, data={"330000": DemoData("330000")})
    async with cluster.exchange("sc.hrss") as stub:
        answer = await stub.Query(
            request(
                "330000",
                "si.participation",
                "SI-TRANSFER",
                cluster.subject("330000", "si.participation"),
            ),
            metadata=bearer(cluster.token("sc.hrss")),
            timeout=CALL_TIMEOUT,
        )
    assert answer.record.sealer_region == "330000"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port['510000']}/metrics") as scrape:
        exposition = scrape.read().decode()
    assert 'tongban_authorisation_decisions_total{outcome="allowed",reason=""} 1.0' in exposition
    for process in processes:
        process.send_signal(signal.SIGINT)
    for process in processes:
        assert process.wait(timeout=15) == 0
        assert "Traceback" not in (process.stderr.read() if process.stderr else "")
    assert (tmp_path / "out" / "demo" / "audit-510000.db").exists()


def _demo_port(region: str, kind: str) -> int:
    gateway = {"330000": 7330, "510000": 7510, "500000": 7500}[region]
    return {"gateway": gateway, "metrics": gateway + 1000, "provider": gateway + 2000}[kind]


async def test_health_is_not_serving_until_a_registry_is_held(tmp_path: Path) -> None:
    fed = make_federation(tmp_path)  # nothing published yet
    config = config_for_dev_pki(fed.pki, "330000", listen="127.0.0.1:0", snapshot_file=fed.current)
    config = dataclasses.replace(config, poll_seconds=0.1, grace_seconds=0.2)
    async with running(config) as (gateway, port):
        async with grpc.aio.secure_channel(
            f"localhost:{port}", grpc.ssl_channel_credentials(*_own_credentials(fed))
        ) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = (
                await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
            ).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            fed.publish()
            deadline = time.monotonic() + 10
            while (
                await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
            ).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert gateway.store.status().version == 1


def _own_credentials(fed: object) -> tuple[bytes, bytes, bytes]:
    """Before any registry, the gateway trusts only its own chain's issuer: connect as a
    certificate of its own region."""
    chain, key = fed.tls_files("zj.hrss")  # type: ignore[attr-defined]
    root = (fed.pki / "regions" / "330000" / "ca" / "root.pem").read_bytes()  # type: ignore[attr-defined]
    return root, key.read_bytes(), chain.read_bytes()
