"""What the three flows share: the audit trail of a call, the one decision of a gateway, the
seal checks remembered, and the shape check of a request."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Final

from gateway.audit import (
    AuditLog,
    AuditRecord,
    AuditUnavailable,
    Outbound,
    Outcome,
    audit_id,
    pseudonymize,
    seal_kept_request,
)
from gateway.cases import CaseBinding
from gateway.consent import ConsentError, ConsentGate
from gateway.errors import OVERRIDES, Refusal
from gateway.flows._model import AuditContext, Grant, SealedAnswer
from gateway.identity import Caller, CallerKind
from gateway.metrics import GatewayMetrics
from gateway.policy import DataRequest, PolicyInputError, PurposePolicy, check_request
from registry import Agency, Registry, RegistryError, RegistryStore

__all__ = [
    "SEAL_MEMO_ENTRIES",
    "SEAL_MEMO_SECONDS",
    "AuditTrail",
    "Gatekeeper",
    "PassedSeals",
    "bind_to_case",
    "check_consent",
    "check_shape",
    "gateway_of",
    "overridden",
]

log = logging.getLogger("tongban.exchange")

SEAL_MEMO_SECONDS: Final = 5.0  # a passed seal check of the same bytes is trusted this long
SEAL_MEMO_ENTRIES: Final = 4096  # passed seal checks remembered at most


def overridden(reason: str, message: str) -> Refusal:
    """A refusal with the other code `gateway.errors.OVERRIDES` names for `reason` (each such
    reason has one), without naming a gRPC code here."""
    code = next(code for (named, code) in OVERRIDES if named == reason)
    return Refusal(reason, message, code=code)


def check_shape(request: DataRequest) -> None:
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


def gateway_of(caller: Caller | None, region: str, what: str) -> Caller:
    """The caller, if its peer certificate is the gateway of `region`; else NOT_AUTHORISED_ROLE."""
    if caller is None or caller.kind is not CallerKind.GATEWAY or caller.region != region:
        raise Refusal("NOT_AUTHORISED_ROLE", f"only the gateway of {what}")
    return caller


class Gatekeeper:
    """The registry a call decides with, and the one decision per gateway per request."""

    def __init__(self, registry: RegistryStore, policy: PurposePolicy | None = None) -> None:
        self._registry = registry
        self.policy = policy or PurposePolicy()

    def current(self) -> Registry:
        try:
            return self._registry.current()
        except RegistryError as exc:
            raise Refusal("REGISTRY_STALE", str(exc)) from exc

    def grant(
        self,
        registry: Registry,
        agency_id: str,
        request: DataRequest,
        now: datetime,
        *,
        agency: Agency | None = None,
    ) -> Grant:
        """The decision on `request` (whose shape `check_shape` passed) by the agency
        `agency_id` (`agency`, when the caller looked it up in `registry` already), or the
        Refusal that says why not."""
        agency = agency or registry.agency(agency_id)
        if agency is None:
            raise overridden(
                "CERTIFICATE_NOT_TRUSTED", f"agency {agency_id} is not in the registry"
            )
        decision = self.policy.decide_checked(registry, requester=agency, request=request, at=now)
        if not decision.allowed:
            raise Refusal(decision.reason, decision.message)
        dataset = registry.dataset(request.provider_region, request.dataset)
        assert dataset is not None  # the decision checked it
        return Grant(decision=decision, agency=agency, dataset=dataset)


async def bind_to_case(
    cases: CaseBinding | None, registry: Registry, grant: Grant, request: DataRequest
) -> None:
    """A query for a conditional dataset names an open case this gateway holds, handled by the
    granted agency for the subject, whose matter allows the query (`CaseBinding.check`: the
    Refusal says which not). The matter is read from `registry`, the one the grant was decided
    with. Nothing is checked for other datasets, or when cases do not bind queries (`cases`
    None: `[cases] bind_queries = false`)."""
    if cases is None or not grant.needs_case:
        return
    await cases.check(
        registry,
        case_id=request.case_id,
        agency=grant.agency.id,
        agency_region=grant.agency.region,
        subject_id=request.subject_id,
        provider_region=request.provider_region,
        dataset=request.dataset,
        purpose=request.purpose,
        fields=grant.fields,
    )


async def check_consent(
    consents: ConsentGate | None,
    audit: AuditContext,
    registry: Registry,
    grant: Grant,
    *,
    count_use: bool = False,
) -> tuple[AuditContext, str]:
    """The consent check of a query (`ConsentGate.check`; for datasets marked
    requires_consent): the audit context naming the consent, and its id ("" when none is
    needed). A refusal's record names the consent too, once its signature verified."""
    data = audit.request
    if not grant.dataset.requires_consent:
        return audit, ""
    if consents is None:
        raise Refusal("CONSENT_STATUS_UNAVAILABLE", "this gateway is not set up to check consents")
    try:
        consent_id = await consents.check(
            data,
            registry=registry,
            agency=grant.agency,
            dataset=grant.dataset,
            fields=grant.allowed_fields,
            count_use=count_use,
        )
    except ConsentError as exc:
        raise _ConsentRefusal(
            exc.reason, str(exc), replace(audit, consent_id=exc.consent_id)
        ) from exc
    except AuditUnavailable as exc:  # the home region's register is kept in the audit store
        raise Refusal("AUDIT_UNAVAILABLE", f"the consent register did not answer: {exc}") from exc
    return replace(audit, consent_id=consent_id), consent_id


