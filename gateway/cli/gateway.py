"""`tongban gateway serve`: run a region's gateway, from a configuration file or a dev PKI."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from gateway.cli._arguments import (
    parse_endpoint,
    parse_listen,
    parse_loopback_endpoint,
    parse_region,
    whole_number,
)
from gateway.cli._common import Failure, Parser, Subparsers, passphrase, passphrase_options, usage
from gateway.config import GatewayConfig, names_dev_pki, read_config_file
from registry import PROVINCES

__all__ = ["register"]

_PKI_ONLY = (
    "pki", "region", "snapshot", "follow", "provider", "redis_env", "peer", "audit_db",
    "bootstrap_ca", "passphrase_file", "passphrase_env",
)  # fmt: skip


def parse_workers(text: str) -> int:
    from gateway.workers import MAX_WORKERS

    return whole_number(text, "the number of workers is a whole number", 1, MAX_WORKERS)


def parse_peer(text: str) -> tuple[str, str]:
    """CODE=HOST:PORT"""
    region, sep, endpoint = text.partition("=")
    if not sep or region not in PROVINCES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not CODE=HOST:PORT, e.g. 510000=localhost:7510"
        )
    return region, parse_endpoint(endpoint)


def _serve_config(args: argparse.Namespace) -> GatewayConfig:
    """The gateway's configuration from the command line; read again on SIGHUP."""
    if args.config is not None:
        document = read_config_file(args.config)
        if names_dev_pki(document):
            return _dev_config(args, document)
        return GatewayConfig.from_document(args.config, document)
    if args.pki is not None and args.region is not None:
        return _dev_config(args, None)
    raise Failure(
        "give --config FILE, or --pki DIR with --region CODE (and --snapshot or --follow)"
    )


def _dev_config(args: argparse.Namespace, document: dict[str, Any] | None) -> GatewayConfig:
    """Development only (`--pki`, or a file with `[gateway] dev_pki`): the one place where
    `gateway serve` imports demo code (tests/unit/test_structure.py)."""
    from gateway.demo.config import config_for_dev_pki, config_from_dev_file

    if document is not None:
        return config_from_dev_file(args.config, document)
    return config_for_dev_pki(
        args.pki,
        args.region,
        listen=args.listen,
        snapshot_file=args.snapshot,
        follow=args.follow or "",
        passphrase=passphrase(args),
        bootstrap_ca_file=args.bootstrap_ca,
        audit_db=args.audit_db,
        provider=args.provider or "",
        redis_url=_redis_url(args.redis_env),
        peers=dict(args.peer or []),
    )


def _redis_url(variable: str | None) -> str:
    if not variable:
        return ""
    url = os.environ.get(variable)
    if not url:  # else the gateway would keep its replay window in memory, unlike its replicas
        raise Failure(f"--redis-env: environment variable {variable} (the Redis URL) is not set")
    return url


def _check_serve_options(args: argparse.Namespace) -> None:
    """A wrong combination of options: exit 2 before anything is read."""
    if args.config is not None:
        given = [name for name in _PKI_ONLY if getattr(args, name) is not None]
        if given:
            option = "--" + given[0].replace("_", "-")
            usage(args, f"{option} goes with --pki, not with --config (the file says it)")
        return
    if args.pki is None or args.region is None:
        usage(args, "give --config FILE, or --pki DIR with --region CODE")
    if args.snapshot is None and args.follow is None:
        usage(
            args, "--pki needs --snapshot FILE or --follow HOST:PORT: the gateway needs a registry"
        )


def cmd_gateway_serve(args: argparse.Namespace, out: Console) -> int:
    _check_serve_options(args)
    config = _serve_config(args)
    if args.workers != 1:
        return _serve_workers(args, config, out)
    from gateway.server import Gateway, serve

    def ready(gateway: Gateway) -> None:
        status = gateway.store.status()
        held = f"registry version {status.version}" if status.version else "no registry yet"
        metrics = f", metrics on port {gateway.metrics_port}" if gateway.metrics_server else ""
        out.print(
            f"Gateway {config.region} listening on port {gateway.port} (mutual TLS){metrics}, "
            f"{held}. Ctrl-C stops it; SIGHUP reloads its seal keys.",
            soft_wrap=True,  # a port is never cut across lines
        )

    asyncio.run(serve(config, ready=ready, reload=lambda: _serve_config(args)))
    return 0


