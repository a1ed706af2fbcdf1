"""A test SM2 PKI issued by Tongban (`signer._sm2_x509`): roots, intermediates, leaves, CRLs,
each shaped by keyword (key usage, basic constraints, validity) to make every failure class."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asn1crypto import algos as asn1_algos
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from signer._sm2 import SM2_WITH_SM3_OID, Sm2PrivateKey
from signer._sm2_x509 import (
    issue_sm2_certificate,
    issue_sm2_crl,
    sm2_subject_key_identifier,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DISTID = "distid:1234567812345678"

_USAGES = {
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
}
CA_USAGE = frozenset({"key_cert_sign", "crl_sign"})
SIGNING_USAGE = frozenset({"digital_signature", "content_commitment"})


def name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tongban test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class Issued:
    key: Sm2PrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def key_usage(usages: Iterable[str]) -> x509.KeyUsage:
    chosen = set(usages)
    assert chosen <= _USAGES, chosen - _USAGES
    return x509.KeyUsage(
        **{u: u in chosen for u in _USAGES}, encipher_only=False, decipher_only=False
    )


def issue(
    common_name: str,
    issuer: Issued | None = None,
    *,
    ca: bool | None = True,
    path_length: int | None = None,
    usage: Iterable[str] | None = CA_USAGE,
    not_before: datetime = NOW - timedelta(days=365),
    not_after: datetime = NOW + timedelta(days=365),
    key: Sm2PrivateKey | None = None,
    signing_key: Sm2PrivateKey | None = None,
    issuer_name: x509.Name | None = None,
    key_ids: bool = True,
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """A certificate for `common_name` issued by `issuer` (self-signed when None).

    `ca=None` leaves basicConstraints out, `usage=None` keyUsage; `signing_key` signs in place
    of the issuer's key (a wrong-key signature); `issuer_name` overrides the issuer field.
    """
    key = key or Sm2PrivateKey.generate()
    issuer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(issuer_name or (issuer.certificate.subject if issuer else name(common_name)))
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if usage is not None:
        builder = builder.add_extension(key_usage(usage), critical=True)
    if key_ids:
        ski = sm2_subject_key_identifier(key.public_key())
        builder = builder.add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
        aki = sm2_subject_key_identifier(issuer_key.public_key())
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), critical=False
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    certificate = issue_sm2_certificate(builder, key.public_key(), signing_key or issuer_key)
    return Issued(key, certificate)


def issue_for_key(builder: x509.CertificateBuilder, issuer_key: Sm2PrivateKey) -> x509.Certificate:
    """A certificate for the builder's own (non-SM2) public key, signed by an SM2 CA key: what
    an SM2 region CA issues for a JWS seal key (ES256), which JOSE can use and SM2 cannot."""
    placeholder = ec.generate_private_key(ec.SECP256R1())
    made = builder.sign(placeholder, hashes.SHA256())
    loaded = asn1_x509.Certificate.load(made.public_bytes(serialization.Encoding.DER))
    algorithm = asn1_algos.SignedDigestAlgorithm({"algorithm": SM2_WITH_SM3_OID})
    tbs = loaded["tbs_certificate"]
    tbs["signature"] = algorithm
    tbs_der = bytes(tbs.dump(force=True))
    certificate = asn1_x509.Certificate(
        {
            "tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
            "signature_algorithm": algorithm,
            "signature_value": issuer_key.sign(tbs_der),
        }
    )
    return x509.load_der_x509_certificate(bytes(certificate.dump()))


def crl(
    issuer: Issued,
    revoked: Iterable[tuple[x509.Certificate, datetime]] = (),
    *,
    last_update: datetime = NOW - timedelta(days=1),
    next_update: datetime | None = NOW + timedelta(days=6),
    signing_key: Sm2PrivateKey | None = None,
    reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(last_update)
    )
    if next_update is not None:
        builder = builder.next_update(next_update)
    for certificate, when in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(certificate.serial_number)
            .revocation_date(when)
        )
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return issue_sm2_crl(builder, signing_key or issuer.key)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("openssl")
    assert binary, "the openssl CLI (Debian's OpenSSL 3) is needed to cross-check SM2"
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


def openssl_verify(
    tmp_path: Path,
    leaf: x509.Certificate,
    roots: Iterable[x509.Certificate],
    intermediates: Iterable[x509.Certificate] = (),
    *,
    at: datetime = NOW,
    partial: bool = False,
    strict: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`openssl verify` with SM2's default distinguishing id at `at` (`-attime`).

    OpenSSL 3.0's ``-vfyopt distid:`` reaches the target certificate only: the signature on an
    intermediate is checked with an empty id and fails. Whole chains suit the checks OpenSSL
    makes before any signature (basic constraints, key usage, path length, unknown critical
    extensions) and chains of two; `openssl_verify_links` checks longer ones link by link.
    """

    def write(file: str, certificates: Iterable[x509.Certificate]) -> Path:
        path = tmp_path / file
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
        return path

    args: list[str | Path] = ["verify", "-vfyopt", DISTID, "-attime", str(int(at.timestamp()))]
    args += ["-partial_chain"] if partial else []
    args += ["-x509_strict"] if strict else []
    args += ["-CAfile", write("roots.pem", roots)]
    chain = list(intermediates)
    if chain:
        args += ["-untrusted", write("untrusted.pem", chain)]
    return openssl(*args, write("leaf.pem", [leaf]))


