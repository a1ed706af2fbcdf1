"""SM2 certificate paths: build and check a chain of SM2 certificates, with its CRLs.

pyca/cryptography's path validation (`cryptography.x509.verification`, used for the JWS
seals) cannot check an SM2 signature or load an SM2 key, so it refuses every SM2 chain, and
the Python path validators found (pyhanko-certvalidator) check signatures through pyca too.
This module is that check, kept to what Tongban's region CAs need: RFC 5280
path building and basic checks, in the order OpenSSL applies them, with failures reported as
the ETSI EN 319 102-1 sub-indications the JWS verifier uses. The SM2 arithmetic is
`signer._sm2`'s (GmSSL), the certificate fields are pyca's.

What is checked, in this order (the first failure is reported):

    (1) path     leaf -> ... -> a certificate in `roots`, by issuer name = subject and
                 authorityKeyIdentifier = subjectKeyIdentifier where both are present; each
                 link an SM2-with-SM3 signature that verifies with the issuer's SM2 key
                 (or, in a mixed chain, an ECDSA signature by a P-256 CA, checked by pyca); a
                 self-issued root's own signature verifies; no loop, at most `max_depth`
                 certificates above the leaf                   NO_CERTIFICATE_CHAIN_FOUND
    (2) readable extensions that pyca can parse                FORMAT_FAILURE
    (3) critical every critical extension is one checked here or carrying no constraint
                 on the path                                   CHAIN_CONSTRAINTS_FAILURE
    (4) CAs      every issuer: basicConstraints cA=TRUE, keyUsage with keyCertSign, its
                 pathLenConstraint honoured                    CHAIN_CONSTRAINTS_FAILURE
    (5) leaf     "signing": keyUsage digitalSignature or nonRepudiation, not a CA;
                 "ca": as (4)                                  CHAIN_CONSTRAINTS_FAILURE
    (6) validity the leaf (for either purpose) at `at`         NOT_YET_VALID / EXPIRED
                 every CA above it at `at`                     CHAIN_CONSTRAINTS_FAILURE
    (7) CRLs     for each certificate below the anchor, the CRLs of its issuer (issuer name,
                 SM2 signature by the issuer's key, the issuer's keyUsage cRLSign, no
                 unknown critical extension); the newest one not past its nextUpdate at
                 `at` decides; only stale ones                 TRY_LATER
                 none for the leaf's issuer and `require_crl`  TRY_LATER
                 a listed serial fills `Sm2Path.revoked` (the caller decides between
                 REVOKED and REVOKED_NO_POE, as `SealVerifier` does)

Constraints (3)-(5) come before validity (6) as in OpenSSL's ``X509_verify_cert``, so that a
chain that is wrong in shape is reported as such whatever the date: ofdrw's test root (no
keyCertSign) gives OpenSSL's "key usage does not include certificate signing" even for its
expired signer certificate.

Why a CA outside its validity is CHAIN_CONSTRAINTS_FAILURE: EN 319 102-1 (5.2.6) keeps the
OUT_OF_BOUNDS_* and EXPIRED/NOT_YET_VALID sub-indications for the signing certificate; any
other failure of the path is the general chain failure, which Tongban's reports (the
EN 319 102-1 set in `signer._report`) carry as CHAIN_CONSTRAINTS_FAILURE: the chain does not
meet the X.509 validation constraints at the validation time.

Messages name a CA certificate by its subject; the leaf is "the signing certificate" (or "the
CA certificate" for purpose "ca"), never its subject, which for a natural person may hold an
identity number.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from signer._report import SubIndication
from signer._sm2 import Sm2PublicKey
from signer._sm2_x509 import (
    CERTIFICATE_READ_ERRORS,
    is_sm2_key,
    is_sm2_signed,
    sm2_public_key_of,
    sm2_signature_verifies,
)
from signer.errors import Sm2KeyInvalid

# Signer internals (SealVerifier, the GB/T 38540 verifiers): the package exports none of them.
__all__: list[str] = []

_E = TypeVar("_E", bound=x509.ExtensionType)

DEFAULT_MAX_DEPTH: Final = 4  # certificates above the leaf, the anchor included
# Signatures checked while building one path: candidates of one name are tried in turn, and
# certificates that name each other could otherwise make the search exponential.
MAX_LINK_CHECKS: Final = 64

# The signatures of a mixed chain's ECDSA links (a P-256 region CA over SM2 seal certificates).
_PYCA_LINKS: Final = frozenset(
    {
        x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        x509.SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)

# Critical extensions whose constraints this check applies, or which constrain nothing on the
# path (identifiers, names, where to fetch things, statements the caller reads).
_UNDERSTOOD_CRITICAL: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
        ExtensionOID.SUBJECT_INFORMATION_ACCESS,
        ExtensionOID.FRESHEST_CRL,
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.3"),  # QCStatements, read by the caller
    }
)
# CRL extensions that leave a full CRL of one issuer whole (a delta CRL, an issuing
# distribution point narrowing the scope, are not understood and make the CRL unusable).
_UNDERSTOOD_CRL_CRITICAL: Final = frozenset(
    {ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.CRL_NUMBER}
)


@dataclass(frozen=True, slots=True)
class Sm2Path:
    """A checked SM2 path and what its CRLs said."""

    certificates: tuple[x509.Certificate, ...]  # leaf first, anchor last
    valid_from: datetime  # the window in which every certificate of the path is valid
    valid_until: datetime
    revoked: tuple[str, datetime, str] | None  # (what, when, reason) from the CRLs, else None
    revocation_checked: str  # one sentence: what the CRLs said, or that none was available


class Sm2PathFailure(Exception):
    """The path does not hold; `sub` is the EN 319 102-1 sub-indication, `message` a sentence."""

    def __init__(self, sub: SubIndication, message: str) -> None:
        super().__init__(message)
        self.sub = sub
        self.message = message


def _subject(certificate: x509.Certificate) -> str:
    try:
        return certificate.subject.rfc4514_string() or "(empty subject)"
    except CERTIFICATE_READ_ERRORS:
        return f"(unreadable subject, serial {certificate.serial_number:#x})"


@dataclass(frozen=True, slots=True)
class _Context:
    leaf: x509.Certificate
    roots: tuple[x509.Certificate, ...]
    candidates: tuple[x509.Certificate, ...]  # roots first, then intermediates
    purpose: Literal["signing", "ca"]
    max_depth: int
    reasons: list[str]  # why links were refused, in the order met; the first is reported
    link_checks: list[int]  # one counter, shared by the whole search

    def name(self, certificate: x509.Certificate) -> str:
        if certificate is self.leaf:
            return "the signing certificate" if self.purpose == "signing" else "the CA certificate"
        return f"CA certificate {_subject(certificate)}"


def check_sm2_path(
    leaf: x509.Certificate,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    crls: Sequence[x509.CertificateRevocationList] = (),
    at: datetime,
    purpose: Literal["signing", "ca"] = "signing",
    require_crl: bool = False,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Sm2Path:
    """Check `leaf`'s SM2 path to one of `roots` at `at`; `Sm2PathFailure` says why not.

    The plan is in the module docstring, (1)-(7). `roots` are trusted because they are given;
    `intermediates` and `crls` are only material to build and check with. The first path whose
    signatures verify is the one checked by (2)-(7): a region's hierarchy offers one.
    """
    _check_arguments(leaf, (*roots, *intermediates), crls, at, purpose)
    at = at.astimezone(UTC)
    context = _Context(leaf, tuple(roots), (*roots, *intermediates), purpose, max_depth, [], [0])
    try:
        path = _build(context)  # (1)
        _check_extensions(context, path)  # (2), (3)
        _check_authorities(context, path)  # (4)
        _check_leaf(context, path[0])  # (5)
        _check_validity(context, path, at)  # (6)
        revoked, checked = _check_crls(context, path, tuple(crls), at, require_crl)  # (7)
    except Sm2PathFailure:
        raise
    except CERTIFICATE_READ_ERRORS as exc:  # pyca reading a malformed field lazily
        raise Sm2PathFailure(
            SubIndication.FORMAT_FAILURE, f"a certificate of the path could not be read: {exc}"
        ) from None
    return Sm2Path(
        certificates=path,
        valid_from=max(c.not_valid_before_utc for c in path),
        valid_until=min(c.not_valid_after_utc for c in path),
        revoked=revoked,
        revocation_checked=checked,
    )


def _check_arguments(
    leaf: object,
    certificates: Sequence[object],
    crls: Sequence[object],
    at: datetime,
    purpose: str,
) -> None:
    if not isinstance(leaf, x509.Certificate):
        raise Sm2PathFailure(
            SubIndication.FORMAT_FAILURE, f"the certificate is a {type(leaf).__name__}"
        )
    if not all(isinstance(c, x509.Certificate) for c in certificates):
        raise Sm2PathFailure(
            SubIndication.FORMAT_FAILURE, "a root or intermediate is not an X.509 certificate"
        )
    if not all(isinstance(c, x509.CertificateRevocationList) for c in crls):
        raise Sm2PathFailure(SubIndication.FORMAT_FAILURE, "a CRL is not an X.509 CRL")
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise Sm2PathFailure(
            SubIndication.FORMAT_FAILURE, "the validation time must be a timezone-aware datetime"
        )
    if purpose not in ("signing", "ca"):
        raise Sm2PathFailure(SubIndication.FORMAT_FAILURE, f"unknown purpose {purpose!r}")


def _extension(context: _Context, certificate: x509.Certificate, kind: type[_E]) -> _E | None:
    """One extension of a certificate of the path, or None; FORMAT_FAILURE if unreadable."""
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except CERTIFICATE_READ_ERRORS as exc:
        raise Sm2PathFailure(
            SubIndication.FORMAT_FAILURE,
            f"{context.name(certificate)} has a malformed extension: {exc}",
        ) from None


# -- (1) path -----------------------------------------------------------------------------------
def _key_identifier_mismatch(
    context: _Context, certificate: x509.Certificate, issuer: x509.Certificate
) -> bool:
    aki = _extension(context, certificate, x509.AuthorityKeyIdentifier)
    ski = _extension(context, issuer, x509.SubjectKeyIdentifier)
    if aki is None or ski is None or aki.key_identifier is None:
        return False
    return aki.key_identifier != ski.digest


def _pyca_link(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s (non-SM2) key signed `certificate`, as pyca checks it."""
    if is_sm2_key(issuer):
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _pyca_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s (non-SM2) key signed `crl` with an ECDSA algorithm pyca checks."""
    if is_sm2_key(issuer) or crl.signature_algorithm_oid not in _PYCA_LINKS:
        return False
    try:
        key = issuer.public_key()
        return isinstance(key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _sm2_key(context: _Context, certificate: x509.Certificate) -> Sm2PublicKey:
    """The issuer's SM2 key, or why it cannot sign an SM2 path."""
    if not is_sm2_key(certificate):
        raise _Refused(f"{context.name(certificate)} has a key that is not SM2")
    try:
        return sm2_public_key_of(certificate)
    except Sm2KeyInvalid as exc:
        raise _Refused(f"{context.name(certificate)} has an unusable SM2 key: {exc}") from None


