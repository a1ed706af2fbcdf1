"""The query path's service edge: `DataExchange` for agencies, `Peer` between gateways.

The flows themselves live in `gateway.flows` and know nothing of gRPC or protobuf: the
requester's (`RequesterFlow`: token, shape, replay, decision, quota, own cache, forward, seal
check, audit), the owner's (`OwnerFlow`: the caller gateway, decision again, owner quota, cache
or data system and seal, audit) and the intake of access reports (`ReportIntake`). Here, each
servicer turns a message into a domain call, calls its flow and turns the result into a
message; a `Refusal` it raises is sent by the caller interceptor (`gateway.errors.refuse`).
The flows reach the other gateway and the data system through the adapters below
(`PeerOwners`, `DataSystemClient`), which map gRPC errors to Refusals. `QueryPath` assembles
the three flows of one gateway from its collaborators.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.rpc import status_pb2

from gateway import rpcs
from gateway.audit import AuditLog
from gateway.cache import AnswerCache
from gateway.cases import CaseBinding
from gateway.cases._peer import CaseIntake, deliver_case_events
from gateway.consent import ConsentGate, StatusAsker
from gateway.errors import PLAIN_MESSAGES, Refusal, status_code, status_of
from gateway.flows import (
    NO_REQUEST,
    Answer,
    AuditContext,
    AuditTrail,
    ForwardCall,
    Forwarded,
    Gatekeeper,
    IntakeCall,
    OwnerFlow,
    PassedSeals,
    QueryCall,
    ReportIntake,
    RequesterFlow,
    TimeRemaining,
)
from gateway.forward_signing import ForwardDocument, RequestSigner
from gateway.identity import Caller, current_caller
from gateway.metrics import PEER_LOCAL, GatewayMetrics
from gateway.peers import PEER_CALL_SECONDS, PeerPool
from gateway.policy import DataRequest
from gateway.provider import ProviderAnswer, ProviderClient, ProviderError
from gateway.quota import QuotaCounter
from gateway.replay import ReplayGuard
from gateway.reports import (
    MAX_REPORTS_PER_BATCH,
    AccessReport,
    AccessReporter,
    ReportFormatError,
)
from gateway.sealing import RegionSealer, staple_of
from gateway.services._exchange_messages import (
    ForwardedCodec,
    SealedRecordCodec,
    data_request,
    forward_response,
    forwarded,
    query_request,
    query_response,
    seal_format,
    sealed_answer,
    sealed_record,
    wire_seal_format,
)
from gateway.services._metadata import request_token as _token
from gateway.services._peer_calls import (
    MAX_FORWARD_BATCH_ITEMS,
    ForwardCoalescer,
    ForwardGathering,
)
from gateway.services.consents import consent_status
from gateway.services.tracker import Tracker
from gateway.shared_checks import SharedChecks
from gateway.tokens import TokenVerifier
from registry import RegistryError, RegistryStore
from signer import GmVerifier, KeyProvider, SealVerifier
from tongban.v1 import common_pb2, exchange_pb2, exchange_pb2_grpc

__all__ = [
    "DataExchangeService",
    "DataSystemClient",
    "PeerOwners",
    "PeerService",
    "QueryPath",
    "seal_format",
    "sealed_answer",
    "sealed_record",
    "status_asker",
    "wire_seal_format",
]

log = logging.getLogger("tongban.exchange")

DEFAULT_DEADLINE_SECONDS: Final = 5.0  # a query without a client deadline gets this much
FORWARD_MARGIN_SECONDS: Final = 0.05  # kept back for our own work after the peer answers
MAX_BATCH_ITEMS: Final = 20  # queries in one BatchQuery

Context = grpc.aio.ServicerContext[Any, Any]


# -- the other gateway and the data system, as the flows ask them ------------------------------
class PeerOwners:
    """The provider region's gateway, asked over its pooled channel (`Peer.Forward`, or with
    the other forwards to that region of the same event-loop iteration in one
    `Peer.ForwardBatch`: `ForwardCoalescer`), with the caller's deadline (a call without one
    gets DEFAULT_DEADLINE_SECONDS) or ours when shorter. A peer that hangs past ours is
    UNAVAILABLE (the caller still has time: it is told at once, with the reason); past the
    caller's own, the call's deadline is what was exceeded."""

    def __init__(
        self,
        *,
        region: str,
        peers: PeerPool,
        metrics: GatewayMetrics,
        registry: RegistryStore,
        signer: RequestSigner,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        peer_timeout_seconds: float = PEER_CALL_SECONDS,
    ) -> None:
        self.region = region
        self._peers = peers
        self.metrics = metrics
        self._registry = registry
        self.signer = signer  # signs each Peer.Forward with this gateway's audit key
        self._clock = clock
        self.peer_timeout_seconds = peer_timeout_seconds  # a forward's bound (and the deadline's)
        # one Peer.ForwardBatch per region and event-loop iteration (a lone one: Peer.Forward)
        self._calls = ForwardCoalescer(peers, metrics)

    def signed_request(
        self, request: DataRequest, caller: Caller, operator: str, credential_type: str
    ) -> str:
        """The forwarded request's signed form (`gateway.forward_signing`), which the owner
        decides on and keeps as proof that this region asked."""
        try:
            registry = self._registry.current()
        except RegistryError as exc:
            raise Refusal("REGISTRY_STALE", str(exc)) from exc
        document = ForwardDocument(
            requesting_region=self.region,
            owner_region=request.provider_region,
            request=request,
            caller_agency=caller.agency_id,
            caller_region=caller.region,
            caller_operator=operator,
            caller_thumbprint=caller.thumbprint,
            credential_type=credential_type,
            requesting_gateway_audit_id="",  # our record is written once the owner answered
            issued_at=self._clock(),
        )
        return self.signer.sign(registry, document)

    async def forward(
        self,
        request: DataRequest,
        caller: Caller,
        operator: str,
        time_remaining: TimeRemaining,
        *,
        credential_type: str = "",
    ) -> Forwarded:
        remaining = time_remaining()
        caller_deadline = remaining if remaining is not None else DEFAULT_DEADLINE_SECONDS
        deadline = min(caller_deadline, DEFAULT_DEADLINE_SECONDS, self.peer_timeout_seconds)
        ours = deadline < caller_deadline
        forward = exchange_pb2.ForwardRequest(
            query=query_request(request),
            caller=common_pb2.CallerIdentity(
                agency_id=caller.agency_id,
                region=caller.region,
                operator=operator,
                certificate_thumbprint=caller.thumbprint,
            ),
            requesting_region=self.region,
            credential_type=credential_type,
            signed_request=self.signed_request(request, caller, operator, credential_type),
        )
        answer = await self._calls.forward(
            request.provider_region,
            forward,
            timeout_seconds=max(deadline - FORWARD_MARGIN_SECONDS, 0.01),
            ours=ours,
        )
        return forwarded(answer)


class DataSystemClient:
    """This region's data system as the owner flow asks it, through `ProviderClient`, with the
    forwarded call's deadline; its refusals passed on with the code they came with."""

    def __init__(self, provider: ProviderClient, metrics: GatewayMetrics) -> None:
        self.provider = provider
        self.metrics = metrics

    async def fetch(
        self, request: DataRequest, fields: Sequence[str], call: ForwardCall
    ) -> ProviderAnswer:
        remaining = call.time_remaining()
        started = time.perf_counter()
        try:
            answer = await self.provider.fetch(
                dataset=request.dataset,
                subject_id=request.subject_id,
                fields=fields,
                purpose=request.purpose,
                case_id=request.case_id,
                request_id=request.request_id,
                requesting_region=call.requesting_region,
                requesting_agency=call.agency_id,
                deadline_seconds=None
                if remaining is None
                else max(remaining - FORWARD_MARGIN_SECONDS, 0.01),
            )
        except ProviderError as exc:
            code = status_code(exc.reason) if exc.reason == "PROVIDER_UNAVAILABLE" else exc.code
            self.metrics.peer_call(PEER_LOCAL, code, time.perf_counter() - started)
            raise Refusal.passed_on(code, exc.reason, str(exc)) from exc
        self.metrics.peer_call(PEER_LOCAL, grpc.StatusCode.OK, time.perf_counter() - started)
        return answer


