"""`tongban.v1.Tracker`: one citizen's data trail across regions (docs/oversight.md "The
citizen's data tracker"), and the peer side of it, `Peer.SubjectTrail`.

`Trail` is called by an agency of this gateway's region with a request token: a citizen portal
(the token's `applicant` claim names the citizen: the trail of that citizen only, else
SUBJECT_NOT_CALLER) or an oversight agency (any subject; any other agency: TRAIL_NOT_ALLOWED).
The gateway reads its own log and asks every other region's gateway at once, each within
`[exchange] tracker_peer_timeout_seconds`; it shows only entries from a sealed answer that
verifies against the registry (`gateway.trail.verify_trail`), and says of each region whether it
answered.

`SubjectTrail` is asked by another region's gateway, with the caller's token as that gateway
received it: verified here as that region's token (its token key, its audience), for the agency
and certificate the calling gateway names; the same rule then decides, and the answer holds
only this log's records about that subject, sealed with this gateway's audit key.

Both sides audit every call, granted or refused, before the answer leaves (fail closed:
AUDIT_UNAVAILABLE), with the subject as this gateway's pseudonym only, as Oversight does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway import rpcs
from gateway.audit import AuditLog, AuditRecord, AuditUnavailable, Outcome, pseudonymize
from gateway.breaker import BreakerOpen
from gateway.errors import Refusal, error_info_of
from gateway.forward_signing import AuditKeySigner
from gateway.identity import Caller, CallerKind, current_caller
from gateway.peers import PeerPool, UnknownPeer
from gateway.services._metadata import request_token, verified_token
from gateway.services._oversight_messages import OUTCOME_TO_PB, time_of, timestamp
from gateway.tokens import TokenClaims, TokenError, TokenVerifier
from gateway.trail import (
    TrailEntry,
    TrailSealInvalid,
    read_trail,
    request_digest,
    seal_trail,
    verify_trail,
)
from registry import AgencyRole, Registry, RegistryError, RegistryStore
from tongban.v1 import common_pb2, exchange_pb2, tracker_pb2, tracker_pb2_grpc

__all__ = ["DEFAULT_PEER_TIMEOUT_SECONDS", "Tracker", "TrackerService"]

log = logging.getLogger("tongban.tracker")

DEFAULT_PEER_TIMEOUT_SECONDS: Final = 3.0  # one region's answer, at most
MAX_SUBJECT_CHARS: Final = 64  # a citizen id is 18, a USCC 18: anything longer is not one
MAX_NONCE_CHARS: Final = 128
MIN_NONCE_CHARS: Final = 16
_MARGIN_SECONDS: Final = 0.2  # kept back from the caller's deadline for merging and the audit

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(slots=True)
class _Call:
    """One Trail or SubjectTrail call as its audit record will tell it."""

    rpc: str
    started: float = field(default_factory=time.perf_counter)
    agency: str = ""
    region: str = ""
    operator: str = ""
    subject: str = ""  # this gateway's pseudonym of the subject asked about
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Region:
    """What one region's part of a trail came to."""

    region: str
    entries: tuple[TrailEntry, ...] = ()
    problem: str = ""  # empty: answered
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class _Asking:
    """What every region of one Trail call is asked, and how long it may take."""

    registry: Registry
    identity: common_pb2.CallerIdentity  # the caller, as this gateway authenticated it
    token: str  # the caller's request token, as received
    subject: str
    since: datetime | None
    until: datetime | None
    timeout_seconds: float


def _subject_valid(subject_id: str) -> bool:
    return 0 < len(subject_id) <= MAX_SUBJECT_CHARS and subject_id.isprintable()


def allowed_subject(claims: TokenClaims, registry: Registry, region: str, asked: str) -> str:
    """The subject whose trail the token's holder may read, or the Refusal: a citizen portal's
    token (claim `applicant`) its applicant only; an oversight agency of `region` any subject;
    nobody else. The token's agency must be one of `region`'s (the token is that region's)."""
    agency = registry.agency(claims.agency)
    if agency is None or agency.region != region:
        raise Refusal("TRAIL_NOT_ALLOWED", f"the token's agency is not one of region {region}")
    if claims.applicant:
        if asked and asked != claims.applicant:
            raise Refusal(
                "SUBJECT_NOT_CALLER", "a citizen portal's token reads its own citizen's trail only"
            )
        return claims.applicant
    if not agency.has_role(AgencyRole.OVERSIGHT):
        raise Refusal(
            "TRAIL_NOT_ALLOWED",
            "only a citizen portal's token (claim applicant) or an oversight agency's reads a trail",
        )
    if not _subject_valid(asked):
        raise Refusal(
            "SUBJECT_ID_INVALID", f"subject_id is required, at most {MAX_SUBJECT_CHARS} characters"
        )
    return asked


