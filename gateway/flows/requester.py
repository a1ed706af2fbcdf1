"""The requesting gateway's flow: an agency of this region asks for another region's data.

    (1) the caller is an agency of this region (mutual TLS) with a valid request token bound
        to its certificate
    (2) the request is well formed (`check_shape`: every id in its grammar, within its bound,
        no citizen id outside subject_id) and its id not seen before in the replay window
        (checked in (4)'s round trip; before any refusal of (3) or (3a), on its own: a repeat
        is refused as one whatever else is wrong with it)
    (3) the registry allows it (purpose, agreement, window, share class, case id, fields):
        authorisation precedes everything below; the one decision (`Grant`) carries the
        agreement, its quota and the fields to the steps below
    (3a) a conditional (有条件共享) dataset: the query names an open case this gateway holds, a
        part of which the asking agency handles, with the subject as its applicant, and whose
        matter lists this dataset, purpose and fields (`CaseBinding`: CASE_NOT_OPEN,
        CASE_QUERY_NOT_ALLOWED); authorisation still, so before the quota and the cache. Not
        checked when the gateway's cases do not bind queries (`[cases] bind_queries = false`)
    (3b) a dataset marked requires_consent: the query carries a consent of its subject that
        covers it and is not revoked (`ConsentGate`, without counting a use: the owner counts);
        such a query is never answered from this gateway's cache
    (4) the agreement's quota this minute is not exhausted. (2)'s replay check, this count
        and (4a)'s cache read are one round trip to the shared state (`SharedChecks`: one
        Redis script), in that order: a repeat counts nothing, a request over quota reads nothing
    (4a) a dataset whose owner chose cache_scope "requester": this gateway's own cache holds
        the owner's sealed answer (key: provider region, dataset, subject pseudonym, fields,
        purpose, this region) whose seal still verifies; its report to the owner is made, to
        be recorded with the access at (7) (the audit log is the outbox), and the answer goes
        on at (7) with no call to the owner (a miss goes on at (5), and the verified answer is
        kept for the dataset's TTL at most)
    (5) the provider region's gateway answers (`OwnerGateway.forward`, deadline propagated)
    (6) its answer carries a valid e-seal of the provider region, over only allowed fields
    (7) the access is durably audited; only then is the sealed record released
Every refusal is audited (denied, or failed when the exchange failed) and raised as a Refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Final, Protocol

from gateway.audit import Outbound
from gateway.cache import AnswerCache, cache_key
from gateway.cases import CaseBinding
from gateway.consent import ConsentGate
from gateway.errors import Refusal
from gateway.flows._common import (
    AuditTrail,
    Gatekeeper,
    PassedSeals,
    bind_to_case,
    check_consent,
    check_shape,
    overridden,
)
from gateway.flows._model import (
    Answer,
    AuditContext,
    Forwarded,
    Grant,
    QueryCall,
    SealedAnswer,
    TimeRemaining,
)
from gateway.identity import Caller, CallerKind
from gateway.licences import LicenceRefused, licence_record
from gateway.policy import DataRequest
from gateway.quota import QuotaCounter, QuotaUnavailable
from gateway.replay import ReplayGuard, ReplayUnavailable
from gateway.reports import AccessReport, AccessReporter, ReportFormatError
from gateway.sealing import SealFormat, check_region_seal, seals_with_sm2
from gateway.shared_checks import SequentialChecks, SharedChecks, Wanted
from gateway.tokens import TokenError, TokenVerifier
from registry import CacheScope, Registry
from signer import GmVerifier, Indication, SealVerifier

__all__ = ["AnswerCodec", "OwnerGateway", "RequesterFlow"]

log = logging.getLogger("tongban.exchange")

_HEX64: Final = re.compile(r"[0-9a-f]{64}")


class OwnerGateway(Protocol):
    """The provider region's gateway, as the requesting gateway asks it (Peer.Forward)."""

    async def forward(
        self,
        request: DataRequest,
        caller: Caller,
        operator: str,
        time_remaining: TimeRemaining,
        *,
        credential_type: str = "",
    ) -> Forwarded:
        """The owner's answer (to a credential fetch when `credential_type` is given); a Refusal
        when it refused, failed or could not be reached."""
        ...


class AnswerCodec(Protocol):
    """How an owner's answer is kept in this gateway's cache (bytes, encrypted by the cache)."""

    def encode(self, answer: Forwarded) -> bytes: ...

    def decode(self, raw: bytes) -> Forwarded | None:
        """The answer kept as `raw`; None when it does not decode."""
        ...


