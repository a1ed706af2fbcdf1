"""What an OCSP response or a CRL says about one certificate: pure checks, no network.

`check_ocsp_response` (RFC 6960) and `check_crl` (RFC 5280 section 6.3) take the evidence as
DER bytes, the certificate asked about and its issuer, and the time of the question. They return
a frozen `RevocationStatus` -- good, revoked (when, why) or unknown -- that keeps the DER it came
from, so that it can be embedded in a seal later (JAdES B-LT validation data) and checked again
without a network. Evidence that cannot be relied on (unreadable, about another certificate,
signed by someone without authority, stale) raises `RevocationDataInvalid` with one sentence:
no status is learnt from it.

Who may sign an OCSP response (RFC 6960 section 4.2.2.2): the issuer itself, or a delegated
responder whose certificate the issuer signed directly, carrying id-kp-OCSPSigning, valid now and
carried in the response. Whether the delegate carries id-pkix-ocsp-nocheck is recorded in
`responder`; its own revocation is not checked further (RFC 6960 4.2.2.2.1 leaves it to policy;
a responder certificate without nocheck is short-lived in every CA set up for Tongban).

SM2 CAs: their CRLs are checked (SM2-with-SM3 signatures via `signer._sm2_x509`); their OCSP
responses are refused with `RevocationDataInvalid`, as no SM2 OCSP responder is run here to test
against -- an SM2 region publishes CRLs (see docs/security.md, "Revocation").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from signer._sm2_x509 import (
    CERTIFICATE_READ_ERRORS,
    is_sm2_key,
    sm2_public_key_of,
    sm2_signature_verifies,
)
from signer.errors import RevocationDataInvalid, Sm2KeyInvalid

__all__ = [
    "MAX_AGE_WITHOUT_NEXT_UPDATE",
    "REVOCATION_CLOCK_SKEW",
    "CertStatus",
    "RevocationStatus",
    "check_crl",
    "check_ocsp_response",
    "ocsp_cert_id",
]

REVOCATION_CLOCK_SKEW: Final = timedelta(minutes=5)  # a thisUpdate this far ahead is accepted
# A response without nextUpdate ("newer information is always available") is current this long
# after its thisUpdate, and is never cached.
MAX_AGE_WITHOUT_NEXT_UPDATE: Final = timedelta(minutes=5)
_CERT_ID_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1(),  # noqa: S303 -- an identifier (RFC 6960 CertID), not a signature
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


class CertStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # the responder does not know the certificate (OCSP only)


@dataclass(frozen=True, slots=True)
class RevocationStatus:
    """What one piece of evidence says about one certificate, and the evidence itself."""

    status: CertStatus
    source: str  # "ocsp" | "crl"
    this_update: datetime
    next_update: datetime | None  # None: an OCSP response current only briefly, never cached
    der: bytes = field(repr=False)  # the OCSP response or CRL as received, for embedding
    revoked_at: datetime | None = None
    reason: str = ""  # x509.ReasonFlags name ("key_compromise"), empty when none was given
    responder: str = ""  # who signed the evidence, e.g. "issuer" or "delegate CN=... (nocheck)"

    def __post_init__(self) -> None:
        if self.source not in ("ocsp", "crl"):
            raise ValueError(f"unknown revocation source {self.source!r}")
        if (self.status is CertStatus.REVOKED) != (self.revoked_at is not None):
            raise ValueError("a revocation time is given exactly when the status is revoked")

    def current_at(self, now: datetime) -> bool:
        """Whether the evidence may still be relied on at `now` (before its nextUpdate)."""
        until = self.next_update or self.this_update + MAX_AGE_WITHOUT_NEXT_UPDATE
        return self.this_update - REVOCATION_CLOCK_SKEW <= now <= until


def ocsp_cert_id(
    certificate: x509.Certificate, issuer: x509.Certificate, algorithm: str = "sha1"
) -> tuple[bytes, bytes, int]:
    """(issuerNameHash, issuerKeyHash, serialNumber) of RFC 6960's CertID, as the responder
    computes them; `algorithm` is one of sha1 (what `openssl ocsp` expects), sha256, ..."""
    try:
        digest = _CERT_ID_HASHES[algorithm]
    except KeyError:
        raise RevocationDataInvalid(f"CertID hash {algorithm!r} is not used") from None
    request = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, digest).build()
    return request.issuer_name_hash, request.issuer_key_hash, request.serial_number


def _key_hash(certificate: x509.Certificate) -> bytes:
    """SHA-1 of the certificate's subjectPublicKey bits (a ResponderID byKey)."""
    return ocsp_cert_id(certificate, certificate)[1]


