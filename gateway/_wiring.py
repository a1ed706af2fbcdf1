"""Building a gateway's parts from its configuration: seal keys, breakers, the audit log, and the
query path with its backends (Redis or memory), data-system client and peer pool."""

from __future__ import annotations

import functools
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway._tls import NoTrust
from gateway.audit import (
    AuditLog,
    AuditStore,
    MemoryAuditStore,
    PostgresAuditStore,
    SqliteAuditStore,
    Witness,
    pseudonymize,
    witness_store_for,
)
from gateway.breaker import CircuitBreaker
from gateway.cache import AnswerCache, CacheBackend, MemoryBackend, RedisBackend
from gateway.cases import CaseBinding, case_store_for
from gateway.config import ExchangeConfig, GatewayConfig
from gateway.consent import (
    ConsentGate,
    ConsentRegister,
    ConsentUses,
    MemoryConsentRegister,
    PostgresConsentRegister,
    SqliteConsentRegister,
)
from gateway.errors import ConfigError
from gateway.metrics import PEER_LOCAL, GatewayMetrics, client_interceptors
from gateway.peer_certificates import PeerCertificates
from gateway.peers import PeerPool
from gateway.provider import ProviderClient
from gateway.quota import FallbackQuotaCounter, MemoryQuotaCounter, QuotaCounter, RedisQuotaCounter
from gateway.replay import (
    REPLAY_WINDOW_SECONDS,
    FallbackReplayGuard,
    MemoryReplayGuard,
    RedisReplayGuard,
    ReplayGuard,
)
from gateway.reports import AccessReporter
from gateway.revocation import CallerRevocation, make_fetcher
from gateway.sealing import Sm2SealKey
from gateway.services.exchange import QueryPath, status_asker
from gateway.services.witness import WitnessService
from gateway.shared_checks import OneTrip, SharedChecks
from gateway.timestamps import make_time_stamper
from gateway.tokens import TokenVerifier
from gateway.witnessing import CheckpointSubmitter, log_keys, witness_name
from registry import RegistryError, RegistryStore, SnapshotVerifier, load_trusted_root
from signer import (
    DocumentVerifier,
    FileKeyProvider,
    GmVerifier,
    KeyProvider,
    Pkcs11KeyProvider,
    SealVerifier,
    SignerError,
    is_sm2_key,
    open_signing_key,
)

__all__ = [
    "REDIS_MAX_CONNECTIONS",
    "QueryPathParts",
    "Witnessing",
    "build_audit_log",
    "build_query_path",
    "build_witnessing",
    "case_binding",
    "document_verifier",
    "load_seal_keys",
    "make_breaker",
    "registry_store",
]

log = logging.getLogger("tongban.gateway")

# Connections of the client the replay window and quotas share: a burst of calls
# waits (within [exchange] redis_timeout_seconds) for one instead of opening one per call.
REDIS_MAX_CONNECTIONS = 64

Closer = Callable[[], Awaitable[None]]


def registry_store(config: GatewayConfig, clock: Callable[[], datetime]) -> RegistryStore:
    """The store of registry snapshots, verifying them against the installed trusted root (or
    the 1-of-1 root of `authority_public_key`); a root that cannot be read is a ConfigError."""
    try:
        authority = load_trusted_root(config.trust_anchor)
    except RegistryError as exc:  # unreadable, or a root that does not verify
        raise ConfigError(str(exc)) from exc
    return RegistryStore(SnapshotVerifier(authority), clock=clock)


def load_seal_keys(config: GatewayConfig) -> dict[str, KeyProvider]:
    """The configured seal keys by kid: key files opened with the TLS passphrase (an SM2 key,
    its certificate's curve says so, with its SESeal: `eseal` or the file beside its
    certificate), keys in a cryptographic module through their PKCS#11 URI."""
    providers: dict[str, KeyProvider] = {}
    eseals = dict(config.seal_eseals)
    for certificate, private_key in config.seal_keys:
        provider: KeyProvider
        try:
            if not isinstance(private_key, Path):
                provider = Pkcs11KeyProvider(private_key, certificate)
            elif _is_sm2_certificate(certificate):
                eseal = eseals.get(certificate) or certificate.with_suffix(".esl")
                provider = Sm2SealKey.from_files(private_key, certificate, eseal)
            else:
                provider = FileKeyProvider(private_key, certificate, config.tls_passphrase)
        except SignerError as exc:
            raise ConfigError(f"seal key: {exc}") from exc
        providers[provider.kid] = provider
    return providers


