"""The `AccessReporter`: sends the access reports of requester-side cache hits from this
gateway's audit log (the outbox) to their owners, in signed batches (`Peer.ReportAccess`)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import (
    AuditLog,
    AuditUnavailable,
    Outbound,
)
from gateway.breaker import BreakerOpen
from gateway.errors import error_info_of, peer_text
from gateway.forward_signing import signing_kid
from gateway.peers import PeerPool, UnknownPeer
from gateway.reports._format import (
    MAX_REPORTS_PER_BATCH,
    AccessReport,
    ReportFormatError,
    batch_payload,
    sign_batch,
)
from registry import Registry, RegistryError, RegistryStore
from signer import canonical_json
from tongban.v1 import exchange_pb2

__all__ = [
    "BACKOFF_MAX_SECONDS",
    "BACKOFF_MIN_SECONDS",
    "CLOSE_SECONDS",
    "FLUSH_SECONDS",
    "MAX_BACKLOG",
    "SEND_TIMEOUT_SECONDS",
    "AccessReporter",
    "ReporterCounters",
]

log = logging.getLogger("tongban.reports")

FLUSH_SECONDS: Final = 1.0  # a recorded report waits at most this long before it is sent
SEND_TIMEOUT_SECONDS: Final = 5.0  # one Peer.ReportAccess call
BACKOFF_MIN_SECONDS: Final = 0.5  # after a failed send to an owner, doubled up to the max
BACKOFF_MAX_SECONDS: Final = 30.0
CLOSE_SECONDS: Final = 5.0  # what a graceful stop spends flushing at most
# Reports waiting for one owner beyond which hits for it are no longer answered from the cache
# (they are forwarded to the owner, like misses): the outbox does not grow without bound.
MAX_BACKLOG: Final = 100_000


# -- the reporter -------------------------------------------------------------------------------
@dataclass
class ReporterCounters:
    """Totals since start (for logs and tests; no metric carries them yet)."""

    queued: int = 0  # reports recorded by hits (their records durable)
    batches: int = 0  # batches the owners accepted
    accepted: int = 0  # reports the owners accepted
    refused: int = 0  # reports an owner refused for good (recorded there as denied)
    failures: int = 0  # sends that failed and will be retried
    last_error: str = ""


def _failure(exc: grpc.aio.AioRpcError) -> str:
    """A failed send, for the log and `counters.last_error`: the code, the owner's reason (one
    of the contract's), and its message bounded and escaped."""
    reason, _ = _status_details(exc)
    return f"{exc.code().name} {reason or '-'}: {peer_text(exc.details() or '')}"


def _status_details(exc: grpc.aio.AioRpcError) -> tuple[str, Mapping[str, str]]:
    """(ErrorInfo reason, metadata) of a peer's rich status, if it sent one."""
    info, _ = error_info_of(exc)
    return (info.reason, dict(info.metadata)) if info is not None else ("", {})


# A refusal of one report (ErrorInfo metadata "index") with one of these codes is final: the
# owner decided, and recorded the refusal; retrying the same report cannot change it.
_FINAL_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    }
)