def _signature_verifies(
    key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _load_ocsp(der: bytes) -> ocsp.OCSPResponse:
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise RevocationDataInvalid(f"not a DER OCSP response: {exc}") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise RevocationDataInvalid(
            f"the OCSP responder answered {response.response_status.name.lower()}"
        )
    return response


def _single_response(
    response: ocsp.OCSPResponse, certificate: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    """The single response whose CertID names this certificate of this issuer."""
    for single in response.responses:
        name = single.hash_algorithm.name
        if name not in _CERT_ID_HASHES:
            continue
        expected = ocsp_cert_id(certificate, issuer, name)
        if (single.issuer_name_hash, single.issuer_key_hash, single.serial_number) == expected:
            return single
    raise RevocationDataInvalid(
        f"the OCSP response says nothing about serial {certificate.serial_number:x} of "
        f"{issuer.subject.rfc4514_string()}"
    )


def _responder_named(response: ocsp.OCSPResponse, candidate: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == candidate.subject
    return response.responder_key_hash == _key_hash(candidate)


def _check_delegate(delegate: x509.Certificate, issuer: x509.Certificate, now: datetime) -> str:
    """RFC 6960 4.2.2.2: issued directly by the issuer, for OCSP signing, valid now."""
    who = f"delegated responder {delegate.subject.rfc4514_string()}"
    try:
        delegate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise RevocationDataInvalid(f"{who} is not certified by the issuer") from None
    try:
        eku = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):
        eku = None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise RevocationDataInvalid(f"{who} lacks the OCSPSigning extended key usage")
    if not delegate.not_valid_before_utc <= now <= delegate.not_valid_after_utc:
        raise RevocationDataInvalid(f"{who} is not valid at {now:%Y-%m-%dT%H:%M:%SZ}")
    try:
        delegate.extensions.get_extension_for_class(x509.OCSPNoCheck)
    except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):
        return f"delegate {delegate.subject.rfc4514_string()}"
    return f"delegate {delegate.subject.rfc4514_string()} (nocheck)"


def _check_ocsp_signer(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime) -> str:
    """Who signed the response, once its signature and authority are proved; else raise."""
    if response.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
        raise RevocationDataInvalid("OCSP responses signed with RSASSA-PSS are not supported")
    if response.responder_name is None and response.responder_key_hash is None:
        raise RevocationDataInvalid("the OCSP response names no responder")
    if _responder_named(response, issuer):
        signer, who = issuer, "issuer"
    else:
        carried = next((c for c in response.certificates if _responder_named(response, c)), None)
        if carried is None:
            raise RevocationDataInvalid(
                "the OCSP response is signed by a responder that is neither the issuer nor a "
                "certificate the response carries"
            )
        signer, who = carried, _check_delegate(carried, issuer, now)
    try:
        algorithm = response.signature_hash_algorithm
        key: object = signer.public_key()
    except (UnsupportedAlgorithm, ValueError):
        raise RevocationDataInvalid(
            f"the OCSP response's signature algorithm {response.signature_algorithm_oid.dotted_string} "
            "is not supported"
        ) from None
    if not _signature_verifies(key, response.signature, response.tbs_response_bytes, algorithm):
        raise RevocationDataInvalid("the OCSP response's signature does not verify")
    return who


def _check_times(
    what: str, this_update: datetime, next_update: datetime | None, now: datetime
) -> None:
    if this_update - REVOCATION_CLOCK_SKEW > now:
        raise RevocationDataInvalid(
            f"the {what} was issued in the future ({this_update:%Y-%m-%dT%H:%M:%SZ})"
        )
    until = next_update or this_update + MAX_AGE_WITHOUT_NEXT_UPDATE
    if now > until:
        raise RevocationDataInvalid(
            f"the {what} is stale: its next update was due {until:%Y-%m-%dT%H:%M:%SZ}"
        )


def check_ocsp_response(
    der: bytes, certificate: x509.Certificate, issuer: x509.Certificate, *, now: datetime
) -> RevocationStatus:
    """What a DER OCSP response says about `certificate` (issued by `issuer`) at `now`."""
    if is_sm2_key(issuer):
        raise RevocationDataInvalid(
            "OCSP responses of an SM2 CA are not supported; its CRL is used instead"
        )
    try:
        return _read_ocsp_response(der, certificate, issuer, now)
    except (*CERTIFICATE_READ_ERRORS, UnsupportedAlgorithm) as exc:
        # cryptography parses the basic response only when a field of it is read (46 raises
        # KeyError for an algorithm id it does not know)
        raise RevocationDataInvalid(f"the OCSP response cannot be read: {exc}") from None


def _read_ocsp_response(
    der: bytes, certificate: x509.Certificate, issuer: x509.Certificate, now: datetime
) -> RevocationStatus:
    response = _load_ocsp(der)
    single = _single_response(response, certificate, issuer)
    _check_times("OCSP response", single.this_update_utc, single.next_update_utc, now)
    who = _check_ocsp_signer(response, issuer, now)
    status = CertStatus(single.certificate_status.name.lower())
    revoked_at = single.revocation_time_utc if status is CertStatus.REVOKED else None
    reason = single.revocation_reason if status is CertStatus.REVOKED else None
    return RevocationStatus(
        status=status,
        source="ocsp",
        this_update=single.this_update_utc,
        next_update=single.next_update_utc,
        der=bytes(der),
        revoked_at=revoked_at,
        reason=reason.name if reason is not None else "",
        responder=who,
    )


def _load_crl(der: bytes) -> x509.CertificateRevocationList:
    try:
        if der.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(der)
        return x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise RevocationDataInvalid(f"not a CRL: {exc}") from None


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        if is_sm2_key(issuer):
            return sm2_signature_verifies(crl, sm2_public_key_of(issuer))
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (UnsupportedAlgorithm, ValueError, TypeError, Sm2KeyInvalid):
        return False


def _check_crl_scope(crl: x509.CertificateRevocationList, certificate: x509.Certificate) -> None:
    """A full CRL for every reason that covers this kind of certificate, or raise."""
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    except x509.ExtensionNotFound:
        pass
    else:
        raise RevocationDataInvalid("a delta CRL is not used on its own")
    try:
        scope = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return
    try:
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):
        is_ca = False
    if (
        scope.indirect_crl
        or scope.only_some_reasons
        or scope.only_contains_attribute_certs
        or (scope.only_contains_ca_certs and not is_ca)
        or (scope.only_contains_user_certs and is_ca)
    ):
        raise RevocationDataInvalid("the CRL is partitioned and does not cover this certificate")


