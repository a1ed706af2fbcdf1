"""The gateway process: one `grpc.aio` server over mutual TLS, its registry, health and reflection.

`create_gateway(config)` builds and starts a `Gateway` and returns it with the bound port, so
tests bind port 0 and talk to it over a real channel; `serve(config)` runs one until SIGINT or
SIGTERM and then stops gracefully. Only the services built so far are served.

The gateway owns one `DocumentVerifier` (`gateway._wiring.document_verifier`: JAdES, GB/T 38540,
OFD) and switches it to every registry the store applies (a swap listener registered before any
snapshot is offered), so every verification decides with the registry the gateway holds.

What it is built from lives beside it: `gateway._wiring` (seal keys, breakers, the audit log,
the query path and its backends), `gateway._tls` (certificates and the roots trusted) and
`gateway._limits` (the transport's limits, each with why).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway._grpc_logs import withhold_undecodable_metadata
from gateway._limits import (
    HANDSHAKE_TIMEOUT_SECONDS,
    KEEPALIVE_OPTIONS,
    MAX_CONCURRENT_RPCS,
    MAX_CONNECTION_IDLE_SECONDS,
    MAX_MESSAGE_BYTES,
    MAX_PENDING_CALLS,
    MAX_STREAMS_PER_CONNECTION,
)
from gateway._ports import check_ports_free
from gateway._tls import GatewayTls
from gateway._wiring import (
    QueryPathParts,
    build_audit_log,
    build_query_path,
    build_witnessing,
    caller_revocation,
    document_verifier,
    load_seal_keys,
    make_breaker,
    registry_store,
)
from gateway._wiring_cases import CASES_SERVICE, build_cases
from gateway._wiring_tracker import TRACKER_SERVICE, build_tracker, serve_tracker
from gateway.admission import CallAdmission
from gateway.audit import AuditError, AuditRecord, Outcome
from gateway.breaker import CircuitBreaker
from gateway.config import GatewayConfig
from gateway.errors import ConfigError, GatewayError
from gateway.identity import MALFORMED_REASON, Caller, CallerInterceptor, CallerResolver
from gateway.metrics import (
    GatewayMetrics,
    MetricsInterceptor,
    MetricsServer,
    multiprocess_mode,
)
from gateway.peers import PeerPool
from gateway.registry_sync import PeerSnapshotSource
from gateway.services.consents import CONSENTS, serve_consents
from gateway.services.credentials import CredentialsService
from gateway.services.exchange import DataExchangeService, PeerService, QueryPath
from gateway.services.oversight import OversightService
from gateway.services.registry import RegistryService
from gateway.timestamps import checkpoint_stamper
from registry import (
    FileSnapshotSource,
    RegistryError,
    RegistryTrust,
    SignedSnapshot,
)
from signer import KeyProvider, KeyReference
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
WITNESS_SERVICE = exchange_pb2.DESCRIPTOR.services_by_name["Witness"].full_name
_EXCHANGE_SERVICES = (EXCHANGE_SERVICE, PEER_SERVICE, WITNESS_SERVICE, CONSENTS)  # with witnessing
SERVED_SERVICES = (REGISTRY_SERVICE, CREDENTIALS_SERVICE)  # always; Oversight with an audit log
OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})  # mTLS only, no identity
# Services whose undecodable requests are audited (caller known, values unknown): see
# `Gateway.audit_malformed`.
_AUDITED = (EXCHANGE_SERVICE, PEER_SERVICE, CREDENTIALS_SERVICE, OVERSIGHT_SERVICE, CONSENTS)
MALFORMED_AUDITED_SERVICES = frozenset({*_AUDITED, TRACKER_SERVICE})
HEALTH_CHECK_SECONDS = 5.0  # how often registry expiry is re-checked for health


def utc_now() -> datetime:
    return datetime.now(UTC)


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
        withhold_undecodable_metadata()
        # True only in a `--workers` worker: its siblings bind the same ports (SO_REUSEPORT).
        self.shared_port = shared_port
        self.store = registry_store(config, clock)
        self.metrics = GatewayMetrics()
        self.metrics_server: MetricsServer | None = None
        self.metrics_port = 0
        self._clock = clock
        self.admission = CallAdmission()  # calls in flight per caller (docs/threats.md T15)
        self._tls = GatewayTls(config, self.store)
        self._peers: PeerPool | None = None
        self.documents = document_verifier(clock, config, self.metrics)  # switched to each registry
        self.verifier = self.documents.seals
        self.store.on_swap(self._follow_registry)  # before any snapshot can be offered
        self.audit = build_audit_log(config, clock=clock)
        if self.audit is not None:
            self.audit.observer = self.metrics
            self.audit.time_stamper = checkpoint_stamper(self.verifier.stamper)
        # One map shared by the services, so that `reload_seal_keys` reaches both.
        self.seal_keys = seal_keys = load_seal_keys(config)
        self.credentials = CredentialsService(
            self.store,
            self.verifier,
            documents=self.documents,
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
        # With the query path (the peers are its channels): witness others, submit to them.
        self.witnessing = build_witnessing(config, self.audit, self._peers, self.store, clock)
        self.cases = build_cases(
            config,
            self.audit,
            self._peers,
            self.store,
            clock,
            documents=self.documents,
            metrics=self.metrics,
        )
        self.tracker = build_tracker(config, self.audit, self._peers, self.store, clock)
        self.served_services = (
            *SERVED_SERVICES,
            *((OVERSIGHT_SERVICE,) if self.audit else ()),
            *(_EXCHANGE_SERVICES if self.witnessing else ()),
            *((TRACKER_SERVICE,) if self.tracker else ()),
            *((CASES_SERVICE,) if self.cases else ()),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._swap_tasks: set[asyncio.Future[None]] = set()
        self._stop_following: Callable[[], None] = lambda: None
        self._health = health.aio.HealthServicer()
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
        if self.config.exchange is not None and self.audit is None:
            raise ConfigError("exchange: the query path audits every access: configure [audit] too")
        if self.audit is None:
            return None
        parts = QueryPathParts(
            config=self.config,
            store=self.store,
            audit=self.audit,
            verifier=self.verifier,
            gm_verifier=self.documents.gm,
            seal_keys=seal_keys,
            metrics=self.metrics,
            redis_breaker=self.redis_breaker,
            client_credentials=self.client_credentials,
            clock=clock,
            probe_context=self._tls.probe_context,
        )
        built = build_query_path(parts, self._closers)
        if built is None:
            return None
        path, self._peers = built
        return path

    # TLS ---------------------------------------------------------------------------------------
    def reload_seal_keys(
        self, pairs: Sequence[tuple[Path, KeyReference]], eseals: Sequence[tuple[Path, Path]] = ()
    ) -> tuple[str, ...]:
        """Hold exactly these seal keys (and SM2 keys' named SESeals) from now on, without a
        restart: a rotation issued a successor, or a retired key left the configuration. All are
        opened first: if one fails, a ConfigError says which and those held stay in use."""
        config = dataclasses.replace(self.config, seal_keys=tuple(pairs), seal_eseals=tuple(eseals))
        opened = load_seal_keys(config)
        self.seal_keys.clear()
        self.seal_keys.update(opened)
        self.config = config
        return tuple(sorted(opened))  # the kids now held

    def reload_tls(self, config: GatewayConfig) -> str:
        """Serve and call peers with the TLS certificate and key `config` names from now on (a
        rotation issued a new one), without a restart: new handshakes use it, connections open
        keep theirs. Both are read first: if one fails, a ConfigError says why and the old pair
        stays. Returns the kid (x5t#S256) of the certificate now used."""
        kid = self._tls.reload(config)
        self.config = dataclasses.replace(
            self.config,
            tls_certificate=config.tls_certificate,
            tls_private_key=config.tls_private_key,
        )
        if self._peers is not None:
            self._peers.renew()
        return kid

    def client_credentials(self, region: str | None = None) -> grpc.ChannelCredentials:
        """Credentials for calling peers (see `GatewayTls.client_credentials`)."""
        return self._tls.client_credentials(region)

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
        record = AuditRecord.of_call(
            time=self._clock(),
            region=self.config.region,
            rpc=method,
            outcome=Outcome.DENIED,
            reason=MALFORMED_REASON,
            caller_agency=caller.agency_id,
            caller_region=caller.region,
            provider_region="",
            registry_version=version,
        )
        self.metrics.decision("denied", MALFORMED_REASON)
        try:
            await self.audit.append(record)
        except AuditError:
            log.warning("a malformed request could not be audited: the audit store is unavailable")

    # Lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> int:
        if not self.shared_port:  # before the audit store is opened: a 2nd gateway touches nothing
            check_ports_free(self.config)
        if self.audit is not None:
            try:
                await self.audit.open()
            except AuditError as exc:
                raise ConfigError(f"audit: the audit store cannot be opened: {exc}") from exc
        if self._file_source is not None:
            self._file_source.poll()
        server = self._grpc_server()
        try:
            self.port = server.add_secure_port(self.config.listen, self._tls.server_credentials())
        except RuntimeError as exc:
            raise ConfigError(f"gateway.listen: cannot bind {self.config.listen} ({exc})") from exc
        await server.start()
        self.server = server
        if self.config.metrics_listen:
            await self._start_metrics(self.config.metrics_listen)
        await self._update_health()
        self._stop_following = self.store.on_swap(self._on_swap)
        self._start_background_tasks()
        log.info("gateway %s listening on port %d", self.config.region, self.port)
        return self.port

    def _grpc_server(self) -> grpc.aio.Server:
        """The server with its interceptors, transport limits and services (not bound yet)."""
        server = grpc.aio.server(
            interceptors=[
                # first: a call the caller check refuses is counted too (as Unauthenticated)
                MetricsInterceptor(self.metrics),
                CallerInterceptor(
                    CallerResolver(
                        self.store,
                        self._clock,
                        revocation=caller_revocation(self.config, self.verifier),
                    ),
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
            book = self.cases.book if self.cases is not None else None
            peer = PeerService(self.query_path, book, self.tracker)
            exchange_pb2_grpc.add_PeerServicer_to_server(peer, server)
            serve_tracker(self.tracker, server)
            serve_consents(self.query_path, server)
        if self.witnessing is not None:
            exchange_pb2_grpc.add_WitnessServicer_to_server(self.witnessing.service, server)
        if self.cases is not None:
            self.cases.serve(server)
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
        return server

    async def _start_metrics(self, listen: str) -> None:
        """Serve /metrics (and /readyz) on `listen`; a port that cannot be bound stops all."""
        host, _, port = listen.rpartition(":")
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

    def _start_background_tasks(self) -> None:
        """Following the registry (file, peer), re-checking its expiry, sending access reports."""
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
        if self.witnessing is not None:  # checkpoints to the other regions' witnesses
            self._tasks.append(asyncio.create_task(self.witnessing.submitter.run()))
        if self.cases is not None:  # case events to the other regions, the overdue gauge
            self._tasks.append(asyncio.create_task(self.cases.run(), name="cases"))

    def _follow_registry(self, snapshot: SignedSnapshot) -> None:
        # Synchronous, inside the swap: no call sees the new registry with the old verifiers
        # (the JAdES and GB/T 38540 ones are the DocumentVerifier's own).
        self.documents.use(RegistryTrust(snapshot.registry))

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
        kids = gateway.reload_seal_keys(config.seal_keys, config.seal_eseals)
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