class RequesterFlow:
    """The requesting gateway's side of the query path (see the module docstring)."""

    def __init__(
        self,
        *,
        region: str,
        gatekeeper: Gatekeeper,
        trail: AuditTrail,
        tokens: TokenVerifier,
        replay: ReplayGuard,
        quota: QuotaCounter,
        owners: OwnerGateway,
        verifier: SealVerifier,
        gm_verifier: GmVerifier,
        cache: AnswerCache,
        codec: AnswerCodec,
        reporter: AccessReporter | None = None,
        seal_memo: PassedSeals | None = None,
        cases: CaseBinding | None = None,
        checks: SharedChecks | None = None,
        consents: ConsentGate | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        self.region = region
        self._gate = gatekeeper
        self._trail = trail
        self.consents = consents  # None: a dataset that needs consent is refused
        self._tokens = tokens
        self._replay = replay
        self._quota = quota
        # (2), (4) and (4a)'s read in one round trip; one after the other without one
        self._checks = checks or SequentialChecks(replay, quota)
        self._owners = owners
        self._verifier = verifier
        self._gm_verifier = gm_verifier  # GB/T 38540 seals (SM2 regions); same registry
        self._cache = cache
        self._codec = codec
        # Requester-side caching (cache_scope "requester") needs somewhere to report its hits.
        self.reporter = reporter
        self.seal_memo = seal_memo or PassedSeals()
        self.cases = cases  # None: queries are not bound to cases ([cases] bind_queries off)
        self._clock = clock

    async def query(self, call: QueryCall) -> Answer:
        caller, data = call.caller, call.request
        started = time.perf_counter()
        if caller is None or caller.kind is not CallerKind.AGENCY or caller.region != self.region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"only agencies of region {self.region} query through this gateway",
            )
        registry = self._gate.current()
        audit = AuditContext(
            rpc=call.rpc,
            caller_agency=caller.agency_id,
            caller_operator="",
            caller_region=caller.region,
            request=data,
            started=started,
            registry_version=registry.version,
        )
        keep: tuple[bytes, int, str] | None = None
        try:
            # (1)
            operator = self._operator(call, caller, registry)
            audit = replace(audit, caller_operator=operator)
            # (2): the shape here, the replay window in (4)'s round trip
            check_shape(data)
            now = self._clock()
            try:
                # (3)
                grant = self._gate.grant(registry, caller.agency_id, data, now)
                audit = replace(audit, agreement_id=grant.agreement_id)
                # (3a)
                await bind_to_case(self.cases, registry, grant, data)
                audit, consent_id = await check_consent(self.consents, audit, registry, grant)
            except Refusal:
                await self._first_use(caller, data)  # (2) first: a repeat is refused as one
                raise
            # (4a)'s key: never for a query under consent (the owner counts its uses)
            keep = None if consent_id else self._requester_key(grant, data)
            if call.credential_type and seals_with_sm2(registry, data.provider_region, now):
                keep = None  # the answer is an e-licence: neither kept nor answered from here
            if keep is not None:
                audit = replace(audit, subject=keep[2])  # computed once: the record needs it
            # (2), (4), (4a): one round trip
            raw = await self._check_shared(caller, data, grant, now, keep)
            if raw is not None:
                cached = await self._answer_from_cache(
                    raw, grant, registry, caller=caller, audit=audit
                )
                if cached is not None:
                    return cached
            # (5)
            self._trail.ready()
            forwarded = await self._owners.forward(
                data, caller, operator, call.time_remaining, credential_type=call.credential_type
            )
            # (6)
            fields = await self._check_answer(forwarded, data, grant, bool(call.credential_type))
        except Refusal as refusal:
            raise await self._trail.refused(refusal, audit) from None
        except asyncio.CancelledError:
            await self._trail.cancelled(audit)
            raise
        # (7)
        audit_id = await self._trail.release(
            audit, fields=fields, cache_hit=forwarded.cache_hit, sealed=forwarded.record.seal
        )
        if (
            keep is not None
            and forwarded.record.format is not SealFormat.OFD  # the cache keeps JSON records
            and _HEX64.fullmatch(forwarded.subject_pseudonym)
        ):
            await self._keep(keep[0], keep[1], forwarded)
        return Answer(
            forwarded.record,
            forwarded.cache_hit,
            audit_id,
            fields,
            registry.version,
            grant.agreement_id,
        )

    def _operator(self, call: QueryCall, caller: Caller, registry: Registry) -> str:
        """(1): the operator the caller's request token names."""
        if not call.token:
            raise Refusal(
                "TOKEN_INVALID",
                "a request token is required (authorization: Bearer <token>)",
            )
        try:
            claims = self._tokens.verify(
                call.token,
                registry=registry,
                caller_agency=caller.agency_id,
                caller_region=caller.region,
                client_thumbprint=caller.thumbprint,
            )
        except TokenError as exc:
            raise Refusal(exc.reason, str(exc)) from exc
        return claims.operator

    async def _first_use(self, caller: Caller, data: DataRequest) -> None:
        """(2) on its own, before a refusal of (3) or (3a): the request id is new for this
        agency within the replay window."""
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

    async def _check_shared(
        self,
        caller: Caller,
        data: DataRequest,
        grant: Grant,
        now: datetime,
        keep: tuple[bytes, int, str] | None,
    ) -> bytes | None:
        """(2) the request id is new for this agency within the replay window, (4) one query of
        the agreement's quota this minute, and (4a) this gateway's kept answer (None: none, or
        no key): one round trip to the shared state."""
        wanted = Wanted(
            replay=(caller.agency_id, data.request_id),
            quota=(grant.agreement_id, grant.quota_per_minute),
            cache=None if keep is None else keep[0],
        )
        try:
            checked = await self._checks.check(wanted, self._cache, now=now)
        except ReplayUnavailable as exc:
            raise Refusal(
                "SHARED_STATE_UNAVAILABLE",
                f"the replay window cannot be checked: {exc}",
            ) from exc
        except QuotaUnavailable as exc:
            raise Refusal(
                "SHARED_STATE_UNAVAILABLE",
                f"the agreement's quota cannot be checked: {exc}",
            ) from exc
        if not checked.first_use:
            raise Refusal(
                "REQUEST_REPLAYED",
                "this request_id was already used by this agency: a replay is refused",
            )
        if not checked.within_quota:
            raise Refusal(
                "QUOTA_EXCEEDED",
                f"agreement {grant.agreement_id} allows {grant.quota_per_minute} queries a "
                "minute; try again next minute",
            )
        return checked.cached

    def _requester_key(self, grant: Grant, data: DataRequest) -> tuple[bytes, int, str] | None:
        """(cache key, TTL, subject pseudonym) of this gateway's own copy of the owner's answer,
        when the owner lets requesting gateways keep it (cache_scope "requester") and this
        gateway can report its hits; None otherwise (every query then goes to the owner, as
        for "provider")."""
        dataset = grant.dataset
        if (
            self.reporter is None
            or dataset.cache_scope is not CacheScope.REQUESTER
            or dataset.cache_ttl_seconds <= 0
        ):
            return None
        subject = self._trail.pseudonym(data.subject_id)
        key = cache_key(
            provider_region=data.provider_region,
            dataset=data.dataset,
            subject_pseudonym=subject,
            fields=grant.allowed_fields,
            purpose=data.purpose,
            requester=self.region,
        )
        return key, dataset.cache_ttl_seconds, subject

    async def _keep(self, key: bytes, ttl_seconds: int, forwarded: Forwarded) -> None:
        """Keep the owner's verified answer for what is left of the dataset's TTL since it was
        sealed (the owner may have served it from its own cache): an answer is never older
        than the TTL, whichever cache it comes from. Jitter only shortens it; a cache backend
        that is down is skipped (the cache never fails a query)."""
        age = 0.0
        try:
            sealed_at = forwarded.record.sealed_at_time()
            if sealed_at is not None:
                age = (self._clock() - sealed_at).total_seconds()
        except (ValueError, OverflowError):
            age = float(ttl_seconds)
        left = ttl_seconds - min(max(age, 0.0), float(ttl_seconds))
        if left >= 1:
            await self._cache.set(key, self._codec.encode(forwarded), left, at_most=True)

    async def _answer_from_cache(
        self,
        raw: bytes,
        grant: Grant,
        registry: Registry,
        *,
        caller: Caller,
        audit: AuditContext,
    ) -> Answer | None:
        """(4a) The answer from this gateway's own cache (`raw`, read after the decision): the
        owner's sealed answer, its seal checked again (memoised), the access audited here with
        its report to the owner (one transaction: the log is the outbox). None when there is
        nothing usable (the caller then asks the owner)."""
        assert self.reporter is not None
        data = audit.request
        found = await self._cached(raw, data, grant)
        if found is None:
            return None
        entry, fields = found
        owner = data.provider_region
        if not self.reporter.accepting(owner):
            log.warning(
                "a hit for region %s is not answered locally: %d reports already wait for it",
                owner,
                self.reporter.backlog.get(owner, 0),
            )
            return None
        audit = replace(audit, at=self._clock())  # the time of the access, and of its report
        outbound = self._report(entry, fields, caller, audit)
        if outbound is None:
            return None
        # The record carries the report to the outbox: both durable, or neither.
        audit_id = await self._trail.release(
            audit,
            fields=fields,
            cache_hit=True,
            sealed=entry.record.seal,
            outbound=outbound,
        )
        self.reporter.recorded(owner)
        return Answer(entry.record, True, audit_id, fields, registry.version, grant.agreement_id)

    async def _cached(
        self, raw: bytes, data: DataRequest, grant: Grant
    ) -> tuple[Forwarded, tuple[str, ...]] | None:
        """The kept answer `raw` and the fields it returns, if it still passes its checks."""
        entry = self._codec.decode(raw)
        if entry is None:
            log.warning("a cached answer of region %s does not decode", data.provider_region)
            return None
        if (
            not _HEX64.fullmatch(entry.subject_pseudonym)
            or entry.record.sealer_region != data.provider_region
        ):
            return None
        try:
            return entry, await self._check_answer(entry, data, grant)
        except Refusal as refusal:
            log.warning(
                "a cached answer of region %s no longer passes its checks (%s): asking the owner",
                data.provider_region,
                refusal.reason,
            )
            return None

    def _report(
        self,
        entry: Forwarded,
        fields: tuple[str, ...],
        caller: Caller,
        audit: AuditContext,
    ) -> Outbound | None:
        """The hit's report to its owner (the access `audit` records), as the outbox message;
        None if it cannot be made."""
        assert self.reporter is not None
        assert audit.at is not None
        data = audit.request
        owner = data.provider_region
        try:
            report = AccessReport(
                request_id=data.request_id,
                caller_agency=caller.agency_id,
                caller_region=caller.region,
                caller_operator=audit.caller_operator,
                caller_thumbprint=caller.thumbprint,
                dataset=data.dataset,
                purpose=data.purpose,
                case_id=data.case_id,
                subject_pseudonym=entry.subject_pseudonym,
                # what the owner recorded it gave (its decision's fields), so that it finds it
                fields=tuple(sorted(set(entry.fields))) or fields,
                accessed_at=audit.at,
                sealed_digest=hashlib.sha256(entry.record.seal.encode()).hexdigest(),
                answer_audit_id=entry.audit_id,
            )
        except ReportFormatError as exc:
            log.warning(
                "a hit for region %s is not answered locally, its report cannot be made: %s",
                owner,
                exc,
            )
            return None
        return self.reporter.outbound(owner, report)

    async def _check_answer(
        self, forwarded: Forwarded, data: DataRequest, grant: Grant, fetch: bool = False
    ) -> tuple[str, ...]:
        """(6) The fields the answer returns, once its seal is checked (or was, moments ago,
        for the same bytes under the same registry: `seal_memo`) and they are all allowed."""
        if forwarded.record.format is SealFormat.OFD and not fetch:
            raise Refusal(
                "SEAL_INVALID",
                f"region {data.provider_region} answered a query with an e-licence (OFD)",
            )
        memo = PassedSeals.key(forwarded.record, self._verifier.trust.version, data.provider_region)
        returned = self.seal_memo.get(memo)
        if returned is None:
            returned = self._validate_seal(forwarded.record, data)
            self.seal_memo.put(memo, returned)
        else:  # still an answer whose seal passed: the metric counts answers checked
            self._trail.metrics.verification(Indication.TOTAL_PASSED.value, "")
        extra = sorted(set(returned) - grant.allowed_fields)
        if extra:  # minimisation is checked again on the way back: never pass on more
            raise overridden(
                "FIELD_NOT_ALLOWED",
                f"region {data.provider_region} returned fields outside the purpose: {', '.join(extra)}",
            )
        return returned

    def _validate_seal(self, record: SealedAnswer, data: DataRequest) -> tuple[str, ...]:
        report = check_region_seal(
            format=record.format,
            jws=record.jws,
            ses_signature=record.ses_signature,
            payload=record.payload,
            region=data.provider_region,
            jades=self._verifier,
            gm=self._gm_verifier,
        )
        self._trail.metrics.verification(report.indication, report.sub_indication or "")
        if not report.passed:
            raise Refusal(
                "SEAL_INVALID",
                f"the answer of region {data.provider_region} carries no valid e-seal: "
                f"{report.message}",
            )
        payload = record.payload
        if record.format is SealFormat.OFD:  # the record inside the e-licence, as sealed
            try:
                payload = licence_record(record.payload, report)
            except LicenceRefused as exc:
                raise Refusal(
                    exc.reason, f"region {data.provider_region}'s e-licence: {exc}"
                ) from exc
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Refusal("SEAL_INVALID", "the sealed answer is not a JSON record") from exc
        return tuple(sorted(document)) if isinstance(document, dict) else ()