def check_crl(
    der: bytes, certificate: x509.Certificate, issuer: x509.Certificate, *, now: datetime
) -> RevocationStatus:
    """What a CRL (DER, or PEM as some CAs serve it) says about `certificate` at `now`."""
    crl = _load_crl(der)
    if crl.issuer != issuer.subject:
        raise RevocationDataInvalid(
            f"the CRL is issued by {crl.issuer.rfc4514_string()}, not by "
            f"{issuer.subject.rfc4514_string()}"
        )
    if not _crl_signed_by(crl, issuer):
        raise RevocationDataInvalid("the CRL's signature does not verify with the issuer's key")
    try:
        _check_crl_scope(crl, certificate)
    except CERTIFICATE_READ_ERRORS as exc:
        raise RevocationDataInvalid(f"the CRL's extensions cannot be read: {exc}") from None
    if crl.next_update_utc is None:
        raise RevocationDataInvalid("the CRL has no next update")
    _check_times("CRL", crl.last_update_utc, crl.next_update_utc, now)
    entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
    reason = ""
    if entry is not None:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        except (x509.ExtensionNotFound, *CERTIFICATE_READ_ERRORS):
            reason = ""
    return RevocationStatus(
        status=CertStatus.GOOD if entry is None else CertStatus.REVOKED,
        source="crl",
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        der=crl.public_bytes(serialization.Encoding.DER),
        revoked_at=entry.revocation_date_utc if entry is not None else None,
        reason=reason,
        responder="issuer",
    )
