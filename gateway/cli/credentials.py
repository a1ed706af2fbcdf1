"""`tongban seal` and `tongban verify`: e-seals and e-signatures made with a key file (JAdES
compact JWS), and every signed format Tongban reads (JWS, OFD, GB/T 38540 / GM/T 0031
SES_Signature and SESeal) verified against a signed registry snapshot or outside anchors."""

from __future__ import annotations

import argparse
import json
import mimetypes
import re
import sys
from pathlib import Path

from cryptography import x509
from rich.console import Console
from rich.markup import escape

from gateway._tls import NoTrust
from gateway.cli._arguments import parse_region, parse_time
from gateway.cli._common import (
    Failure,
    Subparsers,
    passphrase,
    passphrase_options,
    read_input,
    usage,
    utc_now,
)
from gateway.cli._registry_root import trusted_root_of
from gateway.cli._verify_report import Context, print_report, report_json
from registry import (
    Registry,
    RegistryError,
    RegistryTrust,
    SnapshotVerifier,
)
from signer import (
    MAX_DOCUMENT_BYTES,
    DocumentVerifier,
    FileKeyProvider,
    GmVerifier,
    JwsFormatError,
    SealVerifier,
    SignatureKind,
    SignerError,
    TimeStampClient,
    TimeStampUnavailable,
    add_timestamp,
    add_validation_data,
    seal,
)

__all__ = ["register"]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


def parse_media_type(text: str) -> str:
    if not _MEDIA_TYPE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a media type like application/pdf")
    return text


def cmd_seal(args: argparse.Namespace, out: Console) -> int:
    payload = read_input(args.file, "the document")
    provider = FileKeyProvider(args.key, args.cert, passphrase(args))
    content_type = (
        args.content_type or mimetypes.guess_type(args.file.name)[0] or DEFAULT_CONTENT_TYPE
    )
    jws = seal(payload, provider, content_type=content_type, detached=args.detached)
    if args.ocsp or args.crl:
        try:
            jws = add_validation_data(
                jws,
                ocsp_responses=[read_input(p, "the --ocsp response") for p in args.ocsp or []],
                crls=[read_input(p, "the --crl file") for p in args.crl or []],
            )
        except JwsFormatError as exc:
            raise Failure(f"the validation data cannot be embedded: {exc}") from None
    if args.tsa:
        try:
            anchors, _ = _outside_anchors(args.tsa_ca or [], "--tsa-ca")
            if not anchors:
                raise Failure("--tsa needs --tsa-ca: the root the TSA's certificate chains to")
            jws = add_timestamp(jws, TimeStampClient(args.tsa, anchors=anchors))
        except (TimeStampUnavailable, ValueError) as exc:
            raise Failure(f"no time-stamp from {args.tsa}: {exc}") from None
    if args.out is None:
        sys.stdout.write(jws + "\n")
        return 0
    args.out.write_text(jws + "\n", encoding="ascii")
    out.print(
        f"Sealed {escape(str(args.file))} ({len(payload)} bytes, {escape(content_type)}) with key "
        f"{provider.kid} ({provider.algorithm}), {'detached' if args.detached else 'attached'}: "
        f"{escape(str(args.out))}",
        soft_wrap=True,
    )
    return 0


def _read_document(path: Path, what: str, *, may_be_empty: bool = False) -> bytes:
    """A file to verify: not a folder, not larger than a document may be, and not empty unless
    it is signed data (an empty file may be sealed)."""
    if path.is_dir():
        raise Failure(f"{path}: {what} is a folder, not a file")
    data = read_input(path, what, limit=MAX_DOCUMENT_BYTES)
    if not data and not may_be_empty:
        raise Failure(f"{path}: {what} is empty")
    return data


