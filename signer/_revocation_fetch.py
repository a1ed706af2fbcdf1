"""Fetching revocation evidence where a certificate says it is published, with a cache.

A certificate names its OCSP responders in its authorityInfoAccess extension and its CRLs in
its cRLDistributionPoints. `RevocationFetcher.check` asks them in that order -- each OCSP
responder (an RFC 6960 POST of a request built with `OCSPRequestBuilder`), then each CRL URL --
and returns the first definite answer (good or revoked) as checked by `signer._revocation`; an
OCSP "unknown" is returned only when no CRL answers better. It returns None for a certificate
that names no source (the caller then relies on the registry's CRLs alone), and raises
`RevocationUnavailable` when sources are named but none answered usably -- what that means is
the caller's policy (hard-fail for seals; configurable for TLS callers).

Transport: the standard library's `urllib` over plain HTTP (RFC 6960 A.1, RFC 5280 4.2.1.13:
OCSP and CRLs are signed objects, so TLS adds nothing; `https`, `ldap` and other schemes are
refused), without proxies from the environment or redirects, with a bounded timeout and a
bounded response size. It blocks: an asynchronous caller runs `check` in a thread
(`asyncio.to_thread`). A third-party HTTP client would add a dependency for two requests.

A caller that already holds a current CRL of the issuer (the registry's) says so, and the CRL
URLs are then not fetched: that CRL is what they serve until its nextUpdate.

Cache: a status per (issuer key hash, serial) until its nextUpdate; a CRL per URL until its
nextUpdate, shared by every certificate it covers. Callers asking about the same certificate at
once share one fetch. Evidence without a nextUpdate is used once and not kept. When no source
answered, the certificate is not asked about again for `RETRY_AFTER_FAILURE` (10 s): callers in
between are answered `RevocationUnavailable` at once.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from signer._http import HttpUnavailable, fetch
from signer._revocation import (
    CertStatus,
    RevocationStatus,
    check_crl,
    check_ocsp_response,
    ocsp_cert_id,
)
from signer._sm2_x509 import CERTIFICATE_READ_ERRORS
from signer.errors import RevocationDataInvalid, RevocationUnavailable

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TIMEOUT_SECONDS",
    "RevocationFetcher",
]

DEFAULT_TIMEOUT_SECONDS: Final = 5.0  # per request: connect and read
DEFAULT_MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024  # an OCSP response is ~1 KB; a CRL may be MBs
MAX_CACHED_STATUSES: Final = 65536  # certificates remembered before the cache is cleared
MAX_CACHED_CRLS: Final = 256  # CRL URLs remembered before that cache is cleared
MAX_URLS_PER_KIND: Final = 4  # OCSP responders (and CRL URLs) asked per certificate, at most
# After no source answered, the same certificate is not asked about again for this long: callers
# in between get the same RevocationUnavailable at once instead of waiting for the timeout.
RETRY_AFTER_FAILURE: Final = timedelta(seconds=10)

_CERT_ID_HASHES: Final[
    dict[str, type[hashes.SHA1 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512]]
] = {
    "sha1": hashes.SHA1,  # an identifier (RFC 6960 CertID), what `openssl ocsp` expects
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# (source, result, seconds): result is good | revoked | unknown | unreachable; seconds is the
# time spent fetching (0.0 for an answer from the cache).
Observer = Callable[[str, str, float], None]


@dataclass(frozen=True, slots=True)
class RevocationSources:
    ocsp_urls: tuple[str, ...]
    crl_urls: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.ocsp_urls or self.crl_urls)


def revocation_sources(certificate: x509.Certificate) -> RevocationSources:
    """The OCSP responders (AIA) and CRL URLs (CRL DP, full names) a certificate names."""
    ocsp_urls: list[str] = []
    crl_urls: list[str] = []
    try:
        aia = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):
        aia = None
    for access in aia.value if aia is not None else ():
        location = access.access_location
        if access.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            location, x509.UniformResourceIdentifier
        ):
            ocsp_urls.append(location.value)
    try:
        dps = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):
        dps = None
    for point in dps.value if dps is not None else ():
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier):
                crl_urls.append(name.value)
    return RevocationSources(tuple(ocsp_urls), tuple(crl_urls))


@functools.lru_cache(maxsize=4096)
def _status_key(certificate: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, int]:
    """What a status is cached under: the issuer's key hash and the serial. Computed once per
    pair (building the CertID hashes the issuer's name and key: ~14 µs, on every call)."""
    return ocsp_cert_id(certificate, issuer)[1], certificate.serial_number


@dataclass(frozen=True, slots=True)
class _CachedCrl:
    der: bytes
    next_update: datetime


class RevocationFetcher:
    """Asks a certificate's OCSP responders and CRL URLs, caching answers to their nextUpdate."""

    def __init__(
        self,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        cert_id_hash: str = "sha1",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observe: Observer | None = None,
    ) -> None:
        if timeout_seconds <= 0 or max_response_bytes <= 0:
            raise ValueError("timeout_seconds and max_response_bytes must be positive")
        if cert_id_hash not in _CERT_ID_HASHES:
            raise ValueError(f"cert_id_hash {cert_id_hash!r} is not sha1, sha256, sha384, sha512")
        self.timeout_seconds = timeout_seconds
        self.max_response_bytes = max_response_bytes
        self._hash = cert_id_hash
        self._clock = clock
        self._observe = observe
        self._lock = threading.Lock()
        self._statuses: dict[tuple[bytes, int], RevocationStatus] = {}
        self._crls: dict[str, _CachedCrl] = {}
        self._inflight: dict[tuple[bytes, int], Future[RevocationStatus | None]] = {}
        self._failed: dict[tuple[bytes, int], tuple[datetime, str]] = {}

    def now(self) -> datetime:
        """The fetcher's clock (what freshness is judged at)."""
        return self._clock()

    @staticmethod
    def names_sources(certificate: x509.Certificate) -> bool:
        """Whether the certificate names an OCSP responder or a CRL URL (else `check` is None)."""
        return bool(revocation_sources(certificate))

    @staticmethod
    def names_ocsp(certificate: x509.Certificate) -> bool:
        """Whether the certificate names an OCSP responder: without one, a caller holding a
        current CRL of the issuer has nothing to ask (`check(have_current_crl=True)` is None)."""
        return bool(revocation_sources(certificate).ocsp_urls)

    def cached(
        self, certificate: x509.Certificate, issuer: x509.Certificate
    ) -> RevocationStatus | None:
        """The cached status if it is still current, without any I/O (None otherwise)."""
        key = _status_key(certificate, issuer)
        with self._lock:
            cached = self._statuses.get(key)
        if cached is None or not cached.current_at(self._clock()):
            return None
        self._report(cached.source, cached.status.value, 0.0)
        return cached

    def check(
        self,
        certificate: x509.Certificate,
        issuer: x509.Certificate,
        *,
        have_current_crl: bool = False,
    ) -> RevocationStatus | None:
        """The status of `certificate` from the sources it names (None: it names none); raises
        `RevocationUnavailable` when none of them answered usably. `have_current_crl`: the
        caller holds a current CRL of the issuer (the registry's), a copy of what the CRL URLs
        serve until its nextUpdate, so they are not fetched (RFC 5280 6.3.3 (a)): only OCSP
        responders are asked, and None is returned when the certificate names none."""
        sources = revocation_sources(certificate)
        if have_current_crl:
            sources = RevocationSources(sources.ocsp_urls, ())
        if not sources:
            return None
        key = _status_key(certificate, issuer)
        now = self._clock()
        with self._lock:
            cached = self._statuses.get(key)
            failed = self._failed.get(key)
            running = self._inflight.get(key)
            fresh = cached is not None and cached.current_at(now)
            if not fresh and running is None and (failed is None or now >= failed[0]):
                mine: Future[RevocationStatus | None] = Future()
                self._inflight[key] = mine
        if fresh:
            assert cached is not None
            self._report(cached.source, cached.status.value, 0.0)
            return cached
        if failed is not None and now < failed[0]:
            raise RevocationUnavailable(failed[1])
        if running is not None:
            return running.result()  # another caller's fetch, shared (or its exception)
        try:
            status = self._fetch(certificate, issuer, sources)
        except BaseException as exc:
            if isinstance(exc, RevocationUnavailable):
                with self._lock:
                    if len(self._failed) >= MAX_CACHED_STATUSES:
                        self._failed.clear()
                    self._failed[key] = (self._clock() + RETRY_AFTER_FAILURE, str(exc))
            mine.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._inflight[key]
        mine.set_result(status)
        return status

    def forget(self) -> None:
        """Drop every cached answer (a test, or an operator's reload)."""
        with self._lock:
            self._statuses.clear()
            self._crls.clear()
            self._failed.clear()

    def _report(self, source: str, result: str, seconds: float) -> None:
        if self._observe is not None:
            self._observe(source, result, seconds)

    def _fetch(
        self, certificate: x509.Certificate, issuer: x509.Certificate, sources: RevocationSources
    ) -> RevocationStatus:
        problems: list[str] = []
        unknown: RevocationStatus | None = None
        pair = (certificate, issuer)
        for url in sources.ocsp_urls[:MAX_URLS_PER_KIND]:
            status = self._ask(problems, "ocsp", url, fetch=self._ocsp, pair=pair)
            if status is not None and status.status is not CertStatus.UNKNOWN:
                return self._keep(certificate, issuer, status)
            unknown = unknown or status
        for url in sources.crl_urls[:MAX_URLS_PER_KIND]:
            status = self._ask(problems, "crl", url, fetch=self._crl, pair=pair)
            if status is not None:
                return self._keep(certificate, issuer, status)
        if unknown is not None:
            return unknown  # not cached: the next check asks again
        # named by serial and issuer: a person's certificate may carry an id number in its subject
        raise RevocationUnavailable(
            f"the revocation status of certificate {certificate.serial_number:x} of "
            f"{issuer.subject.rfc4514_string()} cannot be learnt: {'; '.join(problems)}"
        )

    def _ask(
        self,
        problems: list[str],
        source: str,
        url: str,
        *,
        fetch: Callable[[str, x509.Certificate, x509.Certificate], RevocationStatus],
        pair: tuple[x509.Certificate, x509.Certificate],
    ) -> RevocationStatus | None:
        """One source's answer, or None (its problem recorded and reported as unreachable)."""
        certificate, issuer = pair
        started = time.perf_counter()
        try:
            status = fetch(url, certificate, issuer)
        except (RevocationDataInvalid, RevocationUnavailable) as exc:
            problems.append(f"{source} {url}: {exc}")
            self._report(source, "unreachable", time.perf_counter() - started)
            return None
        self._report(source, status.status.value, time.perf_counter() - started)
        return status

    def _keep(
        self, certificate: x509.Certificate, issuer: x509.Certificate, status: RevocationStatus
    ) -> RevocationStatus:
        if status.next_update is not None:
            key = _status_key(certificate, issuer)
            with self._lock:
                if len(self._statuses) >= MAX_CACHED_STATUSES:
                    self._statuses.clear()
                self._statuses[key] = status
        return status

    def _ocsp(
        self, url: str, certificate: x509.Certificate, issuer: x509.Certificate
    ) -> RevocationStatus:
        digest = _CERT_ID_HASHES[self._hash]()
        request = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, digest).build()
        body = request.public_bytes(serialization.Encoding.DER)
        der = self._http(url, body, "application/ocsp-request")
        return check_ocsp_response(der, certificate, issuer, now=self._clock())

    def _crl(
        self, url: str, certificate: x509.Certificate, issuer: x509.Certificate
    ) -> RevocationStatus:
        now = self._clock()
        with self._lock:
            cached = self._crls.get(url)
        if cached is not None and now <= cached.next_update:
            return check_crl(cached.der, certificate, issuer, now=now)
        status = check_crl(self._http(url, None, ""), certificate, issuer, now=now)
        assert status.next_update is not None  # check_crl refuses a CRL without one
        with self._lock:
            if len(self._crls) >= MAX_CACHED_CRLS:
                self._crls.clear()
            self._crls[url] = _CachedCrl(status.der, status.next_update)
        return status

    def _http(self, url: str, body: bytes | None, content_type: str) -> bytes:
        """GET (or POST `body`) over plain HTTP: the response body, at most the size cap."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise RevocationUnavailable(
                f"only http:// URLs are fetched, not {parts.scheme or 'a relative'} URL"
            )
        try:
            return fetch(
                url,
                body,
                content_type,
                timeout=self.timeout_seconds,
                max_bytes=self.max_response_bytes,
            ).body
        except HttpUnavailable as exc:
            raise RevocationUnavailable(str(exc)) from None
