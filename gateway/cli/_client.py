"""What the verbs that are gRPC clients of a running gateway share (`audit checkpoint`, `case`):
the agency's mutual TLS, from a dev PKI folder (--pki, --agency) or from files (--ca, --cert,
--key), and a refused call as one line with its contract reason."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli._arguments import parse_endpoint, parse_name
from gateway.cli._common import Failure, read_input, usage
from registry import Inventory, KeyState, KeyUsage

if TYPE_CHECKING:
    import grpc

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "agency_credentials",
    "connection_options",
    "rpc_failure",
]

MAX_CERTIFICATE_BYTES = 1024 * 1024  # a PEM chain or key named on the command line


def rpc_failure(exc: Exception) -> Failure:
    """A failed call as one line: its ErrorInfo reason, message and any RetryInfo delay."""
    import grpc
    from google.rpc import error_details_pb2, status_pb2

    from gateway.errors import error_info_of

    assert isinstance(exc, grpc.aio.AioRpcError)
    info, message = error_info_of(exc)
    reason = f" {info.reason}" if info is not None else ""
    detail = ""
    if info is not None and info.metadata:
        detail = " (" + ", ".join(f"{k} {v}" for k, v in sorted(info.metadata.items())) + ")"
    retry = ""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for item in status_pb2.Status.FromString(value).details:
                delay = error_details_pb2.RetryInfo()
                if item.Unpack(delay):
                    seconds = delay.retry_delay.ToTimedelta().total_seconds()
                    retry = f" (retry in {seconds:.0f} s)"
    return Failure(f"the gateway refused: {exc.code().name}{reason}: {message}{detail}{retry}")


def agency_credentials(args: argparse.Namespace, role: str = "agency") -> grpc.ChannelCredentials:
    """The agency's mutual TLS: from --pki and --agency (which also name the region, set as
    `args.region`), or from --ca, --cert and --key."""
    import grpc

    if args.pki is not None:
        if args.agency is None:
            usage(args, f"--pki needs --agency ID (the {role} whose TLS key to use)")
        tls = Inventory.load(args.pki).find(args.agency, KeyUsage.TLS, KeyState.ACTIVE)
        if not tls:
            raise Failure(f"{args.pki}: {args.agency} has no active TLS key in the inventory")
        args.region = tls[-1].region  # the gateway (and its keys) are this region's
        cert, key = args.pki / tls[-1].certificate, args.pki / tls[-1].located_private_key()
        ca = args.ca or args.pki / "regions" / args.region / "ca" / "root.pem"
    else:
        if args.ca is None or args.cert is None or args.key is None:
            usage(args, "give --pki DIR --agency ID, or --ca, --cert and --key")
        cert, key, ca = args.cert, args.key, args.ca
    return grpc.ssl_channel_credentials(
        read_input(ca, "the CA certificate", limit=MAX_CERTIFICATE_BYTES),
        read_input(key, "the TLS key", limit=MAX_CERTIFICATE_BYTES),
        read_input(cert, "the TLS certificate chain", limit=MAX_CERTIFICATE_BYTES),
    )


def connection_options(parser: argparse.ArgumentParser, role: str, example: str) -> None:
    """--gateway, --pki/--agency or --ca/--cert/--key, --timeout."""
    parser.add_argument(
        "--gateway", required=True, type=parse_endpoint, metavar="HOST:PORT", help="the gateway"
    )
    parser.add_argument(
        "--pki",
        type=Path,
        metavar="DIR",
        help="a dev PKI folder: use --agency's TLS key and its region's root CA",
    )
    parser.add_argument(
        "--agency", type=parse_name, metavar="ID", help=f"with --pki: the {role}, e.g. {example}"
    )
    parser.add_argument(
        "--ca", type=Path, metavar="PEM", help="the gateway region's root CA certificate"
    )
    parser.add_argument(
        "--cert", type=Path, metavar="PEM", help="the agency's TLS certificate chain"
    )
    parser.add_argument("--key", type=Path, metavar="PEM", help="the agency's TLS key")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the gateway (default 30)",
    )
