"""The cross-region query path: `DataExchange` for agencies, `Peer.Forward` between gateways.

Requesting gateway (`DataExchange.Query`), in order:
    (1) the caller is an agency of this region (mutual TLS) with a valid request token bound
        to its certificate
    (2) the request id is well formed and not seen before in the replay window
    (3) the request is well formed and the registry allows it (purpose, agreement, window,
        share class, case id, fields): authorisation precedes everything below
    (4) the agreement's quota this minute is not exhausted
    (5) the provider region's gateway answers (Peer.Forward, deadline propagated)
    (6) its answer carries a valid e-seal of the provider region, over only allowed fields
    (7) the access is durably audited; only then is the sealed record released
Provider gateway (`Peer.Forward`):
    (1) the caller is the gateway of the region it claims, forwarding for one of its agencies
    (2) this gateway decides again, on its own registry (never trusting the requester's decision)
    (3) answers from its cache, or asks its data system and seals the exact answer bytes
    (4) durably audits the access, then answers
Every denial is audited too, and every refusal is a gRPC status with a `google.rpc.ErrorInfo`.
Answers are cached only by the data owner's gateway (`cache_scope = "provider"` behaviour for
every dataset until requester-side caches can report their hits to the owner).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf import any_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from gateway.audit import AuditLog, AuditRecord, AuditUnavailable, Outcome, pseudonymize
from gateway.cache import AnswerCache, cache_key
from gateway.errors import DOMAIN, abort, bounded_message
from gateway.identity import Caller, CallerKind, current_caller
from gateway.metrics import PEER_LOCAL, GatewayMetrics
from gateway.peers import PeerPool, UnknownPeer
from gateway.policy import DataRequest, Decision, PolicyInputError, PurposePolicy, check_request
from gateway.provider import ProviderClient, ProviderError
from gateway.quota import QuotaCounter, QuotaUnavailable
from gateway.replay import ReplayGuard, ReplayUnavailable, check_request_id
from gateway.services.oversight import audit_id as make_audit_id
from gateway.tokens import TokenError, TokenVerifier
from registry import KeyRefused, KeyUsage, Registry, RegistryError, RegistryStore
from signer import KeyProvider, SealVerifier, SignatureKind, seal
from tongban.v1 import common_pb2, credentials_pb2, exchange_pb2, exchange_pb2_grpc

__all__ = ["DataExchangeService", "PeerService", "QueryPath"]

log = logging.getLogger("tongban.exchange")

DEFAULT_DEADLINE_SECONDS: Final = 5.0  # a query without a client deadline gets this much
FORWARD_MARGIN_SECONDS: Final = 0.05  # kept back for our own work after the peer answers
MAX_BATCH_ITEMS: Final = 20  # queries in one BatchQuery

Context = grpc.aio.ServicerContext[Any, Any]

_CODES: Final = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
}


class Refusal(Exception):
    """A query refused: the status code, the ErrorInfo reason, and a sentence for a person."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, *, audited: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.audited = audited


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


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _status(refusal: Refusal) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=refusal.reason, domain=DOMAIN))
    return status_pb2.Status(
        code=refusal.code.value[0], message=bounded_message(refusal.message), details=[detail]
    )


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
    ) -> None:
        self.region = region
        self.gateway_name = gateway_name
        self._registry = registry
        self._tokens = tokens
        self._replay = replay
        self._quota = quota
        self._peers = peers
        self._verifier = verifier
        self._seal_keys = seal_keys  # the gateway's own map, refilled on a reload
        self._cache = cache
        self._provider = provider
        self._audit = audit
        self._pseudonym_key = pseudonym_key
        self._clock = clock
        self._policy = PurposePolicy()
        self.metrics = metrics

    @property
    def cache(self) -> AnswerCache:
        return self._cache

    def _current(self) -> Registry:
        try:
            return self._registry.current()
        except RegistryError as exc:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "REGISTRY_STALE", str(exc)) from exc

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
    ) -> str:
        """Append one audit record; return its audit id. Raises AuditUnavailable."""
        subject = (
            pseudonymize(request.subject_id, self._pseudonym_key) if request.subject_id else ""
        )
        appended = await self._audit.append(
            AuditRecord(
                time=self._clock(),
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
                sealed_digest=hashlib.sha256(sealed.encode()).hexdigest() if sealed else "",
                registry_version=registry_version,
                agreement_id=agreement_id,
            )
        )
        if outcome is not Outcome.FAILED:
            self.metrics.decision("allowed" if outcome is Outcome.ALLOWED else "denied", reason)
        return make_audit_id(self._audit.origin, appended.index)

    async def _refuse(self, refusal: Refusal, **audit: Any) -> Refusal:
        """Audit a refusal (best effort: a denial releases nothing) and return it to raise.
        The caller was denied, or the exchange failed (a peer, the data system, a bad seal)."""
        if not refusal.audited:
            outcome = Outcome.FAILED if refusal.code in _FAILURES else Outcome.DENIED
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
                grpc.StatusCode.UNAVAILABLE,
                "SHARED_STATE_UNAVAILABLE",
                f"the agreement's quota cannot be checked: {exc}",
            ) from exc
        if not taken:
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
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
                grpc.StatusCode.PERMISSION_DENIED,
                "CERTIFICATE_NOT_TRUSTED",
                f"agency {agency_id} is not in the registry",
            )
        try:
            check_request(request)
        except PolicyInputError as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, exc.reason, str(exc)) from exc
        decision = self._policy.decide(registry, requester=agency, request=request, at=now)
        if not decision.allowed:
            raise Refusal(
                _CODES.get(decision.grpc_code, grpc.StatusCode.PERMISSION_DENIED),
                decision.reason,
                decision.message,
            )
        return decision

    # -- requesting side ---------------------------------------------------------------------
    async def query(
        self,
        request: exchange_pb2.QueryRequest,
        context: Context,
        *,
        token: str,
        rpc: str = "DataExchange.Query",
    ) -> Answer:
        started = time.perf_counter()
        caller = current_caller.get()
        data = _data_request(request)
        if caller is None or caller.kind is not CallerKind.AGENCY or caller.region != self.region:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
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
                    grpc.StatusCode.UNAUTHENTICATED,
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
                raise Refusal(grpc.StatusCode.UNAUTHENTICATED, exc.reason, str(exc)) from exc
            audit["caller_operator"] = claims.operator
            # (2)
            try:
                check_request_id(data.request_id)
            except ValueError as exc:
                raise Refusal(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "INVALID_ARGUMENT_FORMAT",
                    f"request_id: {exc}",
                ) from exc
            try:
                if not await self._replay.first_use(caller.agency_id, data.request_id):
                    raise Refusal(
                        grpc.StatusCode.ALREADY_EXISTS,
                        "REQUEST_REPLAYED",
                        "this request_id was already used by this agency: a replay is refused",
                    )
            except ReplayUnavailable as exc:
                raise Refusal(
                    grpc.StatusCode.UNAVAILABLE,
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
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "QUOTA_EXCEEDED",
                        f"agreement {agreement.id} allows {agreement.quota_per_minute} queries a minute; try again next minute",
                    )
            except QuotaUnavailable as exc:
                raise Refusal(
                    grpc.StatusCode.UNAVAILABLE,
                    "SHARED_STATE_UNAVAILABLE",
                    f"the agreement's quota cannot be checked: {exc}",
                ) from exc
            # (5)
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
                grpc.StatusCode.UNAVAILABLE,
                "AUDIT_UNAVAILABLE",
                f"the answer was not released: {exc}",
                audited=True,
            ) from exc
        return Answer(
            forwarded.record,
            forwarded.cache_hit,
            audit_id,
            fields,
            registry.version,
            decision.agreement_id,
        )

    async def _forward(
        self, request: exchange_pb2.QueryRequest, caller: Caller, operator: str, context: Context
    ) -> exchange_pb2.ForwardResponse:
        remaining = context.time_remaining()
        deadline = (
            min(remaining, DEFAULT_DEADLINE_SECONDS)
            if remaining is not None
            else DEFAULT_DEADLINE_SECONDS
        )
        try:
            stub = self._peers.stub(request.provider_region)
        except UnknownPeer as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_REGION", str(exc)) from exc
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
        try:
            answer = await stub.Forward(
                forward, timeout=max(deadline - FORWARD_MARGIN_SECONDS, 0.01)
            )
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
                    code,
                    "PEER_UNAVAILABLE",
                    f"the gateway of region {request.provider_region} did not answer: {exc.details()}",
                ) from exc
            if code in _PASSED_THROUGH and reason:
                raise Refusal(code, reason, f"region {request.provider_region}: {message}") from exc
            raise Refusal(
                grpc.StatusCode.UNAVAILABLE,
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
        report = self._verifier.validate(
            forwarded.record.jws,
            expected_kind=SignatureKind.SEAL,
            expected_owner_region=data.provider_region,
        )
        self.metrics.verification(report.indication, report.sub_indication or "")
        if not report.passed or report.payload != forwarded.record.payload:
            why = (
                report.message if not report.passed else "the sealed bytes are not the payload sent"
            )
            raise Refusal(
                grpc.StatusCode.DATA_LOSS,
                "SEAL_INVALID",
                f"the answer of region {data.provider_region} carries no valid e-seal: {why}",
            )
        try:
            document = json.loads(forwarded.record.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Refusal(
                grpc.StatusCode.DATA_LOSS, "SEAL_INVALID", "the sealed answer is not a JSON record"
            ) from exc
        returned = tuple(sorted(document)) if isinstance(document, dict) else ()
        extra = sorted(set(returned) - decision.fields)
        if extra:  # minimisation is checked again on the way back: never pass on more
            raise Refusal(
                grpc.StatusCode.DATA_LOSS,
                "FIELD_NOT_ALLOWED",
                f"region {data.provider_region} returned fields outside the purpose: {', '.join(extra)}",
            )
        return returned

    # -- provider side ------------------------------------------------------------------------
    async def forward(
        self, request: exchange_pb2.ForwardRequest, context: Context
    ) -> exchange_pb2.ForwardResponse:
        started = time.perf_counter()
        caller = current_caller.get()
        query = request.query
        data = _data_request(query)
        # (1)
        if (
            caller is None
            or caller.kind is not CallerKind.GATEWAY
            or caller.region != request.requesting_region
        ):
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                "NOT_AUTHORISED_ROLE",
                "only the gateway of the requesting region forwards its queries",
            )
        registry = self._current()
        audit: dict[str, Any] = {
            "rpc": "Peer.Forward",
            "caller_agency": request.caller.agency_id,
            "caller_operator": request.caller.operator,
            "caller_region": caller.region,
            "request": data,
            "started": started,
            "registry_version": registry.version,
        }
        try:
            if data.provider_region != self.region:
                raise Refusal(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "UNKNOWN_REGION",
                    f"this is the gateway of region {self.region}, not {data.provider_region}",
                )
            agency = registry.agency(request.caller.agency_id)
            if agency is None or agency.region != caller.region:
                raise Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
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
            key = cache_key(
                provider_region=self.region,
                dataset=data.dataset,
                subject_pseudonym=pseudonymize(data.subject_id, self._pseudonym_key),
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
                grpc.StatusCode.UNAVAILABLE,
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
                grpc.StatusCode.UNAVAILABLE,
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
            raise Refusal(code, exc.reason, str(exc)) from exc
        self.metrics.peer_call(PEER_LOCAL, grpc.StatusCode.OK, time.perf_counter() - started)
        if not answer.found:
            raise Refusal(
                grpc.StatusCode.NOT_FOUND,
                "SUBJECT_NOT_FOUND",
                f"region {self.region} holds no {data.dataset} record for this subject",
            )
        now = self._clock().replace(microsecond=0)
        try:
            kid = registry.signing_key(self.region, KeyUsage.SEAL, now).kid
        except KeyRefused as exc:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "SEAL_KEY_UNAVAILABLE", str(exc)) from exc
        provider = self._seal_keys.get(kid)
        if provider is None:
            raise Refusal(
                grpc.StatusCode.UNAVAILABLE,
                "SEAL_KEY_UNAVAILABLE",
                f"this gateway does not hold region {self.region}'s active seal key {kid}",
            )
        jws = seal(
            answer.payload,
            provider,
            content_type=answer.content_type or "application/json",
            signing_time=now,
        )
        return credentials_pb2.SealedRecord(
            jws=jws,
            payload=answer.payload,
            content_type=answer.content_type or "application/json",
            sealer_kid=kid,
            sealer_region=self.region,
            sealed_at=_timestamp(now),
        )


_FAILURES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.DEADLINE_EXCEEDED}
)
_PASSED_THROUGH: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }
)