# -- one gateway's query path -----------------------------------------------------------------
def status_asker(peers: PeerPool, timeout_seconds: float) -> StatusAsker:
    """Asks a consent's home gateway whether it is revoked (Peer.ConsentStatus, over the
    authenticated peer channel, through that region's breaker)."""

    async def ask(home: str, consent_id: str) -> bool:
        asked = exchange_pb2.ConsentStatusRequest(consent_id=consent_id)
        answer = await peers.call(
            home,
            lambda stub: stub.ConsentStatus(asked, timeout=timeout_seconds),
            timeout_seconds=timeout_seconds,
        )
        return bool(answer.revoked)

    return ask


class QueryPath:
    """The three flows of one gateway, assembled from its collaborators: `requester`,
    `owner` and `intake` share one audit trail and one decision maker; `requester` and
    `owner` bind queries for conditional datasets to cases with `cases` (None: not bound)."""

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
        checks: SharedChecks | None = None,
        verifier: SealVerifier,
        gm_verifier: GmVerifier,
        seal_keys: Mapping[str, KeyProvider],
        cache: AnswerCache,
        provider: ProviderClient | None,
        audit: AuditLog,
        pseudonym_key: bytes,
        metrics: GatewayMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        audit_key: ed25519.Ed25519PrivateKey,
        reporter: AccessReporter | None = None,
        peer_timeout_seconds: float = PEER_CALL_SECONDS,
        cases: CaseBinding | None = None,
        consents: ConsentGate | None = None,  # None: datasets needing consent are refused
    ) -> None:
        self.region = region
        self.metrics = metrics
        self._cache = cache
        self._provider = provider
        self.gatekeeper = gatekeeper = Gatekeeper(registry)
        self.trail = AuditTrail(
            audit=audit,
            gateway_name=gateway_name,
            region=region,
            pseudonym_key=pseudonym_key,
            metrics=metrics,
            clock=clock,
        )
        self.requester = RequesterFlow(
            region=region,
            gatekeeper=gatekeeper,
            trail=self.trail,
            tokens=tokens,
            replay=replay,
            quota=quota,
            owners=self._peer_owners(peers, registry, audit_key, clock, peer_timeout_seconds),
            verifier=verifier,
            gm_verifier=gm_verifier,
            cache=cache,
            codec=ForwardedCodec(),
            reporter=reporter,
            cases=cases,
            checks=checks,
            clock=clock,
        )
        self.owner = OwnerFlow(
            region=region,
            gatekeeper=gatekeeper,
            trail=self.trail,
            quota=quota,
            cache=cache,
            codec=SealedRecordCodec(),
            # seal_keys: refilled on a reload; JAdES seals staple OCSP when online
            sealer=RegionSealer(
                region, seal_keys, staple=staple_of(verifier), stamper=verifier.stamper
            ),
            data_system=DataSystemClient(provider, metrics) if provider is not None else None,
            cases=cases,
            checks=checks,
            clock=clock,
        )
        self.intake = ReportIntake(region=region, gatekeeper=gatekeeper, trail=self.trail)
        self.consents = self.requester.consents = self.owner.consents = consents

    def _peer_owners(
        self,
        peers: PeerPool,
        registry: RegistryStore,
        audit_key: ed25519.Ed25519PrivateKey,
        clock: Callable[[], datetime],
        peer_timeout_seconds: float,
    ) -> PeerOwners:
        """The requester flow's way to the owners, signing with this gateway's audit key (the
        key the reports are signed with)."""
        return PeerOwners(
            region=self.region,
            peers=peers,
            metrics=self.metrics,
            registry=registry,
            signer=RequestSigner(self.region, audit_key),
            clock=clock,
            peer_timeout_seconds=peer_timeout_seconds,
        )

    @property
    def cache(self) -> AnswerCache:
        return self._cache

    @property
    def provider(self) -> ProviderClient | None:
        return self._provider

    @property
    def reporter(self) -> AccessReporter | None:
        return self.requester.reporter

    @property
    def seal_memo(self) -> PassedSeals:
        return self.requester.seal_memo

    async def report_loop(self) -> None:
        """The access reporter's background loop (until cancelled); returns at once without one."""
        if self.reporter is not None:
            await self.reporter.run()

    async def close(self) -> None:
        """Graceful stop: send the reports of requester-side hits still waiting."""
        if self.reporter is not None:
            await self.reporter.close()

    async def query(
        self,
        request: exchange_pb2.QueryRequest,
        context: Context,
        *,
        token: str,
        rpc: str = rpcs.QUERY,
        credential_type: str = "",
    ) -> Answer:
        """The requester's flow for one query message (Query, BatchQuery's items, Fetch)."""
        return await self.requester.query(
            QueryCall(
                caller=current_caller.get(),
                request=data_request(request),
                token=token,
                rpc=rpc,
                time_remaining=context.time_remaining,
                credential_type=credential_type,
            )
        )

    async def refuse_call(self, rpc: str, refusal: Refusal) -> Refusal:
        """Audit the refusal of a whole call before any request value was read (a batch of the
        wrong size): the caller, the reason, no values. Returns the refusal to raise."""
        caller = current_caller.get()
        return await self.trail.refused(
            refusal,
            AuditContext(
                rpc=rpc,
                caller_agency=caller.agency_id if caller is not None else "",
                caller_operator="",
                caller_region=caller.region if caller is not None else "",
                request=NO_REQUEST,
                started=time.perf_counter(),
            ),
        )


