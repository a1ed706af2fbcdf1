"""`tongban gateway serve --workers N`: N gateway processes sharing one port.

One Python process runs one event loop on one core; a region's gateway grows by processes, and
past one machine by replicas. The supervisor (this module, in the parent process) forks N
workers *before any gRPC object exists* (gRPC's core does not survive a fork of a process that
has started it); each worker builds its own `Gateway` and binds the same `host:port` with `SO_REUSEPORT`, so
the kernel spreads new connections over the workers. Only workers bind so: before forking, the
supervisor checks that no other process listens on either port (gateway/_ports.py), and Linux
lets only sockets of the same user share a port. The metrics port is shared the same way, and every worker answers `/metrics` with all workers' values
aggregated (prometheus_client's multi-process mode; see gateway/metrics/_http.py).

Workers share state exactly as replicas do, so the configuration must be one replicas could
run: the audit log in PostgreSQL (one SQLite file has one writer), and, when the gateway serves
queries, the cache, replay window and quotas in Redis (in memory, a request id replayed on
another worker would not be caught). Anything else is refused before a worker starts.

The supervisor forwards SIGINT/SIGTERM (graceful stop) and SIGHUP (reload the seal keys) to
every worker, starts again a worker that dies (after a pause that grows while workers keep
dying at once), and gives up with exit code 1 if workers cannot stay up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from gateway._ports import check_ports_free
from gateway.config import GatewayConfig
from gateway.errors import ConfigError, GatewayError
from gateway.logs import bind_worker

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = ["MAX_WORKERS", "check_replica_safe", "serve_workers"]

log = logging.getLogger("tongban.workers")

MAX_WORKERS = 64
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
EARLY_DEATH_SECONDS = 5.0  # a worker that dies sooner than this after its start failed to start
MAX_EARLY_DEATHS = 3  # in a row: then the configuration or the machine is wrong, not the worker
RESTART_PAUSE_SECONDS = 0.5  # doubled after each early death


def check_replica_safe(config: GatewayConfig, workers: int) -> None:
    """Raise ConfigError unless `workers` processes can run `config` side by side."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers: between 1 and {MAX_WORKERS}, not {workers}")
    if workers == 1:
        return
    _, _, port = config.listen.rpartition(":")
    if port == "0":
        raise ConfigError(
            "gateway.listen: several workers share one port: give a fixed port, not 0"
        )
    if config.metrics_listen.endswith(":0"):
        raise ConfigError(
            "gateway.metrics_listen: several workers share one port: give a fixed port, not 0"
        )
    if config.audit is not None and config.audit.store != "postgres":
        raise ConfigError(
            f'audit.store: several workers need store = "postgres" (like replicas): '
            f"a {config.audit.store} log has one writer"
        )
    if config.exchange is not None and not config.exchange.redis_url:
        raise ConfigError(
            "exchange.redis_url_env: several workers need Redis (like replicas): the cache, "
            "replay window and quotas must be shared, or a replayed request id goes unnoticed"
        )


def serve_workers(
    config: GatewayConfig,
    workers: int,
    *,
    ready: Callable[[int, Gateway], None] | None = None,
    reload: Callable[[], GatewayConfig] | None = None,
) -> int:
    """Run `workers` gateway processes until SIGINT or SIGTERM; 0 after a clean stop, 1 if the
    workers could not stay up. Call before anything in this process created a gRPC object."""
    check_replica_safe(config, workers)
    # A port another process holds would be shared with it (SO_REUSEPORT): refuse it first.
    check_ports_free(config)
    metrics_dir = tempfile.mkdtemp(prefix="tongban-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # before prometheus_client is imported anywhere
    supervisor = _Supervisor(config, workers, ready, reload, metrics_dir)
    try:
        return supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    def __init__(
        self,
        config: GatewayConfig,
        workers: int,
        ready: Callable[[int, Gateway], None] | None,
        reload: Callable[[], GatewayConfig] | None,
        metrics_dir: str,
    ) -> None:
        self._config = config
        self._count = workers
        self._ready = ready
        self._reload = reload
        self._metrics_dir = metrics_dir
        self._children: dict[int, tuple[int, float]] = {}  # pid -> (worker number, started at)
        self._stopping = False
        self._failed = False

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            for number in range(1, self._count + 1):
                self._spawn(number)
            self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self._failed else 0

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        if sig == signal.SIGHUP:
            log.warning("SIGHUP: asking %d workers to reload their seal keys", len(self._children))
            self._forward(signal.SIGHUP)
            return
        if not self._stopping:
            log.warning("stopping %d workers", len(self._children))
        self._stopping = True
        self._forward(signal.SIGTERM)

    def _forward(self, sig: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _watch(self) -> None:
        early_deaths = 0
        while self._children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
                continue
            if pid not in self._children:
                continue
            number, started = self._children.pop(pid)
            self._mark_dead(pid)
            if self._stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
            if time.monotonic() - started < EARLY_DEATH_SECONDS:
                early_deaths += 1
            else:
                early_deaths = 0
            if early_deaths >= MAX_EARLY_DEATHS:
                log.error(
                    "worker %d (pid %d) ended (%s); workers cannot stay up: stopping all",
                    number,
                    pid,
                    how,
                )
                self._failed = True
                self._stopping = True
                self._forward(signal.SIGTERM)
                continue
            pause = RESTART_PAUSE_SECONDS * (2 ** max(early_deaths - 1, 0)) if early_deaths else 0.0
            log.error("worker %d (pid %d) ended (%s); starting it again", number, pid, how)
            time.sleep(pause)
            if not self._stopping:
                self._spawn(number)

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _spawn(self, number: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _worker_main(self._config, number, self._ready, self._reload)
        self._children[pid] = (number, time.monotonic())


def _worker_main(
    config: GatewayConfig,
    number: int,
    ready: Callable[[int, Gateway], None] | None,
    reload: Callable[[], GatewayConfig] | None,
) -> None:
    """One worker: its own gateway, stopped by SIGINT/SIGTERM; never returns."""
    import asyncio

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # serve() installs the event loop's own handlers
    bind_worker(number)  # the log handler is the parent's, inherited: its events say which
    code = 0
    try:
        from gateway.server import serve

        announce = (lambda gateway: ready(number, gateway)) if ready is not None else None
        asyncio.run(serve(config, ready=announce, reload=reload, shared_port=True))
    except GatewayError as exc:
        log.error("worker %d: %s", number, exc)  # noqa: TRY400 - a message, not a traceback
        code = 1
    except BaseException:
        log.exception("worker %d failed", number)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