def _error_info(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    """(ErrorInfo reason, message) of a peer's rich status, if it sent one."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == DOMAIN:
                    return info.reason, status.message
    return "", exc.details() or ""


def _token(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


async def _answer_or_abort(context: Context, work: Awaitable[Answer]) -> exchange_pb2.QueryResponse:
    try:
        answer = await work
    except Refusal as refusal:
        await abort(context, refusal.code, refusal.reason, refusal.message)
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
        return await _answer_or_abort(
            context, self._path.query(request, context, token=_token(context))
        )

    async def BatchQuery(
        self, request: exchange_pb2.BatchQueryRequest, context: Context
    ) -> exchange_pb2.BatchQueryResponse:
        """Several queries at once (多地联办), possibly to several regions: answered item by
        item, each with its own status; one item failing does not fail the others."""
        if not request.items or len(request.items) > MAX_BATCH_ITEMS:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "REQUEST_TOO_LARGE",
                f"a batch holds 1 to {MAX_BATCH_ITEMS} queries",
            )
        token = _token(context)

        async def one(index: int, item: exchange_pb2.QueryRequest) -> exchange_pb2.BatchItemResult:
            try:
                answer = await self._path.query(item, context, token=token)
            except Refusal as refusal:
                return exchange_pb2.BatchItemResult(index=index, status=_status(refusal))
            return exchange_pb2.BatchItemResult(
                index=index,
                status=status_pb2.Status(code=0),
                response=exchange_pb2.QueryResponse(
                    record=answer.record,
                    cache_hit=answer.cache_hit,
                    audit_id=answer.audit_id,
                    fields=answer.fields,
                    registry_version=answer.registry_version,
                    agreement_id=answer.agreement_id,
                ),
            )

        results = await asyncio.gather(*(one(i, item) for i, item in enumerate(request.items)))
        return exchange_pb2.BatchQueryResponse(items=results)


class PeerService(exchange_pb2_grpc.PeerServicer):
    def __init__(self, path: QueryPath) -> None:
        self._path = path

    async def Forward(
        self, request: exchange_pb2.ForwardRequest, context: Context
    ) -> exchange_pb2.ForwardResponse:
        try:
            return await self._path.forward(request, context)
        except Refusal as refusal:
            await abort(context, refusal.code, refusal.reason, refusal.message)

    async def ReportAccess(
        self, request: exchange_pb2.ReportAccessRequest, context: Context
    ) -> exchange_pb2.ReportAccessResponse:
        # Requester-side caches are not built: no gateway sends reports yet.
        await abort(
            context,
            grpc.StatusCode.UNIMPLEMENTED,
            "NOT_IMPLEMENTED",
            "Peer.ReportAccess is not served yet: requester-side caches are not built",
        )