class _ConsentRefusal(Refusal):
    """A consent refusal with the audit context that names the consent."""

    def __init__(self, reason: str, message: str, audit: AuditContext) -> None:
        super().__init__(reason, message)
        self.audit = audit


class AuditTrail:
    """A gateway's audit records of the query path: one per access, allowed or refused."""

    def __init__(
        self,
        *,
        audit: AuditLog,
        gateway_name: str,
        region: str,
        pseudonym_key: bytes,
        metrics: GatewayMetrics,
        clock: Callable[[], datetime],
    ) -> None:
        self.log = audit
        self.gateway_name = gateway_name
        self.region = region
        self._pseudonym_key = pseudonym_key
        self.metrics = metrics
        self.clock = clock

    def pseudonym(self, subject_id: str) -> str:
        return pseudonymize(subject_id, self._pseudonym_key)

    async def record(
        self,
        context: AuditContext,
        outcome: Outcome,
        *,
        reason: str = "",
        fields: tuple[str, ...] = (),
        cache_hit: bool = False,
        sealed: str = "",
        outbound: Outbound | None = None,
    ) -> str:
        """Append one audit record; return its audit id. Raises AuditUnavailable.
        `outbound` (a hit's report to its owner) is made durable with the record."""
        appended = await self.log.append(
            self._record_of(
                context, outcome, reason=reason, fields=fields, cache_hit=cache_hit, sealed=sealed
            ),
            outbound,
        )
        if outcome is not Outcome.FAILED:
            self.metrics.decision("allowed" if outcome is Outcome.ALLOWED else "denied", reason)
        return audit_id(self.log.origin, appended.index)

    async def record_all(
        self, entries: Sequence[tuple[AuditContext, tuple[str, ...]]], *, cache_hit: bool
    ) -> list[str]:
        """Append an allowed access's record per (context, fields), as `record` would each, in
        one batch (`AuditLog.append_all`); their audit ids, in order. Raises AuditUnavailable."""
        records = [
            self._record_of(
                context, Outcome.ALLOWED, reason="", fields=fields, cache_hit=cache_hit, sealed=""
            )
            for context, fields in entries
        ]
        appended = await self.log.append_all(records)
        for _ in appended:
            self.metrics.decision("allowed", "")
        return [audit_id(self.log.origin, a.index) for a in appended]

    def _record_of(
        self,
        context: AuditContext,
        outcome: Outcome,
        *,
        reason: str,
        fields: tuple[str, ...],
        cache_hit: bool,
        sealed: str,
    ) -> AuditRecord:
        """The audit record of `context`'s access (see `record`)."""
        request = context.request
        subject = context.subject
        if subject is None:
            subject = self.pseudonym(request.subject_id) if request.subject_id else ""
        sealed_digest = context.sealed_digest
        if sealed_digest is None:
            sealed_digest = hashlib.sha256(sealed.encode()).hexdigest() if sealed else ""
        kept_digest, kept_sealed = context.request_digest, ""
        if context.kept_request:
            kept_digest, kept_sealed = seal_kept_request(context.kept_request, self._pseudonym_key)
        return AuditRecord(
            time=context.at or self.clock(),
            gateway=self.gateway_name,
            region=self.region,
            rpc=context.rpc,
            request_id=request.request_id,
            caller_agency=context.caller_agency,
            caller_operator=context.caller_operator,
            caller_region=context.caller_region,
            provider_region=request.provider_region,
            dataset=request.dataset,
            purpose=request.purpose,
            case_id=request.case_id,
            subject=subject,
            fields=tuple(sorted(fields)),
            outcome=outcome,
            reason=reason,
            cache_hit=cache_hit,
            latency_us=int((time.perf_counter() - context.started) * 1_000_000),
            sealed_digest=sealed_digest,
            registry_version=context.registry_version,
            agreement_id=context.agreement_id,
            request_digest=kept_digest,
            request_sealed=kept_sealed,
            consent_id=context.consent_id,
        )

    async def release(
        self,
        context: AuditContext,
        *,
        fields: tuple[str, ...],
        cache_hit: bool,
        sealed: str = "",
        outbound: Outbound | None = None,
        what: str = "the answer was not released",
    ) -> str:
        """Record an allowed access (durably: fail closed) and return its audit id."""
        try:
            return await self.record(
                context,
                Outcome.ALLOWED,
                fields=fields,
                cache_hit=cache_hit,
                sealed=sealed,
                outbound=outbound,
            )
        except AuditUnavailable as exc:
            raise Refusal("AUDIT_UNAVAILABLE", f"{what}: {exc}", audited=True) from exc

    def ready(self) -> None:
        """Refuse at once while the audit store's breaker is open: an answer fetched now could
        not be released (its record cannot be made durable), so nobody is asked for it."""
        if self.log.breaker.state == "open":
            raise Refusal(
                "AUDIT_UNAVAILABLE",
                "the audit store is failing (its circuit breaker is open): no answer can be "
                "released now; try again shortly",
            )

    async def refused(self, refusal: Refusal, context: AuditContext) -> Refusal:
        """Audit a refusal (best effort: a denial releases nothing) and return it to raise.
        The caller was denied, or the exchange failed (a peer, the data system, a bad seal)."""
        if isinstance(refusal, _ConsentRefusal):
            context = refusal.audit
        if not refusal.audited:
            outcome = Outcome.FAILED if refusal.failed else Outcome.DENIED
            if refusal.reason == "QUOTA_EXCEEDED":
                self.metrics.quota_rejected(context.agreement_id)
            try:
                await self.record(context, outcome, reason=refusal.reason)
            except AuditUnavailable:
                log.warning(
                    "a refusal (%s) could not be audited: the audit store is unavailable",
                    refusal.reason,
                )
            refusal.audited = True
        return refusal

    async def cancelled(self, context: AuditContext) -> None:
        """The call was cancelled (by its caller, or its deadline) while a peer or the data
        system was being asked: record the attempt (failed, REQUEST_CANCELLED) before the
        cancellation goes on. The record is written in a task of its own, shielded, so that the
        cancellation of this call does not cancel it too."""
        record = asyncio.ensure_future(
            self.record(context, Outcome.FAILED, reason="REQUEST_CANCELLED")
        )
        record.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
        try:
            await asyncio.shield(record)
        except AuditUnavailable:
            log.warning("a cancelled request could not be audited: the audit store is unavailable")
        except asyncio.CancelledError:
            pass  # cancelled again while waiting: the shielded record still completes


class PassedSeals:
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
    def key(record: SealedAnswer, version: int, region: str) -> tuple[bytes, int, str]:
        digest = hashlib.sha256(record.seal.encode())
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