class AccessReporter:
    """Sends the access reports of requester-side cache hits to their owners, from this
    gateway's own audit log (the outbox): in signed batches, as soon as `batch_size` are waiting
    for an owner, else every `flush_seconds`; with a growing pause per owner (`backoff_min`..
    `backoff_max` seconds) while it cannot be reached or refuses a whole batch. An owner's
    cursor moves only past what it acknowledged, i.e. made durable in its own log; `close()`
    sends what it can on a graceful stop, and whatever is left is sent by the next start.

    The batches are signed with the gateway's audit key (`key`, Ed25519); its registry id is
    the audit key of this region the current registry publishes with the same public key.
    """

    def __init__(
        self,
        *,
        region: str,
        registry: RegistryStore,
        peers: PeerPool,
        audit: AuditLog,
        key: ed25519.Ed25519PrivateKey,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        flush_seconds: float = FLUSH_SECONDS,
        batch_size: int = MAX_REPORTS_PER_BATCH,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        backoff_min: float = BACKOFF_MIN_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        if not 1 <= batch_size <= MAX_REPORTS_PER_BATCH:
            raise ValueError(f"batch_size is 1 to {MAX_REPORTS_PER_BATCH}")
        self.region = region
        self._registry = registry
        self._peers = peers
        self.audit = audit
        self._key = key
        self._public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._clock = clock
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.send_timeout = send_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.max_backlog = max_backlog
        self.counters = ReporterCounters()
        self.backlog: dict[str, int] = {}  # reports waiting per owner, as of the last look
        self._waiting: dict[str, int] = {}  # reports recorded by this process since its last send
        self._retry_at: dict[str, tuple[float, float]] = {}  # owner -> (monotonic, pause)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._kid: tuple[int, str | None] = (-1, None)
        self._closed = False

    # -- the answer path ---------------------------------------------------------------------
    def accepting(self, owner: str) -> bool:
        """Whether a hit for `owner` may be answered from the cache: not while this gateway is
        stopping, nor while `max_backlog` reports already wait for that owner (it is then asked
        instead, like on a miss, so that the outbox does not grow without bound)."""
        return not self._closed and self.backlog.get(owner, 0) < self.max_backlog

    def outbound(self, owner: str, report: AccessReport) -> Outbound:
        """The report as its audit record carries it to the outbox."""
        return Outbound(owner, canonical_json(report.document()))

    def recorded(self, owner: str) -> None:
        """A hit's record (and so its report) is durable: send soon, at once if a batch is full."""
        self.counters.queued += 1
        self.backlog[owner] = self.backlog.get(owner, 0) + 1
        waiting = self._waiting[owner] = self._waiting.get(owner, 0) + 1
        if waiting >= self.batch_size:
            self._wake.set()

    # -- sending -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: flush whenever a batch is full, and every `flush_seconds`."""
        while True:
            try:
                async with asyncio.timeout(self.flush_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except AuditUnavailable as exc:  # the reports wait in the log
                log.warning("access reports: the audit log cannot be read (%s); retrying", exc)

    async def flush(self, *, final: bool = False, deadline: float | None = None) -> int:
        """Send every waiting report whose owner is not in its retry pause (`final`: whatever
        the pause); returns how many the owners accepted. Raises AuditUnavailable."""
        async with self._lock:
            accepted = 0
            self.backlog = await self.audit.outbox_backlog()
            owners = sorted(self.backlog)
            # Nothing is kept per owner that has nothing waiting (delivered by another replica
            # sharing the log, or withdrawn): owners come and go with the registry's regions.
            for gone in (self._retry_at.keys() | self._waiting.keys()) - set(owners):
                self._retry_at.pop(gone, None)
                self._waiting.pop(gone, None)
            for owner in owners:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                retry = self._retry_at.get(owner)
                if not final and retry is not None and time.monotonic() < retry[0]:
                    continue
                accepted += await self._drain(owner, deadline)
            return accepted

    async def _drain(self, owner: str, deadline: float | None) -> int:
        accepted = 0
        limit = self.batch_size
        self._waiting[owner] = 0
        while deadline is None or time.monotonic() < deadline:
            pending = await self.audit.outbox(owner, limit)
            if not pending:
                break
            batch: list[tuple[int, AccessReport]] = []
            for item in pending:
                try:
                    report = AccessReport.from_document(json.loads(item.payload))
                except (ValueError, ReportFormatError) as exc:
                    if not batch:  # the oldest: it can never be sent, and must not block the rest
                        await self._set_aside(owner, item.index, exc)
                    break  # the ones before it go first
                batch.append((item.index, report))
            if not batch:
                continue
            sent, more, limit = await self._send(owner, batch, deadline)
            accepted += sent
            if not more:
                break
        return accepted

    async def _set_aside(self, owner: str, index: int, exc: Exception) -> None:
        """A stored report that does not read back (a row edited by hand, or a bug): said
        loudly, and acknowledged unsent; its audit record still says what was accessed."""
        log.error(
            "access reports: the report of audit record %d for region %s cannot be read back "
            "(%s); it is not sent: tell the owner from that record",
            index,
            owner,
            type(exc).__name__,
        )
        await self._pass(owner, index, 1)
        self.counters.refused += 1

    async def _pass(self, owner: str, through: int, reports: int) -> None:
        """Move `owner`'s cursor past index `through`: `reports` reports no longer wait."""
        await self.audit.acknowledge(owner, through)
        self.backlog[owner] = max(self.backlog.get(owner, 0) - reports, 0)

    def _signing_kid(self, registry: Registry) -> str | None:
        version, kid = self._kid
        if version == registry.version:
            return kid
        kid = signing_kid(registry, self.region, self._public)
        self._kid = (registry.version, kid)
        return kid

    def _failed(self, owner: str, why: str) -> None:
        _, pause = self._retry_at.get(owner, (0.0, 0.0))
        pause = min(max(pause * 2, self.backoff_min), self.backoff_max)
        self._retry_at[owner] = (time.monotonic() + pause, pause)
        self.counters.failures += 1
        self.counters.last_error = why
        log.warning(
            "access reports for region %s not delivered (%s); next try in %.1fs", owner, why, pause
        )

    async def _send(
        self, owner: str, batch: list[tuple[int, AccessReport]], deadline: float | None
    ) -> tuple[int, bool, int]:
        """(reports accepted, whether to go on draining this owner, how many to take next)."""
        try:
            registry = self._registry.current()
        except RegistryError as exc:
            self._failed(owner, f"no registry in force: {exc}")
            return 0, False, self.batch_size
        kid = self._signing_kid(registry)
        if kid is None:
            self._failed(
                owner,
                f"the registry publishes no audit key of region {self.region} matching this "
                "gateway's audit key: batches cannot be signed",
            )
            return 0, False, self.batch_size
        reports = [report for _, report in batch]
        payload = batch_payload(
            reporting_region=self.region,
            owner_region=owner,
            batch_id=secrets.token_hex(16),
            issued_at=self._clock(),
            reports=reports,
        )
        request = exchange_pb2.ReportAccessRequest(
            jws=sign_batch(payload, self._key, kid),
            reports=[r.message() for r in reports],
            reporting_region=self.region,
        )
        timeout = self.send_timeout
        if deadline is not None:
            timeout = max(min(timeout, deadline - time.monotonic()), 0.05)
        try:
            response = await self._peers.call(
                owner,
                lambda stub: stub.ReportAccess(request, timeout=timeout),
                timeout_seconds=timeout,
            )
        except (UnknownPeer, BreakerOpen, TimeoutError) as exc:
            self._failed(owner, str(exc) or type(exc).__name__)
            return 0, False, self.batch_size
        except grpc.aio.AioRpcError as exc:
            reason, metadata = _status_details(exc)
            index = metadata.get("index", "")
            if (
                exc.code() in _FINAL_CODES
                and index.isascii()
                and index.isdigit()
                and int(index) < len(batch)
            ):
                return await self._refused(owner, batch, int(index), reason or exc.code().name)
            self._failed(owner, _failure(exc))
            return 0, False, self.batch_size
        if response.accepted != len(batch) or len(response.audit_ids) != len(batch):
            self._failed(
                owner,
                f"the owner acknowledged {response.accepted} of {len(batch)} reports",
            )
            return 0, False, self.batch_size
        # The owner made them durable: only now does its cursor move past them.
        await self._pass(owner, batch[-1][0], len(batch))
        self._retry_at.pop(owner, None)
        self.counters.batches += 1
        self.counters.accepted += len(batch)
        return len(batch), True, self.batch_size  # until the outbox reads empty

    async def _refused(
        self, owner: str, batch: list[tuple[int, AccessReport]], at: int, reason: str
    ) -> tuple[int, bool, int]:
        """The owner refused report `at` of the batch for good (and recorded the refusal). The
        cursor passes it only once it is the oldest waiting: the ones before it go first, alone."""
        if at > 0:
            return 0, True, at
        index, refused = batch[0]
        log.error(
            "access reports: region %s refused a report of %s's access to %s (%s); it recorded "
            "the refusal, and the report (audit record %d) is not sent again",
            owner,
            refused.caller_agency,
            refused.dataset,
            reason,
            index,
        )
        await self._pass(owner, index, 1)
        self.counters.refused += 1
        return 0, True, self.batch_size

    async def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """A graceful stop: no more hits are answered from the cache; what waits is sent
        (within `timeout`). What is left waits in the audit log for the next start; from an
        in-memory log it is lost with the log itself, and said so."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout + 1):
                await self.flush(final=True, deadline=deadline)
            left = await self.audit.outbox_backlog()
        except (AuditUnavailable, TimeoutError) as exc:
            log.warning("access reports: the final flush did not finish (%s)", exc)
            return
        if not left:
            return
        waiting = ", ".join(f"{n} for {owner}" for owner, n in sorted(left.items()))
        if self.audit.durable:
            log.warning(
                "access reports: %s still waiting at stop; they are sent when region %s's "
                "gateway starts again on this audit log",
                waiting,
                self.region,
            )
        else:
            log.error(
                "access reports: %s could not be delivered before the stop and are lost with "
                "the in-memory audit log",
                waiting,
            )
