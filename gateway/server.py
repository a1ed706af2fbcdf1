"""The gateway process: one `grpc.aio` server over mutual TLS, its registry, health and reflection.

`create_gateway(config)` builds and starts a `Gateway` and returns it with the bound port, so
tests bind port 0 and talk to it over a real channel; `serve(config)` runs one until SIGINT or
SIGTERM and then stops gracefully. Only the services built so far are served.

The gateway owns one `SealVerifier` and switches it to every registry the store applies (a swap
listener registered before any snapshot is offered), so `Credentials.Verify` always decides with
the registry the rest of the gateway holds. Its seal keys are loaded once, at construction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import grpc
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway._ports import check_ports_free
from gateway.admission import CallAdmission
from gateway.audit import (
    AuditError,
    AuditLog,
    AuditRecord,
    AuditStore,
    MemoryAuditStore,
    Outcome,
    PostgresAuditStore,
    SqliteAuditStore,
    digest_form,
)
from gateway.breaker import CircuitBreaker
from gateway.cache import AnswerCache, CacheBackend, MemoryBackend, RedisBackend
from gateway.config import GatewayConfig
from gateway.errors import ConfigError, GatewayError
from gateway.identity import (
    MALFORMED_REASON,
    Caller,
    CallerInterceptor,
    CallerResolver,
)
from gateway.metrics import (
    PEER_LOCAL,
    GatewayMetrics,
    MetricsInterceptor,
    MetricsServer,
    client_interceptors,
    multiprocess_mode,
)
from gateway.peers import PeerPool
from gateway.provider import ProviderClient
from gateway.quota import FallbackQuotaCounter, MemoryQuotaCounter, QuotaCounter, RedisQuotaCounter
from gateway.registry_sync import PeerSnapshotSource
from gateway.replay import (
    REPLAY_WINDOW_SECONDS,
    FallbackReplayGuard,
    MemoryReplayGuard,
    RedisReplayGuard,
    ReplayGuard,
)
from gateway.reports import AccessReporter
from gateway.services.credentials import CredentialsService
from gateway.services.exchange import DataExchangeService, PeerService, QueryPath
from gateway.services.oversight import OversightService
from gateway.services.registry import RegistryService
from gateway.tokens import TokenVerifier
from registry import (
    FileSnapshotSource,
    PkiError,
    Registry,
    RegistryError,
    RegistryStore,
    RegistryTrust,
    SignedSnapshot,
    SnapshotVerifier,
    load_authority_public_key,
)
from signer import (
    FileKeyProvider,
    KeyProvider,
    SealVerifier,
    SignerError,
    TrustedKey,
    load_private_key,
    x5t_s256_of_certificate,
)
from tongban.v1 import (
    credentials_pb2,
    credentials_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

__all__ = ["SERVED_SERVICES", "Gateway", "create_gateway", "serve"]

log = logging.getLogger("tongban.gateway")

REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
CREDENTIALS_SERVICE = credentials_pb2.DESCRIPTOR.services_by_name["Credentials"].full_name
# The tongban.v1 services this build serves (Credentials.Fetch still answers UNIMPLEMENTED).
OVERSIGHT_SERVICE = oversight_pb2.DESCRIPTOR.services_by_name["Oversight"].full_name
EXCHANGE_SERVICE = exchange_pb2.DESCRIPTOR.services_by_name["DataExchange"].full_name
PEER_SERVICE = exchange_pb2.DESCRIPTOR.services_by_name["Peer"].full_name
# Connections of the client the replay window and quotas share: a burst of calls
# waits (within [exchange] redis_timeout_seconds) for one instead of opening one per call.
REDIS_MAX_CONNECTIONS = 64
SERVED_SERVICES = (REGISTRY_SERVICE, CREDENTIALS_SERVICE)  # always; Oversight with an audit log
OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})  # mTLS only, no identity
# Services whose undecodable requests are audited (caller known, values unknown): see
# `Gateway.audit_malformed`. Oversight may join once its own calls are audited.
MALFORMED_AUDITED_SERVICES = frozenset(
    {EXCHANGE_SERVICE, PEER_SERVICE, CREDENTIALS_SERVICE, OVERSIGHT_SERVICE}
)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # bytes: a registry snapshot is the largest message
# Calls one gateway process handles at once; more are refused by gRPC at once with
# RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded"), before any Python work is done for them.
# A backstop only: gRPC counts a call from its HEADERS, without knowing who makes it, so the
# budgets per caller and per kind of caller (gateway/admission.py, 2,100 calls in all) refuse
# first, and this cap stays above their sum for calls between their HEADERS and that refusal.
MAX_CONCURRENT_RPCS = 4000
# HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may hold open at once (a client
# opening more gets them refused by the transport; gRPC clients queue them instead).
MAX_STREAMS_PER_CONNECTION = 100
# Calls gRPC has received but the event loop has not yet taken up (a burst of streams on many
# connections arrives faster than the loop can refuse them). Past this many gRPC sheds new calls
# at random, up to all of them at twice this: a legitimate call as likely as an attacker's, as
# CANCELLED. Sized like MAX_CONCURRENT_RPCS so that a burst queues for the caller budgets to sort.
MAX_PENDING_CALLS = MAX_CONCURRENT_RPCS
# A connection that has not finished its TLS handshake in this long is closed (gRPC's default is
# 120 s: an attacker's half-open handshakes would hold descriptors and memory that long).
HANDSHAKE_TIMEOUT_SECONDS = 10
# A connection with no call open for this long is closed with GOAWAY (clients reconnect when they
# next call; a Registry.Watch stream keeps its connection busy). Connections cost memory too.
MAX_CONNECTION_IDLE_SECONDS = 300
# HTTP/2 keepalive: quiet connections (a Registry.Watch stream between publishes, a peer channel
# at night) are pinged so that proxies and NATs do not cut them; clients may ping every 30 s.
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
)
HEALTH_CHECK_SECONDS = 5.0  # how often registry expiry is re-checked for health


def utc_now() -> datetime:
    return datetime.now(UTC)


class _TlsMaterial:
    """The gateway's own certificate chain and key, held unencrypted in memory only."""

    def __init__(self, config: GatewayConfig) -> None:
        try:
            self.chain_pem = config.tls_certificate.read_bytes()
            chain = x509.load_pem_x509_certificates(self.chain_pem)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{config.tls_certificate}: not a readable PEM certificate chain"
            ) from exc
        try:
            key = load_private_key(config.tls_private_key, config.tls_passphrase)
        except SignerError as exc:
            raise ConfigError(str(exc)) from exc
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Trusted before any registry is held: a bootstrap bundle, or our own chain's issuer.
        if config.bootstrap_ca_file is not None:
            try:
                self.bootstrap_pem = config.bootstrap_ca_file.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"{config.bootstrap_ca_file}: cannot be read ({exc.strerror})"
                ) from exc
        else:
            self.bootstrap_pem = (
                b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:])
                or self.chain_pem
            )


