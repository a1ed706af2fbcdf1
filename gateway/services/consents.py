"""The Consents API of a citizen's home region's gateway (`tongban.v1.Consents`), served to
the agencies of its region, in practice its citizen portal, whose request token carries the
citizen in its `applicant` claim: the citizen registers, lists and revokes only their own
consents. Register and Revoke are audited (the record names the consent and the citizen's
pseudonym, never the raw id), and so is List, which shows a citizen's data (nothing is answered
that could not be recorded); so is every refusal. And `consent_status`, the answer to
Peer.ConsentStatus: is a consent of this region revoked? A register that cannot answer (its
database frozen or down) refuses the call with AUDIT_UNAVAILABLE, as the audit log does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import rpcs
from gateway.audit import AuditUnavailable
from gateway.consent import (
    ConsentError,
    ConsentGate,
    RegisteredConsent,
    is_consent_id,
    read_consent,
    registered,
)
from gateway.errors import Refusal
from gateway.flows import NO_REQUEST, AuditContext, AuditTrail, Gatekeeper
from gateway.identity import Caller, CallerKind, current_caller
from gateway.services._metadata import verified_token
from gateway.tokens import TokenVerifier
from tongban.v1 import consents_pb2, consents_pb2_grpc, exchange_pb2

if TYPE_CHECKING:
    from gateway.services.exchange import QueryPath

__all__ = ["CONSENTS", "ConsentsService", "consent_status", "serve_consents", "summary_message"]

Context = grpc.aio.ServicerContext[Any, Any]
CONSENTS: Final = consents_pb2.DESCRIPTOR.services_by_name["Consents"].full_name


def serve_consents(path: QueryPath, server: grpc.aio.Server) -> None:
    """Add the Consents service of `path`'s gateway (its consent register) to `server`."""
    if path.consents is None:
        return
    service = ConsentsService(
        path.consents,
        gatekeeper=path.gatekeeper,
        trail=path.trail,
        tokens=TokenVerifier(region=path.region, clock=path.trail.clock),
    )
    consents_pb2_grpc.add_ConsentsServicer_to_server(service, server)


@contextlib.contextmanager
def _register_answers() -> Iterator[None]:
    """The consent register's outage (`AuditUnavailable`: it is kept in the audit store) is
    the call's AUDIT_UNAVAILABLE."""
    try:
        yield
    except AuditUnavailable as exc:
        raise Refusal("AUDIT_UNAVAILABLE", f"the consent register did not answer: {exc}") from exc


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def summary_message(consent: RegisteredConsent) -> consents_pb2.ConsentSummary:
    """What the citizen sees of a consent (never the subject)."""
    message = consents_pb2.ConsentSummary(
        consent_id=consent.consent_id,
        agencies=consent.agencies,
        regions=consent.regions,
        purpose=consent.purpose,
        datasets=consent.datasets,
        valid_from=_timestamp(consent.valid_from),
        valid_until=_timestamp(consent.valid_until),
        max_uses=consent.max_uses,
        revoked=consent.revoked_at is not None,
    )
    if consent.revoked_at is not None:
        message.revoked_at.CopyFrom(_timestamp(consent.revoked_at))
    return message


async def consent_status(
    gate: ConsentGate, caller: Caller | None, request: exchange_pb2.ConsentStatusRequest
) -> exchange_pb2.ConsentStatusResponse:
    """Peer.ConsentStatus: asked by another region's gateway (over the authenticated peer
    channel) about a consent of this region; unknown here: not revoked (a revocation is
    registered first)."""
    if caller is None or caller.kind is not CallerKind.GATEWAY:
        raise Refusal("NOT_AUTHORISED_ROLE", "only region gateways ask a consent's status")
    if not is_consent_id(request.consent_id):
        raise Refusal(
            "INVALID_ARGUMENT_FORMAT",
            "consent_id is 8 to 64 letters, digits, '-' or '_'",
            metadata={"field": "consent_id"},
        )
    with _register_answers():
        kept = await gate.register.get(request.consent_id)
    return exchange_pb2.ConsentStatusResponse(
        revoked=kept is not None and kept.revoked_at is not None
    )


