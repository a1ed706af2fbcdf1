"""`tongban token`: request tokens for agency operators (the dev identity service)."""

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


def parse_token_lifetime(text: str) -> timedelta:
    """A token lifetime: a duration of at most 300s (5m)."""
    from gateway.tokens import MAX_TOKEN_LIFETIME_SECONDS

    lifetime = parse_duration(text)
    if lifetime.total_seconds() > MAX_TOKEN_LIFETIME_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a request token lives at most {MAX_TOKEN_LIFETIME_SECONDS}s"
        )
    return lifetime


def parse_operator(text: str) -> str:
    if not text.strip() or any(c in text for c in "\r\n\x00"):
        raise argparse.ArgumentTypeError("the operator is one non-empty line")
    return text


def cmd_token_issue(args: argparse.Namespace, out: Console) -> int:
    """Play the agency's region's identity service: print a request token for an operator."""
    from gateway.tokens import issue_agency_token

    try:
        token = issue_agency_token(
            args.pki,
            args.agency,
            args.operator,
            lifetime_seconds=int(args.lifetime.total_seconds()),
            now=utc_now(),
            passphrase=passphrase(args),
            applicant=args.applicant,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    sys.stdout.write(token + "\n")
    return 0


def register(commands: Subparsers) -> None:
    token = commands.add_parser(
        "token",
        help="request tokens for agency operators (dev identity service)",
        description="Request tokens: short-lived JWTs that agency systems send in the "
        "`authorization` metadata, signed with their region's token key and bound to the "
        "agency's TLS client certificate.",
    )
    token_verbs = token.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=Parser
    )
    token_issue = token_verbs.add_parser(
        "issue",
        help="issue a request token for an operator of an agency",
        description="Play the identity service of the agency's region: sign a request token "
        "(JWT, at most 5 minutes) for an operator of the agency with the region's active token "
        "key, bound (cnf x5t#S256) to the agency's active TLS certificate, for the gateway of "
        "the agency's region. Prints the token on one line.",
        epilog='Example: tongban token issue --pki out/pki --agency zj.hrss --operator "张三" --lifetime 120s',
    )
    token_issue.add_argument("--pki", type=Path, required=True, metavar="DIR", help="PKI folder")
    token_issue.add_argument(
        "--agency",
        type=parse_name,
        required=True,
        metavar="ID",
        help="the calling agency, e.g. zj.hrss",
    )
    token_issue.add_argument(
        "--operator",
        type=parse_operator,
        required=True,
        metavar="NAME",
        help="the operator (sub) acting for the agency",
    )
    token_issue.add_argument(
        "--lifetime",
        type=parse_token_lifetime,
        default=timedelta(seconds=300),
        metavar="DURATION",
        help="how long the token lives, at most 300s (default 300s)",
    )
    token_issue.add_argument(
        "--applicant",
        default="",
        metavar="ID",
        help="for a citizen portal: the applicant's citizen id (or USCC) the token is for; the "
        "Cases service then shows that applicant their own cases only",
    )
    passphrase_options(token_issue)
    token_issue.set_defaults(handler=cmd_token_issue)
