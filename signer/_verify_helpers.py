"""The helpers of `SealVerifier` (whose numbered plan is in `_verify`): the record of one run
of the checks, what is known of a published key once (its facts, verified chain and CRL
status), the end-entity policy of a signing certificate, the chain of check (9), and the
``crit`` part of check (1).

A certificate issued by an SM2 region CA (signed with SM2-with-SM3) has its chain checked by
`signer._sm2_path` instead of pyca, which cannot check SM2 signatures; its CRLs likewise. The
JWS itself is never SM2 (JOSE registers no SM2 algorithm): a published SM2 *key* is refused at
check (4) as a key type the JWS profile does not use."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import CRLEntryExtensionOID, ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from signer import _oids
from signer._jades_json import ValidationData
from signer._keyfile import PublicKey
from signer._report import Check, SignatureKind, SubIndication
from signer._revocation import CertStatus, RevocationStatus
from signer._revocation_fetch import RevocationFetcher
from signer._sm2_path import Sm2PathFailure, check_sm2_path
from signer._sm2_x509 import (
    CERTIFICATE_READ_ERRORS,
    is_sm2_key,
    is_sm2_signed,
    sm2_public_key_of,
    sm2_signature_verifies,
)
from signer._trust import TrustedKey, TrustSource
from signer.errors import RevocationUnavailable, Sm2KeyInvalid

__all__: list[str] = []  # internals of `_verify`: the package exports none of them

_REGISTERED_HEADERS: Final = frozenset(
    {"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit"}
)
_UNDERSTOOD_CRITICAL: Final = frozenset({"sigD"})
MAX_CHAIN_DEPTH: Final = 4
EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
LATEST: Final = datetime.max.replace(tzinfo=UTC)
# Revocation reasons that say nothing against signatures made before the revocation.
BENIGN_REASONS: Final = frozenset(
    {
        "superseded",
        "cessationOfOperation",
        "affiliationChanged",
        "cessation_of_operation",
        "affiliation_changed",
    }
)


class Fail(Exception):  # internal control flow: one check failed
    def __init__(self, sub: SubIndication, message: str) -> None:
        super().__init__(message)
        self.sub = sub
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    jws: str | bytes
    detached_payload: bytes | None
    expected_kind: SignatureKind | None
    expected_region: str | None
    now: datetime
    trust: TrustSource


@dataclass(slots=True)
class Run:
    """The checks of one validation, in order, and what was learnt on the way."""

    record: bool = True  # whether passing checks are written down
    checks: list[Check] = field(default_factory=list)
    algorithm: str = ""
    kid: str = ""
    key: TrustedKey | None = None
    kind: SignatureKind | None = None
    signing_time: datetime | None = None
    sig_d: bool = False  # the header carries sigD (its checks differ from a header without)
    content_type: str = ""
    payload_b64: str = ""
    detached_payload: bytes | None = None
    subject: str = ""
    facts: Facts | None = None
    validation: ValidationData = field(default_factory=ValidationData)  # embedded (etsiU)
    embedded: bool = False  # JSON-serialised: its checks (format, revocation) are its own
    proof: datetime | None = None  # proof of existence of the signature (a sigTst's genTime)
    tsa: str = ""  # the subject of the TSA whose time-stamp gave `proof`
    header_b64: str = ""  # the protected header as it came (the key of `signer._verify_fast`)
    # The validation times for which every time-dependent check passes as it did in this run
    # (signing time not ahead of the clock, CRLs current, certificate still valid), and whether
    # the outcome depends on nothing else but the JWS, the trust source and the caller's
    # expectations (no online responder, embedded data or time-stamp): what lets
    # `signer._verify_fast` repeat a passing validation without running every step again.
    now_from: datetime = EARLIEST
    now_until: datetime = LATEST
    repeatable: bool = True

    def during(self, start: datetime, end: datetime) -> None:
        """The checks just run pass only for validation times in [start, end]."""
        self.now_from = max(self.now_from, start)
        self.now_until = min(self.now_until, end)

    def ok(self, name: str, detail: str = "") -> None:
        if self.record:
            self.checks.append(Check(name, True, detail))

    def fail(self, name: str, sub: SubIndication, message: str) -> Fail:
        self.checks.append(Check(name, False, message))
        return Fail(sub, message)


@dataclass(frozen=True, slots=True)
class Chain:
    certificates: tuple[x509.Certificate, ...]  # leaf first, root last
    valid_from: datetime  # the window in which every certificate of the chain is valid
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class Revocation:
    """What the CRLs say about one key's chain, computed once per key and registry version."""

    problem: str  # non-empty: no usable CRL from the leaf's issuer
    fresh_from: datetime  # the CRLs are current in this window
    fresh_until: datetime
    revoked: tuple[str, datetime, str] | None  # (what, when, reason) if a certificate is listed


