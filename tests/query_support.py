"""A three-region cluster on loopback for query-path tests: gateways, demo data systems, tokens.

Importable as `query_support` (tests/ is on the path)."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from support import Federation, credentials_as, free_port, start_on_free_ports

from gateway.config import GatewayConfig
from gateway.demo.data import DemoData
from gateway.demo.federation import Loopback, start_regions
from gateway.server import Gateway
from gateway.tokens import issue_token
from registry import KeyState, KeyUsage
from signer import load_private_key, x5t_s256_of_certificate
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

REGIONS = ("330000", "510000", "500000")
CALL_TIMEOUT = 8.0  # seconds: one query, two hops


@dataclass
class Cluster:
    fed: Federation
    ports: dict[str, int]
    gateways: dict[str, Gateway] = field(default_factory=dict)
    data: dict[str, DemoData] = field(default_factory=dict)

    def subject(self, region: str, dataset: str, *, n: int = 0) -> str:
        """The n-th citizen (or business) that `region` holds a `dataset` record for."""
        people = (
            self.data[region].businesses(40)
            if dataset == "market.business_licence"
            else self.data[region].population(40)
        )
        held = [p for p in people if self.data[region].record(dataset, p) is not None]
        return held[n]

    def thumbprint(self, agency: str) -> str:
        chain, _ = self.fed.tls_files(agency)
        return x5t_s256_of_certificate(x509.load_pem_x509_certificates(chain.read_bytes())[0])

    def token(
        self,
        agency: str,
        *,
        now: datetime | None = None,
        lifetime: int = 300,
        thumbprint: str | None = None,
        applicant: str = "",
    ) -> str:
        """`agency`'s request token (`applicant`: a citizen portal's, for that applicant)."""
        inventory = self.fed.inventory()
        region = next(r.region for r in inventory.records() if r.owner == agency)
        (record,) = inventory.find(region, KeyUsage.TOKEN, KeyState.ACTIVE)
        key = load_private_key(self.fed.pki / record.private_key)
        return issue_token(
            key,
            record.kid,
            region=region,
            operator="经办人 张三",
            agency=agency,
            thumbprint=thumbprint or self.thumbprint(agency),
            lifetime_seconds=lifetime,
            now=now or datetime.now(UTC),
            applicant=applicant,
        )

    @contextlib.asynccontextmanager
    async def exchange(self, agency: str) -> AsyncIterator[exchange_pb2_grpc.DataExchangeAsyncStub]:
        """A DataExchange stub as `agency`, on its own region's gateway."""
        region = next(r.region for r in self.fed.inventory().records() if r.owner == agency)
        async with grpc.aio.secure_channel(
            f"localhost:{self.ports[region]}", credentials_as(self.fed, agency, region)
        ) as channel:
            yield exchange_pb2_grpc.DataExchangeStub(channel)


def request(
    provider_region: str,
    dataset: str,
    purpose: str,
    subject_id: str,
    *,
    fields: tuple[str, ...] = (),
    case_id: str = "CASE-2026-0001",
    request_id: str | None = None,
) -> exchange_pb2.QueryRequest:
    return exchange_pb2.QueryRequest(
        provider_region=provider_region,
        dataset=dataset,
        purpose=purpose,
        subject_id=subject_id,
        fields=list(fields),
        case_id=case_id,
        request_id=request_id or f"req-{secrets.token_hex(8)}",
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@contextlib.asynccontextmanager
async def running_cluster(
    fed: Federation,
    tmp_path: Path,
    *,
    redis_url: str = "",
    snapshots: Mapping[str, Path] | None = None,
    peer_overrides: Mapping[str, Mapping[str, str]] | None = None,
    audit_on_disk: bool = True,
    metrics: bool = False,
    binding: Collection[str] = (),
) -> AsyncIterator[Cluster]:
    """Three demo data systems and three gateways, each gateway told the others' ports. Only
    the gateways of `binding` bind queries for conditional datasets to cases (`[cases]
    bind_queries`): the suites query them with made-up case ids."""

    def configure(region: str, config: GatewayConfig) -> GatewayConfig:
        return dataclasses.replace(
            config,
            peers={**config.peers, **(peer_overrides or {}).get(region, {})},
            grace_seconds=0.2,
            poll_seconds=0.1,
            metrics_listen="127.0.0.1:0" if metrics else "",
            cases=dataclasses.replace(config.cases, bind_queries=region in binding),
        )

    async with cluster_on_free_ports(
        fed,
        snapshot_file=lambda region: (snapshots or {}).get(region, fed.current),
        audit_db=lambda region: tmp_path / f"audit-{region}.db" if audit_on_disk else None,
        redis_url=redis_url,
        configure=configure,
        bind_queries=False,  # and `configure` binds those of `binding`
    ) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def cluster_on_free_ports(fed: Federation, **options: Any) -> AsyncIterator[Cluster]:
    """The three regions' gateways and data systems, started by `start_regions(loopback,
    fed.pki, **options)`, each gateway told the others' ports before it starts: picked, and
    picked again if one was taken before its gateway bound it. Stopped on leaving."""

    async def start() -> tuple[Cluster, Loopback]:
        cluster = Cluster(fed, {r: free_port() for r in REGIONS})
        loopback = Loopback(cluster.ports, cluster.gateways, data=cluster.data)
        try:
            await start_regions(loopback, fed.pki, **options)
        except BaseException:
            await loopback.stop(0)
            raise
        return cluster, loopback

    cluster, loopback = await start_on_free_ports(start)
    try:
        yield cluster
    finally:
        await loopback.stop(0)
