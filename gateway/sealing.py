"""Sealing for a region: the one place a gateway seals with its region's active seal key.

`Credentials.Seal` (a document an agency has sealed) and the owner's side of the query path (an
answer of the data system, sealed before it leaves the region) both seal with the key that the
current registry names as the region's active seal key, and both need this gateway to hold that
key's private key (`[[seal.keys]]`, refilled in place on a reload). `RegionSealer` chooses the
key and seals; a gateway that cannot says so with `SealKeyUnavailable` (reason
SEAL_KEY_UNAVAILABLE: a rotation's activating publish reached it before the new key did).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from gateway.errors import GatewayError
from registry import KeyRefused, KeyUsage, Registry
from signer import KeyProvider, SignerError, seal

__all__ = ["SEAL_IN_THREAD_BYTES", "RegionSealer", "SealKeyUnavailable", "SealedDocument"]

log = logging.getLogger("tongban.gateway")

# Larger payloads are sealed in a worker thread (sealing 4 MiB takes tens of milliseconds).
SEAL_IN_THREAD_BYTES: Final = 256 * 1024


class SealKeyUnavailable(GatewayError):
    """The region has no active seal key now, or this gateway does not hold it."""

    reason: Final = "SEAL_KEY_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class SealedDocument:
    """A sealed payload: the compact JAdES JWS, and who sealed it when."""

    jws: str
    kid: str  # the seal key's x5t#S256, its id in the registry
    region: str
    sealed_at: datetime  # whole seconds: the JWS `iat` exactly


class RegionSealer:
    """Seals for `region` with its active seal key, among the private keys `keys` (by kid; the
    gateway's own map, which a reload refills in place: it is read at each seal, never copied).
    """

    def __init__(self, region: str, keys: Mapping[str, KeyProvider]) -> None:
        self.region = region
        self._keys = keys

    def active_key(self, registry: Registry, at: datetime) -> KeyProvider:
        """The region's active seal key at `at` in `registry`; `SealKeyUnavailable` if there is
        none or this gateway does not hold it."""
        try:
            kid = registry.signing_key(self.region, KeyUsage.SEAL, at).kid
        except KeyRefused as exc:
            raise SealKeyUnavailable(str(exc)) from exc
        provider = self._keys.get(kid)
        if provider is None:
            raise SealKeyUnavailable(
                f"registry version {registry.version} names seal key {kid} as region "
                f"{self.region}'s active key, and this gateway does not hold it"
            )
        return provider

    async def seal(
        self,
        registry: Registry,
        payload: bytes,
        *,
        content_type: str,
        now: datetime,
        detached: bool = False,
    ) -> SealedDocument:
        """`payload` sealed at `now` (to the second) with the key `active_key` chooses; in a
        worker thread when it is larger than SEAL_IN_THREAD_BYTES."""
        sealed_at = now.replace(microsecond=0)  # the JWS iat has whole seconds
        provider = self.active_key(registry, sealed_at)
        make = functools.partial(
            seal,
            payload,
            provider,
            content_type=content_type,
            detached=detached,
            signing_time=sealed_at,
        )
        try:
            jws = await asyncio.to_thread(make) if len(payload) > SEAL_IN_THREAD_BYTES else make()
        except SignerError as exc:  # a key in a cryptographic module that failed to sign
            # The module's refusal (and where the module is) goes to the log, not to the caller.
            log.warning("seal key %s could not sign: %s", provider.kid, exc)
            raise SealKeyUnavailable(
                f"seal key {provider.kid} could not sign (its cryptographic module refused)"
            ) from exc
        return SealedDocument(jws=jws, kid=provider.kid, region=self.region, sealed_at=sealed_at)
