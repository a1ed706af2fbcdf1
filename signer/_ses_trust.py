"""Where a GB/T 38540 certificate is anchored, for `GmVerifier`: the registry, a region, or a
document's own anchors.

A seal's certificates are carried in the seal, not published as JWS keys are, so the verifier
looks them up in this order: (1) a key the registry publishes with this x5t#S256 (its region's
anchors and CRLs, its registry state); (2) each region whose anchors build a path to it (the
first region where the path builds decides, even if a constraint then fails); (3) the verifier's
`extra_anchors`, for documents from outside the federation (no region). The path check is
`signer._sm2_path.check_sm2_path` (mixed chains included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signer._keys import x5t_s256_of_der
from signer._report import Check, SubIndication
from signer._sm2_path import Sm2Path, Sm2PathFailure, check_sm2_path
from signer._sm2_x509 import CERTIFICATE_READ_ERRORS
from signer._trust import TrustedKey, TrustSource
from signer._verify_helpers import BENIGN_REASONS

__all__: list[str] = []  # internals of `_ses_verify`

EXTRA_ANCHORS: Final = "the verifier's extra anchors"


@dataclass(frozen=True, slots=True)
class Anchoring:
    """What anchored a certificate (or was tried last) and what its path check found."""

    where: str  # "registry key …", "region 44", EXTRA_ANCHORS, or "" when nothing chained
    owner: str
    owner_region: str
    key: TrustedKey | None
    path: Sm2Path | None
    failure: Sm2PathFailure | None  # None exactly when `path` holds


def _path(
    certificate: x509.Certificate,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    at: datetime,
) -> tuple[Sm2Path | None, Sm2PathFailure | None]:
    if not roots:
        return None, Sm2PathFailure(SubIndication.NO_CERTIFICATE_CHAIN_FOUND, "no anchors")
    try:
        return check_sm2_path(
            certificate, roots=roots, intermediates=intermediates, crls=crls, at=at
        ), None
    except Sm2PathFailure as failure:
        return None, failure
    except CERTIFICATE_READ_ERRORS as exc:  # an anchor pyca cannot read
        message = f"a certificate of the path could not be read: {str(exc)[:200]}"
        return None, Sm2PathFailure(SubIndication.FORMAT_FAILURE, message)


@dataclass(frozen=True, slots=True)
class CertificateVerdict:
    """What `GmVerifier.check_signer` found: every check, the failures among them (in order),
    and who the certificate belongs to by its anchoring."""

    checks: tuple[Check, ...]
    failures: tuple[tuple[SubIndication, str], ...]
    owner: str
    owner_region: str


def anchor(
    certificate: x509.Certificate,
    *,
    trust: TrustSource | None,
    extra_anchors: Sequence[x509.Certificate],
    extra_intermediates: Sequence[x509.Certificate] = (),
    at: datetime,
    default_owner: str,
) -> Anchoring:
    """The anchoring of `certificate` at `at`, by the order of the module docstring."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    if trust is not None:
        key = trust.key(x5t_s256_of_der(der))
        if key is not None:  # (1)
            roots, intermediates = trust.anchors(key.region)
            path, failure = _path(certificate, roots, intermediates, trust.crls(key.region), at)
            where = f"registry key of {key.owner_name or key.owner}"
            return Anchoring(where, key.owner, key.region, key, path, failure)
        for region in trust.regions():  # (2)
            roots, intermediates = trust.anchors(region)
            path, failure = _path(certificate, roots, intermediates, trust.crls(region), at)
            if failure is None or failure.sub is not SubIndication.NO_CERTIFICATE_CHAIN_FOUND:
                return Anchoring(f"region {region}", default_owner, region, None, path, failure)
    if extra_anchors:  # (3)
        path, failure = _path(certificate, tuple(extra_anchors), tuple(extra_intermediates), (), at)
        if failure is None or failure.sub is not SubIndication.NO_CERTIFICATE_CHAIN_FOUND:
            return Anchoring(EXTRA_ANCHORS, default_owner, "", None, path, failure)
    searched = "the registry's regions" if trust is not None else "no trust source"
    if extra_anchors:
        searched += " and the verifier's extra anchors"
    failure = Sm2PathFailure(
        SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
        f"no path to a trusted anchor ({searched} searched)",
    )
    return Anchoring("", default_owner, "", None, None, failure)


def path_time(certificate: x509.Certificate, at: datetime) -> tuple[datetime, str]:
    """The time to check a path at: `at`, or the nearest end of the certificate's validity
    when `at` lies outside it (the leaf's own dates are a separate check; this one is about
    the path), with a note saying so."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if at < start:
        return start, f" (checked at the certificate's start {start:%Y-%m-%dT%H:%M:%SZ})"
    if at > end:
        return end, f" (checked at the certificate's end {end:%Y-%m-%dT%H:%M:%SZ})"
    return at, ""


def revocation_verdict(
    what: str, revoked_at: datetime, reason: str, *, signed_at: datetime, proof: datetime | None
) -> tuple[SubIndication | None, str]:
    """REVOKED when revoked by the signing time; REVOKED_NO_POE when revoked later for a reason
    that casts doubt and no time-stamp proves the signature older; else (None, why it holds)."""
    when = f"{revoked_at:%Y-%m-%dT%H:%M:%SZ}"
    said = reason or "no reason given"
    if signed_at >= revoked_at:
        return (
            SubIndication.REVOKED,
            f"{what} was revoked at {when} ({said}), before the signing time",
        )
    if proof is not None and proof < revoked_at:
        return (
            None,
            f"{what} was revoked at {when} ({said}); a time-stamp proves the signature older",
        )
    if reason not in BENIGN_REASONS:
        return (
            SubIndication.REVOKED_NO_POE,
            f"{what} was revoked at {when} ({said}); the claimed earlier signing time cannot be proved",
        )
    return None, f"{what} was revoked at {when} for {reason}, after the signing time"


def revocation_of(anchoring: Anchoring) -> tuple[str, datetime, str] | None:
    """(what, when, reason) if the registry or the CRLs say the certificate is revoked."""
    key = anchoring.key
    if key is not None and key.state == "revoked":
        return (
            f"key {key.kid}",
            key.revoked_at or datetime.min.replace(tzinfo=UTC),
            key.revocation_reason,
        )
    if anchoring.path is not None and anchoring.path.revoked is not None:
        return anchoring.path.revoked
    return None