def _serve_workers(args: argparse.Namespace, config: GatewayConfig, out: Console) -> int:
    """--workers N: N processes on one port; nothing here may create a gRPC object first."""
    from gateway.workers import check_replica_safe, serve_workers

    check_replica_safe(config, args.workers)
    if TYPE_CHECKING:
        from gateway.server import Gateway

    def ready(number: int, gateway: Gateway) -> None:
        out.print(
            f"Gateway {config.region} worker {number}/{args.workers} (pid {os.getpid()}) "
            f"listening on port {gateway.port} (mutual TLS).",
            soft_wrap=True,
        )

    out.print(
        f"Gateway {config.region}: starting {args.workers} workers on {config.listen}. "
        "Ctrl-C stops them; SIGHUP reloads their seal keys.",
        soft_wrap=True,
    )
    return serve_workers(config, args.workers, ready=ready, reload=lambda: _serve_config(args))


def _dev_pki_options(serve: argparse.ArgumentParser) -> None:
    """The options that build the configuration from a dev PKI instead of --config."""
    serve.add_argument("--pki", type=Path, help="dev PKI folder (instead of --config)")
    serve.add_argument("--region", type=parse_region, help="region code, with --pki")
    serve.add_argument(
        "--snapshot", type=Path, help="registry snapshot file to load and watch, with --pki"
    )
    serve.add_argument(
        "--follow",
        type=parse_endpoint,
        metavar="HOST:PORT",
        help="a peer gateway whose registry to follow, with --pki",
    )
    serve.add_argument(
        "--provider",
        type=parse_loopback_endpoint,
        metavar="HOST:PORT",
        help="the region's data system (DataProvider.Fetch) on this machine (it is called "
        "without TLS), with --pki: serves the query path",
    )
    serve.add_argument(
        "--redis-env",
        metavar="VAR",
        help="environment variable holding the Redis URL for the cache, replay window and "
        "quotas, with --pki (default: in memory, one replica)",
    )
    serve.add_argument(
        "--peer",
        type=parse_peer,
        action="append",
        metavar="CODE=HOST:PORT",
        help="a peer gateway's endpoint instead of the registry's, with --pki (repeatable)",
    )
    serve.add_argument(
        "--audit-db",
        type=Path,
        metavar="FILE",
        help="SQLite audit log, with --pki (default: kept in memory, lost at exit)",
    )
    serve.add_argument(
        "--bootstrap-ca",
        type=Path,
        metavar="FILE",
        help="CA bundle trusted to reach the --follow peer before a registry is held "
        "(default: the dev PKI's roots.pem)",
    )
    serve.add_argument(
        "--listen",
        type=parse_listen,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="host:port to listen on, IPv6 in brackets, with --pki (default 127.0.0.1:0, a free "
        "port)",
    )
    passphrase_options(serve)


def register(commands: Subparsers) -> None:
    gw = commands.add_parser(
        "gateway", help="run a region's gateway", description="Run a region's gateway."
    )
    gw_verbs = gw.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    serve = gw_verbs.add_parser(
        "serve",
        help="serve gRPC over mutual TLS until Ctrl-C",
        description="Serve the registry (GetSnapshot, Watch), credentials (Verify for every caller, "
        "Seal for the region's agencies with the region's seal key), gRPC health and reflection over "
        "mutual TLS. Client certificates must chain to a region CA of the current registry.",
        epilog="Example: tongban gateway serve --pki out/pki --region 330000 --snapshot out/published/current.jws",
    )
    serve.add_argument("--config", type=Path, help="gateway configuration (TOML)")
    serve.add_argument(
        "--workers",
        type=parse_workers,
        default=1,
        metavar="N",
        help="processes sharing the port (default 1); more than one needs the audit log in "
        "PostgreSQL and Redis for the cache, replay window and quotas, as replicas do",
    )
    _dev_pki_options(serve)
    serve.set_defaults(handler=cmd_gateway_serve, serves=True, usage_error=serve.error)
