"""What every verb group of the command line shares: exit codes, the parser class, the failure
a handler raises, the one-line error on stderr, the passphrase options and reading the files
named on the command line."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NoReturn, TypeAlias

from rich.console import Console

from gateway._errors import GatewayError
from gateway.config import read_passphrase
from registry import DEMO_SOURCE

__all__ = [
    "DEFAULT_SOURCE",
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "REQUEST_TOKEN_SECONDS",
    "Failure",
    "Handler",
    "Parser",
    "Subparsers",
    "operands_last",
    "passphrase",
    "passphrase_options",
    "print_error",
    "read_input",
    "request_token",
    "save_text",
    "source_option",
    "usage",
    "utc_now",
]

EXIT_DONE = 0
EXIT_FAILED = 1  # the operation was refused or failed: the message says why
EXIT_USAGE = 2  # the command line itself is wrong
EXIT_INTERRUPTED = 130  # Ctrl-C

DEFAULT_SOURCE = DEMO_SOURCE  # shipped in the package: the same from any folder

Handler = Callable[[argparse.Namespace, Console], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"  # where a verb group adds its parser


class Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class Failure(GatewayError):
    """An expected failure of a command: printed as one message, exit code 1."""


def usage(args: argparse.Namespace, message: str) -> NoReturn:
    """A wrong combination of options, found after parsing: one line, exit code 2."""
    args.usage_error(message)
    raise AssertionError("unreachable")  # pragma: no cover


def print_error(message: str) -> None:
    """`tongban: message` on stderr, on one line however long."""
    Console(stderr=True, highlight=False).print(f"tongban: {message}", markup=False, soft_wrap=True)


def utc_now() -> datetime:
    return datetime.now(UTC)


def passphrase_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="file holding the private-key passphrase",
    )
    group.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="environment variable holding the private-key passphrase",
    )


def source_option(parser: argparse.ArgumentParser, what: str = "registry source folder") -> None:
    """--source: the registry source folder (the demo's, shipped in the package, by default)."""
    parser.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help=f"{what} (default {DEFAULT_SOURCE})"
    )


def passphrase(args: argparse.Namespace) -> bytes | None:
    return read_passphrase(args.passphrase_file, args.passphrase_env)


def read_input(path: Path, what: str, limit: int | None = None) -> bytes:
    """A file named on the command line, or a one-line `Failure` that says why not."""
    try:
        with path.open("rb") as file:
            data = file.read() if limit is None else file.read(limit + 1)
    except OSError as exc:
        raise Failure(f"{path}: {what} cannot be read ({exc.strerror})") from exc
    if limit is not None and len(data) > limit:
        raise Failure(f"{path}: {what} is larger than {limit} bytes")
    return data


def save_text(path: Path, text: str) -> None:
    """Replace `path` whole or not at all (it holds what an auditor relies on next time)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# A kid (the base64url SHA-256 of a certificate, 43 characters) begins with "-" once in 64, and
# argparse would take it for an option ("the following arguments are required: kid").
_DASHED_KID = re.compile(r"-[A-Za-z0-9_-]{42}")


def operands_last(argv: Sequence[str]) -> list[str]:
    """`argv` with every kid that begins with "-" moved after a "--", where it can only be an
    operand (kids are positional arguments, never option values)."""
    if "--" in argv:
        return list(argv)
    kids = [a for a in argv if _DASHED_KID.fullmatch(a)]
    if not kids:
        return list(argv)
    return [*(a for a in argv if not _DASHED_KID.fullmatch(a)), "--", *kids]


REQUEST_TOKEN_SECONDS: Final = 300  # a token issued for one command's calls


def request_token(args: argparse.Namespace, *, applicant: str = "") -> str:
    """The request token of a command that calls a gateway: from --token-env, else issued from
    --pki as --agency's --operator (`applicant`: a citizen portal's token, for that citizen)."""
    if args.token_env is not None:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise Failure(f"the environment variable {args.token_env} holds no request token")
        return token
    if args.pki is None:
        usage(args, "give --pki DIR --agency ID (a token is issued from it), or --token-env VAR")
    from gateway.tokens import issue_agency_token

    try:
        return issue_agency_token(
            args.pki,
            args.agency,
            args.operator,
            lifetime_seconds=REQUEST_TOKEN_SECONDS,
            now=utc_now(),
            passphrase=passphrase(args),
            applicant=applicant,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from exc
