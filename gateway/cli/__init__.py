"""`tongban`: the command line for operators, security teams and developers.

Exit codes: 0 done, 1 the operation was refused or failed (the message says why), 2 the
command line itself is wrong. Nothing here prints a traceback for an expected failure.

One module per verb group, each with a `register(commands)` that adds its parsers and names
their handlers: `demo`, `pki`, `registry`, `keys`, `credentials` (`seal`, `verify`), `tokens`
(`token`), `consent`, `gateway`, `provider`, the `audit` package (a module per verb), `case`, `tracker` and `console`. What they share
is in `_common` (exit codes, failures, error lines, options) and `_arguments` (argument types).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence

from rich.console import Console

from gateway.cli import (
    audit,
    case,
    consent,
    console,
    credentials,
    demo,
    gateway,
    keys,
    pki,
    provider,
    registry,
    tokens,
    tracker,
)
from gateway.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    Failure,
    Handler,
    Parser,
    print_error,
)
from gateway.cli._common import operands_last as operands_last  # imported by tests, as before
from gateway.cli.audit import AUDIT_OUTCOMES as AUDIT_OUTCOMES  # imported by tests, as before
from gateway.errors import GatewayError
from gateway.logs import FORMAT_ENV, LOG_FORMATS, configure_logging, relay_native_stderr
from registry import RegistryError
from signer import SignerError

__all__ = ["main"]

# The order of `tongban --help`.
VERB_GROUPS = (
    demo,
    pki,
    registry,
    keys,
    credentials,
    tokens,
    consent,
    gateway,
    provider,
    audit,
    case,
    tracker,
    console,
)


def _package_version() -> str:
    try:
        return importlib.metadata.version("tongban")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
        return "(version unknown: the package is not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tongban",
        description="Tongban (通办): a gateway for cross-region government data sharing.",
        epilog="Run `tongban COMMAND --help` for each command. Exit codes: 0 done, 1 refused or failed, 2 bad command line.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"tongban {_package_version()}",
        help="print the version and exit",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log verbosity (default WARNING)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help=f"json (one object per line) or console; default: ${FORMAT_ENV}, else console "
        "on a terminal and json otherwise (docs/logging.md)",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    for group in VERB_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(operands_last(sys.argv[1:] if argv is None else argv))
    try:
        log_format = configure_logging(args.log_level, args.log_format)
    except ValueError as exc:  # a wrong TONGBAN_LOG_FORMAT
        parser.error(str(exc))
    out = Console(highlight=False)
    handler: Handler = args.handler
    # A serving process: gRPC core's own lines on fd 2 become JSON events too (gateway/logs.py).
    relaying = log_format == "json" and getattr(args, "serves", False)
    relay: contextlib.AbstractContextManager[None] = (
        relay_native_stderr() if relaying else contextlib.nullcontext()
    )
    with relay:
        return _run(handler, args, out, failures_logged=relaying)


def _run(handler: Handler, args: argparse.Namespace, out: Console, *, failures_logged: bool) -> int:
    """The command; a failure it reports is one line on stderr, a log event when stderr is the
    JSON log of a serving process."""
    try:
        return handler(args, out)
    except (Failure, RegistryError, GatewayError, SignerError, OSError) as exc:
        # An OSError here is a folder or file named on the command line that cannot be written.
        message = (
            f"{exc.filename}: {exc.strerror}"
            if isinstance(exc, OSError) and exc.filename and exc.strerror
            else str(exc)
        )
        if failures_logged:
            logging.getLogger("tongban.cli").error("tongban: %s", message)  # noqa: TRY400 - a message, not a traceback
            return EXIT_FAILED
        # soft_wrap: never hard-wrap at the console width (it would cut paths and kids in two).
        print_error(message)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