class _Refused(Exception):
    """One candidate link refused, with the reason for the message if no other link works."""


def _link(context: _Context, certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    """Whether `issuer` signed `certificate`: `_Refused` with the reason if not."""
    context.link_checks[0] += 1
    if context.link_checks[0] > MAX_LINK_CHECKS:
        raise Sm2PathFailure(
            SubIndication.NO_CERTIFICATE_CHAIN_FOUND,
            f"no SM2 path found within {MAX_LINK_CHECKS} signature checks: too many candidate "
            "issuers of the same name",
        )
    if not is_sm2_signed(certificate):
        # A mixed chain: a region's P-256 CA issues its SM2 seal certificates (gRPC's TLS
        # cannot use SM2, so the CA stays ECDSA); pyca checks the ECDSA links.
        if certificate.signature_algorithm_oid in _PYCA_LINKS and _pyca_link(certificate, issuer):
            return
        raise _Refused(
            f"{context.name(certificate)} is signed with "
            f"{certificate.signature_algorithm_oid.dotted_string}, and neither SM2-with-SM3 "
            f"nor an ECDSA signature by the key of {context.name(issuer)}"
        )
    key = _sm2_key(context, issuer)
    if not sm2_signature_verifies(certificate, key):
        whose = "its own key" if issuer is certificate else f"the key of {context.name(issuer)}"
        raise _Refused(f"the signature of {context.name(certificate)} does not verify with {whose}")


def _issuers_of(context: _Context, certificate: x509.Certificate) -> list[x509.Certificate]:
    found: list[x509.Certificate] = []
    for candidate in context.candidates:
        if (
            candidate.subject == certificate.issuer
            and candidate not in found
            and not _key_identifier_mismatch(context, certificate, candidate)
        ):
            found.append(candidate)
    return found


def _build(context: _Context) -> tuple[x509.Certificate, ...]:
    path = _extend(context, (context.leaf,))
    if path is not None:
        return path
    reason = (
        context.reasons[0]
        if context.reasons
        else (
            f"no certificate in the roots or intermediates issued {context.name(context.leaf)} "
            f"(issuer {context.leaf.issuer.rfc4514_string()})"
        )
    )
    raise Sm2PathFailure(
        SubIndication.NO_CERTIFICATE_CHAIN_FOUND, f"no SM2 path to a trusted root: {reason}"
    )


def _extend(
    context: _Context, path: tuple[x509.Certificate, ...]
) -> tuple[x509.Certificate, ...] | None:
    """Depth first from `path[-1]` to a root; the first reason a link failed is kept."""
    current, reasons = path[-1], context.reasons
    if current in context.roots:
        if current.subject != current.issuer:
            return path  # an anchor that is not self-issued is trusted as given
        try:
            _link(context, current, current)
        except _Refused as refused:
            reasons.append(f"a trusted root is refused: {refused}")
            return None
        return path
    issuers = _issuers_of(context, current)
    if not issuers and current.subject == current.issuer:
        reasons.append(f"{context.name(current)} is self-issued and not among the roots")
        return None
    if not issuers:
        reasons.append(
            f"no certificate in the roots or intermediates issued {context.name(current)} "
            f"(issuer {current.issuer.rfc4514_string()})"
        )
        return None
    for issuer in issuers:
        if issuer is current or issuer == current:
            reasons.append(f"{context.name(current)} is self-issued and not among the roots")
            continue
        if issuer in path:
            reasons.append(f"{context.name(issuer)} appears twice in the path (a loop)")
            continue
        if len(path) > context.max_depth:
            reasons.append(
                f"the path is longer than {context.max_depth} certificates above the leaf"
            )
            continue
        try:
            _link(context, current, issuer)
        except _Refused as refused:
            reasons.append(str(refused))
            continue
        found = _extend(context, (*path, issuer))
        if found is not None:
            return found
    return None


# -- (2), (3) extensions ------------------------------------------------------------------------
def _check_extensions(context: _Context, path: tuple[x509.Certificate, ...]) -> None:
    for certificate in path:
        try:
            extensions = list(certificate.extensions)
        except CERTIFICATE_READ_ERRORS as exc:
            raise Sm2PathFailure(
                SubIndication.FORMAT_FAILURE,
                f"{context.name(certificate)} has a malformed extension: {exc}",
            ) from None
        for extension in extensions:
            if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
                raise Sm2PathFailure(
                    SubIndication.CHAIN_CONSTRAINTS_FAILURE,
                    f"{context.name(certificate)} has a critical extension this check does not "
                    f"understand ({extension.oid.dotted_string})",
                )


# -- (4), (5) constraints -----------------------------------------------------------------------
def _check_authority(context: _Context, certificate: x509.Certificate, below: int) -> None:
    """A CA: cA=TRUE, keyCertSign, and `below` intermediates under it within its pathLen."""
    name = context.name(certificate)
    constraints = _extension(context, certificate, x509.BasicConstraints)
    if constraints is None:
        raise Sm2PathFailure(
            SubIndication.CHAIN_CONSTRAINTS_FAILURE,
            f"{name} has no basicConstraints, so it is not a CA",
        )
    if not constraints.ca:
        raise Sm2PathFailure(
            SubIndication.CHAIN_CONSTRAINTS_FAILURE,
            f"{name} is not a CA (basicConstraints cA=FALSE)",
        )
    usage = _extension(context, certificate, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        what = "has no keyUsage" if usage is None else "has a keyUsage without keyCertSign"
        raise Sm2PathFailure(
            SubIndication.CHAIN_CONSTRAINTS_FAILURE,
            f"{name} {what}: key usage does not include certificate signing",
        )
    if constraints.path_length is not None and below > constraints.path_length:
        raise Sm2PathFailure(
            SubIndication.CHAIN_CONSTRAINTS_FAILURE,
            f"{name} allows {constraints.path_length} intermediate CA certificates below it "
            f"(pathLenConstraint), the path has {below}",
        )


def _check_authorities(context: _Context, path: tuple[x509.Certificate, ...]) -> None:
    # From the anchor down, as RFC 5280 6.1 processes a path; self-issued certificates (a
    # key rollover's link) do not count against a pathLenConstraint.
    for position in range(len(path) - 1, 0, -1):
        below = sum(1 for c in path[1:position] if c.subject != c.issuer)
        _check_authority(context, path[position], below)


def _check_leaf(context: _Context, leaf: x509.Certificate) -> None:
    if context.purpose == "ca":
        _check_authority(context, leaf, 0)
        return
    name = context.name(leaf)
    constraints = _extension(context, leaf, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise Sm2PathFailure(
            SubIndication.CHAIN_CONSTRAINTS_FAILURE,
            f"{name} is a CA certificate (basicConstraints cA=TRUE), not a signing certificate",
        )
    usage = _extension(context, leaf, x509.KeyUsage)
    if usage is None or not (usage.digital_signature or usage.content_commitment):
        what = "has no keyUsage" if usage is None else "has a keyUsage"
        raise Sm2PathFailure(
            SubIndication.CHAIN_CONSTRAINTS_FAILURE,
            f"{name} {what} without digitalSignature or nonRepudiation: it may not sign",
        )


# -- (6) validity -------------------------------------------------------------------------------
def _check_validity(context: _Context, path: tuple[x509.Certificate, ...], at: datetime) -> None:
    when = f"{at:%Y-%m-%dT%H:%M:%SZ}"
    for certificate in path:
        name = context.name(certificate)
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if start <= at <= end:
            continue
        window = f"valid {start:%Y-%m-%dT%H:%M:%SZ} to {end:%Y-%m-%dT%H:%M:%SZ}"
        if certificate is path[0]:
            sub = SubIndication.NOT_YET_VALID if at < start else SubIndication.EXPIRED
            state = "not yet valid" if at < start else "expired"
            raise Sm2PathFailure(sub, f"{name} was {state} at {when} ({window})")
        raise Sm2PathFailure(
            SubIndication.CHAIN_CONSTRAINTS_FAILURE,
            f"{name} was not valid at {when} ({window})",
        )


# -- (7) CRLs -----------------------------------------------------------------------------------
def _crl_unusable(
    context: _Context, crl: x509.CertificateRevocationList, issuer: x509.Certificate
) -> str:
    """Why a CRL bearing the issuer's name cannot speak for it ('' when it can)."""
    if not is_sm2_signed(crl) and crl.signature_algorithm_oid not in _PYCA_LINKS:
        return "is signed neither with SM2 nor with ECDSA"
    usage = _extension(context, issuer, x509.KeyUsage)
    if usage is not None and not usage.crl_sign:
        return "comes from an issuer whose keyUsage lacks cRLSign"
    if is_sm2_signed(crl):
        if not is_sm2_key(issuer) or not sm2_signature_verifies(crl, sm2_public_key_of(issuer)):
            return "has a signature that does not verify with the issuer's key"
    elif not _pyca_crl(crl, issuer):
        return "has a signature that does not verify with the issuer's key"
    try:
        critical = [e.oid for e in crl.extensions if e.critical]
    except CERTIFICATE_READ_ERRORS:
        return "has a malformed extension"
    if any(oid not in _UNDERSTOOD_CRL_CRITICAL for oid in critical):
        return "has a critical extension this check does not understand (a delta or partial CRL)"
    if crl.next_update_utc is None:
        return "has no nextUpdate"
    return ""


def _current_crl(
    context: _Context,
    issuer: x509.Certificate,
    crls: tuple[x509.CertificateRevocationList, ...],
    at: datetime,
    notes: list[str],
) -> x509.CertificateRevocationList | None:
    """The newest usable CRL of `issuer` current at `at`; TRY_LATER if there are only stale ones."""
    name = _subject(issuer)
    usable: list[x509.CertificateRevocationList] = []
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        try:
            why = _crl_unusable(context, crl, issuer)
        except (*CERTIFICATE_READ_ERRORS, Sm2KeyInvalid):
            why = "could not be read"
        if why:
            notes.append(f"a CRL naming {name} was ignored: it {why}")
        else:
            usable.append(crl)
    if not usable:
        return None
    current = [c for c in usable if c.next_update_utc is not None and at <= c.next_update_utc]
    if not current:
        latest = max(c.next_update_utc for c in usable if c.next_update_utc is not None)
        raise Sm2PathFailure(
            SubIndication.TRY_LATER,
            f"the CRLs of {name} were past their next update ({latest:%Y-%m-%dT%H:%M:%SZ}) at "
            f"{at:%Y-%m-%dT%H:%M:%SZ}: a current CRL is needed",
        )
    return max(current, key=lambda c: c.last_update_utc)


def _reason(entry: x509.RevokedCertificate) -> str:
    try:
        flag = entry.extensions.get_extension_for_oid(CRLEntryExtensionOID.CRL_REASON).value
    except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):
        return ""
    reason = getattr(flag, "reason", None)
    return str(reason.name) if reason is not None else ""


def _check_crls(
    context: _Context,
    path: tuple[x509.Certificate, ...],
    crls: tuple[x509.CertificateRevocationList, ...],
    at: datetime,
    require_crl: bool,
) -> tuple[tuple[str, datetime, str] | None, str]:
    notes: list[str] = []
    checked: list[str] = []
    for position, (certificate, issuer) in enumerate(itertools.pairwise(path)):
        crl = _current_crl(context, issuer, crls, at, notes)
        if crl is None:
            if position == 0 and require_crl:
                detail = f" ({'; '.join(notes)})" if notes else ""
                raise Sm2PathFailure(
                    SubIndication.TRY_LATER,
                    f"no usable CRL from {_subject(issuer)}, the issuer of "
                    f"{context.name(certificate)}{detail}",
                )
            continue
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        checked.append(context.name(certificate))
        if entry is not None:
            what = context.name(certificate)
            sentence = f"{what} is listed on the CRL of {_subject(issuer)} issued {crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ}"
            return (what, entry.revocation_date_utc, _reason(entry)), sentence
    if not checked:
        sentence = "no CRL was available for the path"
    else:
        sentence = f"not listed on the current CRLs: {', '.join(checked)}"
    if notes:
        sentence += f" ({'; '.join(notes)})"
    return None, sentence
