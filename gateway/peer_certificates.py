"""The server certificate of a peer gateway, checked for revocation when this gateway calls it.

gRPC Python shows a client no certificate of the server it handshook with. So before the first
call on a peer channel, `PeerCertificates.check` makes a probe handshake of its own with
Python's `ssl` (in a worker thread, bounded by `[revocation] timeout_seconds`) to the same
endpoint: the same host name (SNI and name check), ALPN "h2", the same roots (the called
region's root CA in the registry) and the gateway's own client certificate. The leaf the
endpoint presents is then checked as a TLS caller's is: the registry's key state and its CRL of
the region's CA, then the certificate's own OCSP responders and CRLs through the shared
`CallerRevocation` (its issuer is taken from the region's CA certificates in the registry: on
Python 3.11 `ssl` gives the leaf only), under the same `[revocation] unreachable` policy.

While the certificate is revoked, every call to that peer is refused at once
(`PeerCertificateRefused`: PEER_CERTIFICATE_REVOKED, or REVOCATION_UNAVAILABLE under hard-fail)
and logged. The probe is made again when the registry version or the endpoint changes, when our
own TLS certificate changes (`forget`), and when the cached revocation status's nextUpdate has
passed. Only a call that finds no certificate of the endpoint held waits for the probe (within
its own bound); a later probe runs in the background while the certificate held is checked. A
probe that fails (no connection, a failed handshake) decides nothing: the gRPC call goes ahead
and its own failure decides; it is tried again `PROBE_RETRY_SECONDS` later.

The probe sees the certificate the endpoint presents to a probe: an endpoint behind a load
balancer may present another one to another connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.breaker import BreakerOpen
from gateway.errors import CallerRejected
from gateway.metrics import GatewayMetrics
from gateway.revocation import CallerRevocation, registry_revocation
from registry import Registry
from signer import RevocationFetcher

__all__ = ["PROBE_RETRY_SECONDS", "PeerCertificateRefused", "PeerCertificates", "probe"]

log = logging.getLogger("tongban.peers")

PROBE_RETRY_SECONDS: Final = 30.0  # a probe that failed is tried again this much later


class PeerCertificateRefused(BreakerOpen):
    """The peer is not called: its server certificate is revoked, or its status cannot be
    learnt under hard-fail. `reason` is the contract reason to refuse the caller's call with."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _host_port(target: str) -> tuple[str, int]:
    """The host and port of a gRPC target ("host:port", "[v6]:port", "dns:///host:port")."""
    rest = target.removeprefix("dns:///").removeprefix("dns:")
    host, sep, port = rest.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{target!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def probe(target: str, context: ssl.SSLContext, timeout_seconds: float) -> bytes:
    """DER of the certificate the TLS server at `target` presents to a handshake with
    `context` (ALPN h2, the host name checked), within `timeout_seconds` per step. Raises
    OSError (ssl.SSLError included) or ValueError."""
    host, port = _host_port(target)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=timeout_seconds) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return der


def _issuer(leaf: x509.Certificate, cas: tuple[bytes, ...]) -> x509.Certificate | None:
    """The CA certificate among `cas` (the region's in the registry, DER) that issued `leaf`."""
    for der in cas:
        try:
            ca = x509.load_der_x509_certificate(der)
            if ca.subject == leaf.issuer:
                leaf.verify_directly_issued_by(ca)
                return ca
        except (ValueError, TypeError, InvalidSignature):
            continue
    return None


@dataclass(slots=True)
class _Seen:
    """What the last probe of one peer region found."""

    target: str
    version: int  # the registry version it was checked against
    until: datetime  # probe again from then on
    leaf: x509.Certificate | None = None  # None: the probe failed
    key: bytes = b""  # SHA-256 of the leaf's DER: its key in `CallerRevocation`
    issuer: x509.Certificate | None = None  # from the registry (None: not found there)