class Tracker:
    """Both sides of the tracker for the gateway of `region`."""

    def __init__(
        self,
        audit: AuditLog,
        registry: RegistryStore,
        peers: PeerPool,
        *,
        region: str,
        pseudonym_key: bytes,
        audit_key: ed25519.Ed25519PrivateKey,
        peer_timeout_seconds: float = DEFAULT_PEER_TIMEOUT_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._audit = audit
        self._registry = registry
        self._peers = peers
        self.region = region
        self._key = pseudonym_key
        self._audit_key = audit_key
        self._signer = AuditKeySigner(region, audit_key)
        self._timeout = peer_timeout_seconds
        self._clock = clock
        self._tokens: dict[str, TokenVerifier] = {}  # calling region -> its tokens' verifier

    # the audit ----------------------------------------------------------------------------------

    async def _record(
        self,
        call: _Call,
        outcome: Outcome,
        reason: str = "",
        *,
        returned: int = 0,
        sealed_digest: str = "",
        request_digest_hex: str = "",
    ) -> None:
        """Append the call's audit record; raise AuditUnavailable when it is not durable."""
        try:
            version = self._registry.current().version
        except RegistryError:
            version = 0
        notes = [f"{name}={value}" for name, value in call.notes.items()]
        await self._audit.append(
            AuditRecord.of_call(
                time=self._clock(),
                region=self.region,
                rpc=call.rpc,
                outcome=outcome,
                reason=reason,
                started=call.started,
                caller_agency=call.agency,
                caller_operator=call.operator,
                caller_region=call.region,
                subject=call.subject,
                fields=(*notes, f"returned={returned}"),
                sealed_digest=sealed_digest,
                registry_version=version,
                request_digest=request_digest_hex,
            )
        )

    async def _refuse(self, call: _Call, refusal: Refusal) -> NoReturn:
        """Record the refusal, then raise it (AUDIT_UNAVAILABLE if it cannot be recorded)."""
        try:
            await self._record(
                call, Outcome.FAILED if refusal.failed else Outcome.DENIED, refusal.reason
            )
        except AuditUnavailable as exc:
            raise Refusal("AUDIT_UNAVAILABLE", str(exc)) from exc
        raise refusal

    async def _release(self, call: _Call, returned: int, **digests: str) -> None:
        """Record a granted call before its answer leaves; fail closed."""
        try:
            await self._record(call, Outcome.ALLOWED, returned=returned, **digests)
        except AuditUnavailable as exc:
            raise Refusal("AUDIT_UNAVAILABLE", str(exc)) from exc

    def _pseudonym(self, subject_id: str) -> str:
        return pseudonymize(subject_id, self._key) if _subject_valid(subject_id) else ""

    def _verifier(self, region: str) -> TokenVerifier:
        found = self._tokens.get(region)
        if found is None:
            found = self._tokens[region] = TokenVerifier(region=region, clock=self._clock)
        return found

    @staticmethod
    def _window(
        since: Any, has_since: bool, until: Any, has_until: bool
    ) -> tuple[datetime | None, datetime | None]:
        try:
            return time_of(since, has_since), time_of(until, has_until)
        except (ValueError, OverflowError) as exc:
            raise Refusal(
                "INVALID_ARGUMENT_FORMAT", "since or until is not a valid timestamp"
            ) from exc

    # Tracker.Trail --------------------------------------------------------------------------------

    async def _authorise_trail(
        self, request: tracker_pb2.TrailRequest, context: Context, call: _Call
    ) -> tuple[Registry, TokenClaims, str]:
        """(the registry, the token's claims, the subject) of a Trail call, or the Refusal."""
        caller = current_caller.get()
        if caller is None or caller.kind is not CallerKind.AGENCY or caller.region != self.region:
            raise Refusal(
                "NOT_AUTHORISED_ROLE", f"the tracker serves the agencies of region {self.region}"
            )
        call.agency, call.region = caller.agency_id, caller.region
        registry = self._registry.current()
        claims = verified_token(context, self._verifier(self.region), registry, caller)
        call.operator = claims.operator
        subject = allowed_subject(claims, registry, self.region, request.subject_id)
        call.subject = self._pseudonym(subject)
        return registry, claims, subject

    def _regions(self, request: tracker_pb2.TrailRequest, registry: Registry) -> list[str]:
        known = [r.code for r in registry.regions]
        asked = list(dict.fromkeys(request.regions)) or known
        unknown = [r for r in asked if r not in known]
        if unknown:
            raise Refusal("UNKNOWN_REGION", f"region {unknown[0]:.8} is not in the registry")
        return asked

    async def trail(
        self, request: tracker_pb2.TrailRequest, context: Context
    ) -> tracker_pb2.TrailResponse:
        call = _Call(rpcs.TRAIL)
        call.subject = self._pseudonym(request.subject_id)
        try:
            registry, claims, subject = await self._authorise_trail(request, context, call)
            since, until = self._window(
                request.since, request.HasField("since"), request.until, request.HasField("until")
            )
            regions = self._regions(request, registry)
        except RegistryError as exc:
            await self._refuse(call, Refusal("REGISTRY_STALE", str(exc)))
        except Refusal as refusal:
            await self._refuse(call, refusal)
        if request.regions:
            call.notes["regions"] = ",".join(regions)
        call.notes.update({k: v.isoformat() for k, v in (("since", since), ("until", until)) if v})
        timeout = self._timeout
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = max(0.1, min(timeout, remaining - _MARGIN_SECONDS))
        caller = current_caller.get()
        assert caller is not None  # _authorise_trail admitted an agency
        asking = _Asking(
            registry,
            common_pb2.CallerIdentity(
                agency_id=caller.agency_id,
                region=caller.region,
                operator=claims.operator,
                certificate_thumbprint=caller.thumbprint,
            ),
            request_token(context),
            subject,
            since,
            until,
            timeout,
        )

        async def part(region: str) -> _Region:
            if region == self.region:
                entries, truncated = await read_trail(
                    self._audit, region=region, subject=call.subject, since=since, until=until
                )
                return _Region(region, tuple(entries), truncated=truncated)
            return await self._ask(region, asking)

        try:
            parts = await asyncio.gather(*(part(r) for r in regions))
        except AuditUnavailable as exc:
            await self._refuse(call, Refusal("AUDIT_UNAVAILABLE", str(exc)))
        entries = sorted(
            (e for p in parts for e in p.entries), key=lambda e: (e.time, e.region, e.audit_index)
        )
        call.notes["answered"] = ",".join(p.region for p in parts if not p.problem) or "none"
        await self._release(call, len(entries))
        return _trail_response(entries, parts, registry)

    async def _ask(self, region: str, asking: _Asking) -> _Region:
        """`region`'s sealed part of the trail, verified; or why it is not shown."""
        nonce = secrets.token_urlsafe(24)
        asked = exchange_pb2.SubjectTrailRequest(
            token=asking.token, caller=asking.identity, subject_id=asking.subject, nonce=nonce
        )
        if asking.since is not None:
            asked.since.CopyFrom(timestamp(asking.since))
        if asking.until is not None:
            asked.until.CopyFrom(timestamp(asking.until))
        digest = request_digest(
            home_region=self.region,
            region=region,
            subject_id=asking.subject,
            since=asking.since,
            until=asking.until,
            nonce=nonce,
            token=asking.token,
        )
        timeout = asking.timeout_seconds
        try:
            answer = await self._peers.call(
                region,
                lambda stub: stub.SubjectTrail(asked, timeout=timeout),
                timeout_seconds=timeout,
            )
        except (BreakerOpen, UnknownPeer):
            return _Region(region, problem="unreachable")
        except TimeoutError:
            return _Region(region, problem="timeout")
        except grpc.aio.AioRpcError as exc:
            return _Region(region, problem=_problem_of(exc))
        try:
            sealed = verify_trail(
                answer.sealed,
                registry=asking.registry,
                region=region,
                home_region=self.region,
                digest=digest,
                now=self._clock(),
            )
        except TrailSealInvalid as exc:
            log.warning("the trail answer of region %s is not shown: %s", region, exc)
            return _Region(region, problem="bad seal")
        return _Region(region, sealed.entries, truncated=sealed.truncated)

    # Peer.SubjectTrail ----------------------------------------------------------------------------

    def _authorise_peer(
        self, request: exchange_pb2.SubjectTrailRequest, caller: Caller | None, call: _Call
    ) -> Registry:
        """The registry, once the calling gateway, the token it relays and the subject pass."""
        if caller is None or caller.kind is not CallerKind.GATEWAY:
            raise Refusal("NOT_AUTHORISED_ROLE", "SubjectTrail is called by region gateways only")
        call.region = caller.region
        call.agency = request.caller.agency_id
        registry = self._registry.current()
        if request.caller.region != caller.region:
            raise Refusal(
                "TRAIL_NOT_ALLOWED", "the caller named is not of the calling gateway's region"
            )
        if not MIN_NONCE_CHARS <= len(request.nonce) <= MAX_NONCE_CHARS or (
            not request.nonce.isprintable()
        ):
            raise Refusal("INVALID_ARGUMENT_FORMAT", "the nonce is 16 to 128 printable characters")
        if not request.token:
            raise Refusal("TOKEN_INVALID", "the caller's request token is required")
        try:
            claims = self._verifier(caller.region).verify(
                request.token,
                registry=registry,
                caller_agency=request.caller.agency_id,
                caller_region=caller.region,
                client_thumbprint=request.caller.certificate_thumbprint,
            )
        except TokenError as exc:
            raise Refusal(exc.reason, str(exc)) from exc
        call.operator = claims.operator
        if not _subject_valid(request.subject_id):  # the calling gateway names it, always
            raise Refusal(
                "SUBJECT_ID_INVALID",
                f"subject_id is required, at most {MAX_SUBJECT_CHARS} characters",
            )
        allowed_subject(claims, registry, caller.region, request.subject_id)
        return registry

    async def subject_trail(
        self, request: exchange_pb2.SubjectTrailRequest, caller: Caller | None
    ) -> exchange_pb2.SubjectTrailResponse:
        call = _Call(rpcs.SUBJECT_TRAIL)
        call.subject = self._pseudonym(request.subject_id)
        try:
            registry = self._authorise_peer(request, caller, call)
            since, until = self._window(
                request.since, request.HasField("since"), request.until, request.HasField("until")
            )
            kid = self._signer.required_kid(registry)
        except RegistryError as exc:
            await self._refuse(call, Refusal("REGISTRY_STALE", str(exc)))
        except Refusal as refusal:
            await self._refuse(call, refusal)
        assert caller is not None  # _authorise_peer admitted a gateway
        call.notes["home"] = caller.region
        try:
            entries, truncated = await read_trail(
                self._audit, region=self.region, subject=call.subject, since=since, until=until
            )
        except AuditUnavailable as exc:
            await self._refuse(call, Refusal("AUDIT_UNAVAILABLE", str(exc)))
        digest = request_digest(
            home_region=caller.region,
            region=self.region,
            subject_id=request.subject_id,
            since=since,
            until=until,
            nonce=request.nonce,
            token=request.token,
        )
        sealed = seal_trail(
            entries,
            region=self.region,
            home_region=caller.region,
            digest=digest,
            truncated=truncated,
            answered_at=self._clock(),
            key=self._audit_key,
            kid=kid,
        )
        await self._release(
            call,
            len(entries),
            sealed_digest=hashlib.sha256(sealed.encode("ascii")).hexdigest(),
            request_digest_hex=digest,
        )
        return exchange_pb2.SubjectTrailResponse(sealed=sealed)


def _problem_of(exc: grpc.aio.AioRpcError) -> str:
    """What a peer's failed SubjectTrail call says of it: its refusal's reason, or that it did
    not answer (in time)."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timeout"
    info, _ = error_info_of(exc)
    if exc.code() == grpc.StatusCode.UNAVAILABLE and (
        info is None or info.reason == "PEER_UNAVAILABLE"
    ):
        return "unreachable"
    return f"refused: {info.reason if info is not None else exc.code().name}"


def _trail_response(
    entries: list[TrailEntry], parts: list[_Region], registry: Registry
) -> tracker_pb2.TrailResponse:
    response = tracker_pb2.TrailResponse()
    for entry in entries:
        agency = registry.agency(entry.requester_agency)
        purpose = registry.purpose(entry.purpose)
        response.entries.append(
            tracker_pb2.TrailEntry(
                time=timestamp(entry.time),
                region=entry.region,
                audit_index=entry.audit_index,
                audit_id=entry.audit_id,
                requester_agency=entry.requester_agency,
                requester_agency_name=agency.name if agency else "",
                requester_region=entry.requester_region,
                dataset=entry.dataset,
                purpose=entry.purpose,
                purpose_name=purpose.name if purpose else "",
                case_id=entry.case_id,
                cache_hit=entry.cache_hit,
                outcome=OUTCOME_TO_PB[entry.outcome],
                reason=entry.reason,
                rpc=entry.rpc,
                consent_id=entry.consent_id,
            )
        )
    for part in parts:
        response.regions.append(
            tracker_pb2.TrailRegion(
                region=part.region,
                answered=not part.problem,
                problem=part.problem,
                entries=len(part.entries),
                truncated=part.truncated,
            )
        )
    return response


class TrackerService(tracker_pb2_grpc.TrackerServicer):
    """The gRPC edge of `Tracker.trail`."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    async def Trail(
        self, request: tracker_pb2.TrailRequest, context: Context
    ) -> tracker_pb2.TrailResponse:
        return await self.tracker.trail(request, context)
