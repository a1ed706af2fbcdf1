"""`tongban seal` and `tongban verify`: e-seals and e-signatures (JAdES compact JWS) made with a
key file and verified against a signed registry snapshot."""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.cli._arguments import parse_region, parse_time
from gateway.cli._common import Subparsers, passphrase, passphrase_options, read_input, utc_now
from registry import (
    AUTHORITY_PUBLIC_KEY,
    Registry,
    RegistryTrust,
    SnapshotVerifier,
    load_authority_public_key,
)
from signer import (
    MAX_JWS_BYTES,
    FileKeyProvider,
    Indication,
    SealVerifier,
    SignatureKind,
    ValidationReport,
    seal,
)

__all__ = ["register"]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_HEADLINE_COLOURS = {
    Indication.TOTAL_PASSED: "green",
    Indication.TOTAL_FAILED: "red",
    Indication.INDETERMINATE: "yellow",
}
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


def _report_json(report: ValidationReport, registry: Registry, stale: bool) -> dict[str, object]:
    payload = report.payload
    return {
        "indication": report.indication.value,
        "sub_indication": report.sub_indication.value if report.sub_indication else None,
        "message": report.message,
        "signer_subject": report.signer_subject,
        "signer_kid": report.signer_kid,
        "owner": report.owner,
        "owner_region": report.owner_region,
        "kind": report.kind.value if report.kind else None,
        "signing_time": (
            f"{report.signing_time:%Y-%m-%dT%H:%M:%SZ}" if report.signing_time else None
        ),
        "algorithm": report.algorithm,
        "content_type": report.content_type,
        "registry_version": report.registry_version,
        "registry_expires_at": f"{registry.expires_at:%Y-%m-%dT%H:%M:%SZ}",
        "registry_stale": stale,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in report.checks],
        "payload": base64.b64encode(payload).decode("ascii") if payload is not None else None,
    }


def _party(registry: Registry, owner: str) -> str:
    """`浙江省人力资源和社会保障厅 (zj.hrss)` for an agency, `浙江省 (330000)` for a region."""
    agency = registry.agency(owner)
    region = registry.region(owner)
    name = agency.name if agency else region.name if region else ""
    return f"{name} ({owner})" if name else owner


def _print_report(out: Console, report: ValidationReport, registry: Registry) -> None:
    indication = report.indication
    headline = Text(indication.value, style=f"bold {_HEADLINE_COLOURS[indication]}")
    if report.sub_indication is not None:
        headline.append(f" / {report.sub_indication.value}", style=_HEADLINE_COLOURS[indication])
    if report.passed:
        # "e-seal by 浙江省 (330000) made at ... is valid" reads better without "is valid" here.
        headline.append(f" — {report.message.removesuffix(' is valid')}")
    else:
        headline.append(f" — {report.message}")
    out.print(headline, soft_wrap=True)
    region = registry.region(report.owner_region)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    rows = (
        ("signer", report.signer_subject),
        ("kid", report.signer_kid),
        ("owner", _party(registry, report.owner) if report.owner else ""),
        (
            "region",
            f"{region.name} ({report.owner_region})" if region else report.owner_region,
        ),
        ("kind", f"e-{report.kind.value}" if report.kind else ""),
        (
            "signing time",
            f"{report.signing_time:%Y-%m-%d %H:%M:%SZ} (claimed)" if report.signing_time else "",
        ),
        ("algorithm", report.algorithm),
        ("content type", report.content_type),
        ("registry version", str(report.registry_version)),
    )
    for name, value in rows:
        facts.add_row(name, Text(value or "—"))
    out.print(facts)
    checks = Table(title="Checks", title_justify="left")
    checks.add_column("")
    checks.add_column("check", no_wrap=True)
    checks.add_column("detail", overflow="fold")
    for check in report.checks:
        mark = Text("✓", style="green") if check.passed else Text("✗", style="red")
        checks.add_row(mark, Text(check.name), Text(check.detail))
    out.print(checks)  # prose details wrap; the check names keep their width