class PeerCertificates:
    """The revocation check of the peers' server certificates (see the module docstring)."""

    def __init__(
        self,
        context: Callable[[str], ssl.SSLContext],  # per peer region: its roots, our certificate
        revocation: CallerRevocation,
        fetcher: RevocationFetcher,
        *,
        timeout_seconds: float,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._context = context
        self._revocation = revocation
        self._fetcher = fetcher
        self._timeout = timeout_seconds
        self._metrics = metrics
        self._clock = clock
        self._seen: dict[str, _Seen] = {}  # peer region -> its last probe
        self._locks: dict[str, asyncio.Lock] = {}  # one probe per region at a time
        self._background: dict[str, asyncio.Task[_Seen]] = {}  # probes no call waits for
        self.probes = 0  # probe handshakes tried since start

    def forget(self) -> None:
        """Probe every peer again (our own TLS certificate changed)."""
        self._seen.clear()

    async def close(self) -> None:
        """Wait for the probes running in the background (each ends within the timeout)."""
        await asyncio.gather(*self._background.values(), return_exceptions=True)

    async def check(
        self,
        region: str,
        target: str,
        registry: Registry | None,
        *,
        budget_seconds: float | None = None,
    ) -> None:
        """Raise `PeerCertificateRefused` when the server certificate of `region`'s gateway at
        `target` is revoked (by the registry, its OCSP responder or CRL), or its status cannot
        be learnt under hard-fail; else return (and the call goes ahead). Only a call that finds
        no certificate of `target` held waits for a probe (at most `budget_seconds`, the call's
        own bound, when shorter than the timeout); a probe due later runs in the background while
        the certificate held is checked."""
        version = registry.version if registry is not None else -1
        seen = self._seen.get(region)
        if seen is not None and seen.leaf is not None and seen.target == target:
            if not self._fresh(seen, target, version) and region not in self._background:
                task = asyncio.get_running_loop().create_task(
                    self._probe(region, target, registry, version)
                )
                self._background[region] = task
                task.add_done_callback(lambda _: self._background.pop(region, None))
        elif not self._fresh(seen, target, version):
            lock = self._locks.setdefault(region, asyncio.Lock())
            async with lock:  # calls at once share one probe
                seen = self._seen.get(region)
                if not self._fresh(seen, target, version):
                    seen = await self._probe(region, target, registry, version, budget_seconds)
        assert seen is not None
        if seen.leaf is None:
            self._count(region, "probe_failed")
            return
        who = f"the gateway of region {region}"
        why = (
            registry_revocation(seen.leaf, registry, region, self._clock())
            if registry is not None
            else None
        )
        if why is not None:
            self._refuse(region, "PEER_CERTIFICATE_REVOKED", f"server certificate of {who} {why}")
        try:
            result = await self._revocation.check(seen.key, who, "server certificate")
        except CallerRejected as exc:
            revoked = exc.reason == "CERTIFICATE_REVOKED"
            self._refuse(region, "PEER_CERTIFICATE_REVOKED" if revoked else exc.reason, str(exc))
        if seen.issuer is None and self._fetcher.names_sources(seen.leaf):
            result = self._no_issuer(region, who)
        self._count(region, result)
        self._until_next_update(seen)

    def _until_next_update(self, seen: _Seen) -> None:
        """Probe again once the cached status's nextUpdate has passed."""
        if seen.leaf is None or seen.issuer is None:
            return
        status = self._fetcher.cached(seen.leaf, seen.issuer)
        if status is not None and status.next_update is not None:
            seen.until = min(seen.until, status.next_update)

    def _fresh(self, seen: _Seen | None, target: str, version: int) -> bool:
        return (
            seen is not None
            and seen.target == target
            and seen.version == version
            and self._clock() < seen.until
        )

    def _no_issuer(self, region: str, who: str) -> str:
        """The certificate names OCSP responders or CRLs, but its issuer is not among the
        region's CA certificates in the registry: its status cannot be learnt."""
        why = (
            f"the revocation status of {who}'s server certificate cannot be learnt: its issuer "
            f"is not among region {region}'s CA certificates in the registry"
        )
        if self._revocation.hard_fail:
            self._refuse(region, "REVOCATION_UNAVAILABLE", why)
        log.warning("calling %s all the same (soft-fail): %s", who, why)
        return "unreachable"

    async def _probe(
        self,
        region: str,
        target: str,
        registry: Registry | None,
        version: int,
        budget_seconds: float | None = None,
    ) -> _Seen:
        now = self._clock()
        self.probes += 1
        timeout = min(self._timeout, budget_seconds or self._timeout)
        try:
            context = self._context(region)
            der = await asyncio.to_thread(probe, target, context, timeout)
            leaf = x509.load_der_x509_certificate(der)
        except (OSError, ValueError) as exc:
            log.warning(
                "the server certificate of the gateway of region %s at %s could not be read "
                "for its revocation check (%s): the call goes ahead; tried again in %g s",
                region,
                target,
                exc,
                PROBE_RETRY_SECONDS,
            )
            retry = now + timedelta(seconds=PROBE_RETRY_SECONDS)
            held = self._seen.get(region)
            if held is not None and held.leaf is not None and held.target == target:
                held.version, held.until = version, retry  # the certificate held stays checked
                return held
            seen = self._seen[region] = _Seen(target, version, retry)
            return seen
        key = hashlib.sha256(der).digest()
        found = registry.region(region) if registry is not None else None
        cas = found.ca_certificates if found is not None else ()
        issuer = _issuer(leaf, cas)
        if issuer is not None:
            self._revocation.remember(key, [leaf, issuer], found.crls if found else ())
        seen = _Seen(target, version, leaf.not_valid_after_utc, leaf, key, issuer)
        self._until_next_update(seen)
        self._seen[region] = seen
        return seen

    def _refuse(self, region: str, reason: str, message: str) -> None:
        self._count(region, "revoked" if reason == "PEER_CERTIFICATE_REVOKED" else "unavailable")
        log.warning("not calling the gateway of region %s: %s", region, message)
        raise PeerCertificateRefused(reason, message)

    def _count(self, region: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.peer_certificate_check(region, result)
