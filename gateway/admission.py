"""How many calls one caller may hold at once: a budget per client certificate inside a pool per
kind of caller, so that one caller cannot take every slot of the gateway, and agencies together
cannot take the slots of the peer gateways (docs/threats.md T15).

`CallAdmission` is pure bookkeeping, no I/O: `CallerInterceptor` asks `admit()` as soon as a
call's HEADERS have arrived (before its request message is read) and `release()`s when the call
ends, however it ends. The limits, in calls in flight:

| pool | who | per certificate | whole pool |
| --- | --- | --- | --- |
| `PEERS` | region gateways (`Peer.*`, `Registry.Watch`, all of a region's traffic) | 500 | 1000 |
| `AGENCIES` | agency systems | 200 | 1000 |
| `OTHERS` | a certificate the registry names no party for (health, reflection) | 20 | 100 |

gRPC's own `maximum_concurrent_rpcs` (`gateway/server.py` `MAX_CONCURRENT_RPCS`) stays above the
sum, as a backstop for the moment between a call's HEADERS and its refusal here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

__all__ = ["DEFAULT_LIMITS", "CallAdmission", "Limits", "Pool", "Refusal"]


class Pool(StrEnum):
    """Callers whose calls share one budget."""

    PEERS = "peers"
    AGENCIES = "agencies"
    OTHERS = "others"


@dataclass(frozen=True, slots=True)
class Limits:
    per_certificate: int  # calls in flight of one client certificate
    pool: int  # calls in flight of every certificate of the pool together

    def __post_init__(self) -> None:
        if not 0 < self.per_certificate <= self.pool:
            raise ValueError(f"limits need 0 < per_certificate <= pool: {self}")


DEFAULT_LIMITS: Final = MappingProxyType(
    {
        Pool.PEERS: Limits(per_certificate=500, pool=1000),
        Pool.AGENCIES: Limits(per_certificate=200, pool=1000),
        Pool.OTHERS: Limits(per_certificate=20, pool=100),
    }
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was not admitted: which budget was full, and its size."""

    pool: Pool
    whole_pool: bool  # False: the certificate's own budget
    limit: int

    def explain(self) -> str:
        if self.whole_pool:
            return (
                f"too many calls in flight from {self.pool} ({self.limit} at most together); "
                "retry later"
            )
        return (
            f"too many calls in flight from this client certificate ({self.limit} at most); "
            "retry when some have ended"
        )


class CallAdmission:
    """Counts calls in flight per pool and per certificate; refuses past either limit."""

    def __init__(self, limits: MappingProxyType[Pool, Limits] | None = None) -> None:
        self._limits = dict(limits or DEFAULT_LIMITS)
        missing = set(Pool) - set(self._limits)
        if missing:
            raise ValueError(f"no limits for pools {sorted(missing)}")
        self._pools: dict[Pool, int] = dict.fromkeys(Pool, 0)
        # certificate -> calls in flight; a certificate with none is forgotten at once, so the
        # map holds at most as many entries as there are calls in flight.
        self._certificates: dict[tuple[Pool, str], int] = {}
        self._refused: dict[tuple[Pool, bool], int] = {}  # (pool, whole_pool) -> refusals so far

    def admit(self, pool: Pool, certificate: str) -> Refusal | None:
        """Take a slot for a call of `certificate` (its thumbprint) in `pool`: None when taken,
        to be given back with `release`; else the refusal, and nothing is taken."""
        limits = self._limits[pool]
        key = (pool, certificate)
        held = self._certificates.get(key, 0)
        if held >= limits.per_certificate:
            return self._refuse(Refusal(pool, whole_pool=False, limit=limits.per_certificate))
        if self._pools[pool] >= limits.pool:
            return self._refuse(Refusal(pool, whole_pool=True, limit=limits.pool))
        self._certificates[key] = held + 1
        self._pools[pool] += 1
        return None

    def _refuse(self, refusal: Refusal) -> Refusal:
        key = (refusal.pool, refusal.whole_pool)
        self._refused[key] = self._refused.get(key, 0) + 1
        return refusal

    def release(self, pool: Pool, certificate: str) -> None:
        """Give back a slot `admit` took."""
        key = (pool, certificate)
        held = self._certificates[key]
        if held == 1:
            del self._certificates[key]
        else:
            self._certificates[key] = held - 1
        self._pools[pool] -= 1

    def in_flight(self, pool: Pool, certificate: str | None = None) -> int:
        """Calls in flight in `pool`, or of one certificate in it."""
        if certificate is None:
            return self._pools[pool]
        return self._certificates.get((pool, certificate), 0)

    def refused(self, pool: Pool, *, whole_pool: bool) -> int:
        """Calls of `pool` refused so far because the pool (or one certificate's budget) was full."""
        return self._refused.get((pool, whole_pool), 0)
