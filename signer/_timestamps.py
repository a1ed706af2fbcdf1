"""RFC 3161 time-stamps: asking a time-stamping authority (TSA) for a token, and deciding whether
a token proves that some bytes existed at its genTime (proof of existence, POE).

`proof_of_existence(token, message, anchors)` is the one check, for sealing and validation:

    (1) the token is a CMS SignedData over a TSTInfo whose message imprint is the hash of
        `message` (SHA-256/384/512 or SM3), its signed attributes hold the TSTInfo's digest and
        the signature verifies with a certificate the token carries (`signer._ses_tsp`)
    (2) that certificate chains, at the genTime, to one of `anchors` (the TSA trust anchors the
        operator configures, `[timestamp] tsa_certificates`), through the certificates the token
        carries, with `cryptography.x509.verification`
    (3) the TSA certificate's extendedKeyUsage is critical and is id-kp-timeStamping alone
        (RFC 3161 section 2.3)
    (4) the genTime is not in the future

`TimeStampClient.stamp(message)` asks a TSA for a token over `message`: an RFC 3161 TimeStampReq
(SHA-256 imprint, a fresh 63-bit nonce, certReq) POSTed as `application/timestamp-query` over
the standard library's `urllib` (no proxies from the environment, no redirects, a bounded
timeout and response size), and accepts the reply only when its status is granted, it carries
the same nonce and imprint, and the token passes `proof_of_existence` against the client's
anchors. Anything else raises `TimeStampUnavailable`; what a seal does then is the caller's
policy (the gateway seals without a time-stamp, docs/security.md "Time-stamps").

Request and response are built and read with asn1crypto's `tsp` and `cms` (already a dependency;
the same code reads the tokens of GB/T 38540 seals, SM2 TSAs included): docs/security.md says why
not `rfc3161-client`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from asn1crypto import tsp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from signer._http import HttpUnavailable, fetch
from signer._ses_tsp import TimeStampFinding, check_time_stamp
from signer._sm2_x509 import CERTIFICATE_READ_ERRORS
from signer.errors import TimeStampUnavailable

__all__ = ["TimeStampClient", "proof_of_existence"]

DEFAULT_TIMEOUT_SECONDS: Final = 5.0  # per request: connect and read
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024  # a reply with the TSA's chain is 2-6 KB
MAX_TSA_CHAIN_DEPTH: Final = 4
GEN_TIME_SKEW: Final = timedelta(minutes=5)  # a genTime this far ahead of our clock is accepted
REPLY_TYPE: Final = "application/timestamp-reply"


@dataclass(frozen=True, slots=True)
class TimeStampProof:
    """What a token proves about some bytes: `gen_time` is the proof of existence when
    `problem` is empty; otherwise `problem` says why the token proves nothing."""

    gen_time: datetime | None
    tsa: str  # the TSA certificate's subject (RFC 4514), when its signature verified
    problem: str

    @property
    def proved(self) -> bool:
        return not self.problem


def _time_stamping_only(
    policy: object, certificate: x509.Certificate, extension: x509.ExtendedKeyUsage | None
) -> None:
    if extension is None or list(extension) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        raise ValueError("the TSA certificate's extendedKeyUsage is not id-kp-timeStamping alone")


def time_stamping_problem(certificate: x509.Certificate) -> str:
    """Why `certificate` is not a TSA certificate (RFC 3161 section 2.3), or ""."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        _time_stamping_only(None, certificate, extension.value)
    except x509.ExtensionNotFound:
        return "the TSA certificate has no extendedKeyUsage"
    except (ValueError, *CERTIFICATE_READ_ERRORS) as exc:
        return str(exc)
    return "" if extension.critical else "the TSA certificate's extendedKeyUsage is not critical"


def carried_certificates(finding: TimeStampFinding) -> tuple[x509.Certificate, ...]:
    """The certificates a token carries that parse (the TSA's and its issuers', untrusted)."""
    out = []
    for der in finding.certificates:
        try:
            out.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return tuple(out)


_TSA_POLICY: Final = ExtensionPolicy.permit_all().require_present(
    x509.ExtendedKeyUsage, Criticality.CRITICAL, _time_stamping_only
)


def proof_of_existence(
    token: bytes,
    message: bytes,
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
) -> TimeStampProof:
    """Whether `token` proves that `message` existed at its genTime (module docstring, (1)-(4));
    never raises for a malformed token: pyca reads a carried certificate's fields lazily, so an
    unreadable one (a changed curve, version or name) proves nothing."""
    try:
        return _proof_of_existence(token, message, anchors, now)
    except (UnsupportedAlgorithm, *CERTIFICATE_READ_ERRORS) as exc:
        return TimeStampProof(None, "", f"a certificate in the token cannot be read ({exc})")