class DataExchangeService(exchange_pb2_grpc.DataExchangeServicer):
    def __init__(self, path: QueryPath) -> None:
        self._path = path

    async def Query(
        self, request: exchange_pb2.QueryRequest, context: Context
    ) -> exchange_pb2.QueryResponse:
        # A Refusal raised here is sent by the service edge (gateway.errors.refuse), with its
        # ErrorInfo metadata, as every service's is.
        return query_response(await self._path.query(request, context, token=_token(context)))

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
        gathering = ForwardGathering(len(request.items))  # one Peer.ForwardBatch per region

        async def one(index: int, item: exchange_pb2.QueryRequest) -> exchange_pb2.BatchItemResult:
            try:
                with gathering.item():
                    answer = await self._path.query(
                        item, context, token=token, rpc=rpcs.BATCH_QUERY
                    )
            except Refusal as refusal:
                return exchange_pb2.BatchItemResult(index=index, status=status_of(refusal))
            return exchange_pb2.BatchItemResult(
                index=index, status=status_pb2.Status(code=0), response=query_response(answer)
            )

        results = await asyncio.gather(*(one(i, item) for i, item in enumerate(request.items)))
        return exchange_pb2.BatchQueryResponse(items=results)


def _forward_call(request: exchange_pb2.ForwardRequest, context: Context) -> ForwardCall:
    """The owner flow's view of one forwarded request (a Forward's, or a ForwardBatch item's)."""
    return ForwardCall(
        caller=current_caller.get(),
        requesting_region=request.requesting_region,
        agency_id=request.caller.agency_id,
        operator=request.caller.operator,
        request=data_request(request.query),
        time_remaining=context.time_remaining,
        credential_type=request.credential_type,
        signed_request=request.signed_request,
    )