class ConsentsService(consents_pb2_grpc.ConsentsServicer):
    """Consents.Register / List / Revoke for the applicant of the caller's token."""

    def __init__(
        self,
        gate: ConsentGate,
        *,
        gatekeeper: Gatekeeper,
        trail: AuditTrail,
        tokens: TokenVerifier,
    ) -> None:
        self.gate = gate
        self._gatekeeper = gatekeeper
        self._trail = trail
        self._tokens = tokens

    async def _applicant(self, context: Context, audit: AuditContext) -> tuple[str, str]:
        """(the applicant's id, its pseudonym) of the caller's token: an agency of this region
        with a request token naming an applicant; else a Refusal."""
        caller = current_caller.get()
        region = self.gate.region
        if caller is None or caller.kind is not CallerKind.AGENCY or caller.region != region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE", f"consents are served to the agencies of region {region}"
            )
        claims = verified_token(context, self._tokens, self._gatekeeper.current(), caller)
        if not claims.applicant:
            raise Refusal(
                "NOT_AUTHORISED_ROLE",
                "consents are served for a citizen: the token names no applicant",
            )
        return claims.applicant, self._trail.pseudonym(claims.applicant)

    def _context(self, rpc: str) -> AuditContext:
        caller = current_caller.get()
        return AuditContext(
            rpc=rpc,
            caller_agency=caller.agency_id if caller is not None else "",
            caller_operator="",
            caller_region=caller.region if caller is not None else "",
            request=NO_REQUEST,
            started=time.perf_counter(),
            subject="",
        )

    async def _refused(self, refusal: Refusal, audit: AuditContext) -> Refusal:
        return await self._trail.refused(refusal, audit)

    async def Register(
        self, request: consents_pb2.RegisterConsentRequest, context: Context
    ) -> consents_pb2.ConsentSummary:
        audit = self._context(rpcs.CONSENTS_REGISTER)
        try:
            applicant, subject = await self._applicant(context, audit)
            audit = replace(audit, subject=subject)
            now = self._trail.clock()
            try:
                claims = read_consent(request.consent, self._gatekeeper.current(), now)
            except ConsentError as exc:
                raise Refusal(exc.reason, str(exc)) from exc
            audit = replace(audit, consent_id=claims.consent_id)
            if claims.region != self.gate.region or claims.subject != applicant:
                raise Refusal(
                    "CONSENT_MISMATCH",
                    f"the consent is not one region {self.gate.region} issued for this citizen",
                )
            with _register_answers():
                kept = await self.gate.register.register(registered(claims, subject))
        except Refusal as refusal:
            raise await self._refused(refusal, audit) from None
        await self._trail.release(audit, fields=(), cache_hit=False, what="not registered")
        return summary_message(kept)

    async def List(
        self, request: consents_pb2.ListConsentsRequest, context: Context
    ) -> consents_pb2.ListConsentsResponse:
        audit = self._context(rpcs.CONSENTS_LIST)
        try:
            _, subject = await self._applicant(context, audit)
            audit = replace(audit, subject=subject)
            with _register_answers():
                kept = await self.gate.register.of_subject(subject)
        except Refusal as refusal:
            raise await self._refused(refusal, audit) from None
        await self._trail.release(audit, fields=(), cache_hit=False, what="not listed")
        return consents_pb2.ListConsentsResponse(consents=[summary_message(c) for c in kept])

    async def Revoke(
        self, request: consents_pb2.RevokeConsentRequest, context: Context
    ) -> consents_pb2.ConsentSummary:
        audit = self._context(rpcs.CONSENTS_REVOKE)
        try:
            _, subject = await self._applicant(context, audit)
            audit = replace(audit, subject=subject)
            kept = None
            if is_consent_id(request.consent_id):
                with _register_answers():
                    kept = await self.gate.register.get(request.consent_id)
            if kept is None or kept.subject != subject:  # another's: told the same
                raise Refusal(
                    "CONSENT_MISMATCH",
                    "no consent with this id is registered here for this citizen",
                )
            audit = replace(audit, consent_id=kept.consent_id)
            with _register_answers():
                revoked = await self.gate.register.revoke(kept.consent_id, self._trail.clock())
            assert revoked is not None
        except Refusal as refusal:
            raise await self._refused(refusal, audit) from None
        await self._trail.release(audit, fields=(), cache_hit=False, what="revoked, not audited")
        return summary_message(revoked)
