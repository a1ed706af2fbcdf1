"""A gateway's check of the consent a query carries (`ConsentGate.check`), for datasets the
registry marks `requires_consent`, on both gateways of a query:

    (1) the query carries a consent (CONSENT_REQUIRED)
    (2) it is one (`read_consent`: signed by its home region's token key, within its times,
        with the request tokens' leeway; CONSENT_INVALID)
    (3) it covers the query (CONSENT_MISMATCH): its subject is the query's, it names the
        asking agency or the agency's region, the query's purpose, the provider region's
        dataset, and every field the query returns
    (4) it is not revoked (CONSENT_REVOKED): at the home region's gateway, by its register
        (where it is registered on first sight); elsewhere by the home gateway's answer to
        Peer.ConsentStatus, kept at most `status_seconds`; none to be had: fail closed
        (CONSENT_STATUS_UNAVAILABLE)
    (5) at the owner's gateway only: one more use within `max_uses` (CONSENT_EXHAUSTED),
        counted in Redis under a hash of the consent id, until the consent expires. The use is
        taken when the query is decided (two queries at once cannot both take the last one)
        and given back when the query ends without releasing an answer (the quota, the data
        system, the audit store or the caller's cancellation stopped it; or it found the
        consent used up): a consent is used by the answers it let out, not by attempts
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

from gateway.consent._artefact import ConsentClaims, ConsentError, read_consent
from gateway.consent._register import ConsentRegister, registered
from gateway.policy import DataRequest
from registry import Agency, Dataset, Registry

__all__ = ["DEFAULT_STATUS_SECONDS", "ConsentGate", "ConsentUses", "StatusAsker"]

log = logging.getLogger("tongban.consent")

DEFAULT_STATUS_SECONDS: Final = 30  # how long another region's answer on a revocation is kept
USES_PREFIX: Final = "tongban:consent-uses:"
_TAKE_USE: Final = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
return n
"""
_GIVE_BACK: Final = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""

# Asks `region`'s gateway whether consent `consent_id` is revoked (Peer.ConsentStatus).
StatusAsker = Callable[[str, str], Awaitable[bool]]


class ConsentUses:
    """Uses counted per consent: in Redis (`client`, shared by the replicas), else in this
    process. The key is a hash of the consent id only; it expires with the consent."""

    def __init__(self, client: Any | None = None, *, timeout_seconds: float = 1.0) -> None:
        self._client = client
        self._timeout = timeout_seconds
        self._counts: dict[str, int] = {}

    @staticmethod
    def key(consent_id: str) -> str:
        return USES_PREFIX + hashlib.sha256(consent_id.encode()).hexdigest()

    async def take(self, consent_id: str, expires_at: datetime) -> int:
        """This use's number (1 for the first)."""
        key = self.key(consent_id)
        if self._client is None:
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]
        try:
            return int(await self._client.eval(_TAKE_USE, 1, key, int(expires_at.timestamp()) + 60))
        except Exception as exc:  # any Redis failure: the uses cannot be counted
            raise ConsentError(
                "SHARED_STATE_UNAVAILABLE", "the consent's uses cannot be counted now"
            ) from exc

    async def give_back(self, consent_id: str) -> None:
        """Return a use taken for a query that released no answer. Best effort: a use that
        cannot be returned (Redis failing) stays counted, which errs on the citizen's side
        (the consent allows fewer queries, never more), and is logged."""
        key = self.key(consent_id)
        if self._client is None:
            self._counts[key] = max(0, self._counts.get(key, 0) - 1)
            return
        try:
            await self._client.eval(_GIVE_BACK, 1, key)
        except Exception as exc:  # any Redis failure: the use stays taken
            log.warning(
                "a consent's use could not be given back (it stays counted): %s",
                type(exc).__name__,
            )


