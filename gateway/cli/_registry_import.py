"""`tongban registry import-ca|import-cert|import-crl`: a region's CA made elsewhere (OpenSSL, a
commercial CA, an HSM), the certificates it issued for the region's keys, and its CRLs, checked
and recorded in the PKI folder (`registry._import`); publishing then needs no key of the region."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from gateway.cli._common import Subparsers, passphrase, passphrase_options, utc_now
from registry import ImportedKey, KeyState, KeyUsage, import_ca, import_cert, import_crl

__all__ = ["register_import"]


def cmd_import_ca(args: argparse.Namespace, out: Console) -> int:
    chain = import_ca(
        args.pki, args.region, args.ca, args.intermediate, name=args.name, now=utc_now()
    )
    out.print(f"Imported region {args.region}'s CA ({len(chain)} certificates, root first):")
    for certificate in chain:
        out.print(
            f"  {escape(certificate.subject.rfc4514_string())}, valid until "
            f"{certificate.not_valid_after_utc:%Y-%m-%d}"
        )
    out.print(
        "Its keys are issued by the CA itself: add their certificates with `tongban registry "
        "import-cert`, and its CRL with `tongban registry import-crl` before publishing."
    )
    return 0


def cmd_import_cert(args: argparse.Namespace, out: Console) -> int:
    key = ImportedKey(
        key_file=args.key,
        key_uri=args.key_uri or "",
        passphrase=passphrase(args),
        held_by_owner=args.key_held_by_owner,
    )
    record = import_cert(
        args.pki,
        args.certificate,
        owner=args.owner,
        usage=KeyUsage(args.usage),
        key=key,
        now=utc_now(),
    )
    pending = record.state is KeyState.PENDING
    out.print(
        f"Imported {record.usage} key {record.kid} for {record.owner} ({record.algorithm}), "
        f"{record.state.value}" + (" (it succeeds the active key: a rotation)." if pending else ".")
    )
    out.print(f"  certificate {args.pki / record.certificate}")
    if record.private_key:
        out.print(f"  private key {escape(record.private_key)} (the region's; not copied)")
    else:
        out.print(f"  private key held by {record.owner} (not known to this PKI folder)")
    out.print("Publish the registry so that every gateway learns it.")
    return 0


def cmd_import_crl(args: argparse.Namespace, out: Console) -> int:
    imported = import_crl(args.pki, args.region, args.crl, now=utc_now())
    crl = imported.crl
    out.print(
        f"Imported region {args.region}'s CRL ({len(crl)} revoked, next update "
        f"{crl.next_update_utc:%Y-%m-%d %H:%M:%SZ}); the next publish carries it."
    )
    for record in imported.revoked:
        out.print(
            f"  key {record.kid} ({record.owner} {record.usage.value}) revoked at "
            f"{record.revoked_at:%Y-%m-%d %H:%M:%SZ} ({record.revocation_reason})"
        )
    return 0


def register_import(verbs: Subparsers) -> None:
    ca = verbs.add_parser(
        "import-ca",
        help="record a region CA made elsewhere",
        description="Check and record a region's root CA (and intermediates, root side first) made "
        "elsewhere: each must be a CA certificate (basicConstraints cA, keyUsage keyCertSign) valid "
        "now, the root self-signed, each intermediate issued by the one before. A region that "
        "already has a CA is refused. No private key is taken.",
    )
    ca.add_argument("ca", type=Path, metavar="CA.pem", help="the region's root CA certificate")
    ca.add_argument("--pki", type=Path, required=True, help="PKI folder")
    ca.add_argument("--region", required=True, help="GB/T 2260 region code")
    ca.add_argument("--intermediate", type=Path, action="append", default=[], metavar="INT.pem")
    ca.add_argument("--name", help="the region's name, to add a region the PKI does not list yet")
    ca.set_defaults(handler=cmd_import_ca)

    cert = verbs.add_parser(
        "import-cert",
        help="add a key certificate issued by the owner's region CA",
        description="Check a certificate issued by the owner's region CA (chain valid now, the "
        "usage's profile) and add its key to the inventory: active, or pending if the owner has "
        "an active key of that usage. The private key stays the region's: --key names a file "
        "(checked against the certificate), --key-uri a key in a cryptographic module, "
        "--key-held-by-owner records no location (the owner's CA checked possession when it "
        "certified the key; the publisher never sees it).",
    )
    cert.add_argument("certificate", type=Path, metavar="CERT.pem", help="leaf, then intermediates")
    cert.add_argument("--pki", type=Path, required=True, help="PKI folder")
    cert.add_argument("--owner", required=True, help="region code or agency id")
    cert.add_argument("--usage", required=True, choices=[u.value for u in KeyUsage])
    where = cert.add_mutually_exclusive_group(required=True)
    where.add_argument("--key", type=Path, metavar="FILE", help="the private key file (PKCS#8)")
    where.add_argument("--key-uri", metavar="URI", help="a pkcs11: URI of the key in its module")
    where.add_argument(
        "--key-held-by-owner",
        action="store_true",
        help="the key stays with its owner (a region's gateway, an agency): no location recorded",
    )
    passphrase_options(cert)
    cert.set_defaults(handler=cmd_import_cert)

    crl = verbs.add_parser(
        "import-crl",
        help="record a CRL signed by a region's imported CA",
        description="Check and record a CRL of a region's imported issuing CA: its issuer and "
        "signature, nextUpdate ahead, newer than the CRL held. Publish carries it as signed.",
    )
    crl.add_argument("crl", type=Path, metavar="CRL.pem", help="the CRL (PEM)")
    crl.add_argument("--pki", type=Path, required=True, help="PKI folder")
    crl.add_argument("--region", required=True, help="GB/T 2260 region code")
    crl.set_defaults(handler=cmd_import_crl)
