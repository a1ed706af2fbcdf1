"""`tongban consent`: consent artefacts of citizens (the dev identity service of their home
region, as `tongban token issue` is for request tokens)."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from gateway.cli._arguments import parse_duration, parse_name
from gateway.cli._common import (
    Failure,
    Parser,
    Subparsers,
    passphrase,
    passphrase_options,
    utc_now,
)

__all__ = ["register"]


def parse_dataset(text: str) -> tuple[str, str, tuple[str, ...]]:
    """`<region>/<dataset>:<field>,<field>...`."""
    scope, _, fields = text.partition(":")
    region, _, dataset = scope.partition("/")
    names = tuple(f for f in fields.split(",") if f)
    if not region or not dataset or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a dataset is <region>/<dataset>:<field>,<field>..."
        )
    return region, dataset, names


def cmd_consent_issue(args: argparse.Namespace, out: Console) -> int:
    """Play the home region's identity service: print a consent artefact."""
    from gateway.consent import issue_region_consent

    now = utc_now()
    try:
        artefact = issue_region_consent(
            args.pki,
            args.region,
            passphrase=passphrase(args),
            subject=args.subject,
            purpose=args.purpose,
            datasets=args.dataset,
            agencies=tuple(args.agency),
            regions=tuple(args.for_region),
            not_before=now,
            expires_at=now + args.valid,
            max_uses=args.max_uses,
            now=now,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    sys.stdout.write(artefact + "\n")
    return 0


def register(commands: Subparsers) -> None:
    consent = commands.add_parser(
        "consent",
        help="consent artefacts of citizens (dev identity service)",
        description="Consent artefacts: what a citizen allowed, signed by the identity service "
        "of the citizen's home region with its token key; a query for a dataset marked "
        "requires_consent carries one (docs/integrating.md, Consent).",
    )
    verbs = consent.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    issue = verbs.add_parser(
        "issue",
        help="issue a consent artefact for a citizen",
        description="Play the identity service of the citizen's home region: sign a consent "
        "artefact (JWS, typ tongban-consent+jwt) with the region's active token key. Prints it "
        "on one line.",
        epilog="Example: tongban consent issue --pki out/pki --region 500000 --subject "
        "<citizen id> --purpose MED-REG --dataset 510000/medical.insurance:name,status "
        "--for-region 500000 --valid 30d --max-uses 3",
    )
    issue.add_argument("--pki", type=Path, required=True, metavar="DIR", help="PKI folder")
    issue.add_argument(
        "--region", type=parse_name, required=True, metavar="CODE", help="the home region"
    )
    issue.add_argument(
        "--subject", required=True, metavar="ID", help="the citizen id (or USCC) it is of"
    )
    issue.add_argument(
        "--purpose", type=parse_name, required=True, metavar="ID", help="the purpose it allows"
    )
    issue.add_argument(
        "--dataset",
        type=parse_dataset,
        action="append",
        required=True,
        metavar="REGION/DATASET:FIELDS",
        help="a dataset and its fields, e.g. 510000/medical.insurance:name,status (repeatable)",
    )
    issue.add_argument(
        "--agency", type=parse_name, action="append", default=[], metavar="ID",
        help="an agency that may ask (repeatable)",
    )  # fmt: skip
    issue.add_argument(
        "--for-region", type=parse_name, action="append", default=[], metavar="CODE",
        help="a region whose agencies may ask (repeatable)",
    )  # fmt: skip
    issue.add_argument(
        "--valid",
        type=parse_duration,
        default=timedelta(days=30),
        metavar="DURATION",
        help="how long from now it is valid (default 30d)",
    )
    issue.add_argument(
        "--max-uses", type=int, default=1, metavar="N", help="queries it allows (default 1)"
    )
    passphrase_options(issue)
    issue.set_defaults(handler=cmd_consent_issue)
