"""The demo federation: a dev PKI and a signed registry for three regions, and their gateways
and demo data systems running in this process on loopback.

`start_regions` is the one starter of regions on loopback: the demo (`start_federation`), the
integration tests (tests/query_support.py, tests/fault_support.py) and the benchmarks (bench/)
all start their gateways with it. The gateways are the real `Gateway`, configured from the dev
PKI like `tongban gateway serve --pki`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway._errors import GatewayError
from gateway._ports import free_loopback_port
from gateway.config import GatewayConfig
from gateway.consent import issue_region_consent
from gateway.demo.config import config_for_dev_pki
from gateway.demo.data import DemoData
from gateway.demo.pki import init_dev_federation
from gateway.demo.provider import create_provider
from gateway.server import Gateway, create_gateway, freeze_startup_heap
from gateway.tokens import issue_agency_token
from registry import (
    CURRENT_SNAPSHOT,
    DEMO_SOURCE,
    Inventory,
    KeyState,
    KeyUsage,
    load_source,
    publish,
)

__all__ = [
    "REGIONS",
    "Configure",
    "DemoError",
    "DemoOptions",
    "Federation",
    "Loopback",
    "build_pki",
    "demo_settings",
    "start_federation",
    "start_regions",
    "stop_federation",
]

REGIONS = {"330000": "浙江", "510000": "四川", "500000": "重庆"}
VERSION_TIMEOUT = 15.0  # seconds for every gateway to apply a newly published registry
OPERATOR = "经办人 张三"


class DemoError(GatewayError):
    """The demo cannot be set up (a folder, the registry source, a service); the message says why."""


@dataclass(frozen=True)
class DemoOptions:
    source: Path = DEMO_SOURCE
    folder: Path | None = None  # None: a temporary folder, removed at the end
    redis_url: str = ""
    postgres_dsn: str = ""
    serve: bool = False
    seal_algorithm: str = "ES256"  # the regions' seal keys: "ES256", or "SM2" (GB/T 38540 seals)
    # [cases] bind_queries of every gateway: the demo binds queries for conditional datasets
    # to open cases; False only for suites that test other things with made-up case ids
    bind_queries: bool = True


# the running federation ------------------------------------------------------------------------
@dataclass
class Federation:
    """The demo's PKI, registry and running gateways, and clients of them as any agency."""

    folder: Path
    source: Path
    seal_algorithm: str = "ES256"  # the regions' seal keys' (DemoOptions.seal_algorithm)
    gateways: dict[str, Gateway] = field(default_factory=dict)
    providers: dict[str, tuple[grpc.aio.Server, int]] = field(default_factory=dict)
    data: dict[str, DemoData] = field(default_factory=dict)
    pg_schemas: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    def loopback(self, ports: dict[str, int] | None = None) -> Loopback:
        """The running regions, sharing this federation's gateways, data systems and data."""
        if ports is not None:
            self.ports.update(ports)
        return Loopback(self.ports, self.gateways, self.providers, self.data)

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    @property
    def published(self) -> Path:
        return self.folder / "published"

    def inventory(self) -> Inventory:
        return Inventory.load(self.pki)

    def publish(self) -> int:
        result = publish(self.source, self.pki, self.published, now=datetime.now(UTC))
        return result.snapshot.registry.version

    async def wait_version(self, version: int) -> None:
        deadline = time.monotonic() + VERSION_TIMEOUT
        while behind := [
            r for r, g in self.gateways.items() if (g.store.status().version or 0) < version
        ]:
            if time.monotonic() > deadline:
                raise DemoError(f"gateways {', '.join(behind)} did not apply registry v{version}")
            await asyncio.sleep(0.05)

    def _tls(self, owner: str) -> tuple[bytes, bytes]:
        (record,) = self.inventory().find(owner, KeyUsage.TLS, KeyState.ACTIVE)
        return (self.pki / record.certificate).read_bytes(), (
            self.pki / record.private_key
        ).read_bytes()

    def region_of(self, agency: str) -> str:
        return next(r.region for r in self.inventory().records() if r.owner == agency)

    @contextlib.asynccontextmanager
    async def channel(self, agency: str) -> AsyncIterator[grpc.aio.Channel]:
        """A mutual-TLS channel as `agency` to its own region's gateway."""
        region = self.region_of(agency)
        chain, key = self._tls(agency)
        root = (self.pki / "regions" / region / "ca" / "root.pem").read_bytes()
        credentials = grpc.ssl_channel_credentials(root, key, chain)
        target = f"localhost:{self.gateways[region].port}"
        async with grpc.aio.secure_channel(target, credentials) as channel:
            yield channel

    def token(self, agency: str) -> tuple[tuple[str, str], ...]:
        """Call metadata with a fresh request token for `agency` (its region's token key)."""
        token = issue_agency_token(
            self.pki, agency, OPERATOR, lifetime_seconds=300, now=datetime.now(UTC)
        )
        return (("authorization", f"Bearer {token}"),)

    def consent(
        self,
        home: str,
        subject: str,
        purpose: str,
        datasets: list[tuple[str, str, list[str]]],
        **claims: Any,
    ) -> str:
        """A consent artefact of `subject` issued by `home`'s identity service (its token key):
        for agencies of the regions `claims` names ("regions"; default 500000 and 510000), an
        hour, 5 uses, unless `claims` says otherwise."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "regions": ("500000", "510000"),
            "not_before": now,
            "expires_at": now + timedelta(hours=1),
            "max_uses": 5,
            **claims,
        }
        return issue_region_consent(
            self.pki, home, subject=subject, purpose=purpose, datasets=datasets, now=now, **values
        )

    def citizens(self, region: str, dataset: str, n: int, skip: int = 0) -> list[str]:
        """Subjects that `region`'s data system holds a `dataset` record for."""
        data = self.data[region]
        pool = (
            data.businesses(skip + n * 3)
            if dataset == "market.business_licence"
            else data.population(skip + n * 3)
        )
        held = [s for s in pool if data.record(dataset, s) is not None]
        return held[skip : skip + n]

    def audit_public_key(self, region: str) -> ed25519.Ed25519PublicKey:
        (record,) = self.inventory().find(region, KeyUsage.AUDIT, KeyState.ACTIVE)
        chain = x509.load_pem_x509_certificates((self.pki / record.certificate).read_bytes())
        key = chain[0].public_key()
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise DemoError(f"the audit key of {region} is not Ed25519")
        return key


