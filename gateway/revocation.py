"""Online revocation of TLS callers: their certificates' own OCSP responders and CRLs, with the
`[revocation]` policy (docs/security.md, "Revocation").

`CallerResolver` (gateway.identity) remembers, per client certificate it has verified, the
certificate and its issuer when the certificate names an OCSP responder or a CRL URL; on every
call `CallerRevocation.check` then asks the shared `RevocationFetcher` (its cache answers until
nextUpdate without blocking; a fetch runs in a worker thread). A revoked certificate is refused
with CERTIFICATE_REVOKED from its revocation time. When no online source answers, the registry's
CRL of the certificate's issuer is the third source (the resolver has checked it already): while
it is current the caller is admitted as before (and a certificate that names no OCSP responder,
only CRL URLs serving what the registry holds, is not looked up at all); without one, the status cannot be learnt and
the caller is refused with REVOCATION_UNAVAILABLE under "hard-fail", admitted with a warning
under "soft-fail". The server certificates of the peer gateways this gateway calls are checked
here too (gateway.peer_certificates), and against the registry by `registry_revocation`, which
the resolver uses. Seals do not come here: `SealVerifier` uses the same fetcher, in the same
order, and is always hard-fail.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.config import RevocationConfig
from gateway.errors import CallerRejected
from gateway.metrics import GatewayMetrics
from registry import KeyState, Registry
from signer import (
    CertStatus,
    RevocationFetcher,
    RevocationStatus,
    RevocationUnavailable,
    x5t_s256_of_der,
)

__all__ = ["CallerRevocation", "make_fetcher", "registry_revocation"]

log = logging.getLogger("tongban.revocation")

MAX_REMEMBERED_CERTIFICATES: Final = 4096  # client certificates whose sources are remembered


def make_fetcher(
    config: RevocationConfig,
    metrics: GatewayMetrics | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RevocationFetcher | None:
    """The gateway's one fetcher (shared by TLS callers and seal verification), or None when
    online checking is off."""
    if not config.online:
        return None
    return RevocationFetcher(
        timeout_seconds=config.timeout_seconds,
        clock=clock,
        observe=metrics.revocation_check if metrics is not None else None,
    )


class CallerRevocation:
    """The online check of client certificates, under the configured policy."""

    def __init__(
        self,
        fetcher: RevocationFetcher,
        *,
        unreachable: str = "hard-fail",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._fetcher = fetcher
        self._hard_fail = unreachable == "hard-fail"
        self._clock = clock
        # client certificate -> what `check` needs of it
        self._pairs: dict[bytes, _Remembered] = {}

    @property
    def hard_fail(self) -> bool:
        """Is a certificate whose status cannot be learnt refused (else admitted, logged)?"""
        return self._hard_fail

    def remember(
        self, key: bytes, chain: list[x509.Certificate], registry_crls: Sequence[bytes] = ()
    ) -> None:
        """Note a verified client chain (leaf first) whose leaf names revocation sources, with
        the registry's CRLs of its region (DER), which the resolver checks it against."""
        if len(chain) < 2 or not self._fetcher.names_sources(chain[0]):
            return
        if len(self._pairs) >= MAX_REMEMBERED_CERTIFICATES:
            self._pairs.clear()
        self._pairs[key] = _Remembered(
            chain[0],
            chain[1],
            _registry_crl_until(chain[1], registry_crls),
            self._fetcher.names_ocsp(chain[0]),
        )

    async def check(self, key: bytes, who: str, what: str = "client certificate") -> str:
        """Raise `CallerRejected` when the certificate under `key` (`what` of `who`: the words
        of the messages) is revoked, or its status cannot be learnt under hard-fail. Else
        returns what was learnt: "good" (a source, or the registry's current CRL, answered),
        "unreachable" (admitted under soft-fail), "none" (the certificate names no source)."""
        found = self._pairs.get(key)
        if found is None:
            return "none"
        leaf, issuer, registry_crl_until, names_ocsp = found
        # the registry's current CRL of the issuer, which the resolver checked, is what the CRL
        # URLs serve: only OCSP responders are then asked
        current = registry_crl_until is not None and self._clock() <= registry_crl_until
        status = self._fetcher.cached(leaf, issuer)
        if status is None and current and not names_ocsp:
            # Nothing to ask: the fetcher would answer None (no source left) from a worker
            # thread; every call of a CRL-only PKI took that thread hop before.
            return "good"
        try:
            if status is None:
                status = await asyncio.to_thread(
                    functools.partial(self._fetcher.check, have_current_crl=current), leaf, issuer
                )
        except RevocationUnavailable as exc:
            if current:
                return "good"  # the registry's current CRL of the issuer answered
            return self._unknown(who, what, str(exc))
        if status is None:
            return "good"
        if status.status is CertStatus.UNKNOWN:
            return self._unknown(who, what, "its CA's OCSP responder does not know the certificate")
        if status.status is CertStatus.REVOKED:
            self._revoked(who, what, status)
        return "good"

    def _revoked(self, who: str, what: str, status: RevocationStatus) -> None:
        assert status.revoked_at is not None
        if status.revoked_at > self._clock():
            return  # revoked from a time still to come
        raise CallerRejected(
            "CERTIFICATE_REVOKED",
            f"{what} of {who} was revoked at {status.revoked_at:%Y-%m-%dT%H:%M:%SZ} "
            f"({status.reason or 'no reason given'}), by its {status.source.upper()}",
        )

    def _unknown(self, who: str, what: str, why: str) -> str:
        if self._hard_fail:
            raise CallerRejected(
                "REVOCATION_UNAVAILABLE",
                f"the revocation status of {who}'s {what} cannot be learnt: {why}",
            )
        log.warning(  # the metric counted it as unreachable
            "accepted %s without a revocation status of its %s (soft-fail): %s", who, what, why
        )
        return "unreachable"