def _proof_of_existence(
    token: bytes, message: bytes, anchors: Sequence[x509.Certificate], now: datetime | None
) -> TimeStampProof:
    finding = check_time_stamp(token, message)  # (1)
    if finding.problem:
        return TimeStampProof(None, "", finding.problem)
    assert finding.tsa_certificate is not None
    assert finding.gen_time is not None
    tsa, gen_time = finding.tsa_certificate, finding.gen_time
    subject = tsa.subject.rfc4514_string()
    if not anchors:
        return TimeStampProof(None, subject, "no TSA trust anchor is configured")
    intermediates = list(carried_certificates(finding))
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(gen_time)
        .max_chain_depth(MAX_TSA_CHAIN_DEPTH)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_TSA_POLICY)
        .build_client_verifier()
    )
    try:
        verifier.verify(tsa, intermediates)  # (2), (3)
    except (VerificationError, *CERTIFICATE_READ_ERRORS) as exc:
        return TimeStampProof(
            None, subject, f"the TSA certificate {subject} is not trusted: {str(exc)[:300]}"
        )
    if gen_time - (now or datetime.now(UTC)) > GEN_TIME_SKEW:  # (4)
        return TimeStampProof(
            None, subject, f"the genTime {gen_time:%Y-%m-%dT%H:%M:%SZ} is in the future"
        )
    return TimeStampProof(gen_time, subject, "")


class TimeStampClient:
    """Asks one TSA for RFC 3161 tokens (module docstring); blocking: an asynchronous caller
    runs `stamp` in a thread. `report(result, seconds)`, if given, hears of each request:
    result is ok | unreachable | refused | invalid."""

    def __init__(
        self,
        url: str,
        *,
        anchors: Sequence[x509.Certificate],
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        report: Callable[[str, float], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the TSA URL must be an http:// or https:// URL, not {url!r}")
        if not anchors:
            raise ValueError("a TSA client needs at least one TSA trust anchor")
        self.url = url
        self.anchors = tuple(anchors)
        self.timeout_seconds = timeout_seconds
        self.max_response_bytes = max_response_bytes
        self._report = report
        self._clock = clock

    def __repr__(self) -> str:
        return f"TimeStampClient({self.url!r})"

    def stamp(self, message: bytes) -> bytes:
        """A DER TimeStampToken (CMS ContentInfo) over SHA-256 of `message`, checked as the
        module docstring says; `TimeStampUnavailable` otherwise."""
        started = time.monotonic()
        result = "invalid"
        try:
            nonce = secrets.randbits(63) | 1  # positive, never 0
            digest = hashlib.sha256(message).digest()
            request = tsp.TimeStampReq(
                {
                    "version": "v1",
                    "message_imprint": {
                        "hash_algorithm": {"algorithm": "sha256"},
                        "hashed_message": digest,
                    },
                    "nonce": nonce,
                    "cert_req": True,
                }
            )
            result = "unreachable"
            body = self._post(request.dump())
            result = "refused"
            token = self._token(body)
            result = "invalid"
            self._check(token, message, nonce)
            result = "ok"
            return token
        finally:
            if self._report is not None:
                self._report(result, time.monotonic() - started)

    def _post(self, query: bytes) -> bytes:
        try:
            answer = fetch(
                self.url,
                query,
                "application/timestamp-query",
                timeout=self.timeout_seconds,
                max_bytes=self.max_response_bytes,
            )
        except HttpUnavailable as exc:
            said = {
                "status": f"the TSA answered HTTP {exc.detail}",
                "unreachable": f"the TSA is not reachable ({exc.detail})",
            }.get(exc.kind, f"the TSA's reply exceeds {exc.detail} bytes")
            raise TimeStampUnavailable(said) from None
        kind, data = answer.content_type, answer.body
        if kind != REPLY_TYPE:
            raise TimeStampUnavailable(f"the TSA answered {kind}, not {REPLY_TYPE}")
        return data

    @staticmethod
    def _token(body: bytes) -> bytes:
        try:
            reply = tsp.TimeStampResp.load(body, strict=True)
            status = reply["status"]["status"].native
            token = reply["time_stamp_token"]
            text = reply["status"]["status_string"].native or []
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError):
            raise TimeStampUnavailable("the TSA's reply is not an RFC 3161 TimeStampResp") from None
        if status not in ("granted", "granted_with_mods"):
            said = "; ".join(str(t) for t in text)[:200]
            raise TimeStampUnavailable(
                f"the TSA refused: {status}" + (f" ({said})" if said else "")
            )
        if token.native is None:
            raise TimeStampUnavailable("the TSA granted, but its reply holds no token")
        return bytes(token.dump())

    def _check(self, token: bytes, message: bytes, nonce: int) -> None:
        finding = check_time_stamp(token, message)
        if not finding.problem and finding.nonce != nonce:
            raise TimeStampUnavailable("the TSA's token does not carry the nonce that was sent")
        proof = proof_of_existence(token, message, self.anchors, now=self._clock())
        if proof.problem:
            raise TimeStampUnavailable(f"the TSA's token is not accepted: {proof.problem}")
