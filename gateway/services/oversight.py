"""`tongban.v1.Oversight`: who saw a citizen's data, when and why, with proofs the log is intact.

Only agencies of this gateway's region holding the `oversight` role in the current registry may
call it. Subject ids are hashed here with the deployment's pseudonym key and never stored or
logged: the log holds only pseudonyms.

Reading the audit log is itself an access to citizens' data, so every call that reaches this
service, granted or refused, is recorded in the same log before its answer is released (fail
closed: AUDIT_UNAVAILABLE when the record cannot be written). docs/audit.md ("Oversight
records") says what such a record holds.

Listings page, bounded in records and in bytes, so that no trail can become too large to read:
a page token names the last index shown and the log's size when the first page was read, so a
listing ends even while matching records keep being appended (its own records among them).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import grpc

from gateway import rpcs
from gateway.audit import (
    AuditLog,
    AuditQuery,
    AuditRecord,
    AuditUnavailable,
    Checkpoint,
    Outcome,
    ProofError,
    audit_id,
    digest_form,
    leaf_hash,
    pseudonymize,
    witness_store_for,
)
from gateway.errors import Refusal
from gateway.identity import Caller, CallerKind, current_caller
from gateway.services._oversight_messages import (
    OUTCOME_FROM_PB,
    OUTCOME_TO_PB,
    Shown,
    checkpoint_message,
    record_message,
    time_of,
    timestamp,
)
from gateway.witnessing import witnessed
from registry import AgencyRole, RegistryError, RegistryStore, contains_citizen_id
from tongban.v1 import oversight_pb2, oversight_pb2_grpc

__all__ = [
    "OversightService",
    "audit_id",
    "record_message",
]  # the last two: see _oversight_messages

DEFAULT_PAGE_SIZE: Final = 100  # records per page when none is asked for
MAX_PAGE_SIZE: Final = 1000  # records per page at most
# A page ends once its messages hold this much, well under a client's default 4 MiB limit.
MAX_PAGE_BYTES: Final = 1024 * 1024  # bytes
MAX_FILTER_CHARS: Final = 128  # characters of a filter value recorded as is (else its digest)
NEXT_PAGE_METADATA: Final = "tongban-next-page-token"
MAX_INDEX: Final = 2**63 - 1  # the largest leaf index a store can hold (SQLite INTEGER)
CHECKPOINT_INTERVAL_SECONDS: Final = 60.0  # SignCheckpoint: one call per caller per interval
# "<last index shown>.<log size at the first page>"; a bare index is a token of earlier versions.
_PAGE_TOKEN: Final = re.compile(r"([0-9]{1,19})(?:\.([0-9]{1,19}))?")


def _recordable(value: str) -> str:
    """A caller's filter value as an oversight record may hold it: as given when it is short and
    printable, else its digest. A filter is whatever the caller typed: a NUL would be refused by
    PostgreSQL (failing the group commit it shares) and read back short by SQLite's JSON
    functions (a false "edited column" alarm), a megabyte would bloat the log, and a citizen id
    typed where an agency belongs must not be recorded raw. The digest is the audit record's own
    form (`digest_form`), which every field's grammar accepts as it is."""
    if len(value) <= MAX_FILTER_CHARS and value.isprintable() and not contains_citizen_id(value):
        return value
    return digest_form(value)


Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(slots=True)
class _Call:
    """One oversight call as its audit record will tell it."""

    rpc: str
    started: float = field(default_factory=time.perf_counter)
    caller: Caller | None = None
    subject: str = ""  # pseudonym of the subject asked about
    dataset: str = ""
    purpose: str = ""
    filters: dict[str, str] = field(default_factory=dict)  # other filters given, by name

    def ask(self, name: str, value: object) -> None:
        """Note a filter the caller gave (a falsy value is a filter not given)."""
        if value:
            self.filters[name] = _recordable(str(value))


@dataclass(frozen=True, slots=True)
class _Page:
    after: int  # only records with a larger index
    upto: int | None  # only records below this index (the log's size at the first page)


