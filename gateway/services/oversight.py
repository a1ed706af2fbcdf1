"""`tongban.v1.Oversight`: who saw a citizen's data, when and why, with proofs the log is intact.

Only agencies of this gateway's region holding the `oversight` role in the current registry may
call it. Subject ids are hashed here with the deployment's pseudonym key and never stored or
logged: the log holds only pseudonyms.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.audit import (
    AuditLog,
    AuditQuery,
    AuditRecord,
    AuditUnavailable,
    Checkpoint,
    Outcome,
    ProofError,
    leaf_hash,
    pseudonymize,
)
from gateway.errors import abort
from gateway.identity import CallerKind, current_caller
from registry import AgencyRole, RegistryError, RegistryStore
from tongban.v1 import common_pb2, oversight_pb2, oversight_pb2_grpc

__all__ = ["OversightService", "audit_id", "record_message"]

DEFAULT_PAGE_SIZE: Final = 100  # records per QueryAudit page when none is asked for
MAX_PAGE_SIZE: Final = 1000  # records per page at most
NEXT_PAGE_METADATA: Final = "tongban-next-page-token"
SUBJECT_ACCESS_LIMIT: Final = 10_000  # entries returned by one SubjectAccess call at most
MAX_INDEX: Final = 2**63 - 1  # the largest leaf index a store can hold (SQLite INTEGER)
_PAGE_TOKEN: Final = re.compile(r"[0-9]{1,19}")

_OUTCOME_TO_PB: Final = {
    Outcome.ALLOWED: common_pb2.OUTCOME_ALLOWED,
    Outcome.DENIED: common_pb2.OUTCOME_DENIED,
    Outcome.FAILED: common_pb2.OUTCOME_FAILED,
}
_OUTCOME_FROM_PB: Final = {v: k for k, v in _OUTCOME_TO_PB.items()}


def audit_id(origin: str, index: int) -> str:
    """The id a client is given for an audit record: the log's origin and the leaf index."""
    return f"{origin}#{index}"


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def record_message(
    origin: str, index: int, record: AuditRecord, leaf: bytes = b""
) -> oversight_pb2.AuditRecord:
    return oversight_pb2.AuditRecord(
        index=index,
        audit_id=audit_id(origin, index),
        time=_timestamp(record.time),
        gateway=record.gateway,
        region=record.region,
        request_id=record.request_id,
        caller_agency=record.caller_agency,
        caller_operator=record.caller_operator,
        caller_region=record.caller_region,
        provider_region=record.provider_region,
        dataset=record.dataset,
        purpose=record.purpose,
        case_id=record.case_id,
        subject_pseudonym=record.subject,
        fields=list(record.fields),
        outcome=_OUTCOME_TO_PB[record.outcome],
        reason=record.reason,
        cache_hit=record.cache_hit,
        latency_micros=min(record.latency_us, 2**32 - 1),
        sealed_digest=record.sealed_digest,
        registry_version=record.registry_version,
        agreement_id=record.agreement_id,
        rpc=record.rpc,
        leaf_hash=leaf,
    )


def checkpoint_message(checkpoint: Checkpoint | None) -> oversight_pb2.Checkpoint | None:
    if checkpoint is None:
        return None
    return oversight_pb2.Checkpoint(
        origin=checkpoint.origin,
        size=checkpoint.size,
        root_hash=checkpoint.root,
        note=checkpoint.note,
        key_name=checkpoint.key_name,
    )


def _time(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


Context = grpc.aio.ServicerContext[Any, Any]


async def _window(
    request: oversight_pb2.QueryAuditRequest | oversight_pb2.SubjectAccessRequest,
    context: Context,
) -> tuple[datetime | None, datetime | None]:
    """(since, until) of a request; a timestamp outside what a Timestamp may hold (seconds
    before year 1 or after 9999, nanos outside 0..999,999,999) is INVALID_ARGUMENT."""
    try:
        return (
            _time(request.since, request.HasField("since")),
            _time(request.until, request.HasField("until")),
        )
    except (ValueError, OverflowError):
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT_FORMAT",
            "since or until is not a valid timestamp",
        )