def build_pki(folder: Path, source: Path, seal_algorithm: str = "ES256") -> None:
    """What `tongban pki init` and `tongban registry publish` do, for the three demo regions,
    whose seal keys are `seal_algorithm`'s."""
    loaded = load_source(source)
    names = {r.code: r.name for r in loaded.regions}
    missing = [code for code in REGIONS if code not in names]
    if missing:
        raise DemoError(f"{source}: the registry source has no region {', '.join(missing)}")
    now = datetime.now(UTC)
    init_dev_federation(
        folder / "pki", loaded, list(REGIONS), now=now, seal_algorithm=seal_algorithm
    )
    publish(source, folder / "pki", folder / "published", now=now)


async def start_federation(fed: Federation, options: DemoOptions, run_id: str) -> None:
    """The demo data systems and the gateways of the three regions (`start_regions`), with the
    demo's settings, and PostgreSQL audit logs in schemas of this run when a DSN is given."""

    def configure(region: str, config: GatewayConfig) -> GatewayConfig:
        if options.postgres_dsn and config.audit is not None:
            schema = f"tongban_demo_{run_id}_{region}"
            fed.pg_schemas.append(schema)
            config = dataclasses.replace(
                config,
                audit=dataclasses.replace(
                    config.audit,
                    store="postgres",
                    path=None,
                    dsn=options.postgres_dsn,
                    owner_dsn=options.postgres_dsn,
                    schema=schema,
                ),
            )
        return demo_settings(region, config)

    await start_regions(
        fed.loopback({region: free_loopback_port() for region in REGIONS}),
        fed.pki,
        snapshot_file=lambda region: fed.published / CURRENT_SNAPSHOT,
        audit_db=lambda region: fed.folder / f"audit-{region}.db",
        redis_url=options.redis_url,
        configure=configure,
        bind_queries=options.bind_queries,
    )
    freeze_startup_heap()