def _is_sm2_certificate(path: Path) -> bool:
    """Whether the first certificate of a PEM file has an SM2 key (False if unreadable: the key
    provider then says what is wrong with the file)."""
    try:
        leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return False
    return is_sm2_key(leaf)


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
        key = open_signing_key(audit.key, config.tls_passphrase)
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


def document_verifier(
    clock: Callable[[], datetime],
    config: GatewayConfig | None = None,
    metrics: GatewayMetrics | None = None,
) -> DocumentVerifier:
    """The gateway's one verifier of every signed format: its `SealVerifier` (JAdES, `.seals`)
    and its `GmVerifier` (GB/T 38540 and OFD, `.gm`), trusting nothing until the gateway
    switches them, together, to the first registry it applies (`DocumentVerifier.use`). The
    answering side's Verify and the requester's seal checks use these same two objects. The
    `SealVerifier` holds the gateway's one `RevocationFetcher` (`[revocation] online`), which
    the TLS caller check shares (`caller_revocation`), and its TSA client and TSA anchors
    (`[timestamp]`), which the sealers share."""
    fetcher = make_fetcher(config.revocation, metrics, clock) if config is not None else None
    stamps = config.timestamp if config is not None else None  # the TSA client and anchors
    tsa_anchors = stamps.anchors() if stamps is not None else ()
    return DocumentVerifier(
        SealVerifier(
            NoTrust(),
            clock=clock,
            revocation=fetcher,
            tsa_anchors=tsa_anchors,
            stamper=make_time_stamper(stamps, metrics, clock),
        ),
        GmVerifier(NoTrust(), clock=clock, tsa_anchors=tsa_anchors),
    )


def caller_revocation(config: GatewayConfig, verifier: SealVerifier) -> CallerRevocation | None:
    """The online revocation check of TLS callers, sharing the seal verifier's fetcher (None
    when online checking is off)."""
    if verifier.revocation is None:
        return None
    return CallerRevocation(verifier.revocation, unreachable=config.revocation.unreachable)


@dataclass(frozen=True, slots=True)
class QueryPathParts:
    """What the query path is built from that the gateway itself holds."""

    config: GatewayConfig
    store: RegistryStore
    audit: AuditLog
    verifier: SealVerifier
    gm_verifier: GmVerifier
    seal_keys: dict[str, KeyProvider]
    metrics: GatewayMetrics
    redis_breaker: CircuitBreaker
    client_credentials: Callable[[str], grpc.ChannelCredentials]
    clock: Callable[[], datetime]
    # the probe handshake's TLS context per peer region (GatewayTls.probe_context): None, the
    # peers' server certificates are not checked for revocation
    probe_context: Callable[[str], ssl.SSLContext] | None = None


def peer_certificates(parts: QueryPathParts) -> PeerCertificates | None:
    """The revocation check of the peers' server certificates, sharing the seal verifier's
    fetcher and the `[revocation]` policy (None when online checking is off)."""
    fetcher = parts.verifier.revocation
    if fetcher is None or parts.probe_context is None:
        return None
    return PeerCertificates(
        parts.probe_context,
        CallerRevocation(fetcher, unreachable=parts.config.revocation.unreachable),
        fetcher,
        timeout_seconds=parts.config.revocation.timeout_seconds,
        metrics=parts.metrics,
        clock=parts.clock,
    )