@dataclass(slots=True)
class Facts:
    """Everything about a published key that does not depend on the signature being checked."""

    public_key: PublicKey | None
    kind: SignatureKind | None
    subject: str
    not_before: datetime
    not_after: datetime
    validity: str  # "from to", for the report
    fitting: dict[str, str] = field(default_factory=dict)  # algorithms checked against the key
    passing_checks: dict[tuple[str, bool, bool], tuple[Check, ...]] = field(default_factory=dict)
    chain: Chain | None = None
    revocation: Revocation | None = None


def facts_of(key: TrustedKey) -> Facts:
    try:
        public = key.certificate.public_key()
    except (UnsupportedAlgorithm, ValueError):  # an SM2 key, which pyca cannot load
        public = None
    usable = isinstance(
        public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
    )
    return Facts(
        public_key=public if usable else None,  # type: ignore[arg-type]
        kind=kind_of(key.certificate),
        subject=key.certificate.subject.rfc4514_string(),
        not_before=key.certificate.not_valid_before_utc,
        not_after=key.certificate.not_valid_after_utc,
        validity=f"{key.certificate.not_valid_before_utc:%Y-%m-%d} to {key.certificate.not_valid_after_utc:%Y-%m-%d}",
    )


def kind_of(certificate: x509.Certificate) -> SignatureKind | None:
    try:
        policies = {
            p.policy_identifier
            for p in certificate.extensions.get_extension_for_class(x509.CertificatePolicies).value
        }
    except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):  # none, or unreadable: neither
        return None
    seal = bool(policies & {_oids.QCP_L, _oids.POLICY_SEAL})
    person = bool(policies & {_oids.QCP_N, _oids.POLICY_SIGNATURE})
    if seal == person:
        return None  # neither, or claims to be both
    return SignatureKind.SEAL if seal else SignatureKind.SIGNATURE


def signing_key_usage(
    policy: object, certificate: x509.Certificate, extension: x509.KeyUsage | None
) -> None:
    if extension is None or not (extension.digital_signature or extension.content_commitment):
        raise ValueError("the certificate's key usage does not allow signatures")


def document_signing(
    policy: object, certificate: x509.Certificate, extension: x509.ExtendedKeyUsage | None
) -> None:
    if extension is None or _oids.EKU_DOCUMENT_SIGNING not in extension:
        raise ValueError("the certificate is not for document signing (RFC 9336 EKU)")
    if ExtendedKeyUsageOID.SERVER_AUTH in extension or ExtendedKeyUsageOID.CLIENT_AUTH in extension:
        raise ValueError("a TLS certificate does not seal documents")


EE_POLICY: Final = (
    ExtensionPolicy.permit_all()
    .require_present(x509.KeyUsage, Criticality.AGNOSTIC, signing_key_usage)
    .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, document_signing)
)


def check_crit(run: Run, header: dict[str, Any], crit: object) -> None:
    """(1) of `SealVerifier.validate`, for ``crit``: a non-empty list of distinct names, none an
    RFC 7515 header, each understood and present in the header."""
    if (
        not isinstance(crit, list)
        or not crit
        or not all(isinstance(c, str) for c in crit)
        or len(set(crit)) != len(crit)
    ):
        raise run.fail(
            "header",
            SubIndication.FORMAT_FAILURE,
            "crit must be a non-empty list of distinct names",
        )
    registered = sorted(set(crit) & _REGISTERED_HEADERS)
    if registered:
        raise run.fail(
            "header",
            SubIndication.FORMAT_FAILURE,
            f"crit lists RFC 7515 header {registered[0]!r}",
        )
    unknown = sorted(set(crit) - _UNDERSTOOD_CRITICAL)
    if unknown:
        raise run.fail(
            "header",
            SubIndication.FORMAT_FAILURE,
            f"crit lists {unknown[0]!r}, which this verifier does not understand",
        )
    missing = sorted(c for c in crit if c not in header)
    if missing:
        raise run.fail(
            "header",
            SubIndication.FORMAT_FAILURE,
            f"crit lists {missing[0]!r}, which the header lacks",
        )


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        if is_sm2_key(issuer):
            return sm2_signature_verifies(crl, sm2_public_key_of(issuer))
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (UnsupportedAlgorithm, ValueError, TypeError, Sm2KeyInvalid):
        return False  # a key pyca cannot use, or a signature of another algorithm


def crl_for(
    crls: tuple[x509.CertificateRevocationList, ...], issuer: x509.Certificate
) -> x509.CertificateRevocationList | None:
    for crl in crls:
        if crl.issuer == issuer.subject and _signed_by(crl, issuer):
            return crl
    return None


