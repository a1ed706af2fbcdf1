"""Certificate profiles: the subjects and extensions that tell a leaf certificate's usage apart.

Certificate profiles, so that a verifier can tell the usages apart by extensions alone:

    usage      KeyUsage (critical)                  ExtendedKeyUsage      policies
    seal       digitalSignature, contentCommitment  documentSigning       QCP-l, POLICY_SEAL
    signature  digitalSignature, contentCommitment  documentSigning       QCP-n, POLICY_SIGNATURE
    tls        digitalSignature                     serverAuth+clientAuth POLICY_TLS_GATEWAY
               (agency: clientAuth only)                                  (POLICY_TLS_AGENCY)
    token      digitalSignature                     EKU_TOKEN_SIGNING     POLICY_TOKEN
    audit      digitalSignature                     EKU_AUDIT_SIGNING     POLICY_AUDIT

Seals and signatures also carry a non-critical qcStatements extension whose ETSI QcType says
e-seal or e-signature. Every leaf has BasicConstraints(ca=False) critical, subject and
authority key identifiers, and an informational CRL distribution point (`registry._pki`).
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from registry.errors import PkiError
from signer import _oids

if TYPE_CHECKING:
    from registry._pki import AgencySpec, RegionSpec

__all__ = [
    "CA_KEY_USAGE",
    "MAX_NAME_CHARS",
    "authority_key_identifier",
    "ca_name",
    "check_name",
    "crl_distribution_point",
    "leaf_subject",
    "profile_extensions",
    "signing_key_usage",
]

MAX_NAME_CHARS: Final = 64  # X.520 ub-organization-name and ub-common-name


CA_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def leaf_subject(
    region: RegionSpec, agency: AgencySpec | None, usage: str, subject_name: str | None
) -> x509.Name:
    owner = region.code if agency is None else agency.id
    organization = region.name if agency is None else agency.name
    if subject_name is not None:
        check_name(subject_name, "subject_name")
        common_name = subject_name
    elif usage == "tls":
        common_name = f"gateway.{region.code}.tongban.test" if agency is None else agency.id
    elif usage == "seal":
        common_name = organization  # a seal is in the name of the legal person itself
    elif usage == "signature":
        common_name = f"测试签名人 {owner}"
    else:
        common_name = f"{owner} {usage} signing"
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
    ]
    if agency is not None:
        # ETSI EN 319 412-1 §5.1.4: "NTR" + country + "-" + national trade register number.
        attributes.append(
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, f"NTRCN-{agency.uscc}")
        )
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if usage == "signature":
        # Synthetic, so that it can never be a real resident identity card number.
        serial = f"TONGBAN-TEST-{owner}-{secrets.token_hex(4).upper()}"
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attributes)


def profile_extensions(
    region: str, agency: AgencySpec | None, usage: str, tls_names: tuple[str, ...]
) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) pairs that mark what a leaf certificate is for."""
    if usage in ("seal", "signature"):
        is_seal = usage == "seal"
        return [
            (signing_key_usage(content_commitment=True), True),
            (x509.ExtendedKeyUsage([_oids.EKU_DOCUMENT_SIGNING]), False),
            (
                _policies(
                    _oids.QCP_L if is_seal else _oids.QCP_N,
                    _oids.POLICY_FOR_USAGE[usage],
                ),
                False,
            ),
            (_qc_statements(_oids.QC_TYPE_ESEAL if is_seal else _oids.QC_TYPE_ESIGN), False),
        ]
    if usage == "tls":
        names: list[x509.GeneralName]
        if agency is None:
            names = [
                x509.DNSName(f"gateway.{region}.tongban.test"),
                *(x509.DNSName(name) for name in tls_names),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                x509.IPAddress(ipaddress.IPv6Address("::1")),
                x509.UniformResourceIdentifier(f"urn:tongban:gateway:{region}"),
            ]
            purposes = [_oids.EKU_SERVER_AUTH, _oids.EKU_CLIENT_AUTH]
            policy = _oids.POLICY_FOR_USAGE["tls-gateway"]
        else:
            names = [x509.UniformResourceIdentifier(f"urn:tongban:agency:{agency.id}")]
            purposes = [_oids.EKU_CLIENT_AUTH]
            policy = _oids.POLICY_FOR_USAGE["tls-agency"]
        return [
            (signing_key_usage(content_commitment=False), True),
            (x509.ExtendedKeyUsage(purposes), False),
            (x509.SubjectAlternativeName(names), False),
            (_policies(policy), False),
        ]
    purpose = _oids.EKU_TOKEN_SIGNING if usage == "token" else _oids.EKU_AUDIT_SIGNING
    return [
        (signing_key_usage(content_commitment=False), True),
        (x509.ExtendedKeyUsage([purpose]), False),
        (_policies(_oids.POLICY_FOR_USAGE[usage]), False),
    ]


def signing_key_usage(*, content_commitment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _policies(*oids: x509.ObjectIdentifier) -> x509.CertificatePolicies:
    return x509.CertificatePolicies(
        [x509.PolicyInformation(oid, policy_qualifiers=None) for oid in oids]
    )


def _qc_statements(qc_type: x509.ObjectIdentifier) -> x509.UnrecognizedExtension:
    # QCStatements ::= SEQUENCE OF SEQUENCE { statementId, statementInfo }, RFC 3739 §3.2.6;
    # QcType's statementInfo is SEQUENCE OF OBJECT IDENTIFIER (ETSI EN 319 412-5 §4.2.3).
    statement = _der(0x30, _der_oid(_oids.QCS_QC_TYPE) + _der(0x30, _der_oid(qc_type)))
    return x509.UnrecognizedExtension(_oids.QC_STATEMENTS, _der(0x30, statement))


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_oid(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(arc) for arc in oid.dotted_string.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk, rest = [arc & 0x7F], arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


def ca_name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def check_name(value: str, what: str) -> None:
    if not value or not value.strip():
        raise PkiError(f"{what} is empty")
    if len(value) > MAX_NAME_CHARS:
        raise PkiError(f"{what} is longer than {MAX_NAME_CHARS} characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise PkiError(f"{what} contains control characters")


def crl_distribution_point(region: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(_crl_url(region))],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def _crl_url(region: str) -> str:
    return f"http://pki.{region}.tongban.test/intermediate.crl"