class _NoTrust:
    """The verifier's trust source until a registry is held: it trusts nothing."""

    version = -1

    def key(self, kid: str) -> TrustedKey | None:
        return None

    def anchors(
        self, region: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
        return (), ()

    def crls(self, region: str) -> tuple[x509.CertificateRevocationList, ...]:
        return ()


def load_seal_keys(config: GatewayConfig) -> dict[str, KeyProvider]:
    """The configured seal keys by kid, opened with the TLS passphrase."""
    providers: dict[str, KeyProvider] = {}
    for certificate, private_key in config.seal_keys:
        try:
            provider = FileKeyProvider(private_key, certificate, config.tls_passphrase)
        except SignerError as exc:
            raise ConfigError(f"seal key: {exc}") from exc
        providers[provider.kid] = provider
    return providers


def trust_bundle(registry: Registry, region_code: str | None = None) -> bytes:
    """PEM of every region's root CA: who may complete a TLS handshake with this gateway; with
    `region_code`, that region's root only: who may answer as that region's gateway."""
    out = []
    for region in registry.regions:
        if region_code is not None and region.code != region_code:
            continue
        if region.ca_certificates:
            out.append(
                x509.load_der_x509_certificate(region.ca_certificates[0]).public_bytes(
                    serialization.Encoding.PEM
                )
            )
    return b"".join(out)


def make_breaker(config: GatewayConfig, name: str, open_note: str) -> CircuitBreaker:
    """A dependency's circuit breaker, with the `[exchange] breaker_*` settings (the
    breaker's defaults without [exchange])."""
    exchange = config.exchange
    if exchange is None:
        return CircuitBreaker(name=name, open_note=open_note)
    return CircuitBreaker(
        failure_threshold=exchange.breaker_failures,
        window_seconds=exchange.breaker_window_seconds,
        open_seconds=exchange.breaker_open_seconds,
        name=name,
        open_note=open_note,
    )


def build_audit_log(config: GatewayConfig, *, clock: Callable[[], datetime]) -> AuditLog | None:
    """The gateway's audit log from its `[audit]` configuration (None when there is none)."""
    audit = config.audit
    if audit is None:
        log.warning("gateway %s has no [audit] configured: nothing is recorded", config.region)
        return None
    try:
        key = load_private_key(audit.key, config.tls_passphrase)
    except SignerError as exc:
        raise ConfigError(f"audit.key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(
            f"audit.key: {audit.key} is not an Ed25519 key (C2SP checkpoints are signed with Ed25519)"
        )
    store: AuditStore
    if audit.store == "sqlite":
        assert audit.path is not None
        store = SqliteAuditStore(audit.path)
    elif audit.store == "postgres":
        store = PostgresAuditStore(
            audit.dsn, schema=audit.schema, owner_dsn=audit.owner_dsn or None
        )
    else:
        store = MemoryAuditStore()
    origin = audit.origin or f"audit.tongban/{config.region}"
    return AuditLog(
        store,
        append_timeout_seconds=audit.append_timeout_seconds,
        breaker=make_breaker(config, "audit store", "answers are refused with AUDIT_UNAVAILABLE"),
        origin=origin,
        key=key,
        key_name=origin,  # C2SP tlog-checkpoint: the key is named after the log
        former_key_names=(f"audit-{config.region}",),  # the name of checkpoints signed before
        checkpoint_every_records=audit.checkpoint_every_records,
        checkpoint_every_seconds=audit.checkpoint_every_seconds,
        clock=clock,
    )


class WithholdUndecodableMetadata(logging.Filter):
    """grpc logs a metadata value that is not UTF-8 whole, at ERROR with a traceback ("Invalid
    encoding on %s"), before it reads it as Latin-1; the value may be a token or a citizen id.
    The record stays (a WARNING saying what happened) with the value withheld: its length and
    digest only. Installed on grpc's Cython logger by every `Gateway`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid encoding on %s" and isinstance(record.args, tuple):
            value = record.args[0] if record.args else b""
            record.msg = "a metadata value is not UTF-8 (read as Latin-1; value withheld: %s)"
            record.args = (digest_form(value if isinstance(value, bytes) else str(value)),)
            record.exc_info = record.exc_text = record.stack_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


GRPC_CYTHON_LOGGER = "grpc._cython.cygrpc"
_WITHHOLD = WithholdUndecodableMetadata()


class Gateway:
    """One region's gateway. Build with `create_gateway`."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        shared_port: bool = False,
    ) -> None:
        self.config = config
        grpc_log = logging.getLogger(GRPC_CYTHON_LOGGER)
        if _WITHHOLD not in grpc_log.filters:
            grpc_log.addFilter(_WITHHOLD)
        # True only in a `--workers` worker: its siblings bind the same ports (SO_REUSEPORT).
        self.shared_port = shared_port
        try:
            authority = load_authority_public_key(config.authority_public_key)
        except PkiError as exc:
            raise ConfigError(str(exc)) from exc
        self.store = RegistryStore(SnapshotVerifier(authority), clock=clock)
        self.metrics = GatewayMetrics()
        self.metrics_server: MetricsServer | None = None
        self.metrics_port = 0
        self._clock = clock
        self.admission = CallAdmission()  # calls in flight per caller (docs/threats.md T15)
        self._tls = _TlsMaterial(config)
        self._peers: PeerPool | None = None
        self.verifier = SealVerifier(_NoTrust(), clock=clock)
        self.store.on_swap(self._follow_registry)  # before any snapshot can be offered
        self.audit = build_audit_log(config, clock=clock)
        if self.audit is not None:
            self.audit.observer = self.metrics
        # One map shared by the services, so that `reload_seal_keys` reaches both.
        self.seal_keys = seal_keys = load_seal_keys(config)
        self.credentials = CredentialsService(
            self.store,
            self.verifier,
            region=config.region,
            seal_keys=seal_keys,
            clock=clock,
            audit=self.audit,
            metrics=self.metrics,
        )
        self._closers: list[Callable[[], Awaitable[None]]] = []
        # One Redis, one breaker: the replay window, quotas and answer cache agree.
        self.redis_breaker = make_breaker(
            config,
            "Redis",
            "replay window and quotas per replica, answers uncached, no requester-side hits",
        )
        self.query_path = self._build_query_path(seal_keys, clock)
        self.credentials.query_path = self.query_path
        self.served_services = (
            *SERVED_SERVICES,
            *((OVERSIGHT_SERVICE,) if self.audit else ()),
            *((EXCHANGE_SERVICE, PEER_SERVICE) if self.query_path else ()),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._swap_tasks: set[asyncio.Future[None]] = set()
        self._stop_following: Callable[[], None] = lambda: None
        self._health = health.aio.HealthServicer()
        self._served_version = -1
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._file_source = (
            FileSnapshotSource(config.snapshot_file, self.store, poll_seconds=config.poll_seconds)
            if config.snapshot_file is not None
            else None
        )

    @property
    def peers(self) -> PeerPool | None:
        """The pooled channels to peer gateways (None without an [exchange] section)."""
        return self._peers

    def _build_query_path(
        self, seal_keys: dict[str, KeyProvider], clock: Callable[[], datetime]
    ) -> QueryPath | None:
        """The query path, when the configuration has [exchange] (it needs [audit] too)."""
        config = self.config
        exchange = config.exchange
        if exchange is None:
            return None
        if self.audit is None or config.audit is None:
            raise ConfigError("exchange: the query path audits every access: configure [audit] too")
        replay: ReplayGuard
        quota: QuotaCounter
        backend: CacheBackend
        cache_key_id = hashlib.sha256(exchange.cache_key).hexdigest()[:4]
        if exchange.redis_url:
            client = redis.asyncio.Redis.from_pool(
                redis.asyncio.BlockingConnectionPool.from_url(
                    exchange.redis_url,
                    max_connections=REDIS_MAX_CONNECTIONS,
                    timeout=exchange.redis_timeout_seconds,
                    socket_timeout=exchange.redis_timeout_seconds,
                    socket_connect_timeout=exchange.redis_timeout_seconds,
                    retry=Retry(NoBackoff(), 0),  # a Redis that is down must fail fast
                )
            )
            self._closers.append(client.aclose)
            replay = FallbackReplayGuard(
                RedisReplayGuard(
                    client,
                    window_seconds=REPLAY_WINDOW_SECONDS,
                    breaker=self.redis_breaker,
                    timeout_seconds=exchange.redis_timeout_seconds,
                ),
                MemoryReplayGuard(REPLAY_WINDOW_SECONDS, clock),
            )
            quota = FallbackQuotaCounter(
                RedisQuotaCounter(
                    client,
                    breaker=self.redis_breaker,
                    timeout_seconds=exchange.redis_timeout_seconds,
                ),
                MemoryQuotaCounter(),
            )
            backend = RedisBackend(
                exchange.redis_url, operation_timeout=exchange.redis_timeout_seconds
            )
        else:
            log.warning(
                "gateway %s keeps its cache, replay window and quotas in memory: run one replica only",
                config.region,
            )
            replay = MemoryReplayGuard(REPLAY_WINDOW_SECONDS, clock)
            quota = MemoryQuotaCounter()
            backend = MemoryBackend()
        self._closers.append(backend.close)
        provider = (
            ProviderClient(
                exchange.provider,
                interceptors=client_interceptors(self.metrics, PEER_LOCAL),
                timeout_seconds=exchange.provider_timeout_seconds,
                breaker=make_breaker(
                    config,
                    f"data system {exchange.provider}",
                    "queries needing it fail fast with PROVIDER_UNAVAILABLE",
                ),
            )
            if exchange.provider
            else None
        )
        if provider is not None:
            self._closers.append(provider.close)
        self._peers = peers = PeerPool(
            self.store,
            self.client_credentials,
            overrides=config.peers,
            interceptors=lambda region: client_interceptors(self.metrics, region),
            make_breaker=lambda region: make_breaker(
                config,
                f"peer gateway {region}",
                "queries to it fail fast with PEER_UNAVAILABLE",
            ),
        )
        self._closers.append(peers.close)
        audit_key = load_private_key(config.audit.key, config.tls_passphrase)
        assert isinstance(audit_key, ed25519.Ed25519PrivateKey)  # build_audit_log checked it
        path = QueryPath(
            region=config.region,
            gateway_name=f"gateway-{config.region}",
            registry=self.store,
            tokens=TokenVerifier(region=config.region, clock=clock),
            replay=replay,
            quota=quota,
            peers=peers,
            verifier=self.verifier,
            seal_keys=seal_keys,
            cache=AnswerCache(
                backend,
                key=exchange.cache_key,
                key_id=cache_key_id,
                breaker=self.redis_breaker,  # one Redis, one breaker
            ),
            provider=provider,
            audit=self.audit,
            pseudonym_key=config.audit.pseudonym_key,
            metrics=self.metrics,
            clock=clock,
            peer_timeout_seconds=exchange.peer_timeout_seconds,
            reporter=AccessReporter(
                region=config.region,
                registry=self.store,
                peers=peers,
                audit=self.audit,
                key=audit_key,
                clock=clock,
            ),
        )
        self._closers.insert(0, path.close)  # first: flushes reports over the peer channels
        return path

    # TLS ---------------------------------------------------------------------------------------
    def reload_seal_keys(self, pairs: Sequence[tuple[Path, Path]]) -> tuple[str, ...]:
        """Hold exactly these seal keys from now on (a rotation issued a successor, or a retired
        key was removed from the configuration), without a restart. All of them are opened first:
        if one fails, a ConfigError says which and the keys held before stay in use. Returns the
        kids now held."""
        opened = load_seal_keys(dataclasses.replace(self.config, seal_keys=tuple(pairs)))
        self.seal_keys.clear()
        self.seal_keys.update(opened)
        self.config = dataclasses.replace(self.config, seal_keys=tuple(pairs))
        return tuple(sorted(opened))

    def reload_tls(self, config: GatewayConfig) -> str:
        """Serve and call peers with the TLS certificate and key `config` names from now on (a
        rotation issued a new one), without a restart: new handshakes use it, connections open
        keep theirs. Both are read first: if one fails, a ConfigError says why and the old pair
        stays. Returns the kid (x5t#S256) of the certificate now used."""
        material = _TlsMaterial(config)
        leaf = x509.load_pem_x509_certificates(material.chain_pem)[0]
        key = serialization.load_pem_private_key(material.key_pem, None)
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ConfigError(f"{config.tls_private_key}: not the key of {config.tls_certificate}")
        self._tls = material
        self._served_version = -2  # the next handshake fetches a new server configuration
        self.config = dataclasses.replace(
            self.config,
            tls_certificate=config.tls_certificate,
            tls_private_key=config.tls_private_key,
        )
        if self._peers is not None:
            self._peers.renew()
        return x5t_s256_of_certificate(leaf)

    def _certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        snapshot = self.store.snapshot
        roots = trust_bundle(snapshot.registry) if snapshot else self._tls.bootstrap_pem
        self._served_version = snapshot.registry.version if snapshot else -1
        return grpc.ssl_server_certificate_configuration(
            [(self._tls.key_pem, self._tls.chain_pem)], root_certificates=roots
        )

    def _fetch_certificate_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before each new handshake: rebuild only when the registry changed.
        snapshot = self.store.snapshot
        version = snapshot.registry.version if snapshot else -1
        if version == self._served_version:
            return None
        return self._certificate_configuration()

    def client_credentials(self, region: str | None = None) -> grpc.ChannelCredentials:
        """Credentials for calling peers: our own certificate; as roots, the root CA of the
        `region` called (a server certificate from any other region's CA fails the handshake,
        before the query is sent), or every region's when the peer's region is not known."""
        snapshot = self.store.snapshot
        roots = trust_bundle(snapshot.registry, region) if snapshot else self._tls.bootstrap_pem
        return grpc.ssl_channel_credentials(roots, self._tls.key_pem, self._tls.chain_pem)

    async def audit_malformed(self, method: str, caller: Caller) -> None:
        """Record a request of `caller` that is not a well-formed message of `method` (one of
        MALFORMED_AUDITED_SERVICES): denied, INVALID_ARGUMENT_FORMAT, the caller's agency and
        region, and no request value (none could be read). Best effort, as for any refusal:
        an audit store that is down is logged, and the refusal goes on."""
        service = method.strip("/").partition("/")[0]
        if self.audit is None or service not in MALFORMED_AUDITED_SERVICES:
            return
        try:
            version = self.store.current().version
        except RegistryError:
            version = 0
        record = AuditRecord(
            time=self._clock(),
            gateway=f"gateway-{self.config.region}",
            region=self.config.region,
            rpc=method,
            request_id="",
            caller_agency=caller.agency_id,
            caller_operator="",
            caller_region=caller.region,
            provider_region="",
            dataset="",
            purpose="",
            case_id="",
            subject="",
            fields=(),
            outcome=Outcome.DENIED,
            reason=MALFORMED_REASON,
            cache_hit=False,
            latency_us=0,
            sealed_digest="",
            registry_version=version,
            agreement_id="",
        )
        self.metrics.decision("denied", MALFORMED_REASON)
        try:
            await self.audit.append(record)
        except AuditError:
            log.warning("a malformed request could not be audited: the audit store is unavailable")

    # Lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> int:
        if (
            not self.shared_port
        ):  # before the audit store is opened: a second gateway touches nothing
            check_ports_free(self.config)
        if self.audit is not None:
            try:
                await self.audit.open()
            except AuditError as exc:
                raise ConfigError(f"audit: the audit store cannot be opened: {exc}") from exc
        if self._file_source is not None:
            self._file_source.poll()
        server = grpc.aio.server(
            interceptors=[
                # first: a call the caller check refuses is counted too (as Unauthenticated)
                MetricsInterceptor(self.metrics),
                CallerInterceptor(
                    CallerResolver(self.store, self._clock),
                    OPEN_SERVICES,
                    self.admission,
                    on_malformed=self.audit_malformed,
                ),
            ],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
                ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_SECONDS * 1000),
                ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_SECONDS * 1000),
                *KEEPALIVE_OPTIONS,
                # gRPC's core shares a port by default on Linux: only workers may (see _ports).
                ("grpc.so_reuseport", 1 if self.shared_port else 0),
            ],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        registry_pb2_grpc.add_RegistryServicer_to_server(RegistryService(self.store), server)
        credentials_pb2_grpc.add_CredentialsServicer_to_server(self.credentials, server)
        if self.query_path is not None:
            exchange_pb2_grpc.add_DataExchangeServicer_to_server(
                DataExchangeService(self.query_path), server
            )
            exchange_pb2_grpc.add_PeerServicer_to_server(PeerService(self.query_path), server)
        if self.audit is not None:
            assert self.config.audit is not None
            oversight_pb2_grpc.add_OversightServicer_to_server(
                OversightService(
                    self.audit,
                    self.store,
                    region=self.config.region,
                    pseudonym_key=self.config.audit.pseudonym_key,
                    clock=self._clock,
                ),
                server,
            )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*self.served_services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        credentials = grpc.dynamic_ssl_server_credentials(
            self._certificate_configuration(),
            # The stubs say the fetcher never returns None; gRPC documents None as "no change".
            cast(
                Callable[[], grpc.ServerCertificateConfiguration],
                self._fetch_certificate_configuration,
            ),
            require_client_authentication=True,
        )
        try:
            self.port = server.add_secure_port(self.config.listen, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"gateway.listen: cannot bind {self.config.listen} ({exc})") from exc
        await server.start()
        self.server = server
        if self.config.metrics_listen:
            host, _, port = self.config.metrics_listen.rpartition(":")
            metrics_server = MetricsServer(
                self.metrics.registry,
                ready=self._ready,
                before_scrape=self.observe,
                collectors=self.metrics.scrape_collectors,
            )
            try:
                self.metrics_port = await metrics_server.start(
                    host.strip("[]"), int(port), reuse_port=self.shared_port
                )
            except OSError as exc:
                await self.stop(0)  # the gRPC server, the audit log, the clients: all closed
                raise ConfigError(
                    f"gateway.metrics_listen: cannot bind {self.config.metrics_listen} ({exc.strerror})"
                ) from exc
            self.metrics_server = metrics_server
        await self._update_health()
        self._stop_following = self.store.on_swap(self._on_swap)
        if self._file_source is not None:
            self._tasks.append(asyncio.create_task(self._file_source.run(), name="registry-file"))
        if self.config.follow:
            peer = PeerSnapshotSource(
                self.config.follow, self.store, credentials=self.client_credentials
            )
            self._tasks.append(asyncio.create_task(peer.run(), name="registry-peer"))
        self._tasks.append(asyncio.create_task(self._watch_expiry(), name="registry-expiry"))
        if self.query_path is not None:
            self._tasks.append(
                asyncio.create_task(self.query_path.report_loop(), name="access-reports")
            )
        log.info("gateway %s listening on port %d", self.config.region, self.port)
        return self.port

    def _follow_registry(self, snapshot: SignedSnapshot) -> None:
        # Synchronous, inside the swap: no call sees the new registry with the old verifier.
        self.verifier.use(RegistryTrust(snapshot.registry))

    def _on_swap(self, snapshot: SignedSnapshot) -> None:
        task = asyncio.ensure_future(self._update_health())
        self._swap_tasks.add(task)
        task.add_done_callback(self._swap_tasks.discard)

    def _ready(self) -> tuple[bool, str]:
        """For /readyz: ready while the gateway holds a registry in force (as gRPC health)."""
        try:
            self.store.current()
        except RegistryError as exc:
            return False, str(exc)
        return True, "ready"

    def breakers(self) -> dict[str, CircuitBreaker]:
        """The circuit breaker of each dependency, by the name metrics label it with."""
        found: dict[str, CircuitBreaker] = {}
        if self.audit is not None:
            found["audit_store"] = self.audit.breaker
        if self.query_path is not None:
            if self.config.exchange is not None and self.config.exchange.redis_url:
                found["redis"] = self.redis_breaker
            if self.query_path.provider is not None:
                found["data_system"] = self.query_path.provider.breaker
        if self._peers is not None:
            for region, breaker in sorted(self._peers.breakers.items()):
                found[f"peer:{region}"] = breaker
        return found

    def observe(self) -> None:
        """Bring the gauges that follow state up to date; the metrics endpoint calls this before
        every scrape, so nothing is computed that nobody reads."""
        snapshot = self.store.snapshot
        self.metrics.observe_registry(
            snapshot.registry if snapshot is not None else None, self.store.status()
        )
        if self.query_path is not None:
            self.metrics.observe_cache(self.query_path.cache)
            if self.query_path.reporter is not None:
                self.metrics.observe_reports(self.query_path.reporter.backlog)
        self.metrics.observe_breakers(self.breakers())
        self.metrics.observe_admission(self.admission)
        if self.audit is not None:
            self.metrics.observe_audit_commits(self.audit.store.commits)

    async def _update_health(self) -> None:
        try:
            self.store.current()
            status = health_pb2.HealthCheckResponse.SERVING
        except RegistryError:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.served_services):
            await self._health.set(name, status)

    async def _watch_expiry(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_CHECK_SECONDS)
            await self._update_health()
            if multiprocess_mode():  # a scrape reaches one worker: the others keep theirs fresh
                self.observe()

    async def stop(self, grace_seconds: float | None = None) -> None:
        self._stop_following()  # a stopped gateway starts no more health updates
        tasks = [*self._tasks, *self._swap_tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a background task that died must not stop the shutdown
                log.exception("background task %s failed", task)
        self._tasks.clear()
        if self.server is not None:
            await self._health.enter_graceful_shutdown()
            await self.server.stop(
                self.config.grace_seconds if grace_seconds is None else grace_seconds
            )
            self.server = None
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        for close in self._closers:
            try:
                await close()
            except Exception:  # a closing client must not stop the shutdown
                log.exception("closing %s failed", close)
        self._closers.clear()
        if self.audit is not None:
            await self.audit.close()  # after the last call: signs the final checkpoint


def _reload(gateway: Gateway, reload: Callable[[], GatewayConfig]) -> None:
    """SIGHUP: the configuration read again; its seal keys and TLS certificate taken. On any
    problem what is held stays in use, and the log says why."""
    try:
        config = reload()
        kids = gateway.reload_seal_keys(config.seal_keys)
        tls = gateway.reload_tls(config)
    except (GatewayError, OSError) as exc:
        problem = str(exc)
    else:
        log.warning(
            "SIGHUP: reloaded; TLS certificate %s, %d seal keys: %s",
            tls,
            len(kids),
            ", ".join(kids) or "none",
        )
        return
    log.error("SIGHUP: not (fully) reloaded, what was held stays in use: %s", problem)


def freeze_startup_heap() -> None:
    """Move everything allocated while starting (the registry, certificates, compiled policies,
    modules) out of the garbage collector's sight: a full collection then walks only what
    requests allocate. Measured in bench/RESULTS.md: the longest collector pause went from
    25–42 ms to under 3 ms. Call once, when every gateway of the process has started."""
    gc.collect()
    gc.freeze()


async def create_gateway(
    config: GatewayConfig,
    *,
    clock: Callable[[], datetime] = utc_now,
    shared_port: bool = False,
) -> tuple[Gateway, int]:
    gateway = Gateway(config, clock=clock, shared_port=shared_port)
    port = await gateway.start()
    return gateway, port


async def serve(
    config: GatewayConfig,
    *,
    ready: Callable[[Gateway], None] | None = None,
    reload: Callable[[], GatewayConfig] | None = None,
    shared_port: bool = False,
) -> None:
    """Run one gateway until SIGINT or SIGTERM, then stop gracefully. On SIGHUP, `reload()`
    reads the configuration again and the gateway takes its `[[seal.keys]]` and its `[tls]`
    certificate and key (nothing else is reloaded; the registry follows its own source).
    `shared_port`: a `--workers` worker, binding its ports together with its siblings."""
    if not shared_port:  # before the gateway is built: a refusal is its only output
        check_ports_free(config)
    gateway, _ = await create_gateway(config, shared_port=shared_port)
    freeze_startup_heap()
    if ready is not None:
        ready(gateway)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload, gateway, reload)
    try:
        await stop.wait()
    finally:
        log.info("gateway %s stopping (grace %.1fs)", config.region, config.grace_seconds)
        await gateway.stop()
