"""`tongban console serve`: the web console for citizens and oversight staff (docs/console.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from gateway.cli._common import Failure, Parser, Subparsers

__all__ = ["register"]


def cmd_console_serve(args: argparse.Namespace, out: Console) -> int:
    """Serve the console of the configuration's region until SIGINT or SIGTERM."""
    from gateway.console import ConsoleConfig, ConsoleConfigError, serve_console

    try:
        config = ConsoleConfig.from_file(args.config)
    except ConsoleConfigError as exc:
        raise Failure(str(exc)) from exc
    scheme = "https" if config.over_tls else "http"
    out.print(
        f"Console of region {config.region} on {scheme}://{config.listen_host}:"
        f"{config.listen_port}/ (gateway {config.gateway_address}); Ctrl-C stops it.",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    serve_console(config)
    return 0


def register(commands: Subparsers) -> None:
    console = commands.add_parser(
        "console",
        help="the web console for citizens and oversight staff",
        description="The web console: citizens see who accessed their data, their consents and "
        "their cases; oversight staff search trails, read audit records, verify the log and "
        "inclusion proofs. It is a client of its region's gateway (mutual TLS).",
    )
    verbs = console.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    serve = verbs.add_parser(
        "serve",
        help="serve the web console",
        description="Serve the console's pages (docs/console.md) until SIGINT or SIGTERM. Log "
        "in with a request token of the region's citizen portal (with --applicant) or of its "
        "oversight agency, from the region's identity service (`tongban token issue`).",
        epilog="Example: tongban console serve --config console.toml",
    )
    serve.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the console's TOML file"
    )
    serve.set_defaults(handler=cmd_console_serve, serves=True)