def verified_chain(
    leaf: x509.Certificate,
    roots: tuple[x509.Certificate, ...],
    intermediates: tuple[x509.Certificate, ...],
    at: datetime,
    region: str,
) -> Chain:
    """(9) of `SealVerifier.validate`: the chain to the region's anchors at `at`, or `Fail`."""
    failed = f"the certificate does not chain to region {region}'s CA as a signing certificate"
    if is_sm2_signed(leaf):
        try:
            path = check_sm2_path(
                leaf, roots=roots, intermediates=intermediates, at=at, max_depth=MAX_CHAIN_DEPTH
            )
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except Sm2PathFailure as exc:
            raise Fail(exc.sub, f"{failed}: {exc.message}") from None
        except x509.ExtensionNotFound:
            raise Fail(
                SubIndication.CHAIN_CONSTRAINTS_FAILURE, f"{failed}: it has no extendedKeyUsage"
            ) from None
        except CERTIFICATE_READ_ERRORS as exc:
            raise Fail(
                SubIndication.FORMAT_FAILURE, f"{failed}: its extensions cannot be read: {exc}"
            ) from None
        try:
            document_signing(None, leaf, eku)
        except ValueError as exc:
            raise Fail(SubIndication.CHAIN_CONSTRAINTS_FAILURE, f"{failed}: {exc}") from None
        return Chain(path.certificates, path.valid_from, path.valid_until)
    verifier = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(at)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=EE_POLICY)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(intermediates))
    except VerificationError as exc:
        text = str(exc)
        sub = (
            SubIndication.CHAIN_CONSTRAINTS_FAILURE
            if "key usage" in text or "document signing" in text or "TLS" in text
            else SubIndication.NO_CERTIFICATE_CHAIN_FOUND
        )
        raise Fail(sub, f"{failed}: {text}") from None
    certificates = tuple(verified.chain)
    return Chain(
        certificates,
        max(c.not_valid_before_utc for c in certificates),
        min(c.not_valid_after_utc for c in certificates),
    )


def crl_reason(entry: x509.RevokedCertificate) -> str:
    try:
        flag = entry.extensions.get_extension_for_oid(CRLEntryExtensionOID.CRL_REASON).value
    except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):
        return ""
    reason: Any = getattr(flag, "reason", None)
    return str(reason.name) if reason is not None else ""


def revocation_of(chain: Chain, crls: tuple[x509.CertificateRevocationList, ...]) -> Revocation:
    """Check each certificate of the chain against its issuer's CRL (the leaf's is required)."""
    fresh_from = datetime.min.replace(tzinfo=UTC)
    fresh_until = datetime.max.replace(tzinfo=UTC)
    pairs = list(zip(chain.certificates, chain.certificates[1:], strict=False))
    for position, (certificate, issuer) in enumerate(pairs):
        crl = crl_for(crls, issuer)
        if crl is None:
            if position == 0:
                return Revocation(
                    f"no valid CRL from {issuer.subject.rfc4514_string()}",
                    fresh_from,
                    fresh_until,
                    None,
                )
            continue  # a root that publishes no CRL for its intermediates: nothing to check
        if crl.next_update_utc is None:
            return Revocation(
                f"the CRL of {issuer.subject.rfc4514_string()} has no next update",
                fresh_from,
                fresh_until,
                None,
            )
        fresh_from = max(fresh_from, crl.last_update_utc)
        fresh_until = min(fresh_until, crl.next_update_utc)
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is not None:
            what = (
                "the signing certificate"
                if position == 0
                else f"CA certificate {certificate.subject.rfc4514_string()}"
            )
            return Revocation(
                "", fresh_from, fresh_until, (what, entry.revocation_date_utc, crl_reason(entry))
            )
    return Revocation("", fresh_from, fresh_until, None)


def check_online(
    run: Run,
    fetcher: RevocationFetcher | None,
    chain: Chain,
    crls: tuple[x509.CertificateRevocationList, ...],
) -> tuple[RevocationStatus | None, str]:
    """Part of (11): the signing certificate's status from the OCSP responders and CRL URLs it
    names, and a note for the report. (None, "") without a fetcher or when it names none. While
    the registry holds a current CRL of the issuer, the CRL URLs are not fetched (it is what
    they serve) and only OCSP responders are asked. When none of them answers, the registry's CRL of the issuer is the third source: with one, the
    rest of (11) decides on it (None and a note); without, seals being hard-fail, it is
    TRY_LATER, as is an OCSP "unknown"."""
    if fetcher is None or len(chain.certificates) < 2:
        return None, ""
    registry_crl = crl_for(crls, chain.certificates[1])
    current = (
        registry_crl is not None
        and registry_crl.next_update_utc is not None
        and fetcher.now() <= registry_crl.next_update_utc
    )
    try:
        status = fetcher.check(
            chain.certificates[0], chain.certificates[1], have_current_crl=current
        )
    except RevocationUnavailable as exc:
        if registry_crl is not None:
            return None, "no OCSP responder or CRL URL of the certificate answered; "
        raise run.fail("revocation", SubIndication.TRY_LATER, str(exc)) from None
    if status is None:
        return None, ""
    if status.status is CertStatus.UNKNOWN:
        raise run.fail(
            "revocation",
            SubIndication.TRY_LATER,
            "the OCSP responder does not know the signing certificate, and no CRL it names "
            "answered",
        )
    return status, f"{online_detail(status)}; "


def online_detail(status: RevocationStatus) -> str:
    """What the online source said, for the report: which source, who signed it, and when."""
    return (
        f"{status.source.upper()} ({status.responder}, this update "
        f"{status.this_update:%Y-%m-%dT%H:%M:%SZ}) says {status.status.value}"
    )