def _shared_backends(
    exchange: ExchangeConfig,
    redis_url: str,
    redis_breaker: CircuitBreaker,
    clock: Callable[[], datetime],
    closers: list[Closer],
) -> tuple[ReplayGuard, QuotaCounter, CacheBackend, SharedChecks]:
    """The replay window, quotas and answer cache in Redis (one breaker), each falling back to
    memory while Redis is out, and their checks in one round trip (`OneTrip`, on the replay
    window's and the quotas' client; the cache writes on a pool of their own)."""
    client = redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(
            redis_url,
            max_connections=REDIS_MAX_CONNECTIONS,
            timeout=exchange.redis_timeout_seconds,
            socket_timeout=exchange.redis_timeout_seconds,
            socket_connect_timeout=exchange.redis_timeout_seconds,
            retry=Retry(NoBackoff(), 0),  # a Redis that is down must fail fast
        )
    )
    closers.append(client.aclose)
    replay = FallbackReplayGuard(
        RedisReplayGuard(
            client,
            window_seconds=REPLAY_WINDOW_SECONDS,
            breaker=redis_breaker,
            timeout_seconds=exchange.redis_timeout_seconds,
        ),
        MemoryReplayGuard(REPLAY_WINDOW_SECONDS, clock),
    )
    quota = FallbackQuotaCounter(
        RedisQuotaCounter(
            client,
            breaker=redis_breaker,
            timeout_seconds=exchange.redis_timeout_seconds,
        ),
        MemoryQuotaCounter(),
    )
    backend = RedisBackend(redis_url, operation_timeout=exchange.redis_timeout_seconds)
    checks = OneTrip(
        client,
        replay=replay,
        quota=quota,
        breaker=redis_breaker,
        timeout_seconds=exchange.redis_timeout_seconds,
    )
    return replay, quota, backend, checks


def _provider_client(
    config: GatewayConfig, exchange: ExchangeConfig, metrics: GatewayMetrics
) -> ProviderClient | None:
    """The client of the region's data system, if there is one."""
    if not exchange.provider:
        return None
    return ProviderClient(
        exchange.provider,
        interceptors=client_interceptors(metrics, PEER_LOCAL),
        timeout_seconds=exchange.provider_timeout_seconds,
        breaker=make_breaker(
            config,
            f"data system {exchange.provider}",
            "queries needing it fail fast with PROVIDER_UNAVAILABLE",
        ),
    )


def _backends(
    parts: QueryPathParts, exchange: ExchangeConfig, closers: list[Closer]
) -> tuple[ReplayGuard, QuotaCounter, CacheBackend, SharedChecks | None]:
    """The replay window, quota counter and cache backend: in Redis, or in this process; and
    their checks in one round trip (None: one after the other, in this process)."""
    if exchange.redis_url:
        return _shared_backends(
            exchange, exchange.redis_url, parts.redis_breaker, parts.clock, closers
        )
    log.warning(
        "gateway %s keeps its cache, replay window and quotas in memory: run one replica only",
        parts.config.region,
    )
    return (
        MemoryReplayGuard(REPLAY_WINDOW_SECONDS, parts.clock),
        MemoryQuotaCounter(),
        MemoryBackend(),
        None,
    )


def case_binding(config: GatewayConfig, audit: AuditLog) -> CaseBinding:
    """The binding of queries for conditional datasets to the cases kept beside `audit`."""
    assert config.audit is not None  # the query path needs [audit]
    return CaseBinding(case_store_for(audit), config.audit.pseudonym_key)


def consent_register(
    config: GatewayConfig, audit: AuditLog, closers: list[Closer]
) -> ConsentRegister:
    """The register of the region's consents, durable beside the audit log: a SQLite file
    beside a SQLite audit store (`<audit file>-consents.sqlite`), the table `consents` of a
    PostgreSQL audit store's schema (shared by the replicas). In this process only for an audit
    log that keeps nothing on disk (`store = "memory"`, tests and demos): a revocation is then
    lost on a restart."""
    if isinstance(audit.store, PostgresAuditStore):
        return PostgresConsentRegister(audit)
    settings = config.audit
    if settings is not None and settings.store == "sqlite" and settings.path is not None:
        path = settings.path
        register = SqliteConsentRegister(path.with_name(path.name + "-consents.sqlite"))

        async def close() -> None:
            register.close()

        closers.append(close)
        return register
    log.warning(
        "gateway %s keeps its consent register in memory (its audit log keeps nothing on "
        "disk): a revocation is lost on a restart and not seen by other replicas",
        config.region,
    )
    return MemoryConsentRegister()


def consent_uses(exchange: ExchangeConfig, closers: list[Closer]) -> ConsentUses:
    """The count of consents' uses: in Redis when there is one (shared by the replicas)."""
    if not exchange.redis_url:
        return ConsentUses()
    client = redis.asyncio.Redis.from_url(
        exchange.redis_url,
        socket_timeout=exchange.redis_timeout_seconds,
        socket_connect_timeout=exchange.redis_timeout_seconds,
    )
    closers.append(client.aclose)
    return ConsentUses(client)


