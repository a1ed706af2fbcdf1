"""`tongban pki`: the development PKI (CAs, keys and certificates for test federations)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from gateway.cli._arguments import parse_regions
from gateway.cli._common import (
    Parser,
    Subparsers,
    passphrase,
    passphrase_options,
    source_option,
    utc_now,
)
from registry import load_source

__all__ = ["register"]


def cmd_pki_init(args: argparse.Namespace, out: Console) -> int:
    from gateway.demo.pki import init_dev_federation

    source = load_source(args.source)
    created = init_dev_federation(
        args.out,
        source,
        args.regions,
        passphrase=passphrase(args),
        now=utc_now(),
        seal_algorithm=args.seal_alg,
    )
    agencies = [a for a in source.agencies if a.region in args.regions]
    out.print(
        f"[bold]Dev PKI created in {args.out}[/]: registry authority keys, {len(args.regions)} regions "
        f"({', '.join(args.regions)}), {len(agencies)} agencies, {len(created.keys)} keys."
    )
    out.print(
        f"Install this trusted root in every gateway ([registry] trusted_root): "
        f"{created.trusted_root_path} (3 authority keys, any 2 sign a snapshot)"
    )
    out.print(
        "Private keys are PKCS#8, mode 0600"
        + (", encrypted." if passphrase(args) else " (unencrypted: development only).")
    )
    return 0


def register(commands: Subparsers) -> None:
    pki_parser = commands.add_parser(
        "pki",
        help="development PKI",
        description="Development PKI: CAs, keys and certificates for test federations.",
    )
    pki_verbs = pki_parser.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=Parser
    )
    init = pki_verbs.add_parser(
        "init",
        help="create a dev PKI for some regions",
        description="Create the registry authority key and, per region, a root and intermediate CA, the "
        "gateway TLS certificate, the region e-seal, token and audit keys and a natural-person "
        "e-signature certificate; per agency of those regions (from the registry source) a TLS client "
        "certificate and an agency e-seal. Private keys are PKCS#8 files with mode 0600.",
        epilog="Example: tongban pki init --out out/pki --regions 330000,510000,500000",
    )
    init.add_argument(
        "--out", type=Path, required=True, help="folder to create the PKI in (must not hold one)"
    )
    init.add_argument(
        "--regions",
        type=parse_regions,
        required=True,
        help="comma-separated GB/T 2260 codes, e.g. 330000,510000,500000",
    )
    init.add_argument(
        "--seal-alg",
        type=lambda text: text.upper() if text.upper() == "SM2" else text,
        choices=("ES256", "SM2"),
        default="ES256",
        help="the regions' seal keys: ES256 (the default) or SM2 (GB/T 38540 seals, each region "
        "with its seal maker and SESeal; no passphrase then: SM2 key files are not encrypted)",
    )
    source_option(init, "registry source naming the agencies")
    passphrase_options(init)
    init.set_defaults(handler=cmd_pki_init)