def openssl_verify_links(
    tmp_path: Path, path: list[x509.Certificate], *, at: datetime = NOW, strict: bool = False
) -> subprocess.CompletedProcess[str]:
    """`openssl verify` of each certificate of `path` (leaf first) against the next as a
    trusted issuer (``-partial_chain``), so that every signature is checked with the SM2 id;
    the first refusal, or the last success."""
    result = openssl("version")
    for position, certificate in enumerate(path[:-1]):
        folder = tmp_path / f"link{position}"
        folder.mkdir(exist_ok=True)
        result = openssl_verify(
            folder, certificate, [path[position + 1]], at=at, partial=True, strict=strict
        )
        if result.returncode != 0:
            return result
    return result


def make_region_sm2(pki: Path, region: str, now: datetime) -> tuple[Issued, Issued]:
    """Replace a dev PKI region's CAs (`regions/<code>/ca`) with SM2 ones: root, issuing CA."""
    from signer import write_sm2_private_key

    folder = pki / "regions" / region / "ca"
    root = issue(f"Region {region} SM2 Root CA", path_length=1, not_before=now - timedelta(days=1),
                 not_after=now + timedelta(days=3650))  # fmt: skip
    issuing = issue(f"Region {region} SM2 Issuing CA", root, path_length=0,
                    not_before=now - timedelta(days=1), not_after=now + timedelta(days=1825))  # fmt: skip
    for stem, issued in (("root", root), ("intermediate", issuing)):
        (folder / f"{stem}.pem").write_bytes(issued.pem)
        (folder / f"{stem}.key").unlink(missing_ok=True)
        write_sm2_private_key(folder / f"{stem}.key", issued.key)
    (folder / "intermediate.crl.pem").unlink(missing_ok=True)
    return root, issuing


def add_sm2_key(pki: Path, issuing: Issued, *, region: str, usage: str, now: datetime) -> Issued:
    """An SM2 key of `region` issued by its SM2 CA, written as the PKI writes keys and recorded
    in the inventory as active (no `tongban keys` verb issues SM2 keys)."""
    from registry import Inventory, KeyRecord, KeyState, KeyUsage
    from signer import write_sm2_private_key, x5t_s256_of_certificate

    leaf = issue(f"Region {region} SM2 {usage}", issuing, ca=False, usage=SIGNING_USAGE,
                 not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=365))  # fmt: skip
    kid = x5t_s256_of_certificate(leaf.certificate)
    folder = pki / "regions" / region / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    certificate, key = folder / f"{usage}-{kid[:8]}.pem", folder / f"{usage}-{kid[:8]}.key"
    write_sm2_private_key(key, leaf.key)
    certificate.write_bytes(leaf.pem + issuing.pem)
    inventory = Inventory.load(pki)
    inventory.add(
        KeyRecord(
            kid=kid, usage=KeyUsage(usage), owner=region, region=region, algorithm="SM2",
            state=KeyState.ACTIVE, certificate=str(certificate.relative_to(pki)),
            private_key=str(key.relative_to(pki)), created_at=now, activated_at=now,
        )
    )  # fmt: skip
    inventory.save()
    return leaf