def _outside_anchors(
    paths: list[Path], option: str = "--ca"
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """(roots, intermediates) of the --ca (--tsa-ca) PEM files: the self-signed certificates
    are the anchors, the others material to build paths to them."""
    certificates: list[x509.Certificate] = []
    for path in paths:
        text = _read_document(path, f"the {option} certificate file")
        try:
            certificates.extend(x509.load_pem_x509_certificates(text))
        except ValueError:
            raise Failure(
                f"{path}: {option} takes PEM certificates (-----BEGIN CERTIFICATE-----), and "
                "this file holds none that can be read"
            ) from None
    roots = tuple(c for c in certificates if c.issuer == c.subject)
    if certificates and not roots:
        raise Failure(
            f"{option}: none of the certificates is a root (self-signed): give the root CA "
            "too, the others are only intermediates"
        )
    return roots, tuple(c for c in certificates if c.issuer != c.subject)


def _registry(args: argparse.Namespace) -> Registry | None:
    """The verified registry snapshot of --snapshot, if one is given (warns when stale)."""
    if args.snapshot is None:
        return None
    args.root = args.authority
    authority = trusted_root_of(args)
    snapshot = read_input(args.snapshot, "the registry snapshot")
    # now=None: the signature and format are checked here, the expiry below, so that a stale
    # registry still verifies (with a warning) instead of refusing outright.
    registry = SnapshotVerifier(authority).verify(snapshot, held_version=None, now=None).registry
    if utc_now() >= registry.expires_at:
        Console(stderr=True, highlight=False).print(
            f"[yellow]warning:[/] registry version {registry.version} expired at "
            f"{registry.expires_at:%Y-%m-%d %H:%M:%SZ}: the registry is stale, so keys revoked "
            "since then are not known here",
            soft_wrap=True,
        )
    return registry


def _check_trust_options(args: argparse.Namespace) -> None:
    if args.snapshot is None and not args.ca:
        usage(
            args,
            "give the trust: --snapshot with --authority or --pki (a federation's registry), "
            "--ca PEM (anchors for a document from outside it), or both",
        )
    if args.snapshot is not None and args.authority is None and args.pki is None:
        usage(args, "--snapshot needs --authority or --pki, to check the snapshot's signature")
    if args.snapshot is None and (args.authority is not None or args.pki is not None):
        usage(args, "--authority and --pki check a registry snapshot: give --snapshot too")


def cmd_verify(args: argparse.Namespace, out: Console) -> int:
    _check_trust_options(args)
    try:
        registry = _registry(args)
        roots, intermediates = _outside_anchors(args.ca or [])
        tsa_anchors, _ = _outside_anchors(args.tsa_ca or [], "--tsa-ca")
        document = _read_document(args.file, "the document")
        payload = (
            _read_document(args.payload, "the payload", may_be_empty=True)
            if args.payload is not None
            else None
        )
    except (Failure, RegistryError, SignerError) as exc:
        # No report can be made: exit 2, apart from 1 (a report that did not pass).
        usage(args, str(exc))
    trust = RegistryTrust(registry) if registry is not None else NoTrust()
    gm = GmVerifier(
        trust,
        extra_anchors=roots,
        extra_intermediates=intermediates,
        clock=utc_now,
        tsa_anchors=tsa_anchors,
    )
    seals = SealVerifier(trust, clock=utc_now, tsa_anchors=tsa_anchors)
    verifier = DocumentVerifier(seals, gm)
    report = verifier.validate(
        document,
        payload=payload,
        expected_kind=SignatureKind(args.expect) if args.expect else None,
        expected_owner_region=args.region,
        validation_time=args.at,
    )
    context = Context(registry, stale=registry is not None and utc_now() >= registry.expires_at)
    if args.json:
        text = json.dumps(report_json(report, context), ensure_ascii=False, indent=2)
        sys.stdout.write(text + "\n")
    else:
        print_report(out, report, context)
    return 0 if report.passed else 1


def _register_seal(commands: Subparsers) -> None:
    seal_parser = commands.add_parser(
        "seal",
        help="seal or sign a document with a key file (JAdES JWS)",
        description="Seal (or sign) a file with a key and its certificate chain: a JAdES "
        "baseline-B compact JWS whose header names the certificate (x5t#S256, x5c) and the "
        "signing time. An e-seal with a seal certificate, an e-signature with a signature "
        "certificate. With --ocsp or --crl the seal embeds that validation data and is written "
        "in the JWS JSON serialisation (JAdES baseline-LT). Writes the JWS to standard output "
        "unless --out is given.",
        epilog="Example: tongban seal licence.pdf --key out/pki/regions/330000/keys/seal-ab12cd34.key "
        "--cert out/pki/regions/330000/keys/seal-ab12cd34.pem --detached --out licence.pdf.jws",
    )
    seal_parser.add_argument("file", type=Path, help="the document to seal (its exact bytes)")
    seal_parser.add_argument(
        "--key", type=Path, required=True, metavar="KEY.pem", help="private key (PKCS#8)"
    )
    seal_parser.add_argument(
        "--cert",
        type=Path,
        required=True,
        metavar="CHAIN.pem",
        help="certificate chain of the key, leaf first",
    )
    seal_parser.add_argument(
        "--detached",
        action="store_true",
        help="leave the document out of the JWS (its SHA-256 is signed, in sigD)",
    )
    seal_parser.add_argument(
        "--content-type",
        type=parse_media_type,
        metavar="TYPE",
        help=f"media type of the document (default: guessed from its name, else {DEFAULT_CONTENT_TYPE})",
    )
    for option, what in (("--ocsp", "an OCSP response (DER)"), ("--crl", "a CRL (DER)")):
        seal_parser.add_argument(
            option,
            type=Path,
            action="append",
            metavar="FILE",
            help=f"embed {what} for offline verification (JAdES baseline-LT): the seal is then "
            "written in the JWS JSON serialisation (repeatable)",
        )
    seal_parser.add_argument(
        "--tsa",
        metavar="URL",
        help="time-stamp the seal's signature value at this RFC 3161 TSA (JAdES baseline-T, "
        "a sigTst; JSON serialisation); a TSA that does not answer is an error here",
    )
    _tsa_ca_option(seal_parser, "the TSA's certificate must chain to (required with --tsa)")
    seal_parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the JWS here instead of standard output"
    )
    passphrase_options(seal_parser)
    seal_parser.set_defaults(handler=cmd_seal)