class ConsentGate:
    """The consent check of one gateway (see the module docstring)."""

    def __init__(
        self,
        *,
        region: str,
        register: ConsentRegister,
        uses: ConsentUses,
        ask_status: StatusAsker | None,
        pseudonym: Callable[[str], str],
        clock: Callable[[], datetime],
        status_seconds: float = DEFAULT_STATUS_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region = region
        self.register = register
        self.uses = uses
        self._ask = ask_status
        self._pseudonym = pseudonym
        self._clock = clock
        self.status_seconds = status_seconds
        self._monotonic = monotonic
        self._status: dict[str, tuple[bool, float]] = {}  # id -> (revoked, when learned)

    async def check(
        self,
        data: DataRequest,
        *,
        registry: Registry,
        agency: Agency,
        dataset: Dataset,
        fields: frozenset[str],
        count_use: bool,
    ) -> str:
        """The consent id the query rests on ("" when its dataset needs none), or
        ConsentError."""
        if not dataset.requires_consent:
            return ""
        if not data.consent:  # (1)
            raise ConsentError(
                "CONSENT_REQUIRED",
                f"dataset {data.dataset} of region {data.provider_region} needs the citizen's "
                "consent: send it in the query's consent field",
            )
        claims = read_consent(data.consent, registry, self._clock())  # (2)
        _covers(claims, data, agency, fields)  # (3)
        if await self.revoked(claims):  # (4)
            raise ConsentError(
                "CONSENT_REVOKED", "the citizen revoked this consent", claims.consent_id
            )
        if count_use:  # (5)
            used = await self.uses.take(claims.consent_id, claims.expires_at)
            if used > claims.max_uses:
                await self.uses.give_back(claims.consent_id)  # this one was not a use
                raise ConsentError(
                    "CONSENT_EXHAUSTED",
                    f"the consent allows {claims.max_uses} queries, all used",
                    claims.consent_id,
                )
        return claims.consent_id

    async def revoked(self, claims: ConsentClaims) -> bool:
        """(4): is the consent revoked, as its home region knows (see the module docstring)?"""
        if claims.region == self.region:
            kept = await self.register.get(claims.consent_id)
            if kept is None:
                kept = await self.register.register(
                    registered(claims, self._pseudonym(claims.subject))
                )
            return kept.revoked_at is not None
        now = self._monotonic()
        known = self._status.get(claims.consent_id)
        if known is not None and (known[0] or now - known[1] < self.status_seconds):
            return known[0]  # a revocation is final: kept for good
        if self._ask is None:
            raise ConsentError(
                "CONSENT_STATUS_UNAVAILABLE",
                f"region {claims.region}'s gateway cannot be asked about the consent",
                claims.consent_id,
            )
        try:
            revoked = await self._ask(claims.region, claims.consent_id)
        except ConsentError:
            raise
        except Exception as exc:  # the home gateway did not answer: fail closed
            log.warning("the consent status of region %s cannot be had: %s", claims.region, exc)
            raise ConsentError(
                "CONSENT_STATUS_UNAVAILABLE",
                f"region {claims.region}'s gateway did not say whether the consent is revoked",
                claims.consent_id,
            ) from exc
        if len(self._status) > 100_000:
            self._status.clear()
        self._status[claims.consent_id] = (revoked, now)
        return revoked


def _covers(
    claims: ConsentClaims, data: DataRequest, agency: Agency, fields: frozenset[str]
) -> None:
    """(3) of `ConsentGate.check`: CONSENT_MISMATCH naming what is not covered (never the
    subject)."""

    def mismatch(what: str) -> ConsentError:
        return ConsentError("CONSENT_MISMATCH", f"the consent {what}", claims.consent_id)

    if claims.subject != data.subject_id:
        raise mismatch("is another citizen's")
    if agency.id not in claims.agencies and agency.region not in claims.regions:
        raise mismatch(f"does not name agency {agency.id} or its region {agency.region}")
    if claims.purpose != data.purpose:
        raise mismatch(f"is for purpose {claims.purpose}, not {data.purpose}")
    scope = claims.scope(data.provider_region, data.dataset)
    if scope is None:
        raise mismatch(f"does not cover dataset {data.dataset} of region {data.provider_region}")
    extra = sorted(fields - scope.fields)
    if extra:
        raise mismatch(f"does not cover the fields {', '.join(extra)}")