class _Remembered(NamedTuple):
    leaf: x509.Certificate
    issuer: x509.Certificate
    registry_crl_until: datetime | None  # the registry holds a current CRL of the issuer until
    names_ocsp: bool  # the leaf names an OCSP responder


@functools.lru_cache(maxsize=1024)
def _thumbprint(certificate: x509.Certificate) -> str:
    return x5t_s256_of_der(certificate.public_bytes(Encoding.DER))


@functools.lru_cache(maxsize=256)
def _crl(der: bytes) -> x509.CertificateRevocationList | None:
    """A registry CRL, parsed once (the registry's publisher checked it; a bad one: None)."""
    try:
        return x509.load_der_x509_crl(der)
    except ValueError:
        return None


def registry_revocation(
    certificate: x509.Certificate, registry: Registry, region_code: str, now: datetime
) -> str | None:
    """Why the registry says `certificate` is revoked ("is revoked (reason)": its key's state,
    from `revoked_at`; "is on region X's revocation list": a CRL of that region's CA), or None.
    A revoked TLS key authenticates no one: its holder may be anybody."""
    entry = registry.key(_thumbprint(certificate))
    if (
        entry is not None
        and entry.state is KeyState.REVOKED
        and (entry.revoked_at is None or now >= entry.revoked_at)
    ):
        return f"is revoked ({entry.revocation_reason or 'no reason given'})"
    region = registry.region(region_code)
    for der in region.crls if region is not None else ():
        crl = _crl(der)
        if crl is None or crl.issuer != certificate.issuer:
            continue
        revoked = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if revoked is not None and revoked.revocation_date_utc <= now:
            return f"is on region {region_code}'s revocation list"
    return None


def _registry_crl_until(issuer: x509.Certificate, crls: Sequence[bytes]) -> datetime | None:
    """The latest nextUpdate of the registry's CRLs signed by `issuer` (None: none)."""
    until: datetime | None = None
    for der in crls:
        try:
            crl = x509.load_der_x509_crl(der)
        except ValueError:
            continue
        if crl.issuer != issuer.subject or crl.next_update_utc is None:
            continue
        try:
            signed = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError, UnsupportedAlgorithm):
            signed = False
        if signed and (until is None or crl.next_update_utc > until):
            until = crl.next_update_utc
    return until