class OversightService(oversight_pb2_grpc.OversightServicer):
    def __init__(
        self, audit: AuditLog, registry: RegistryStore, *, region: str, pseudonym_key: bytes
    ) -> None:
        self._audit = audit
        self._registry = registry
        self._region = region
        self._key = pseudonym_key

    async def _authorise(self, context: Context) -> None:
        caller = current_caller.get()
        try:
            registry = self._registry.current()
        except RegistryError as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "REGISTRY_STALE", str(exc))
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
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "NOT_AUTHORISED_ROLE",
                f"only agencies of region {self._region} with the oversight role may read this audit log",
            )

    def _subject(self, subject_id: str) -> str | None:
        return pseudonymize(subject_id, self._key) if subject_id else None

    async def QueryAudit(
        self, request: oversight_pb2.QueryAuditRequest, context: Context
    ) -> AsyncIterator[oversight_pb2.AuditRecord]:
        await self._authorise(context)
        after = -1
        if request.page_token:
            # A token this service issued is a leaf index: ASCII digits, below 2**63 (SQLite's
            # INTEGER). str.isdigit() would pass "²" and int() would then raise.
            if not _PAGE_TOKEN.fullmatch(request.page_token) or int(request.page_token) > MAX_INDEX:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "INVALID_ARGUMENT_FORMAT",
                    "page_token is not one this service issued",
                )
            after = int(request.page_token)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        since, until = await _window(request, context)
        query = AuditQuery(
            subject=self._subject(request.subject_id),
            caller_agency=request.caller_agency or None,
            provider_region=request.provider_region or None,
            purpose=request.purpose or None,
            dataset=request.dataset or None,
            outcome=_OUTCOME_FROM_PB.get(request.outcome),
            since=since,
            until=until,
            after_index=after,
            limit=size,
        )
        try:
            found = await self._audit.store.query(query)
        except AuditUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE", str(exc))
        if len(found) == size:
            context.set_trailing_metadata(((NEXT_PAGE_METADATA, str(found[-1][0])),))
        for index, record in found:
            # The leaf hash ties the record to GetProof's inclusion proof and the checkpoint.
            yield record_message(self._audit.origin, index, record, leaf_hash(record.canonical))

    async def VerifyAudit(
        self, request: oversight_pb2.VerifyAuditRequest, context: Context
    ) -> oversight_pb2.VerifyAuditResponse:
        await self._authorise(context)
        trusted = None
        if request.HasField("trusted_checkpoint"):
            given = request.trusted_checkpoint
            trusted = Checkpoint(
                given.origin,
                given.size,
                given.root_hash,
                given.note,
                given.key_name or self._audit.key_name,
            )
        try:
            result = await self._audit.verify(trusted)
        except AuditUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE", str(exc))
        return oversight_pb2.VerifyAuditResponse(
            intact=result.intact,
            latest_checkpoint=checkpoint_message(result.latest),
            records_checked=result.records_checked,
            checkpoints_checked=result.checkpoints_checked,
            first_bad_index=result.first_bad_index,
            problem=result.problem,
        )

    async def GetProof(
        self, request: oversight_pb2.GetProofRequest, context: Context
    ) -> oversight_pb2.GetProofResponse:
        await self._authorise(context)
        kind = request.WhichOneof("proof")
        try:
            latest = await self._audit.latest_checkpoint()
            # A tree larger than the log is refused here: rebuilding it would read the store
            # chunk after empty chunk, for as long as the asked size is (years for 2**63).
            logged = (await self._audit.store.head()).size
            asked = (
                request.inclusion.tree_size
                if kind == "inclusion"
                else request.consistency.second_size
                if kind == "consistency"
                else 0
            )
            if asked > logged:
                raise ProofError(f"tree size {asked} is larger than the log ({logged} records)")
            if kind == "inclusion":
                size = request.inclusion.tree_size or None
                proof, tree_size, root, leaf = await self._audit.inclusion_proof(
                    request.inclusion.index, size
                )
                return oversight_pb2.GetProofResponse(
                    hashes=proof,
                    tree_size=tree_size,
                    root_hash=root,
                    leaf_hash=leaf,
                    checkpoint=checkpoint_message(latest),
                )
            if kind == "consistency":
                second = request.consistency.second_size or None
                proof, tree_size, root = await self._audit.consistency_proof(
                    request.consistency.first_size, second
                )
                return oversight_pb2.GetProofResponse(
                    hashes=proof,
                    tree_size=tree_size,
                    root_hash=root,
                    checkpoint=checkpoint_message(latest),
                )
        except ProofError as exc:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT_FORMAT", str(exc)
            )
        except AuditUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE", str(exc))
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT_FORMAT",
            "ask for an inclusion or a consistency proof",
        )

    async def SubjectAccess(
        self, request: oversight_pb2.SubjectAccessRequest, context: Context
    ) -> oversight_pb2.SubjectAccessResponse:
        await self._authorise(context)
        if not request.subject_id:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "SUBJECT_ID_INVALID",
                "subject_id is required",
            )
        since, until = await _window(request, context)
        registry = self._registry.current()
        entries: list[oversight_pb2.SubjectAccessEntry] = []
        after = -1
        try:
            while len(entries) < SUBJECT_ACCESS_LIMIT:
                page = await self._audit.store.query(
                    AuditQuery(
                        subject=self._subject(request.subject_id),
                        since=since,
                        until=until,
                        after_index=after,
                        limit=MAX_PAGE_SIZE,
                    )
                )
                for _, record in page:
                    agency = registry.agency(record.caller_agency)
                    purpose = registry.purpose(record.purpose)
                    entries.append(
                        oversight_pb2.SubjectAccessEntry(
                            time=_timestamp(record.time),
                            requester_agency=record.caller_agency,
                            requester_agency_name=agency.name if agency else "",
                            requester_region=record.caller_region,
                            dataset=record.dataset,
                            purpose=record.purpose,
                            purpose_name=purpose.name if purpose else "",
                            case_id=record.case_id,
                            fields=list(record.fields),
                            outcome=_OUTCOME_TO_PB[record.outcome],
                        )
                    )
                if len(page) < MAX_PAGE_SIZE:
                    break
                after = page[-1][0]
        except AuditUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE", str(exc))
        return oversight_pb2.SubjectAccessResponse(entries=entries[:SUBJECT_ACCESS_LIMIT])