class PeerService(exchange_pb2_grpc.PeerServicer):
    def __init__(
        self, path: QueryPath, cases: CaseIntake | None = None, tracker: Tracker | None = None
    ) -> None:
        self._path = path
        self.cases = cases  # the case book, when this gateway keeps cases
        self.tracker = tracker  # the citizen's data tracker (Peer.SubjectTrail)

    async def Forward(
        self, request: exchange_pb2.ForwardRequest, context: Context
    ) -> exchange_pb2.ForwardResponse:
        answer = await self._path.owner.forward(_forward_call(request, context))
        return forward_response(answer)

    async def ForwardBatch(
        self, request: exchange_pb2.ForwardBatchRequest, context: Context
    ) -> exchange_pb2.ForwardBatchResponse:
        """Several forwards from one requesting gateway (its queries to this region of one
        event-loop iteration): each handled exactly as `Forward` handles it, all at once, and
        answered with its own response or the status `Forward` would have ended with."""
        if not request.items or len(request.items) > MAX_FORWARD_BATCH_ITEMS:
            raise await self._path.refuse_call(
                rpcs.FORWARD_BATCH,
                Refusal(
                    "REQUEST_TOO_LARGE",
                    f"a forward batch holds 1 to {MAX_FORWARD_BATCH_ITEMS} requests",
                ),
            )

        async def one(item: exchange_pb2.ForwardRequest) -> exchange_pb2.ForwardBatchItem:
            try:
                answer = await self._path.owner.forward(_forward_call(item, context))
            except Refusal as refusal:
                return exchange_pb2.ForwardBatchItem(status=status_of(refusal))
            except Exception:  # as the service edge ends a single call that failed so
                log.exception("a forward batch's item failed unexpectedly")
                internal = Refusal("INTERNAL_ERROR", PLAIN_MESSAGES["INTERNAL_ERROR"])
                return exchange_pb2.ForwardBatchItem(status=status_of(internal))
            return exchange_pb2.ForwardBatchItem(response=forward_response(answer))

        results = await asyncio.gather(*(one(item) for item in request.items))
        return exchange_pb2.ForwardBatchResponse(results=results)

    async def ReportAccess(
        self, request: exchange_pb2.ReportAccessRequest, context: Context
    ) -> exchange_pb2.ReportAccessResponse:
        # a Refusal carries its ErrorInfo metadata: "index" names the report refused
        sent: tuple[Mapping[str, Any], ...] = ()
        if 0 < len(request.reports) <= MAX_REPORTS_PER_BATCH:  # more: refused unread
            try:
                sent = tuple(AccessReport.from_message(m).document() for m in request.reports)
            except ReportFormatError:
                sent = ()
        audit_ids = await self._path.intake.report_access(
            IntakeCall(
                caller=current_caller.get(),
                reporting_region=request.reporting_region,
                jws=request.jws,
                sent_count=len(request.reports),
                sent=sent,
            )
        )
        return exchange_pb2.ReportAccessResponse(accepted=len(audit_ids), audit_ids=audit_ids)

    async def DeliverCaseEvents(
        self, request: exchange_pb2.DeliverCaseEventsRequest, context: Context
    ) -> exchange_pb2.DeliverCaseEventsResponse:
        return await deliver_case_events(self.cases, current_caller.get(), request)

    async def SubjectTrail(
        self, request: exchange_pb2.SubjectTrailRequest, context: Context
    ) -> exchange_pb2.SubjectTrailResponse:
        if self.tracker is None:
            raise Refusal("NOT_IMPLEMENTED", "this gateway keeps no data tracker")
        return await self.tracker.subject_trail(request, current_caller.get())

    async def ConsentStatus(
        self, request: exchange_pb2.ConsentStatusRequest, context: Context
    ) -> exchange_pb2.ConsentStatusResponse:
        if self._path.consents is None:
            raise Refusal("NOT_IMPLEMENTED", "this gateway keeps no consent register")
        return await consent_status(self._path.consents, current_caller.get(), request)
