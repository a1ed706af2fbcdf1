"""The checks a region's certificates pass, whoever made them: `tongban registry import-ca` and
`import-cert` (a CA made elsewhere) and the PKI folder's own issuing (`registry._pki.issue_leaf`,
which `tongban pki init` and `tongban keys generate|rotate` use) run the same functions, so that
what the dev PKI makes and what a region may import cannot drift apart.

A leaf is checked for its usage's profile (`registry._profiles`): seal and signature keys
keyUsage digitalSignature or nonRepudiation and the document-signing EKU (RFC 9336) without TLS
EKUs, as the seal verifier's `EE_POLICY` asks, and the QCP-l (seal) or QCP-n (signature) policy;
TLS keys serverAuth and clientAuth (a gateway's) or clientAuth (an agency's); token and audit keys
Tongban's own EKUs. An SM2 leaf (a GB/T 38540 seal or signature key) is checked by
`signer._sm2_path.check_sm2_path` instead of pyca, which cannot check SM2 signatures.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from registry._model import KeyUsage
from registry.errors import PkiError
from signer import _oids, is_sm2_key
from signer._report import SignatureKind
from signer._sm2_path import Sm2PathFailure, check_sm2_path
from signer._verify_helpers import EE_POLICY, document_signing, kind_of

__all__ = ["CLOCK_SKEW", "check_ca_certificate", "check_issued", "check_leaf_certificate"]

CLOCK_SKEW: Final = timedelta(minutes=5)  # not_before is backdated by this much
_MAX_CHAIN_DEPTH: Final = 4


def check_leaf_certificate(
    leaf: x509.Certificate,
    *,
    cas: tuple[x509.Certificate, ...],
    extra: tuple[x509.Certificate, ...] = (),
    region: str,
    usage: KeyUsage,
    gateway: bool,
    at: datetime,
    where: str,
) -> tuple[x509.Certificate, ...]:
    """`leaf`'s chain (leaf first, root last) to `region`'s CAs `cas` (root first) at `at`, under
    its usage's profile (`gateway`: a region's own TLS key, not an agency's); `PkiError` says why
    not. `extra` are intermediates given with the leaf; `where` names it in a refusal."""
    try:
        if is_sm2_key(leaf):
            chain = _sm2_chain(cas, region, leaf, extra=extra, usage=usage, at=at)
        else:
            chain = _pyca_chain(cas, region, leaf, extra=extra, usage=usage, gateway=gateway, at=at)
    except PkiError as exc:
        raise PkiError(f"{where}: {exc}") from None
    _check_kind(leaf, usage, where)
    return chain


def check_issued(
    leaf: x509.Certificate,
    *,
    cas: tuple[x509.Certificate, ...],
    region: str,
    usage: str,
    gateway: bool,
    at: datetime,
) -> None:
    """What `import-ca` and `import-cert` check, on a leaf a PKI folder's CA (`cas`) just
    issued: a dev PKI cannot make what a region could not import."""
    for ca in cas:
        check_ca_certificate(ca, f"region {region}'s CA {ca.subject.rfc4514_string()}", at)
    where = f"the {usage} certificate just issued by region {region}'s CA"
    check_leaf_certificate(
        leaf, cas=cas, region=region, usage=KeyUsage(usage), gateway=gateway, at=at, where=where
    )


def _pyca_chain(
    cas: tuple[x509.Certificate, ...],
    region: str,
    leaf: x509.Certificate,
    *,
    extra: tuple[x509.Certificate, ...],
    usage: KeyUsage,
    gateway: bool,
    at: datetime,
) -> tuple[x509.Certificate, ...]:
    """The leaf's chain (leaf first, root last) to the region's root at `at`, under the usage's
    profile; refused with pyca's reason otherwise."""
    verifier = (
        PolicyBuilder()
        .store(Store([cas[0]]))
        .time(at)
        .max_chain_depth(_MAX_CHAIN_DEPTH)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy(usage, gateway)
        )
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, [*cas[1:], *extra])
    except VerificationError as exc:
        raise PkiError(
            f"not a valid {usage.value} certificate of region {region}'s CA now: {exc}"
        ) from None
    return tuple(verified.chain)


