"""The metrics and probe endpoint: a minimal HTTP/1.1 server on its own port, asyncio only.

    GET /metrics   Prometheus text exposition
    GET /healthz   200 "ok" while the process serves (liveness)
    GET /readyz    200 "ready" when `ready()` says so, else 503 and a one-line reason
    anything else  404; a method other than GET: 405

One request per connection: the head is read (at most `MAX_REQUEST_HEAD_BYTES`, within
`READ_TIMEOUT_SECONDS`), one response is written, the connection is closed. A body is never read.

Several worker processes: start every worker with `PROMETHEUS_MULTIPROC_DIR` set to the same
directory, emptied before the first worker starts (stale files from an earlier run would be
added in). prometheus_client then keeps each process's values in files there, and `/metrics`
answers with all of them aggregated by `MultiProcessCollector`, counters and histograms summed,
gauges by their `multiprocess_mode` (registry expiry: the most lagging live worker; circuit and
checkpoint: the highest). Two limits of prometheus_client there: the variable must be set before
`prometheus_client` is first imported, and a series cannot be removed; so the certificate
gauges, whose keys come and go with the registry, are made at scrape time by the answering
worker from the registry it holds (`collectors`, from `GatewayMetrics.scrape_collectors`). Call
`prometheus_client.multiprocess.mark_process_dead(pid)` when a worker exits, so its gauges leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_REQUEST_HEAD_BYTES",
    "READ_TIMEOUT_SECONDS",
    "MetricsServer",
    "Readiness",
]

log = logging.getLogger("tongban.metrics")

MAX_REQUEST_HEAD_BYTES = 8192  # bytes: request line and headers together
READ_TIMEOUT_SECONDS = 5.0  # to receive the request head
MAX_CONNECTIONS = 64  # open at once; more are closed unanswered
MAX_REASON_CHARS = 200

# True: ready. False, or (False, "why"): not ready. (True, anything): ready.
Readiness = Callable[[], bool | tuple[bool, str]]

_TEXT = "text/plain; charset=utf-8"


def _always_ready() -> bool:
    return True


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line[:MAX_REASON_CHARS] or "not ready"


class MetricsServer:
    """Serves `registry` (or, in multi-process mode, every worker's metrics) over HTTP."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Readiness = _always_ready,
        before_scrape: Callable[[], None] | None = None,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
        collectors: Sequence[Collector] = (),
    ) -> None:
        self._registry = registry
        self._collectors = tuple(collectors)  # multi-process mode: added to the workers' files
        self._before_scrape = before_scrape  # brings gauges that follow state up to date
        self._ready = ready
        self._read_timeout = read_timeout_seconds
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, reuse_port: bool = False
    ) -> int:
        """Listen on host:port (0: any free port); returns the port bound. `reuse_port`: several
        worker processes listen on the same port (each answers with every worker's metrics)."""
        if self._server is not None:
            raise RuntimeError("the metrics server is already started")
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_REQUEST_HEAD_BYTES, reuse_port=reuse_port or None
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._connections):
            writer.close()
        await server.wait_closed()

    # one connection -------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections.add(writer)
        try:
            try:
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), timeout=self._read_timeout
                )
            except asyncio.LimitOverrunError:
                await self._send(writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"too large\n")
                return
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return  # the client went away or never finished its request
            status, body, content_type = self._respond(head)
            await self._send(writer, status, body, content_type)
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[HTTPStatus, bytes, str]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return HTTPStatus.BAD_REQUEST, b"bad request\n", _TEXT
        method, target, _ = parts
        if method != "GET":
            return HTTPStatus.METHOD_NOT_ALLOWED, b"only GET\n", _TEXT
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return HTTPStatus.OK, self.exposition(), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return HTTPStatus.OK, b"ok\n", _TEXT
        if path == "/readyz":
            ready, reason = self._readiness()
            if ready:
                return HTTPStatus.OK, b"ready\n", _TEXT
            return HTTPStatus.SERVICE_UNAVAILABLE, reason.encode() + b"\n", _TEXT
        return HTTPStatus.NOT_FOUND, b"not found\n", _TEXT

    def _readiness(self) -> tuple[bool, str]:
        try:
            answer = self._ready()
        except Exception as exc:  # a probe answers; it does not crash the endpoint
            log.warning("readiness check failed: %s", exc.__class__.__name__)
            return False, f"readiness check failed ({exc.__class__.__name__})"
        if isinstance(answer, tuple):
            ready, reason = answer
            return bool(ready), _one_line(str(reason))
        return bool(answer), "not ready"

    def exposition(self) -> bytes:
        """The text exposition `/metrics` answers with."""
        if self._before_scrape is not None:
            try:
                self._before_scrape()
            except Exception:  # a scrape still answers, with the values last observed
                log.exception("updating the metrics before a scrape failed")
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if path:
            aggregated = CollectorRegistry()
            MultiProcessCollector(aggregated, path=path)  # type: ignore[no-untyped-call]
            for collector in self._collectors:
                aggregated.register(collector)
            return generate_latest(aggregated)
        return generate_latest(self._registry)

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, status: HTTPStatus, body: bytes, content_type: str = _TEXT
    ) -> None:
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("Allow: GET\r\n" if status is HTTPStatus.METHOD_NOT_ALLOWED else "")
            + "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
