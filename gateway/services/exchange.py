"""The cross-region query path: `DataExchange` for agencies, `Peer.Forward` between gateways.

Requesting gateway (`DataExchange.Query`), in order:
    (1) the caller is an agency of this region (mutual TLS) with a valid request token bound
        to its certificate
    (2) the request is well formed (`check_request`: every id in its grammar, within its
        bound, no citizen id outside subject_id) and its id not seen before in the replay window
    (3) the registry allows it (purpose, agreement, window, share class, case id, fields):
        authorisation precedes everything below
    (4) the agreement's quota this minute is not exhausted
    (4a) a dataset whose owner chose cache_scope "requester": this gateway's own cache holds
        the owner's sealed answer (key: provider region, dataset, subject pseudonym, fields,
        purpose, this region) whose seal still verifies; its report to the owner is made, to
        be recorded with the access at (7) (the audit log is the outbox), and the answer goes
        on at (7) with no call to the owner (a miss goes on at (5), and
        the verified answer is kept for the dataset's TTL at most)
    (5) the provider region's gateway answers (Peer.Forward, deadline propagated)
    (6) its answer carries a valid e-seal of the provider region, over only allowed fields
    (7) the access is durably audited; only then is the sealed record released
Provider gateway (`Peer.Forward`):
    (1) the caller is the gateway of the region it claims, forwarding for one of its agencies,
        a well-formed request (checked again: a peer is not trusted to have checked it)
    (2) this gateway decides again, on its own registry (never trusting the requester's decision)
    (3) answers from its cache, or asks its data system and seals the exact answer bytes
    (4) durably audits the access, then answers (with its pseudonym of the subject when the
        dataset is cache_scope "requester", for the requester's reports)
Owner gateway (`Peer.ReportAccess`): hits answered by a requesting gateway's own cache, in a
batch signed by that region's audit key, each decided again (at the time of the access) and
matched with an answer this gateway gave that region, then recorded (see `report_access`).
Every denial is audited too, and every refusal is a gRPC status with a `google.rpc.ErrorInfo`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from gateway import rpcs
from gateway.audit import (
    AuditError,
    AuditLog,
    AuditQuery,
    AuditRecord,
    AuditUnavailable,
    Outbound,
    Outcome,
    pseudonymize,
)
from gateway.breaker import BreakerOpen
from gateway.cache import AnswerCache, cache_key
from gateway.errors import (
    RELAYED_CODES,
    Refusal,
    error_info_of,
    peer_text,
    relayed_message,
    status_of,
)
from gateway.identity import Caller, CallerKind, current_caller
from gateway.metrics import PEER_LOCAL, GatewayMetrics
from gateway.peers import PEER_CALL_SECONDS, PeerPool, UnknownPeer
from gateway.policy import (
    DataRequest,
    Decision,
    PolicyInputError,
    PurposePolicy,
    SubjectKind,
    check_request,
    subject_kind,
)
from gateway.provider import ProviderClient, ProviderError
from gateway.quota import QuotaCounter, QuotaUnavailable
from gateway.replay import ReplayGuard, ReplayUnavailable
from gateway.reports import (
    MAX_REPORTS_PER_BATCH,
    AccessReport,
    AccessReporter,
    BatchRefused,
    ReportFormatError,
    verify_batch,
)
from gateway.sealing import RegionSealer, SealKeyUnavailable
from gateway.services.oversight import audit_id as make_audit_id
from gateway.tokens import TokenError, TokenVerifier
from registry import (
    CacheScope,
    Dataset,
    Registry,
    RegistryError,
    RegistryStore,
)
from signer import Indication, KeyProvider, SealVerifier, SignatureKind
from tongban.v1 import common_pb2, credentials_pb2, exchange_pb2, exchange_pb2_grpc

__all__ = ["DataExchangeService", "PeerService", "QueryPath"]

log = logging.getLogger("tongban.exchange")

DEFAULT_DEADLINE_SECONDS: Final = 5.0  # a query without a client deadline gets this much
FORWARD_MARGIN_SECONDS: Final = 0.05  # kept back for our own work after the peer answers
MAX_BATCH_ITEMS: Final = 20  # queries in one BatchQuery
SEAL_MEMO_SECONDS: Final = 5.0  # a passed seal check of the same bytes is trusted this long
SEAL_MEMO_ENTRIES: Final = 4096  # passed seal checks remembered at most
REPORT_CLOCK_SKEW: Final = timedelta(minutes=5)  # between a reporting gateway's clock and ours
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
# A valid GB 11643 number (the standard's own example): stands in for the subject when a
# reported access is decided again, since a report carries only the subject's pseudonym.
_SAMPLE_CITIZEN_ID: Final = "11010519491231002X"

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Answer:
    record: credentials_pb2.SealedRecord
    cache_hit: bool
    audit_id: str
    fields: tuple[str, ...]
    registry_version: int
    agreement_id: str


def _data_request(query: exchange_pb2.QueryRequest) -> DataRequest:
    """What the policy decides on, from the wire message (the same on both gateways)."""
    return DataRequest(
        provider_region=query.provider_region,
        dataset=query.dataset,
        purpose=query.purpose,
        subject_id=query.subject_id,
        fields=tuple(query.fields),
        case_id=query.case_id,
        request_id=query.request_id,
    )


# What a refusal that read no request value records for it.
_NO_REQUEST: Final = DataRequest(
    provider_region="", dataset="", purpose="", subject_id="", fields=(), case_id="", request_id=""
)


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


class _PassedSeals:
    """Seal checks that passed, remembered for `seconds` (at most `entries` of them): a cached
    answer is the same bytes every time, and checking its seal again is most of a hit's own
    work. The key covers the JWS and the record's payload, the registry version the verifier
    decided with, and the region the seal had to be of, so a new registry (a key revoked, a
    CA removed) or another expectation is checked afresh."""

    def __init__(
        self,
        seconds: float = SEAL_MEMO_SECONDS,
        entries: int = SEAL_MEMO_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self._max = entries
        self._clock = clock
        self._passed: OrderedDict[tuple[bytes, int, str], tuple[float, tuple[str, ...]]] = (
            OrderedDict()
        )
        self.hits = 0

    @staticmethod
    def key(
        record: credentials_pb2.SealedRecord, version: int, region: str
    ) -> tuple[bytes, int, str]:
        digest = hashlib.sha256(record.jws.encode())
        digest.update(b"\x00")
        digest.update(record.payload)
        return digest.digest(), version, region

    def get(self, key: tuple[bytes, int, str]) -> tuple[str, ...] | None:
        found = self._passed.get(key)
        if found is None:
            return None
        until, fields = found
        if self._clock() >= until:
            del self._passed[key]
            return None
        self.hits += 1
        return fields

    def put(self, key: tuple[bytes, int, str], fields: tuple[str, ...]) -> None:
        if self.seconds <= 0:
            return
        now = self._clock()
        # Oldest first, all with the same lifetime: the expired ones (and those of registry
        # versions gone by) leave from the front, so that a quiet gateway holds none.
        while self._passed and next(iter(self._passed.values()))[0] <= now:
            self._passed.popitem(last=False)
        self._passed[key] = (now + self.seconds, fields)
        self._passed.move_to_end(key)
        while len(self._passed) > self._max:
            self._passed.popitem(last=False)


def _placeholder_subject(registry: Registry, dataset: Dataset) -> str:
    """A subject id of the dataset's kind, valid by construction, for deciding a reported
    access again: a report carries the subject's pseudonym only, and the subject id's own
    format was checked when the answer was given (Peer.Forward, on this gateway)."""
    kind = subject_kind(dataset)
    if kind == SubjectKind.USCC:
        owner = registry.agency(dataset.owner)
        return owner.uscc if owner is not None else ""
    if kind == SubjectKind.CITIZEN_ID:
        return _SAMPLE_CITIZEN_ID
    return "reported-subject"


def _check_shape(request: DataRequest) -> None:
    """`check_request`, refused as INVALID_ARGUMENT naming the argument at fault (ErrorInfo
    metadata "field"), never its value."""
    try:
        check_request(request)
    except PolicyInputError as exc:
        raise Refusal(
            exc.reason,
            str(exc),
            metadata={"field": exc.field} if exc.field else None,
        ) from exc


class QueryPath:
    """Everything one gateway needs to answer queries, as requester and as provider."""

    def __init__(
        self,
        *,
        region: str,
        gateway_name: str,
        registry: RegistryStore,
        tokens: TokenVerifier,
        replay: ReplayGuard,
        quota: QuotaCounter,
        peers: PeerPool,
        verifier: SealVerifier,
        seal_keys: Mapping[str, KeyProvider],
        cache: AnswerCache,
        provider: ProviderClient | None,
        audit: AuditLog,
        pseudonym_key: bytes,
        metrics: GatewayMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        reporter: AccessReporter | None = None,
        peer_timeout_seconds: float = PEER_CALL_SECONDS,
    ) -> None:
        self.region = region
        self.gateway_name = gateway_name
        self.peer_timeout_seconds = peer_timeout_seconds  # a forward's bound (and the deadline's)
        self._registry = registry
        self._tokens = tokens
        self._replay = replay
        self._quota = quota
        self._peers = peers
        self._verifier = verifier
        self._sealer = RegionSealer(region, seal_keys)  # seal_keys: refilled on a reload
        self._cache = cache
        self._provider = provider
        self._audit = audit
        self._pseudonym_key = pseudonym_key
        self._clock = clock
        self._policy = PurposePolicy()
        self.metrics = metrics
        # Requester-side caching (cache_scope "requester") needs somewhere to report its hits.
        self.reporter = reporter
        self.seal_memo = _PassedSeals()

    @property
    def cache(self) -> AnswerCache:
        return self._cache

    @property
    def provider(self) -> ProviderClient | None:
        return self._provider

    async def report_loop(self) -> None:
        """The access reporter's background loop (until cancelled); returns at once without one."""
        if self.reporter is not None:
            await self.reporter.run()

    async def close(self) -> None:
        """Graceful stop: send the reports of requester-side hits still waiting."""
        if self.reporter is not None:
            await self.reporter.close()

    def _current(self) -> Registry:
        try:
            return self._registry.current()
        except RegistryError as exc:
            raise Refusal("REGISTRY_STALE", str(exc)) from exc

    async def _record(
        self,
        *,
        rpc: str,
        caller_agency: str,
        caller_operator: str,
        caller_region: str,
        request: DataRequest,
        started: float,
        outcome: Outcome,
        reason: str = "",
        fields: tuple[str, ...] = (),
        cache_hit: bool = False,
        sealed: str = "",
        registry_version: int = 0,
        agreement_id: str = "",
        subject: str | None = None,
        sealed_digest: str | None = None,
        at: datetime | None = None,
        outbound: Outbound | None = None,
    ) -> str:
        """Append one audit record; return its audit id. Raises AuditUnavailable.

        `subject` (a pseudonym already) and `sealed_digest` stand for what `request` and
        `sealed` would give, `at` for the time now: a reported access is recorded as reported.
        `outbound` (a hit's report to its owner) is made durable with the record."""
        if subject is None:
            subject = (
                pseudonymize(request.subject_id, self._pseudonym_key) if request.subject_id else ""
            )
        if sealed_digest is None:
            sealed_digest = hashlib.sha256(sealed.encode()).hexdigest() if sealed else ""
        appended = await self._audit.append(
            AuditRecord(
                time=at or self._clock(),
                gateway=self.gateway_name,
                region=self.region,
                rpc=rpc,
                request_id=request.request_id,
                caller_agency=caller_agency,
                caller_operator=caller_operator,
                caller_region=caller_region,
                provider_region=request.provider_region,
                dataset=request.dataset,
                purpose=request.purpose,
                case_id=request.case_id,
                subject=subject,
                fields=tuple(sorted(fields)),
                outcome=outcome,
                reason=reason,
                cache_hit=cache_hit,
                latency_us=int((time.perf_counter() - started) * 1_000_000),
                sealed_digest=sealed_digest,
                registry_version=registry_version,
                agreement_id=agreement_id,
            ),
            outbound,
        )
        if outcome is not Outcome.FAILED:
            self.metrics.decision("allowed" if outcome is Outcome.ALLOWED else "denied", reason)
        return make_audit_id(self._audit.origin, appended.index)

    def _audit_ready(self) -> None:
        """Refuse at once while the audit store's breaker is open: an answer fetched now could
        not be released (its record cannot be made durable), so nobody is asked for it."""
        if self._audit.breaker.state == "open":
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                "the audit store is failing (its circuit breaker is open): no answer can be "
                "released now; try again shortly",
            )

    async def _refuse(self, refusal: Refusal, **audit: Any) -> Refusal:
        """Audit a refusal (best effort: a denial releases nothing) and return it to raise.
        The caller was denied, or the exchange failed (a peer, the data system, a bad seal)."""
        if not refusal.audited:
            outcome = Outcome.FAILED if refusal.failed else Outcome.DENIED
            if refusal.reason == "QUOTA_EXCEEDED":
                self.metrics.quota_rejected(str(audit.get("agreement_id", "")))
            try:
                await self._record(outcome=outcome, reason=refusal.reason, **audit)
            except AuditUnavailable:
                log.warning(
                    "a refusal (%s) could not be audited: the audit store is unavailable",
                    refusal.reason,
                )
            refusal.audited = True
        return refusal

    async def refuse_call(self, rpc: str, refusal: Refusal) -> Refusal:
        """Audit the refusal of a whole call before any request value was read (a batch of the
        wrong size): the caller, the reason, no values. Returns the refusal to raise."""
        caller = current_caller.get()
        return await self._refuse(
            refusal,
            rpc=rpc,
            caller_agency=caller.agency_id if caller is not None else "",
            caller_operator="",
            caller_region=caller.region if caller is not None else "",
            request=_NO_REQUEST,
            started=time.perf_counter(),
        )

    async def _take_owner_quota(self, registry: Registry, agreement_id: str, now: datetime) -> None:
        """The data owner counts the agreement's quota too, over every requesting gateway (it
        never trusts a requesting gateway to have counted): its own counter, beside the one the
        requesting gateway keeps, `owner:<agreement id>`."""
        agreement = next(a for a in registry.agreements if a.id == agreement_id)
        try:
            taken = await self._quota.take(
                f"owner:{agreement.id}", agreement.quota_per_minute, now=now
            )
        except QuotaUnavailable as exc:
            raise Refusal(
                "SHARED_STATE_UNAVAILABLE",
                f"the agreement's quota cannot be checked: {exc}",
            ) from exc
        if not taken:
            raise Refusal(
                "QUOTA_EXCEEDED",
                f"agreement {agreement.id} allows {agreement.quota_per_minute} queries a minute "
                f"to region {self.region}, from all requesters; try again next minute",
            )

    async def _record_cancelled(self, audit: dict[str, Any]) -> None:
        """The call was cancelled (by its caller, or its deadline) while a peer or the data
        system was being asked: record the attempt (failed, REQUEST_CANCELLED) before the
        cancellation goes on. The record is written in a task of its own, shielded, so that the
        cancellation of this call does not cancel it too."""
        record = asyncio.ensure_future(
            self._record(outcome=Outcome.FAILED, reason="REQUEST_CANCELLED", **audit)
        )
        record.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
        try:
            await asyncio.shield(record)
        except AuditUnavailable:
            log.warning("a cancelled request could not be audited: the audit store is unavailable")
        except asyncio.CancelledError:
            pass  # cancelled again while waiting: the shielded record still completes

    def _decide(
        self, registry: Registry, agency_id: str, request: DataRequest, now: datetime
    ) -> Decision:
        agency = registry.agency(agency_id)
        if agency is None:
            raise Refusal(
                "CERTIFICATE_NOT_TRUSTED",
                f"agency {agency_id} is not in the registry",
                code=grpc.StatusCode.PERMISSION_DENIED,  # an override: gateway.errors.OVERRIDES
            )
        _check_shape(request)
        decision = self._policy.decide(registry, requester=agency, request=request, at=now)
        if not decision.allowed:
            raise Refusal(decision.reason, decision.message)
        return decision

    # -- requesting side ---------------------------------------------------------------------
    async def query(
        self,
        request: exchange_pb2.QueryRequest,
        context: Context,
        *,
        token: str,
        rpc: str = rpcs.QUERY,
    ) -> Answer:
        started = time.perf_counter()
        caller = current_caller.get()
        data = _data_request(request)
        if caller is None or caller.kind is not CallerKind.AGENCY or caller.region != self.region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"only agencies of region {self.region} query through this gateway",
            )
        registry = self._current()
        audit: dict[str, Any] = {
            "rpc": rpc,
            "caller_agency": caller.agency_id,
            "caller_operator": "",
            "caller_region": caller.region,
            "request": data,
            "started": started,
            "registry_version": registry.version,
        }
        try:
            # (1)
            if not token:
                raise Refusal(
                    "TOKEN_INVALID",
                    "a request token is required (authorization: Bearer <token>)",
                )
            try:
                claims = self._tokens.verify(
                    token,
                    registry=registry,
                    caller_agency=caller.agency_id,
                    caller_region=caller.region,
                    client_thumbprint=caller.thumbprint,
                )
            except TokenError as exc:
                raise Refusal(exc.reason, str(exc)) from exc
            audit["caller_operator"] = claims.operator
            # (2)
            _check_shape(data)
            try:
                if not await self._replay.first_use(caller.agency_id, data.request_id):
                    raise Refusal(
                        "REQUEST_REPLAYED",
                        "this request_id was already used by this agency: a replay is refused",
                    )
            except ReplayUnavailable as exc:
                raise Refusal(
                    "SHARED_STATE_UNAVAILABLE",
                    f"the replay window cannot be checked: {exc}",
                ) from exc
            # (3)
            now = self._clock()
            decision = self._decide(registry, caller.agency_id, data, now)
            audit["agreement_id"] = decision.agreement_id
            # (4)
            agreement = next(a for a in registry.agreements if a.id == decision.agreement_id)
            try:
                if not await self._quota.take(agreement.id, agreement.quota_per_minute, now=now):
                    raise Refusal(
                        "QUOTA_EXCEEDED",
                        f"agreement {agreement.id} allows {agreement.quota_per_minute} queries a minute; try again next minute",
                    )
            except QuotaUnavailable as exc:
                raise Refusal(
                    "SHARED_STATE_UNAVAILABLE",
                    f"the agreement's quota cannot be checked: {exc}",
                ) from exc
            # (4a)
            keep = self._requester_key(registry, data, decision, audit)
            if keep is not None:
                cached = await self._answer_from_cache(
                    keep[0],
                    data=data,
                    decision=decision,
                    registry=registry,
                    caller=caller,
                    operator=claims.operator,
                    audit=audit,
                )
                if cached is not None:
                    return cached
            # (5)
            self._audit_ready()
            forwarded = await self._forward(request, caller, claims.operator, context)
            # (6)
            fields = await self._check_answer(forwarded, data, decision)
        except Refusal as refusal:
            raise await self._refuse(refusal, **audit) from None
        except asyncio.CancelledError:
            await self._record_cancelled(audit)
            raise
        # (7)
        try:
            audit_id = await self._record(
                **audit,
                outcome=Outcome.ALLOWED,
                fields=fields,
                cache_hit=forwarded.cache_hit,
                sealed=forwarded.record.jws,
            )
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the answer was not released: {exc}",
                audited=True,
            ) from exc
        if keep is not None and _HEX64.fullmatch(forwarded.subject_pseudonym):
            await self._keep(keep[0], keep[1], forwarded)
        return Answer(
            forwarded.record,
            forwarded.cache_hit,
            audit_id,
            fields,
            registry.version,
            decision.agreement_id,
        )

    def _requester_key(
        self, registry: Registry, data: DataRequest, decision: Decision, audit: dict[str, Any]
    ) -> tuple[bytes, int] | None:
        """(cache key, TTL) of this gateway's own copy of the owner's answer, when the owner
        lets requesting gateways keep it (cache_scope "requester") and this gateway can report
        its hits; None otherwise (every query then goes to the owner, as for "provider")."""
        if self.reporter is None:
            return None
        dataset = registry.dataset(data.provider_region, data.dataset)
        if (
            dataset is None
            or dataset.cache_scope is not CacheScope.REQUESTER
            or dataset.cache_ttl_seconds <= 0
        ):
            return None
        subject = pseudonymize(data.subject_id, self._pseudonym_key)
        audit["subject"] = subject  # computed once: the audit record needs it too
        key = cache_key(
            provider_region=data.provider_region,
            dataset=data.dataset,
            subject_pseudonym=subject,
            fields=decision.fields,
            purpose=data.purpose,
            requester=self.region,
        )
        return key, dataset.cache_ttl_seconds

    async def _keep(
        self, key: bytes, ttl_seconds: int, forwarded: exchange_pb2.ForwardResponse
    ) -> None:
        """Keep the owner's verified answer for what is left of the dataset's TTL since it was
        sealed (the owner may have served it from its own cache): an answer is never older
        than the TTL, whichever cache it comes from. Jitter only shortens it; a cache backend
        that is down is skipped (the cache never fails a query)."""
        age = 0.0
        if forwarded.record.HasField("sealed_at"):
            try:
                sealed_at = forwarded.record.sealed_at.ToDatetime(tzinfo=UTC)
                age = (self._clock() - sealed_at).total_seconds()
            except (ValueError, OverflowError):
                age = float(ttl_seconds)
        left = ttl_seconds - min(max(age, 0.0), float(ttl_seconds))
        if left >= 1:
            await self._cache.set(key, forwarded.SerializeToString(), left, at_most=True)

    async def _answer_from_cache(
        self,
        key: bytes,
        *,
        data: DataRequest,
        decision: Decision,
        registry: Registry,
        caller: Caller,
        operator: str,
        audit: dict[str, Any],
    ) -> Answer | None:
        """The answer from this gateway's own cache, after the decision: the owner's sealed
        answer, its seal checked again (memoised), the access audited here with its report to
        the owner (one transaction: the log is the outbox). None when there is nothing usable (the caller then asks the owner)."""
        assert self.reporter is not None
        raw = await self._cache.get(key)
        if raw is None:
            return None
        try:
            entry = exchange_pb2.ForwardResponse.FromString(raw)
        except DecodeError:
            log.warning("a cached answer of region %s does not decode", data.provider_region)
            return None
        if (
            not _HEX64.fullmatch(entry.subject_pseudonym)
            or entry.record.sealer_region != data.provider_region
        ):
            return None
        try:
            fields = await self._check_answer(entry, data, decision)
        except Refusal as refusal:
            log.warning(
                "a cached answer of region %s no longer passes its checks (%s): asking the owner",
                data.provider_region,
                refusal.reason,
            )
            return None
        owner = data.provider_region
        if not self.reporter.accepting(owner):
            log.warning(
                "a hit for region %s is not answered locally: %d reports already wait for it",
                owner,
                self.reporter.backlog.get(owner, 0),
            )
            return None
        accessed_at = self._clock()
        try:
            report = AccessReport(
                request_id=data.request_id,
                caller_agency=caller.agency_id,
                caller_region=caller.region,
                caller_operator=operator,
                caller_thumbprint=caller.thumbprint,
                dataset=data.dataset,
                purpose=data.purpose,
                case_id=data.case_id,
                subject_pseudonym=entry.subject_pseudonym,
                # what the owner recorded it gave (its decision's fields), so that it finds it
                fields=tuple(sorted(set(entry.fields))) or fields,
                accessed_at=accessed_at,
                sealed_digest=hashlib.sha256(entry.record.jws.encode()).hexdigest(),
                answer_audit_id=entry.audit_id,
            )
        except ReportFormatError as exc:
            log.warning(
                "a hit for region %s is not answered locally, its report cannot be made: %s",
                owner,
                exc,
            )
            return None
        try:
            # The record carries the report to the outbox: both durable, or neither.
            audit_id = await self._record(
                **audit,
                outcome=Outcome.ALLOWED,
                fields=fields,
                cache_hit=True,
                sealed=entry.record.jws,
                at=accessed_at,
                outbound=self.reporter.outbound(owner, report),
            )
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the answer was not released: {exc}",
                audited=True,
            ) from exc
        self.reporter.recorded(owner)
        return Answer(entry.record, True, audit_id, fields, registry.version, decision.agreement_id)

    async def _forward(
        self, request: exchange_pb2.QueryRequest, caller: Caller, operator: str, context: Context
    ) -> exchange_pb2.ForwardResponse:
        remaining = context.time_remaining()
        # The caller's deadline (a call without one gets DEFAULT_DEADLINE_SECONDS), and the
        # forward's: ours when shorter. A peer that hangs past ours is UNAVAILABLE (the caller
        # still has time: it is told at once, with the reason); past the caller's own, the
        # call's deadline is what was exceeded.
        caller_deadline = remaining if remaining is not None else DEFAULT_DEADLINE_SECONDS
        deadline = min(caller_deadline, DEFAULT_DEADLINE_SECONDS, self.peer_timeout_seconds)
        ours = deadline < caller_deadline
        forward = exchange_pb2.ForwardRequest(
            query=request,
            caller=common_pb2.CallerIdentity(
                agency_id=caller.agency_id,
                region=caller.region,
                operator=operator,
                certificate_thumbprint=caller.thumbprint,
            ),
            requesting_region=self.region,
        )
        started = time.perf_counter()
        timeout = max(deadline - FORWARD_MARGIN_SECONDS, 0.01)
        try:
            answer = await self._peers.call(
                request.provider_region,
                lambda stub: stub.Forward(forward, timeout=timeout),
                timeout_seconds=timeout,
            )
        except UnknownPeer as exc:
            raise Refusal("UNKNOWN_REGION", str(exc)) from exc
        except BreakerOpen as exc:
            raise Refusal(
                "PEER_UNAVAILABLE",
                f"the gateway of region {request.provider_region} is failing: not called "
                "(its circuit breaker is open); try again shortly",
            ) from exc
        except TimeoutError as exc:  # the backstop: the call's own deadline did not end it
            self.metrics.peer_call(
                request.provider_region,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                time.perf_counter() - started,
            )
            raise Refusal(
                "PEER_UNAVAILABLE",
                f"the gateway of region {request.provider_region} did not answer in time",
                code=None if ours else grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from exc
        except grpc.aio.AioRpcError as exc:
            reason, message = _error_info(exc)
            code = exc.code()
            self.metrics.peer_call(request.provider_region, code, time.perf_counter() - started)
            if code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ) and reason not in (
                "AUDIT_UNAVAILABLE",
                "PROVIDER_UNAVAILABLE",
                "REGISTRY_STALE",
                "SEAL_KEY_UNAVAILABLE",
            ):
                raise Refusal(
                    "PEER_UNAVAILABLE",
                    f"the gateway of region {request.provider_region} did not answer: "
                    f"{peer_text(exc.details() or '')}",
                    code=None if ours else code,
                ) from exc
            if code in RELAYED_CODES and reason:
                # The reason travels on; the owner's words stay in this log, never relayed.
                log.info(
                    "region %s refused with %s: %s",
                    request.provider_region,
                    reason,
                    peer_text(message),
                )
                raise Refusal.passed_on(
                    code, reason, relayed_message(request.provider_region, reason)
                ) from exc
            raise Refusal(
                "PEER_UNAVAILABLE",
                f"the gateway of region {request.provider_region} failed: {code.name}",
            ) from exc
        self.metrics.peer_call(
            request.provider_region, grpc.StatusCode.OK, time.perf_counter() - started
        )
        return answer

    async def _check_answer(
        self, forwarded: exchange_pb2.ForwardResponse, data: DataRequest, decision: Decision
    ) -> tuple[str, ...]:
        """The fields the answer returns, once its seal is checked (or was, moments ago, for
        the same bytes under the same registry: `seal_memo`) and they are all allowed."""
        memo = _PassedSeals.key(
            forwarded.record, self._verifier.trust.version, data.provider_region
        )
        returned = self.seal_memo.get(memo)
        if returned is None:
            returned = self._validate_seal(forwarded.record, data)
            self.seal_memo.put(memo, returned)
        else:  # still an answer whose seal passed: the metric counts answers checked
            self.metrics.verification(Indication.TOTAL_PASSED.value, "")
        extra = sorted(set(returned) - decision.fields)
        if extra:  # minimisation is checked again on the way back: never pass on more
            raise Refusal(
                "FIELD_NOT_ALLOWED",
                f"region {data.provider_region} returned fields outside the purpose: {', '.join(extra)}",
                code=grpc.StatusCode.DATA_LOSS,  # an override: gateway.errors.OVERRIDES
            )
        return returned

    def _validate_seal(
        self, record: credentials_pb2.SealedRecord, data: DataRequest
    ) -> tuple[str, ...]:
        report = self._verifier.validate(
            record.jws,
            expected_kind=SignatureKind.SEAL,
            expected_owner_region=data.provider_region,
        )
        self.metrics.verification(report.indication, report.sub_indication or "")
        if not report.passed or report.payload != record.payload:
            why = (
                report.message if not report.passed else "the sealed bytes are not the payload sent"
            )
            raise Refusal(
                "SEAL_INVALID",
                f"the answer of region {data.provider_region} carries no valid e-seal: {why}",
            )
        try:
            document = json.loads(record.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Refusal("SEAL_INVALID", "the sealed answer is not a JSON record") from exc
        return tuple(sorted(document)) if isinstance(document, dict) else ()

    # -- provider side ------------------------------------------------------------------------
    async def forward(
        self, request: exchange_pb2.ForwardRequest, context: Context
    ) -> exchange_pb2.ForwardResponse:
        started = time.perf_counter()
        caller = current_caller.get()
        query = request.query
        data = _data_request(query)
        # (1)
        caller = _gateway_of(
            caller, request.requesting_region, "the requesting region forwards its queries"
        )
        registry = self._current()
        audit: dict[str, Any] = {
            "rpc": rpcs.FORWARD,
            "caller_agency": request.caller.agency_id,
            "caller_operator": request.caller.operator,
            "caller_region": caller.region,
            "request": data,
            "started": started,
            "registry_version": registry.version,
        }
        try:
            _check_shape(data)
            if data.provider_region != self.region:
                raise Refusal(
                    "UNKNOWN_REGION",
                    f"this is the gateway of region {self.region}, not {data.provider_region}",
                )
            agency = registry.agency(request.caller.agency_id)
            if agency is None or agency.region != caller.region:
                raise Refusal(
                    "NOT_AUTHORISED_ROLE",
                    f"gateway {caller.region} forwards for an agency that is not one of its own",
                )
            # (2)
            now = self._clock()
            decision = self._decide(registry, agency.id, data, now)
            audit["agreement_id"] = decision.agreement_id
            await self._take_owner_quota(registry, decision.agreement_id, now)
            dataset = registry.dataset(self.region, data.dataset)
            assert dataset is not None  # the decision checked it
            fields = tuple(sorted(decision.fields))
            # (3)
            self._audit_ready()
            subject = pseudonymize(data.subject_id, self._pseudonym_key)
            audit["subject"] = subject
            key = cache_key(
                provider_region=self.region,
                dataset=data.dataset,
                subject_pseudonym=subject,
                fields=fields,
                purpose=data.purpose,
            )

            async def load() -> bytes:
                return (
                    await self._fetch_and_seal(data, fields, request, context, registry)
                ).SerializeToString()

            raw, hit = await self._cache.get_or_load(key, dataset.cache_ttl_seconds, load)
            record = credentials_pb2.SealedRecord.FromString(raw)
        except Refusal as refusal:
            raise await self._refuse(refusal, **audit) from None
        except asyncio.CancelledError:
            await self._record_cancelled(audit)
            raise
        # (4)
        try:
            audit_id = await self._record(
                **audit, outcome=Outcome.ALLOWED, fields=fields, cache_hit=hit, sealed=record.jws
            )
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the answer was not released: {exc}",
                audited=True,
            ) from exc
        return exchange_pb2.ForwardResponse(
            record=record,
            audit_id=audit_id,
            fields=fields,
            registry_version=registry.version,
            cache_hit=hit,
            agreement_id=decision.agreement_id,
            # for the requesting gateway's reports of its own hits (cache_scope "requester")
            subject_pseudonym=subject if dataset.cache_scope is CacheScope.REQUESTER else "",
        )

    async def _fetch_and_seal(
        self,
        data: DataRequest,
        fields: tuple[str, ...],
        request: exchange_pb2.ForwardRequest,
        context: Context,
        registry: Registry,
    ) -> credentials_pb2.SealedRecord:
        if self._provider is None:
            raise Refusal(
                "PROVIDER_UNAVAILABLE",
                f"region {self.region}'s gateway has no data system configured",
            )
        remaining = context.time_remaining()
        started = time.perf_counter()
        try:
            answer = await self._provider.fetch(
                dataset=data.dataset,
                subject_id=data.subject_id,
                fields=fields,
                purpose=data.purpose,
                case_id=data.case_id,
                request_id=data.request_id,
                requesting_region=request.requesting_region,
                requesting_agency=request.caller.agency_id,
                deadline_seconds=None
                if remaining is None
                else max(remaining - FORWARD_MARGIN_SECONDS, 0.01),
            )
        except ProviderError as exc:
            code = grpc.StatusCode.UNAVAILABLE if exc.reason == "PROVIDER_UNAVAILABLE" else exc.code
            self.metrics.peer_call(PEER_LOCAL, code, time.perf_counter() - started)
            raise Refusal.passed_on(code, exc.reason, str(exc)) from exc
        self.metrics.peer_call(PEER_LOCAL, grpc.StatusCode.OK, time.perf_counter() - started)
        if not answer.found:
            raise Refusal(
                "SUBJECT_NOT_FOUND",
                f"region {self.region} holds no {data.dataset} record for this subject",
            )
        content_type = answer.content_type or "application/json"
        try:
            sealed = await self._sealer.seal(
                registry, answer.payload, content_type=content_type, now=self._clock()
            )
        except SealKeyUnavailable as exc:
            raise Refusal(exc.reason, str(exc)) from exc
        return credentials_pb2.SealedRecord(
            jws=sealed.jws,
            payload=answer.payload,
            content_type=content_type,
            sealer_kid=sealed.kid,
            sealer_region=sealed.region,
            sealed_at=_timestamp(sealed.sealed_at),
        )

    # -- owner side of requester-side caches ---------------------------------------------------
    async def report_access(
        self, request: exchange_pb2.ReportAccessRequest, context: Context
    ) -> exchange_pb2.ReportAccessResponse:
        """`Peer.ReportAccess`: the accesses a requesting gateway answered from its own cache.

        (1) the caller is the gateway of `reporting_region` (its peer certificate)
        (2) the batch is a JWS by an audit key the registry publishes for that region, about
            accesses to this region's data (`verify_batch`); the reports sent beside it are
            exactly the ones it signs
        (3) each report: the agency is one of the reporting region's; the dataset is this
            region's and its owner lets requesting gateways keep its answers (cache_scope
            "requester"); the policy allows the access again, with this gateway's registry, at
            the time it was made; and the record its `answer_audit_id` names is this gateway's
            answer to that region (same sealed digest, subject, dataset, purpose and fields)
            at most the dataset's TTL before the access; or this report was recorded already
            (a retry: its record is named again)
        (4) one audit record per new report (rpc Peer.ReportAccess, allowed, cache hit, at the
            time of the access, under this gateway's own pseudonym of the subject), durable
            before the answer, which names the records in report order
        A refused report refuses the whole batch, names itself in the ErrorInfo metadata
        ("index") and is recorded as denied; the reporting gateway drops it and sends the
        others again, which is why nothing is recorded before every report passed (3).
        """
        started = time.perf_counter()
        caller = current_caller.get()
        empty = DataRequest(
            provider_region=self.region,
            dataset="",
            purpose="",
            subject_id="",
            fields=(),
            case_id="",
            request_id="",
        )
        audit: dict[str, Any] = {
            "rpc": rpcs.REPORT_ACCESS,
            "caller_agency": "",
            "caller_operator": "",
            "caller_region": caller.region if caller is not None else "",
            "request": empty,
            "started": started,
        }
        try:
            # (1)
            caller = _gateway_of(
                caller,
                request.reporting_region,
                "the reporting region reports the accesses it answered",
            )
            if len(request.reports) > MAX_REPORTS_PER_BATCH:
                raise Refusal(
                    "REQUEST_TOO_LARGE",
                    f"a batch holds at most {MAX_REPORTS_PER_BATCH} reports",
                )
            registry = self._current()
            audit["registry_version"] = registry.version
            now = self._clock()
            # (2)
            try:
                batch = verify_batch(
                    request.jws,
                    registry=registry,
                    reporting_region=caller.region,
                    owner_region=self.region,
                    now=now,
                )
            except BatchRefused as exc:
                raise Refusal(
                    exc.reason,
                    exc.message,
                    metadata={"index": str(exc.index)} if exc.index is not None else None,
                ) from exc
            audit["request"] = DataRequest(
                provider_region=self.region,
                dataset="",
                purpose="",
                subject_id="",
                fields=(),
                case_id="",
                request_id=batch.batch_id,
            )
            if request.reports:
                try:
                    sent = [AccessReport.from_message(m).document() for m in request.reports]
                except ReportFormatError:
                    sent = []
                if sent != [r.document() for r in batch.reports]:
                    raise Refusal(
                        "REPORT_PAYLOAD_MISMATCH",
                        "the reports sent beside the JWS are not the ones it signs",
                    )
        except Refusal as refusal:
            raise await self._refuse(refusal, **audit) from None
        # (3)
        audits: list[dict[str, Any]] = []
        for report in batch.reports:
            record_audit = {
                **audit,
                "caller_agency": report.caller_agency,
                "caller_operator": report.caller_operator,
                "request": DataRequest(
                    provider_region=self.region,
                    dataset=report.dataset,
                    purpose=report.purpose,
                    subject_id="",
                    fields=report.fields,
                    case_id=report.case_id,
                    request_id=report.request_id,
                ),
                "subject": report.subject_pseudonym,
                "sealed_digest": report.sealed_digest,
                "at": report.accessed_at,
            }
            audits.append(record_audit)
        # each report is checked concurrently (each reads the log); the first refused, in
        # report order, refuses the batch
        outcomes = await asyncio.gather(
            *(self._check_report(registry, caller.region, r, now) for r in batch.reports),
            return_exceptions=True,
        )
        checked: list[tuple[AccessReport, Decision, str | None, dict[str, Any]]] = []
        for index, (report, outcome, record_audit) in enumerate(
            zip(batch.reports, outcomes, audits, strict=True)
        ):
            if isinstance(outcome, Refusal):
                outcome.metadata["index"] = str(index)
                raise await self._refuse(outcome, **record_audit) from None
            if isinstance(outcome, BaseException):
                raise outcome
            decision, existing = outcome
            record_audit["agreement_id"] = decision.agreement_id
            checked.append((report, decision, existing, record_audit))

        # (4)
        async def record(
            report: AccessReport, existing: str | None, record_audit: dict[str, Any]
        ) -> str:
            if existing is not None:
                return existing
            return await self._record(
                **record_audit, outcome=Outcome.ALLOWED, fields=report.fields, cache_hit=True
            )

        try:
            audit_ids = await asyncio.gather(
                *(record(report, existing, a) for report, _, existing, a in checked)
            )
        except AuditUnavailable as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the reports were not recorded: {exc}",
                audited=True,
            ) from exc
        return exchange_pb2.ReportAccessResponse(accepted=len(audit_ids), audit_ids=audit_ids)

    async def _check_report(
        self, registry: Registry, reporting_region: str, report: AccessReport, now: datetime
    ) -> tuple[Decision, str | None]:
        """The decision that allows a reported access, and the audit id of its record if it
        was already recorded; or the Refusal that says why it is not accepted."""
        if report.caller_region != reporting_region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"gateway {reporting_region} reports an access by an agency of another region",
            )
        if report.accessed_at > now + REPORT_CLOCK_SKEW:
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT",
                "the report's accessed_at is in the future",
            )
        dataset = registry.dataset(self.region, report.dataset)
        if dataset is None:
            raise Refusal(
                "UNKNOWN_DATASET",
                f"region {self.region} publishes no dataset {report.dataset}",
            )
        if dataset.cache_scope is not CacheScope.REQUESTER:
            raise Refusal(
                "CACHE_NOT_ALLOWED",
                f"dataset {dataset.id} of region {self.region} is cached by its owner only "
                "(cache_scope provider): no requesting gateway may answer it from its own cache",
            )
        agency = registry.agency(report.caller_agency)
        if agency is None or agency.region != reporting_region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"agency {report.caller_agency} is not an agency of region {reporting_region}",
            )
        decision = self._policy.decide(
            registry,
            requester=agency,
            request=DataRequest(
                provider_region=self.region,
                dataset=report.dataset,
                purpose=report.purpose,
                subject_id=_placeholder_subject(registry, dataset),
                fields=report.fields,
                case_id=report.case_id,
                request_id=report.request_id,
            ),
            at=report.accessed_at,
        )
        if not decision.allowed:
            raise Refusal(decision.reason, decision.message)
        try:
            existing = await self._reported(reporting_region, report)
            if existing is None and not await self._answered(reporting_region, report, dataset):
                raise Refusal(
                    "REPORT_ANSWER_UNKNOWN",
                    f"region {self.region} gave region {reporting_region} no answer with this "
                    f"digest for this subject, dataset {dataset.id}, purpose {report.purpose} and "
                    f"these fields within {dataset.cache_ttl_seconds}s before the access",
                )
        except AuditError as exc:
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                f"the audit log cannot be read: {exc}",
            ) from exc
        return decision, existing

    async def _reported(self, reporting_region: str, report: AccessReport) -> str | None:
        """The audit id of this gateway's record of `report`, if it recorded it already."""
        query = AuditQuery(
            subject=report.subject_pseudonym,
            caller_agency=report.caller_agency,
            dataset=report.dataset,
            outcome=Outcome.ALLOWED,
            since=report.accessed_at,
            until=report.accessed_at + timedelta(microseconds=1),
            limit=100,
        )
        found = await self._audit.read(lambda: self._audit.store.query(query))
        for index, record in found:
            if (
                rpcs.made_by(record.rpc, rpcs.REPORT_ACCESS)
                and record.caller_region == reporting_region
                and record.provider_region == self.region
                and record.request_id == report.request_id
                and record.sealed_digest == report.sealed_digest
            ):
                return make_audit_id(self._audit.origin, index)
        return None

    async def _answered(
        self, reporting_region: str, report: AccessReport, dataset: Dataset
    ) -> bool:
        """Is the record `report.answer_audit_id` names this gateway's allowed Peer.Forward of
        the reported answer (same subject, dataset, purpose, fields and sealed digest) to
        `reporting_region`, at most the dataset's TTL (and the clocks' skew) before the access?
        One read of the log, whatever the subject's history."""
        origin, _, index = report.answer_audit_id.rpartition("#")
        if origin != self._audit.origin or not index.isdigit() or len(index) > 18:
            return False
        rows = await self._audit.read(lambda: self._audit.store.rows(int(index), int(index) + 1))
        if not rows:
            return False
        try:
            record = AuditRecord.from_canonical(rows[0].canonical)
        except (ValueError, KeyError, TypeError):
            log.warning("audit record %s is not canonical: verify the log", report.answer_audit_id)
            return False
        earliest = (
            report.accessed_at - timedelta(seconds=dataset.cache_ttl_seconds) - REPORT_CLOCK_SKEW
        )
        return (
            rpcs.made_by(record.rpc, rpcs.FORWARD)
            and record.outcome is Outcome.ALLOWED
            and record.caller_region == reporting_region
            and record.provider_region == self.region
            and record.subject == report.subject_pseudonym
            and record.dataset == report.dataset
            and record.purpose == report.purpose
            and record.sealed_digest == report.sealed_digest
            and tuple(record.fields) == report.fields
            and earliest <= record.time <= report.accessed_at + REPORT_CLOCK_SKEW
        )