def _register_verify(commands: Subparsers) -> None:
    verify = commands.add_parser(
        "verify",
        help="verify a signed document (JWS, OFD, SES_Signature, SESeal) against a registry",
        description="Verify an e-seal or e-signature, recognised by its content: a JAdES "
        "JWS (compact, or JSON-serialised with embedded OCSP responses and CRLs), an OFD file and its signatures, a DER GB/T 38540 or GM/T 0031 "
        "SES_Signature (its signed data given with --payload) or a DER SESeal. The trust is "
        "a signed registry snapshot (its keys, CAs and revocation lists), --ca anchors for a "
        "GB/T 38540 seal or OFD file from outside the federation, or both; a JWS is proved "
        "only with a key the registry publishes. Prints an ETSI EN 319 102-1 style "
        "report: TOTAL_PASSED, TOTAL_FAILED or INDETERMINATE with the reason, the signer, and "
        "every check (and a report per signature of an OFD file). Exit code 0 only for "
        "TOTAL_PASSED, 1 for a report that did not pass, 2 when no report can be made (a wrong "
        "command line, a file that cannot be read or used).",
        epilog="Examples: tongban verify licence.pdf.jws --payload licence.pdf "
        "--snapshot out/published/current.jws --pki out/pki; "
        "tongban verify licence.ofd --ca province-root.pem --json",
    )
    verify.add_argument(
        "file",
        type=Path,
        help="the document to verify: a JWS (compact or JSON), an OFD file, a DER SES_Signature "
        "or SESeal",
    )
    verify.add_argument(
        "--payload",
        type=Path,
        metavar="FILE",
        help="the signed data, for a detached JWS or an SES_Signature",
    )
    verify.add_argument(
        "--snapshot",
        type=Path,
        metavar="JWS",
        help="registry snapshot, e.g. out/published/current.jws (with --authority or --pki)",
    )
    verify_trust = verify.add_mutually_exclusive_group()
    verify_trust.add_argument(
        "--authority",
        type=Path,
        metavar="ROOT",
        help="the trusted root (root.json) or one authority key's PEM, to check the snapshot",
    )
    verify_trust.add_argument(
        "--pki", type=Path, metavar="DIR", help="a PKI folder, to use its authority/root.json"
    )
    verify.add_argument(
        "--ca",
        type=Path,
        action="append",
        metavar="PEM",
        help="trust anchors from outside the registry, for GB/T 38540 seals and OFD files from "
        "outside the federation: PEM certificates, self-signed ones roots, others "
        "intermediates (repeatable)",
    )
    _tsa_ca_option(verify, "a time-stamp's TSA must chain to, for its time to prove existence")
    verify.add_argument(
        "--expect",
        choices=[k.value for k in SignatureKind],
        help="require an e-seal (legal person) or an e-signature (natural person)",
    )
    verify.add_argument(
        "--region",
        type=parse_region,
        metavar="CODE",
        help="require a key of this region (GB/T 2260 code)",
    )
    verify.add_argument(
        "--at",
        type=parse_time,
        metavar="ISO-TIME",
        help="validate as of this time, ISO 8601 with offset (default now)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=cmd_verify, usage_error=verify.error)


def _tsa_ca_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--tsa-ca",
        type=Path,
        action="append",
        metavar="PEM",
        help=f"TSA trust anchors: PEM root certificates {what} (repeatable)",
    )


def register(commands: Subparsers) -> None:
    _register_seal(commands)
    _register_verify(commands)
