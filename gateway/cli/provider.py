"""`tongban provider serve`: a demo provincial data system (synthetic citizens and businesses)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from rich.console import Console

from gateway.cli._arguments import parse_loopback_listen, parse_region
from gateway.cli._common import Failure, Parser, Subparsers

__all__ = ["register"]


def cmd_provider_serve(args: argparse.Namespace, out: Console) -> int:
    """A demo provincial data system (synthetic data) until Ctrl-C."""
    from gateway._ports import check_listen_address_free
    from gateway.demo.provider import create_provider

    # A held port: one line, not gRPC's log.
    check_listen_address_free("--listen", args.listen, who="another data system")

    async def run() -> None:
        try:
            server, port = create_provider(args.region, args.listen)
        except ValueError as exc:
            raise Failure(str(exc)) from exc
        await server.start()
        out.print(
            f"Demo data system of region {args.region} (synthetic data) on port {port}. Ctrl-C stops it."
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(run())
    return 0


def register(commands: Subparsers) -> None:
    provider = commands.add_parser(
        "provider",
        help="run a demo provincial data system",
        description="Demo provincial data systems (synthetic citizens and businesses) for tests "
        "and demos: what a province's own system does behind DataProvider.Fetch.",
    )
    provider_verbs = provider.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=Parser
    )
    provider_serve = provider_verbs.add_parser(
        "serve",
        help="serve one region's synthetic data until Ctrl-C",
        description="Serve DataProvider.Fetch with one region's synthetic data (valid GB 11643 "
        "citizen ids, GB 32100 credit codes), in plaintext on loopback only.",
        epilog="Example: tongban provider serve --region 330000 --listen 127.0.0.1:9330",
    )
    provider_serve.add_argument(
        "--region",
        type=parse_region,
        required=True,
        help="the region whose data to serve (330000, 510000 or 500000)",
    )
    provider_serve.add_argument(
        "--listen",
        type=parse_loopback_listen,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="host:port on loopback (default a free port)",
    )
    provider_serve.set_defaults(handler=cmd_provider_serve, serves=True)
