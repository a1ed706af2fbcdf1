"""The owner gateway's flow (Peer.Forward): a query forwarded by another region's gateway for
one of its agencies, for this region's data.

    (1) the caller is the gateway of the region it claims, sending a well-formed request
        (checked again: a peer is not trusted to have checked it), signed by that region's
        audit key (`verify_forward`: REQUEST_SIGNATURE_INVALID), whose plain values are the
        signed ones (REQUEST_PAYLOAD_MISMATCH), which are what is decided on and recorded,
        with the signed request kept; it forwards for one of its agencies
    (2) this gateway decides again, on its own registry (never trusting the requester's
        decision); for a conditional (有条件共享) dataset, on its own copy of the case the query
        names too (`CaseBinding`, with the signed request's agency of the requesting region:
        CASE_NOT_OPEN, CASE_QUERY_NOT_ALLOWED; unless its cases do not bind queries); then it
        counts the agreement's quota over every requesting gateway; for a dataset marked
        requires_consent, checks the consent again (`ConsentGate`, its revocation asked of the
        home region) and counts one of its uses (CONSENT_EXHAUSTED past max_uses)
    (3) answers from its cache, or asks its data system and seals the exact answer bytes. (2)'s
        count and this cache read are one round trip to the shared state (`SharedChecks`: one
        Redis script), the read only for a request within its quota
    (4) durably audits the access, then answers (with its pseudonym of the subject when the
        dataset is cache_scope "requester", for the requester's reports)
Every refusal after (1)'s caller check is audited, and raised as a Refusal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from gateway import rpcs
from gateway.cache import AnswerCache, cache_key
from gateway.cases import CaseBinding
from gateway.consent import ConsentGate
from gateway.errors import Refusal
from gateway.flows._common import (
    AuditTrail,
    Gatekeeper,
    bind_to_case,
    check_consent,
    check_shape,
    gateway_of,
)
from gateway.flows._model import AuditContext, ForwardCall, Forwarded, Grant, SealedAnswer
from gateway.forward_signing import ForwardDocument, SignedForward, verify_forward
from gateway.licences import LICENCE_CONTENT_TYPE
from gateway.policy import DataRequest
from gateway.provider import ProviderAnswer
from gateway.quota import QuotaCounter, QuotaUnavailable
from gateway.sealing import RegionSealer, SealKeyUnavailable
from gateway.shared_checks import SequentialChecks, SharedChecks, Wanted
from registry import Agency, CacheScope, Registry
from signer import SignerError

__all__ = ["DataSystem", "OwnerFlow", "SealedCodec"]


class DataSystem(Protocol):
    """This region's data system, as its gateway asks it for a subject's record."""

    async def fetch(
        self, request: DataRequest, fields: Sequence[str], call: ForwardCall
    ) -> ProviderAnswer:
        """The record with exactly `fields`; a Refusal when it refused or failed."""
        ...


class SealedCodec(Protocol):
    """How a sealed answer is kept in this gateway's cache (bytes, encrypted by the cache)."""

    def encode(self, record: SealedAnswer) -> bytes: ...

    def decode(self, raw: bytes) -> SealedAnswer: ...


def _as_signed(call: ForwardCall, document: ForwardDocument) -> bool:
    """Does the call say what its signed request signs (the plain fields are a copy)?"""
    return (
        call.request == document.request
        and call.agency_id == document.caller_agency
        and call.operator == document.caller_operator
        and call.credential_type == document.credential_type
    )