def build_query_path(
    parts: QueryPathParts, closers: list[Closer]
) -> tuple[QueryPath, PeerPool] | None:
    """The query path and its peer pool, when the configuration has [exchange] (it needs
    [audit] too). What must be closed at the end is added to `closers`, in closing order."""
    config, clock = parts.config, parts.clock
    exchange = config.exchange
    if exchange is None:
        return None
    if config.audit is None:
        raise ConfigError("exchange: the query path audits every access: configure [audit] too")
    cache_key_id = hashlib.sha256(exchange.cache_key).hexdigest()[:4]
    replay, quota, backend, checks = _backends(parts, exchange, closers)
    closers.append(backend.close)
    provider = _provider_client(config, exchange, parts.metrics)
    if provider is not None:
        closers.append(provider.close)
    peers = PeerPool(
        parts.store,
        parts.client_credentials,
        overrides=config.peers,
        interceptors=lambda region: client_interceptors(parts.metrics, region),
        make_breaker=lambda region: make_breaker(
            config,
            f"peer gateway {region}",
            "queries to it fail fast with PEER_UNAVAILABLE",
        ),
        certificates=peer_certificates(parts),
    )
    closers.append(peers.close)
    audit_key = open_signing_key(config.audit.key, config.tls_passphrase)
    assert isinstance(audit_key, ed25519.Ed25519PrivateKey)  # build_audit_log checked it
    path = QueryPath(
        region=config.region,
        gateway_name=f"gateway-{config.region}",
        registry=parts.store,
        tokens=TokenVerifier(region=config.region, clock=clock),
        replay=replay,
        quota=quota,
        checks=checks,
        peers=peers,
        verifier=parts.verifier,
        gm_verifier=parts.gm_verifier,
        seal_keys=parts.seal_keys,
        cache=AnswerCache(
            backend,
            key=exchange.cache_key,
            key_id=cache_key_id,
            breaker=parts.redis_breaker,  # one Redis, one breaker
        ),
        provider=provider,
        audit=parts.audit,
        pseudonym_key=config.audit.pseudonym_key,
        metrics=parts.metrics,
        clock=clock,
        peer_timeout_seconds=exchange.peer_timeout_seconds,
        audit_key=audit_key,  # signs forwarded requests and report batches
        reporter=AccessReporter(
            region=config.region,
            registry=parts.store,
            peers=peers,
            audit=parts.audit,
            key=audit_key,
            clock=clock,
        ),
        cases=case_binding(config, parts.audit) if config.cases.bind_queries else None,
        consents=ConsentGate(
            region=config.region,
            register=consent_register(config, parts.audit, closers),
            uses=consent_uses(exchange, closers),
            ask_status=status_asker(peers, exchange.peer_timeout_seconds),
            pseudonym=functools.partial(pseudonymize, key=config.audit.pseudonym_key),
            clock=clock,
            status_seconds=exchange.consent_status_seconds,
        ),
    )
    closers.insert(0, path.close)  # first: flushes reports over the peer channels
    return path, peers


@dataclass(frozen=True, slots=True)
class Witnessing:
    """The gateway's witness of the other regions' logs (served as `tongban.v1.Witness`) and the
    submitter of its own checkpoints to theirs (docs/audit.md "Witnessing")."""

    witness: Witness
    service: WitnessService
    submitter: CheckpointSubmitter


def build_witnessing(
    config: GatewayConfig,
    audit: AuditLog | None,
    peers: PeerPool | None,
    store: RegistryStore,
    clock: Callable[[], datetime],
) -> Witnessing | None:
    """Witnessing kept in the audit log's own store, signed with its audit key; the gateway's
    metrics observe it. None without an audit log or peers (no query path)."""
    if audit is None or peers is None or not isinstance(audit.observer, GatewayMetrics):
        return None
    metrics = audit.observer
    tables = witness_store_for(audit.store)
    name = witness_name(config.region)
    witness = Witness(
        name,
        lambda body, at: audit.cosign(body, name, at),
        tables,
        log_keys(store, clock),
        clock=clock,
        observer=metrics,
    )
    submitter = CheckpointSubmitter(
        audit, tables, store, peers, region=config.region, observer=metrics, clock=clock
    )
    audit.checkpoint_listeners.append(submitter.offer)
    return Witnessing(witness, WitnessService(witness), submitter)