def cmd_verify(args: argparse.Namespace, out: Console) -> int:
    authority_path = args.authority or args.pki / AUTHORITY_PUBLIC_KEY
    authority = load_authority_public_key(authority_path)
    snapshot = read_input(args.snapshot, "the registry snapshot")
    # now=None: the signature and format are checked here, the expiry below, so that a stale
    # registry still verifies (with a warning) instead of refusing outright.
    registry = SnapshotVerifier(authority).verify(snapshot, held_version=None, now=None).registry
    jws = read_input(args.file, "the JWS", limit=MAX_JWS_BYTES + 4096)
    payload = read_input(args.payload, "the payload") if args.payload is not None else None
    now = utc_now()
    stale = now >= registry.expires_at
    if stale:
        Console(stderr=True, highlight=False).print(
            f"[yellow]warning:[/] registry version {registry.version} expired at "
            f"{registry.expires_at:%Y-%m-%d %H:%M:%SZ}: the registry is stale, so keys revoked "
            "since then are not known here",
            soft_wrap=True,
        )
    report = SealVerifier(RegistryTrust(registry), clock=utc_now).validate(
        jws,
        detached_payload=payload,
        expected_kind=SignatureKind(args.expect) if args.expect else None,
        expected_owner_region=args.region,
        validation_time=args.at,
    )
    if args.json:
        sys.stdout.write(
            json.dumps(_report_json(report, registry, stale), ensure_ascii=False, indent=2) + "\n"
        )
    else:
        _print_report(out, report, registry)
    return 0 if report.passed else 1


def _register_seal(commands: Subparsers) -> None:
    seal_parser = commands.add_parser(
        "seal",
        help="seal or sign a document with a key file (JAdES compact JWS)",
        description="Seal (or sign) a file with a key and its certificate chain: a JAdES "
        "baseline-B compact JWS whose header names the certificate (x5t#S256, x5c) and the "
        "signing time. An e-seal with a seal certificate, an e-signature with a signature "
        "certificate. Writes the JWS to standard output unless --out is given.",
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
    seal_parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the JWS here instead of standard output"
    )
    passphrase_options(seal_parser)
    seal_parser.set_defaults(handler=cmd_seal)


def _register_verify(commands: Subparsers) -> None:
    verify = commands.add_parser(
        "verify",
        help="verify an e-seal or e-signature against a registry snapshot",
        description="Verify a compact JWS e-seal or e-signature against a signed registry snapshot "
        "(its keys, CAs and revocation lists) and print an ETSI EN 319 102-1 style report: "
        "TOTAL_PASSED, TOTAL_FAILED or INDETERMINATE with the reason, the signer, and every "
        "check. Exit code 0 only for TOTAL_PASSED, 1 otherwise.",
        epilog="Example: tongban verify licence.pdf.jws --payload licence.pdf "
        "--snapshot out/published/current.jws --pki out/pki",
    )
    verify.add_argument("file", type=Path, help="the compact JWS to verify")
    verify.add_argument(
        "--payload", type=Path, metavar="FILE", help="the document, for a detached JWS"
    )
    verify.add_argument(
        "--snapshot",
        type=Path,
        required=True,
        metavar="JWS",
        help="registry snapshot, e.g. out/published/current.jws",
    )
    verify_trust = verify.add_mutually_exclusive_group(required=True)
    verify_trust.add_argument(
        "--authority",
        type=Path,
        metavar="PUB",
        help="the registry authority public key (PEM), to check the snapshot's signature",
    )
    verify_trust.add_argument(
        "--pki", type=Path, metavar="DIR", help="a PKI folder, to use its authority public key"
    )
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
    verify.set_defaults(handler=cmd_verify)


def register(commands: Subparsers) -> None:
    _register_seal(commands)
    _register_verify(commands)