class OwnerFlow:
    """The owner gateway's side of the query path (see the module docstring)."""

    def __init__(
        self,
        *,
        region: str,
        gatekeeper: Gatekeeper,
        trail: AuditTrail,
        quota: QuotaCounter,
        cache: AnswerCache,
        codec: SealedCodec,
        sealer: RegionSealer,
        data_system: DataSystem | None,
        cases: CaseBinding | None = None,
        checks: SharedChecks | None = None,
        consents: ConsentGate | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        self.region = region
        self.consents = consents  # None: a dataset that needs consent is refused
        self._gate = gatekeeper
        self._trail = trail
        self._quota = quota
        # (2)'s count and (3)'s cache read in one round trip; one after the other without one
        self._checks = checks or SequentialChecks(None, quota)
        self._cache = cache
        self._codec = codec
        self._sealer = sealer
        self.data_system = data_system
        self.cases = cases  # None: queries are not bound to cases ([cases] bind_queries off)
        self._clock = clock

    async def forward(self, call: ForwardCall) -> Forwarded:
        started = time.perf_counter()
        # (1)
        caller = gateway_of(
            call.caller, call.requesting_region, "the requesting region forwards its queries"
        )
        registry = self._gate.current()
        audit = AuditContext(
            rpc=rpcs.FORWARD,
            caller_agency=call.agency_id,
            caller_operator=call.operator,
            caller_region=caller.region,
            request=call.request,
            started=started,
            registry_version=registry.version,
        )
        taken = ""  # the consent a use of which this query holds until its answer is released
        try:
            check_shape(call.request)  # first: a malformed request is refused unread
            signed = self._verified(call, registry)
            document = signed.document
            audit = replace(  # what was signed is recorded, and the signature kept
                audit,
                caller_agency=document.caller_agency,
                caller_operator=document.caller_operator,
                request=document.request,
                kept_request=signed.jws,
            )
            data, agency = self._as_signed_for_here(call, document, caller.region, registry)
            # (2)
            now = self._clock()
            grant = self._gate.grant(registry, agency.id, data, now, agency=agency)
            audit = replace(audit, agreement_id=grant.agreement_id)
            await bind_to_case(self.cases, registry, grant, data)
            audit, taken = await check_consent(
                self.consents, audit, registry, grant, count_use=True
            )
            subject = self._trail.pseudonym(data.subject_id)
            audit = replace(audit, subject=subject)
            key = self._cache_key(subject, grant, data)
            read, cached = await self._take_owner_quota(grant, now, key)
            # (3)
            self._trail.ready()
            record, hit = await self._sealed_answer(key, (read, cached), grant, call, registry)
            if call.credential_type:
                record = await self._licence(record, call, registry)
        except Refusal as refusal:
            await self._give_back(taken)
            raise await self._trail.refused(refusal, audit) from None
        except asyncio.CancelledError:
            await self._give_back(taken)
            await self._trail.cancelled(audit)
            raise
        # (4)
        try:
            audit_id = await self._trail.release(
                audit, fields=grant.fields, cache_hit=hit, sealed=record.seal
            )
        except (Refusal, asyncio.CancelledError):  # not released: the use was not made
            await self._give_back(taken)
            raise
        return Forwarded(
            record=record,
            audit_id=audit_id,
            fields=grant.fields,
            registry_version=registry.version,
            cache_hit=hit,
            agreement_id=grant.agreement_id,
            # for the requesting gateway's reports of its own hits (cache_scope "requester")
            subject_pseudonym=subject if grant.dataset.cache_scope is CacheScope.REQUESTER else "",
        )

    def _as_signed_for_here(
        self, call: ForwardCall, document: ForwardDocument, caller_region: str, registry: Registry
    ) -> tuple[DataRequest, Agency]:
        """(1)'s rest: the call's plain values are the signed ones, the query is for this
        region, and its agency is one of the calling gateway's region; the request and agency."""
        if not _as_signed(call, document):
            raise Refusal(
                "REQUEST_PAYLOAD_MISMATCH",
                "the forwarded request's plain values are not the ones its signed request signs",
            )
        data = document.request  # the same values, whose shape was checked
        if data.provider_region != self.region:
            raise Refusal(
                "UNKNOWN_REGION",
                f"this is the gateway of region {self.region}, not {data.provider_region}",
            )
        agency = registry.agency(call.agency_id)
        if agency is None or agency.region != caller_region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                f"gateway {caller_region} forwards for an agency that is not one of its own",
            )
        return data, agency

    async def _give_back(self, consent_id: str) -> None:
        """A consent's use taken for a query that released nothing is returned (see
        gateway.consent's (5))."""
        if consent_id and self.consents is not None:
            await self.consents.uses.give_back(consent_id)

    def _verified(self, call: ForwardCall, registry: Registry) -> SignedForward:
        """(1): the call's signed request, once verified; a Refusal when it is not signed by
        the requesting region's audit key."""
        return verify_forward(
            call.signed_request,
            registry=registry,
            requesting_region=call.requesting_region,
            owner_region=self.region,
            now=self._clock(),
        )

    async def _licence(
        self, record: SealedAnswer, call: ForwardCall, registry: Registry
    ) -> SealedAnswer:
        """A credential fetch leaves a region that seals with SM2 as a sealed OFD e-licence of
        the record (`gateway.licences`); from any other region, as the record itself."""
        try:
            made = await self._sealer.seal_licence(
                registry, record.payload, credential_type=call.credential_type, now=self._clock()
            )
        except SealKeyUnavailable as exc:
            raise Refusal(exc.reason, str(exc)) from exc
        except (ValueError, SignerError) as exc:  # a record that is no flat JSON object, say
            raise Refusal("INTERNAL_ERROR", f"the e-licence could not be made: {exc}") from exc
        if made is None:
            return record
        sealed, ofd = made
        return SealedAnswer(
            jws="",
            payload=ofd,
            content_type=LICENCE_CONTENT_TYPE,
            sealer_kid=sealed.kid,
            sealer_region=sealed.region,
            sealed_at=SealedAnswer.wire_time(sealed.sealed_at),
            format=sealed.format,
        )

    def _cache_key(self, subject: str, grant: Grant, data: DataRequest) -> bytes:
        return cache_key(
            provider_region=self.region,
            dataset=data.dataset,
            subject_pseudonym=subject,
            fields=grant.fields,
            purpose=data.purpose,
        )

    async def _take_owner_quota(
        self, grant: Grant, now: datetime, key: bytes
    ) -> tuple[bool, bytes | None]:
        """The data owner counts the agreement's quota too, over every requesting gateway (it
        never trusts a requesting gateway to have counted): its own counter, beside the one the
        requesting gateway keeps, `owner:<agreement id>`. In the same round trip, (3)'s read of
        the answer cached under `key` when the dataset is cached and no load of it is under way
        here (the caller then waits for that load): (read, the answer or None)."""
        read = grant.dataset.cache_ttl_seconds > 0 and not self._cache.in_flight(key)
        wanted = Wanted(
            quota=(f"owner:{grant.agreement_id}", grant.quota_per_minute),
            cache=key if read else None,
        )
        try:
            checked = await self._checks.check(wanted, self._cache, now=now)
        except QuotaUnavailable as exc:
            raise Refusal(
                "SHARED_STATE_UNAVAILABLE",
                f"the agreement's quota cannot be checked: {exc}",
            ) from exc
        if not checked.within_quota:
            raise Refusal(
                "QUOTA_EXCEEDED",
                f"agreement {grant.agreement_id} allows {grant.quota_per_minute} queries a minute "
                f"to region {self.region}, from all requesters; try again next minute",
            )
        return read, checked.cached

    async def _sealed_answer(
        self,
        key: bytes,
        lookup: tuple[bool, bytes | None],
        grant: Grant,
        call: ForwardCall,
        registry: Registry,
    ) -> tuple[SealedAnswer, bool]:
        """(sealed answer, cache hit): the answer `lookup` found (read with the quota), or
        fetched and sealed, then kept for the dataset's TTL under `key` (one load for
        concurrent misses, or the load under way). A miss uses the record it sealed as it is
        (the cache keeps its bytes)."""
        read, cached = lookup
        if cached is not None:
            return self._codec.decode(cached), True
        loaded: list[SealedAnswer] = []

        async def load() -> bytes:
            record = await self._fetch_and_seal(grant.fields, call, registry)
            loaded.append(record)
            return self._codec.encode(record)

        raw, hit = await self._cache.get_or_load(
            key, grant.dataset.cache_ttl_seconds, load, missed=read
        )
        if not hit and loaded:  # this call's own load
            return loaded[0], False
        return self._codec.decode(raw), hit

    async def _fetch_and_seal(
        self, fields: tuple[str, ...], call: ForwardCall, registry: Registry
    ) -> SealedAnswer:
        data = call.request
        if self.data_system is None:
            raise Refusal(
                "PROVIDER_UNAVAILABLE",
                f"region {self.region}'s gateway has no data system configured",
            )
        answer = await self.data_system.fetch(data, fields, call)
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
        return SealedAnswer(
            jws=sealed.jws,
            payload=answer.payload,
            content_type=content_type,
            sealer_kid=sealed.kid,
            sealer_region=sealed.region,
            sealed_at=SealedAnswer.wire_time(sealed.sealed_at),
            format=sealed.format,
            ses_signature=sealed.ses_signature,
        )