def demo_settings(region: str, config: GatewayConfig) -> GatewayConfig:
    """What the demo changes in each gateway's configuration: a quick registry poll, a short
    grace period, metrics on a free port."""
    return dataclasses.replace(
        config, poll_seconds=0.2, grace_seconds=1.0, metrics_listen="127.0.0.1:0"
    )


async def stop_federation(fed: Federation, options: DemoOptions) -> None:
    await fed.loopback().stop(0.5)
    if fed.pg_schemas:
        await _drop_schemas(options.postgres_dsn, fed.pg_schemas)


# any regions on loopback -----------------------------------------------------------------------
Configure = Callable[[str, GatewayConfig], GatewayConfig]


@dataclass
class Loopback:
    """Gateways and demo data systems of several regions running in this process on loopback:
    the federation the demo, the integration tests and the benchmarks start (`start_regions`)."""

    ports: dict[str, int]  # every region's gateway port, known before any gateway starts
    gateways: dict[str, Gateway] = field(default_factory=dict)
    providers: dict[str, tuple[grpc.aio.Server, int]] = field(default_factory=dict)
    data: dict[str, DemoData] = field(default_factory=dict)

    async def stop(self, grace: float) -> None:
        """Stop the gateways, then the data systems started here."""
        for gateway in self.gateways.values():
            await gateway.stop(grace)
        for server, _ in self.providers.values():
            await server.stop(grace)


async def start_regions(
    loopback: Loopback,
    pki: Path,
    *,
    snapshot_file: Callable[[str], Path],
    audit_db: Callable[[str], Path | None],
    redis_url: str = "",
    regions: Sequence[str] | None = None,
    provider_ports: Mapping[str, int] | None = None,
    configure: Configure | None = None,
    bind_queries: bool = True,
) -> None:
    """Start `regions` (default: every region of `loopback.ports`), one after the other: the
    region's demo data system, unless `provider_ports` gives the port of one already running;
    then its gateway, configured from the dev PKI like `tongban gateway serve --pki`, told the
    port of every other region's gateway, and changed by `configure(region, config)`. Whatever
    starts is in `loopback` at once, so that `loopback.stop` stops it after a failure too.
    `bind_queries=False` (`[cases] bind_queries`): queries for conditional datasets may name
    any case id, for suites that test other parts of the query path."""
    for region in loopback.ports if regions is None else regions:
        if provider_ports is not None and region in provider_ports:
            provider_port = provider_ports[region]
        else:
            server, provider_port = create_provider(region)
            await server.start()
            loopback.providers[region] = (server, provider_port)
        loopback.data[region] = DemoData(region)
        config = config_for_dev_pki(
            pki,
            region,
            listen=f"127.0.0.1:{loopback.ports[region]}",
            snapshot_file=snapshot_file(region),
            audit_db=audit_db(region),
            provider=f"127.0.0.1:{provider_port}",
            redis_url=redis_url,
            peers={
                other: f"localhost:{port}"
                for other, port in loopback.ports.items()
                if other != region
            },
            bind_queries=bind_queries,
        )
        if configure is not None:
            config = configure(region, config)
        gateway, _ = await create_gateway(config)
        loopback.gateways[region] = gateway


async def _drop_schemas(dsn: str, schemas: Sequence[str]) -> None:
    """The demo's own audit schemas (named with this run's id) go with the demo."""
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for schema in schemas:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
