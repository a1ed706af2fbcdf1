"""`tongban demo`: three regions on loopback, scripted scenarios."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rich.console import Console

from gateway.cli._common import Failure, Subparsers, source_option

__all__ = ["register"]


def parse_redis_url(text: str) -> str:
    if not text:
        return text
    if not text.startswith(("redis://", "rediss://", "unix://")) or not text.isprintable():
        # Not echoed: a Redis URL may hold a password.
        raise argparse.ArgumentTypeError("not a redis://, rediss:// or unix:// URL")
    return text


def parse_postgres_dsn(text: str) -> str:
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    if not text:
        return text
    try:
        conninfo_to_dict(text)
    except Error:
        # Not echoed, nor psycopg's message (it may quote it): a DSN may hold a password.
        raise argparse.ArgumentTypeError("not a PostgreSQL DSN") from None
    return text


def cmd_demo(args: argparse.Namespace, out: Console) -> int:
    from gateway.demo.run import DemoError, DemoOptions, run_demo

    options = DemoOptions(
        source=args.source,
        folder=args.dir,
        redis_url=args.redis,
        postgres_dsn=args.postgres,
        serve=args.serve,
        seal_algorithm=args.seal_alg,
    )
    if args.log_level == "WARNING":  # the transcript says it: one replica, cache in memory
        logging.getLogger("tongban").setLevel(logging.ERROR)
    if not out.is_terminal:  # tables readable in a log file too
        out = Console(highlight=False, width=120)
    try:
        return run_demo(options, out)
    except DemoError as exc:
        raise Failure(str(exc)) from exc


def register(commands: Subparsers) -> None:
    demo = commands.add_parser(
        "demo",
        help="three regions on loopback, scripted scenarios",
        description="Build a dev PKI and a signed registry, start the gateways and demo data "
        "systems of 330000 浙江, 510000 四川 and 500000 重庆 on free loopback ports, and play "
        "scripted scenarios: a 川渝通办 query, a cache hit, an e-credential verified across "
        "regions, a denied over-broad query, a multi-region batch, a seal-key rotation under "
        "traffic, a citizen's audit trail and an audit verification against a signed checkpoint. "
        "Exit code 0 only if every scenario behaved as expected.",
        epilog="Example: tongban demo --serve   (then run the client command it prints)",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        help="a new or empty folder for the PKI, registry and audit logs (default: a temporary "
        "folder, removed at the end)",
    )
    source_option(demo)
    demo.add_argument(
        "--redis",
        type=parse_redis_url,
        metavar="URL",
        default="",
        help="Redis for the answer cache, replay window and quotas (default: in memory)",
    )
    demo.add_argument(
        "--postgres",
        type=parse_postgres_dsn,
        metavar="DSN",
        default="",
        help="PostgreSQL for the audit logs, one schema per region, dropped at the end "
        "(default: SQLite files in the demo folder)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the scenarios, keep the gateways running until Ctrl-C",
    )
    demo.add_argument(
        "--seal-alg",
        type=lambda text: text.upper() if text.upper() == "SM2" else text,
        choices=("ES256", "SM2"),
        default="ES256",
        help="the regions' seal keys: ES256 (JAdES seals, the default) or SM2 (GB/T 38540 "
        "seals with each region's SESeal)",
    )
    demo.set_defaults(handler=cmd_demo, serves=True)