def _gateway_of(caller: Caller | None, region: str, what: str) -> Caller:
    """The caller, if its peer certificate is the gateway of `region`; else NOT_AUTHORISED_ROLE."""
    if caller is None or caller.kind is not CallerKind.GATEWAY or caller.region != region:
        raise Refusal("NOT_AUTHORISED_ROLE", f"only the gateway of {what}")
    return caller


def _error_info(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    """(ErrorInfo reason, message) of a peer's rich status, if it sent one."""
    info, message = error_info_of(exc)
    return (info.reason, message) if info is not None else ("", message)


def _token(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


def _response(answer: Answer) -> exchange_pb2.QueryResponse:
    return exchange_pb2.QueryResponse(
        record=answer.record,
        cache_hit=answer.cache_hit,
        audit_id=answer.audit_id,
        fields=answer.fields,
        registry_version=answer.registry_version,
        agreement_id=answer.agreement_id,
    )


class DataExchangeService(exchange_pb2_grpc.DataExchangeServicer):
    def __init__(self, path: QueryPath) -> None:
        self._path = path

    async def Query(
        self, request: exchange_pb2.QueryRequest, context: Context
    ) -> exchange_pb2.QueryResponse:
        # A Refusal raised here is sent by the service edge (gateway.errors.refuse), with its
        # ErrorInfo metadata, as every service's is.
        return _response(await self._path.query(request, context, token=_token(context)))

    async def BatchQuery(
        self, request: exchange_pb2.BatchQueryRequest, context: Context
    ) -> exchange_pb2.BatchQueryResponse:
        """Several queries at once (多地联办), possibly to several regions: answered item by
        item, each with its own status; one item failing does not fail the others."""
        if not request.items or len(request.items) > MAX_BATCH_ITEMS:
            raise await self._path.refuse_call(
                "DataExchange.BatchQuery",
                Refusal("REQUEST_TOO_LARGE", f"a batch holds 1 to {MAX_BATCH_ITEMS} queries"),
            )
        token = _token(context)

        async def one(index: int, item: exchange_pb2.QueryRequest) -> exchange_pb2.BatchItemResult:
            try:
                answer = await self._path.query(item, context, token=token, rpc=rpcs.BATCH_QUERY)
            except Refusal as refusal:
                return exchange_pb2.BatchItemResult(index=index, status=status_of(refusal))
            return exchange_pb2.BatchItemResult(
                index=index, status=status_pb2.Status(code=0), response=_response(answer)
            )

        results = await asyncio.gather(*(one(i, item) for i, item in enumerate(request.items)))
        return exchange_pb2.BatchQueryResponse(items=results)


class PeerService(exchange_pb2_grpc.PeerServicer):
    def __init__(self, path: QueryPath) -> None:
        self._path = path

    async def Forward(
        self, request: exchange_pb2.ForwardRequest, context: Context
    ) -> exchange_pb2.ForwardResponse:
        return await self._path.forward(request, context)

    async def ReportAccess(
        self, request: exchange_pb2.ReportAccessRequest, context: Context
    ) -> exchange_pb2.ReportAccessResponse:
        # a Refusal carries its ErrorInfo metadata: "index" names the report refused
        return await self._path.report_access(request, context)