class OversightService(oversight_pb2_grpc.OversightServicer):
    def __init__(
        self,
        audit: AuditLog,
        registry: RegistryStore,
        *,
        region: str,
        pseudonym_key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        checkpoint_interval_seconds: float = CHECKPOINT_INTERVAL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._registry = registry
        self._region = region
        self._key = pseudonym_key
        self._clock = clock
        self._interval = checkpoint_interval_seconds
        self._monotonic = monotonic
        self._last_checkpoint: dict[str, float] = {}  # caller -> when it last asked (monotonic)

    # the audit of oversight itself -------------------------------------------------------------

    async def _record(
        self, call: _Call, outcome: Outcome, reason: str = "", returned: int = 0
    ) -> None:
        """Append the call's audit record; raise AuditUnavailable when it is not durable."""
        caller = call.caller
        try:
            version = self._registry.current().version
        except RegistryError:
            version = 0
        filters = [f"{name}={value}" for name, value in call.filters.items()]
        await self._audit.append(
            AuditRecord.of_call(
                time=self._clock(),
                region=self._region,
                rpc=call.rpc,
                outcome=outcome,
                reason=reason,
                started=call.started,
                caller_agency=caller.agency_id if caller else "",
                caller_region=caller.region if caller else "",
                dataset=call.dataset,
                purpose=call.purpose,
                subject=call.subject,
                fields=(*filters, f"returned={returned}"),
                registry_version=version,
            )
        )

    async def _refuse(
        self,
        context: Context,
        call: _Call,
        reason: str,
        message: str,
        *,
        retry_after_seconds: float | None = None,
    ) -> NoReturn:
        """Record the refusal, then raise it for the service edge to send (AUDIT_UNAVAILABLE
        instead if it cannot be recorded)."""
        refusal = Refusal(reason, message, retry_after_seconds=retry_after_seconds)
        outcome = Outcome.FAILED if refusal.failed else Outcome.DENIED
        try:
            await self._record(call, outcome, reason)
        except AuditUnavailable as exc:
            raise Refusal("AUDIT_UNAVAILABLE", str(exc)) from exc
        raise refusal

    async def _release(self, context: Context, call: _Call, returned: int) -> None:
        """Record a granted call before its answer leaves; fail closed."""
        try:
            await self._record(call, Outcome.ALLOWED, returned=returned)
        except AuditUnavailable as exc:
            raise Refusal("AUDIT_UNAVAILABLE", str(exc)) from exc

    async def _unavailable(self, context: Context, call: _Call, exc: AuditUnavailable) -> NoReturn:
        await self._refuse(context, call, "AUDIT_UNAVAILABLE", str(exc))

    # checks ------------------------------------------------------------------------------------

    async def _authorise(self, context: Context, call: _Call) -> None:
        caller = call.caller = current_caller.get()
        try:
            registry = self._registry.current()
        except RegistryError as exc:
            await self._refuse(context, call, "REGISTRY_STALE", str(exc))
        agency = (
            registry.agency(caller.agency_id)
            if caller and caller.kind is CallerKind.AGENCY
            else None
        )
        if (
            agency is None
            or not agency.has_role(AgencyRole.OVERSIGHT)
            or agency.region != self._region
        ):
            await self._refuse(
                context,
                call,
                "NOT_AUTHORISED_ROLE",
                f"only agencies of region {self._region} with the oversight role may read this audit log",
            )

    async def _invalid(self, context: Context, call: _Call, reason: str, message: str) -> NoReturn:
        await self._refuse(context, call, reason, message)

    async def _window(
        self,
        request: oversight_pb2.QueryAuditRequest | oversight_pb2.SubjectAccessRequest,
        context: Context,
        call: _Call,
    ) -> tuple[datetime | None, datetime | None]:
        """(since, until) of a request; a timestamp outside what a Timestamp may hold (seconds
        before year 1 or after 9999, nanos outside 0..999,999,999) is INVALID_ARGUMENT."""
        try:
            since = time_of(request.since, request.HasField("since"))
            until = time_of(request.until, request.HasField("until"))
        except (ValueError, OverflowError):
            await self._invalid(
                context, call, "INVALID_ARGUMENT_FORMAT", "since or until is not a valid timestamp"
            )
        call.ask("since", since and since.isoformat())
        call.ask("until", until and until.isoformat())
        return since, until

    async def _page(self, token: str, context: Context, call: _Call, start: int = 0) -> _Page:
        """The page a token names; the first page (no token: from index `start`) covers the
        log as it is now."""
        call.ask("page_token", token)
        if not token:
            if start > MAX_INDEX:
                await self._invalid(
                    context, call, "INVALID_ARGUMENT_FORMAT", "start_index is past any record"
                )
            call.ask("start_index", start)
            return _Page(start - 1, (await self._audit.read(self._audit.store.head)).size)
        # A token this service issued is ASCII digits below 2**63 (SQLite's INTEGER).
        # str.isdigit() would pass "²" and int() would then raise.
        found = _PAGE_TOKEN.fullmatch(token)
        numbers = [int(n) for n in found.groups() if n is not None] if found else []
        if not numbers or max(numbers) > MAX_INDEX:
            await self._invalid(
                context,
                call,
                "INVALID_ARGUMENT_FORMAT",
                "page_token is not one this service issued",
            )
        return _Page(numbers[0], numbers[1] if len(numbers) == 2 else None)

    def _page_size(self, asked: int, call: _Call) -> int:
        call.ask("page_size", asked)
        return min(asked or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)

    def _subject(self, subject_id: str) -> str | None:
        return pseudonymize(subject_id, self._key) if subject_id else None

    async def _listing(
        self, query: AuditQuery, page: _Page, size: int, measure: Callable[[AuditRecord], int]
    ) -> tuple[list[tuple[int, AuditRecord]], str]:
        """(records of one page, the next page's token or ""): at most `size` records and about
        MAX_PAGE_BYTES by `measure`, below `page.upto`. Raises AuditUnavailable."""
        # bounded, through the audit store's breaker: a frozen store is not waited for
        found = await self._audit.read(lambda: self._audit.store.query(query))
        upto = (
            (await self._audit.read(self._audit.store.head)).size
            if page.upto is None
            else page.upto
        )
        shown: list[tuple[int, AuditRecord]] = []
        total = 0
        full_in_bytes = reached_upto = False
        for index, record in found:
            if index >= upto:  # appended after the first page: the listing ends before it
                reached_upto = True
                break
            total += measure(record)
            if shown and total > MAX_PAGE_BYTES:
                full_in_bytes = True
                break
            shown.append((index, record))
        more = full_in_bytes or (not reached_upto and len(found) == size)
        return shown, (f"{shown[-1][0]}.{upto}" if more and shown else "")

    # the RPCs ----------------------------------------------------------------------------------

    async def QueryAudit(
        self, request: oversight_pb2.QueryAuditRequest, context: Context
    ) -> AsyncIterator[oversight_pb2.AuditRecord]:
        call = _Call(rpcs.QUERY_AUDIT)
        subject = self._subject(request.subject_id)
        call.subject = subject or ""
        call.dataset, call.purpose = _recordable(request.dataset), _recordable(request.purpose)
        call.ask("caller_agency", request.caller_agency)
        call.ask("provider_region", request.provider_region)
        outcome = OUTCOME_FROM_PB.get(request.outcome)
        call.ask("outcome", outcome and outcome.value)
        await self._authorise(context, call)
        size = self._page_size(request.page_size, call)
        since, until = await self._window(request, context, call)
        try:
            page = await self._page(request.page_token, context, call, request.start_index)
            query = AuditQuery(
                subject=subject,
                caller_agency=request.caller_agency or None,
                provider_region=request.provider_region or None,
                purpose=request.purpose or None,
                dataset=request.dataset or None,
                outcome=outcome,
                since=since,
                until=until,
                after_index=page.after,
                limit=size,
            )
            origin = self._audit.origin
            messages: dict[int, oversight_pb2.AuditRecord] = {}

            def measure(record: AuditRecord) -> int:
                # The leaf hash ties the record to GetProof's inclusion proof and the checkpoint.
                index = len(messages)
                message = record_message(origin, 0, record, leaf_hash(record.canonical))
                messages[index] = message
                return message.ByteSize() + 16  # + the index and audit id, within a few bytes

            found, token = await self._listing(query, page, size, measure)
        except AuditUnavailable as exc:
            await self._unavailable(context, call, exc)
        await self._release(context, call, len(found))
        if token:
            context.set_trailing_metadata(((NEXT_PAGE_METADATA, token),))
        for position, (index, _) in enumerate(found):
            message = messages[position]
            message.index = index
            message.audit_id = audit_id(origin, index)
            yield message

    async def VerifyAudit(
        self, request: oversight_pb2.VerifyAuditRequest, context: Context
    ) -> oversight_pb2.VerifyAuditResponse:
        call = _Call(rpcs.VERIFY_AUDIT)
        trusted = None
        if request.HasField("trusted_checkpoint"):
            given = request.trusted_checkpoint
            call.ask("trusted_size", given.size or "0")
            trusted = Checkpoint(
                given.origin,
                given.size,
                given.root_hash,
                given.note,
                given.key_name or self._audit.key_name,
            )
        await self._authorise(context, call)
        try:
            result = await self._audit.verify(trusted)
        except AuditUnavailable as exc:
            await self._unavailable(context, call, exc)
        registry = self._registry.current()  # the caller was authorised with it
        try:
            seen = await witnessed(
                await self._audit.read(self._audit.store.checkpoints),
                witness_store_for(self._audit.store),
                registry,
                self._region,
                self._clock(),
            )
        except AuditUnavailable as exc:
            await self._unavailable(context, call, exc)
        await self._release(context, call, result.records_checked)
        response = oversight_pb2.VerifyAuditResponse(
            intact=result.intact,
            latest_checkpoint=checkpoint_message(result.latest),
            records_checked=result.records_checked,
            checkpoints_checked=result.checkpoints_checked,
            first_bad_index=result.first_bad_index,
            problem=result.problem,
            witness_threshold=registry.witness_threshold,
            latest_cosigners=seen.latest.witnesses if seen.latest else (),
            witnessed=seen.checkpoint is not None or not registry.witness_threshold,
        )
        if seen.checkpoint is not None and seen.cosigned_note is not None:
            cosigned = dataclasses.replace(seen.checkpoint, note=seen.cosigned_note)
            message = checkpoint_message(cosigned)
            assert message is not None
            response.witnessed_checkpoint.CopyFrom(message)
        return response

    async def GetProof(
        self, request: oversight_pb2.GetProofRequest, context: Context
    ) -> oversight_pb2.GetProofResponse:
        call = _Call(rpcs.GET_PROOF)
        kind = request.WhichOneof("proof")
        call.ask("proof", kind)
        if kind == "inclusion":
            call.ask("index", str(request.inclusion.index))
            call.ask("tree_size", request.inclusion.tree_size)
        elif kind == "consistency":
            call.ask("first_size", str(request.consistency.first_size))
            call.ask("second_size", request.consistency.second_size)
        await self._authorise(context, call)
        if kind is None:
            await self._invalid(
                context,
                call,
                "INVALID_ARGUMENT_FORMAT",
                "ask for an inclusion or a consistency proof",
            )
        try:
            latest = await self._audit.latest_checkpoint()
            asked = (
                request.inclusion.tree_size
                if kind == "inclusion"
                else request.consistency.second_size
            )
            if not asked:  # 0 = the latest signed checkpoint's size, as the proto says
                if latest is None:
                    raise ProofError(
                        "no checkpoint is signed yet: give the tree size, or ask SignCheckpoint"
                    )
                asked = latest.size
            # A tree larger than the log is refused here: rebuilding it would read the store
            # chunk after empty chunk, for as long as the asked size is (years for 2**63).
            logged = (await self._audit.read(self._audit.store.head)).size
            if asked > logged:
                raise ProofError(f"tree size {asked} is larger than the log ({logged} records)")
            if kind == "inclusion":
                proof, tree_size, root, leaf = await self._audit.inclusion_proof(
                    request.inclusion.index, asked
                )
                answer = oversight_pb2.GetProofResponse(
                    hashes=proof,
                    tree_size=tree_size,
                    root_hash=root,
                    leaf_hash=leaf,
                    checkpoint=checkpoint_message(latest),
                )
            else:
                proof, tree_size, root = await self._audit.consistency_proof(
                    request.consistency.first_size, asked
                )
                answer = oversight_pb2.GetProofResponse(
                    hashes=proof,
                    tree_size=tree_size,
                    root_hash=root,
                    checkpoint=checkpoint_message(latest),
                )
        except ProofError as exc:
            await self._invalid(context, call, "INVALID_ARGUMENT_FORMAT", str(exc))
        except AuditUnavailable as exc:
            await self._unavailable(context, call, exc)
        await self._release(context, call, 1)
        return answer

    async def SubjectAccess(
        self, request: oversight_pb2.SubjectAccessRequest, context: Context
    ) -> oversight_pb2.SubjectAccessResponse:
        call = _Call(rpcs.SUBJECT_ACCESS)
        subject = self._subject(request.subject_id)
        call.subject = subject or ""
        await self._authorise(context, call)
        if subject is None:
            await self._invalid(context, call, "SUBJECT_ID_INVALID", "subject_id is required")
        size = self._page_size(request.page_size, call)
        since, until = await self._window(request, context, call)
        registry = self._registry.current()
        entries: list[oversight_pb2.SubjectAccessEntry] = []

        def measure(record: AuditRecord) -> int:
            agency = registry.agency(record.caller_agency)
            purpose = registry.purpose(record.purpose)
            shown = Shown()
            entry = oversight_pb2.SubjectAccessEntry(
                time=timestamp(record.time),
                requester_agency=shown.text(record.caller_agency),
                requester_agency_name=agency.name if agency else "",
                requester_region=shown.text(record.caller_region),
                dataset=shown.text(record.dataset),
                purpose=shown.text(record.purpose),
                purpose_name=purpose.name if purpose else "",
                case_id=shown.text(record.case_id),
                fields=shown.fields(record.fields),
                outcome=OUTCOME_TO_PB[record.outcome],
                rpc=shown.text(record.rpc),
                abridged=shown.abridged,
            )
            entries.append(entry)
            return entry.ByteSize() + 8  # + its tag and length in the response

        try:
            page = await self._page(request.page_token, context, call)
            query = AuditQuery(
                subject=subject, since=since, until=until, after_index=page.after, limit=size
            )
            found, token = await self._listing(query, page, size, measure)
        except AuditUnavailable as exc:
            await self._unavailable(context, call, exc)
        await self._release(context, call, len(found))
        return oversight_pb2.SubjectAccessResponse(
            entries=entries[: len(found)], next_page_token=token
        )

    async def SignCheckpoint(
        self, request: oversight_pb2.SignCheckpointRequest, context: Context
    ) -> oversight_pb2.SignCheckpointResponse:
        call = _Call(rpcs.SIGN_CHECKPOINT)
        await self._authorise(context, call)
        assert call.caller is not None  # _authorise admits only a known agency
        who = call.caller.agency_id
        now = self._monotonic()
        last = self._last_checkpoint.get(who)
        if last is not None and now - last < self._interval:
            wait = self._interval - (now - last)
            await self._refuse(
                context,
                call,
                "CHECKPOINT_RATE_LIMITED",
                f"{who} may ask for a checkpoint once every {self._interval:g} s: ask again in "
                f"{wait:.0f} s",
                retry_after_seconds=wait,
            )
        self._last_checkpoint[who] = now
        try:
            # The call's own record first: the checkpoint signed next covers it.
            await self._record(call, Outcome.ALLOWED, returned=1)
            checkpoint, signed_now = await self._audit.checkpoint_if_grown()
        except AuditUnavailable as exc:
            # Nothing was signed: the caller may ask again as soon as the store is back.
            if last is None:
                self._last_checkpoint.pop(who, None)
            else:
                self._last_checkpoint[who] = last
            raise Refusal("AUDIT_UNAVAILABLE", str(exc)) from exc
        return oversight_pb2.SignCheckpointResponse(
            checkpoint=checkpoint_message(checkpoint), signed_now=signed_now
        )