def _sm2_chain(
    cas: tuple[x509.Certificate, ...],
    region: str,
    leaf: x509.Certificate,
    *,
    extra: tuple[x509.Certificate, ...],
    usage: KeyUsage,
    at: datetime,
) -> tuple[x509.Certificate, ...]:
    """An SM2 leaf's chain (leaf first, root last) to the region's root at `at`, with the
    seal verifier's checks: keyUsage for signing, documentSigning and no TLS EKU."""
    if usage not in (KeyUsage.SEAL, KeyUsage.SIGNATURE):
        raise PkiError(f"an SM2 key seals and signs only: it cannot be a {usage.value} key")
    refused = f"not a valid {usage.value} certificate of region {region}'s CA now"
    try:
        path = check_sm2_path(leaf, roots=[cas[0]], intermediates=[*cas[1:], *extra], at=at)
    except Sm2PathFailure as exc:
        raise PkiError(f"{refused}: {exc.message}") from None
    try:
        extended = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        extended = None
    except ValueError as exc:
        raise PkiError(f"{refused}: its extendedKeyUsage cannot be read ({exc})") from None
    try:
        document_signing(None, leaf, extended)
    except ValueError as exc:
        raise PkiError(f"{refused}: {exc}") from None
    return path.certificates


def _ee_policy(usage: KeyUsage, gateway: bool) -> ExtensionPolicy:
    if usage in (KeyUsage.SEAL, KeyUsage.SIGNATURE):
        return EE_POLICY
    if usage is KeyUsage.TLS:
        wanted = (
            [_oids.EKU_SERVER_AUTH, _oids.EKU_CLIENT_AUTH] if gateway else [_oids.EKU_CLIENT_AUTH]
        )
    else:
        wanted = [_oids.EKU_TOKEN_SIGNING if usage is KeyUsage.TOKEN else _oids.EKU_AUDIT_SIGNING]

    def key_usage(policy: object, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
        if ext is None or not ext.digital_signature:
            raise ValueError(f"a {usage.value} key's keyUsage must allow digitalSignature")

    def extended(policy: object, cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None) -> None:
        missing = [oid.dotted_string for oid in wanted if ext is None or oid not in ext]
        if missing:
            raise ValueError(f"a {usage.value} key's extendedKeyUsage lacks {', '.join(missing)}")

    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, key_usage)
        .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, extended)
    )


def _check_kind(leaf: x509.Certificate, usage: KeyUsage, where: str) -> None:
    """A seal certificate names a legal person's policy, a signature one a natural person's
    (QCP-l / QCP-n or Tongban's own), as the seal verifier tells them apart."""
    wanted = {KeyUsage.SEAL: SignatureKind.SEAL, KeyUsage.SIGNATURE: SignatureKind.SIGNATURE}
    if usage in wanted and kind_of(leaf) is not wanted[usage]:
        policies = "QCP-l 0.4.0.194112.1.1" if usage is KeyUsage.SEAL else "QCP-n 0.4.0.194112.1.0"
        raise PkiError(
            f"{where}: a {usage.value} certificate's certificatePolicies must name {policies}"
        )


def check_ca_certificate(certificate: x509.Certificate, where: str, at: datetime) -> None:
    """A CA certificate (basicConstraints cA, keyUsage keyCertSign) valid at `at`."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise PkiError(f"{where}: not a CA certificate (no {exc.oid._name})") from exc
    except ValueError as exc:
        raise PkiError(f"{where}: its extensions cannot be read ({exc})") from exc
    if not constraints.ca:
        raise PkiError(f"{where}: not a CA certificate (basicConstraints cA is false)")
    if not usage.key_cert_sign:
        raise PkiError(f"{where}: not a CA certificate (keyUsage lacks keyCertSign)")
    if not certificate.not_valid_before_utc <= at + CLOCK_SKEW:
        raise PkiError(f"{where}: not valid before {certificate.not_valid_before_utc:%Y-%m-%d}")
    if at >= certificate.not_valid_after_utc:
        raise PkiError(f"{where}: expired on {certificate.not_valid_after_utc:%Y-%m-%d}")
