"""Follow-up records: an allowed record whose answer was not released is never left standing.

An append that timed out (the caller was refused), whose caller was cancelled, or whose commit
got no answer (`AuditOutcomeUnknown`) may still leave its record durable. If that record says
`allowed`, `FollowUps` appends a second record for the same request, `failed` with reason
`AUDIT_UNAVAILABLE` and no fields, so that the request's last record says that nothing was
released; and the access report the record carried to the owner (the outbox) is withdrawn if
it has not left yet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

from gateway.audit._record import AuditRecord, Outcome
from gateway.audit._store import Appended, AuditStore, Outbound
from gateway.audit.errors import AuditOutcomeUnknown, AuditUnavailable

__all__ = ["FOLLOW_UP_TRIES", "NOT_RELEASED", "FollowUps"]

log = logging.getLogger("tongban.audit")

NOT_RELEASED: Final = "AUDIT_UNAVAILABLE"  # the reason of the follow-up to a late allowed record
FOLLOW_UP_TRIES: Final = 10  # a follow-up after a commit that got no answer: tries, 1 s apart


class FollowUps:
    """The follow-ups of one audit log: `watch` an append that was given up on; `wait` at
    close for those on their way. `answered` is told when the store answered after all."""

    def __init__(
        self,
        store: AuditStore,
        clock: Callable[[], datetime],
        answered: Callable[[], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._answered = answered
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(
        self, record: AuditRecord, pending: asyncio.Future[Appended], outbound: Outbound | None
    ) -> None:
        """Once `pending` (the store's append of `record`) ends: if the record became durable,
        or may have (no answer to its commit), and claims an allowed access, follow it up."""

        def done(future: asyncio.Future[Appended]) -> None:
            if future.cancelled():
                return
            failed = future.exception()
            if failed is not None and not isinstance(failed, AuditOutcomeUnknown):
                return  # not stored: nothing claims an answer
            if failed is None:
                self._answered()  # the store answered after all
            if record.outcome is not Outcome.ALLOWED:
                return  # a refusal released nothing: the late record is true as it is
            follow_up = dataclasses.replace(
                record, time=self._clock(), outcome=Outcome.FAILED, reason=NOT_RELEASED, fields=()
            )
            if failed is None:
                task = asyncio.ensure_future(
                    self._late(follow_up, future.result(), outbound is not None)
                )
            else:
                task = asyncio.ensure_future(self._unanswered(follow_up))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        pending.add_done_callback(done)

    async def wait(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _late(self, record: AuditRecord, late: Appended, owed: bool) -> None:
        """Record `late` became durable after its caller was refused."""
        if owed:  # its owner must not be told of an access that was not released
            await self._withdraw(late.index)
        try:
            appended = await self._store.append(record)
        except AuditUnavailable as exc:
            log.error(  # noqa: TRY400 - the cause is the message; no traceback to show
                "audit record %d claims an answer that was not released, and its follow-up "
                "could not be stored: %s",
                late.index,
                exc,
            )
            return
        log.warning(
            "audit record %d became durable after its answer was refused: record %d says it "
            "was not released",
            late.index,
            appended.index,
        )

    async def _withdraw(self, index: int) -> None:
        try:
            withdrawn = await self._store.withdraw(index)
        except AuditUnavailable as exc:
            withdrawn = False
            log.warning("the report of audit record %d could not be withdrawn: %s", index, exc)
        if not withdrawn:
            log.warning(
                "audit record %d's report had left for its owner before it was withdrawn: "
                "the owner records an access that was not released",
                index,
            )

    async def _unanswered(self, record: AuditRecord) -> None:
        """A commit got no answer: its record may be durable. The follow-up (true either way:
        nothing was released for the request) is written once the store takes appends again,
        tried FOLLOW_UP_TRIES times a second apart (the log's close waits for them a while)."""
        for attempt in range(FOLLOW_UP_TRIES):
            try:
                appended = await self._store.append(record)
            except AuditUnavailable as exc:
                if attempt + 1 < FOLLOW_UP_TRIES:
                    await asyncio.sleep(1.0)
                    continue
                log.error(  # noqa: TRY400 - the cause is the message; no traceback to show
                    "the audit record of request %s may have become durable although its answer "
                    "was not released, and the record saying so could not be stored: %s",
                    record.request_id,
                    exc,
                )
                return
            log.warning(
                "the audit commit of request %s got no answer: record %d says its answer was "
                "not released",
                record.request_id,
                appended.index,
            )
            return
