"""The log's name and the key that signs its checkpoints, as the command line gives them: the
origin and key names, the audit public key (a certificate, or the dev PKI's active one), and a
checkpoint note checked against them."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli._arguments import parse_region
from gateway.cli._common import Failure, read_input, usage
from registry import Inventory, KeyRecord, KeyState, KeyUsage

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gateway.audit import Checkpoint

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "active_audit_key",
    "audit_names",
    "audit_public_key",
    "b64",
    "key_options",
    "log_name_options",
    "parse_key_name",
    "parse_line",
    "verify_note",
]

MAX_CERTIFICATE_BYTES = 1 << 20


def parse_line(text: str) -> str:
    if not text or "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError("a log origin is one non-empty line")
    return text


def parse_key_name(text: str) -> str:
    if not text or any(c.isspace() or c == "+" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a key name has no spaces and no '+'")
    return text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_options(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--audit-cert",
        type=Path,
        metavar="PEM",
        help="the region's audit certificate (Ed25519), whose key signs the checkpoints",
    )
    key.add_argument(
        "--pki",
        type=Path,
        metavar="DIR",
        help="a dev PKI folder: use --region's active audit certificate",
    )
    log_name_options(
        parser, "the log's region (GB/T 2260): the defaults below, and the key with --pki"
    )


def log_name_options(parser: argparse.ArgumentParser, region_help: str) -> None:
    """--region, --origin and --key-name: which log, and the name its checkpoints are signed
    under (`audit_names`)."""
    parser.add_argument("--region", type=parse_region, metavar="CODE", help=region_help)
    parser.add_argument(
        "--origin",
        type=parse_line,
        metavar="NAME",
        help="the log's name in its checkpoints (default audit.tongban/<region>)",
    )
    parser.add_argument(
        "--key-name",
        type=parse_key_name,
        metavar="NAME",
        help="the checkpoint signer's key name (default: the origin, and audit-<region> for "
        "checkpoints signed before the key was named after its log)",
    )


def audit_names(args: argparse.Namespace) -> tuple[str, tuple[str, ...]]:
    """(origin, key names) of the log: as given, else derived from --region. The key is named
    after the origin (C2SP); checkpoints signed before were named audit-<region>, which is
    accepted too when no --key-name is given."""
    if args.pki is not None and args.region is None:
        usage(args, "--pki needs --region CODE (the region whose active audit certificate to use)")
    origin = args.origin or (f"audit.tongban/{args.region}" if args.region else None)
    if origin is None:
        usage(args, "give --origin NAME (or --region CODE for audit.tongban/CODE)")
    if args.key_name:
        return origin, (args.key_name,)
    if any(c.isspace() or c == "+" for c in origin):
        usage(args, "the origin has white space or '+', so it cannot name the key: give --key-name")
    return origin, (origin, *((f"audit-{args.region}",) if args.region else ()))


def verify_note(
    note: str, public_key: Ed25519PublicKey, key_names: tuple[str, ...], origin: str
) -> Checkpoint:
    """The checkpoint in `note`, signed by the audit key under one of `key_names`."""
    from gateway.audit import CheckpointError, verify_checkpoint

    problem: CheckpointError | None = None
    for name in key_names:
        try:
            return verify_checkpoint(note, public_key, name, origin=origin)
        except CheckpointError as exc:
            problem = problem or exc
    assert problem is not None
    raise problem


def active_audit_key(args: argparse.Namespace) -> KeyRecord:
    """The active audit key of --region in the dev PKI of --pki."""
    active = Inventory.load(args.pki).find(args.region, KeyUsage.AUDIT, KeyState.ACTIVE)
    if not active:
        raise Failure(f"{args.pki}: region {args.region} has no active audit key in the inventory")
    return active[-1]


def audit_public_key(args: argparse.Namespace) -> Ed25519PublicKey:
    """The public key of the region's audit key: from --audit-cert, or the dev PKI's active one."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path: Path = (
        args.audit_cert
        if args.audit_cert is not None
        else args.pki / active_audit_key(args).certificate
    )
    data = read_input(path, "the audit certificate", limit=MAX_CERTIFICATE_BYTES)
    try:
        certificate = x509.load_pem_x509_certificates(data)[0]
    except ValueError as exc:
        raise Failure(f"{path}: not a PEM certificate") from exc
    key = certificate.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise Failure(
            f"{path}: the certificate's key is not Ed25519 (audit checkpoints are signed with Ed25519)"
        )
    return key
