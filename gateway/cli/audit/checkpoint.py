"""`tongban audit checkpoint`: ask a gateway to sign a checkpoint of its audit log now
(Oversight.SignCheckpoint), as an oversight agency over mutual TLS."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from gateway.cli._client import agency_credentials, rpc_failure
from gateway.cli._common import Failure, Subparsers, save_text
from gateway.cli.audit._keys import audit_public_key, b64

if TYPE_CHECKING:
    import grpc

    from tongban.v1 import oversight_pb2

__all__ = ["register"]


def _ask(
    args: argparse.Namespace, credentials: grpc.ChannelCredentials
) -> oversight_pb2.SignCheckpointResponse:
    import grpc

    from tongban.v1 import oversight_pb2, oversight_pb2_grpc

    async def ask() -> oversight_pb2.SignCheckpointResponse:
        async with grpc.aio.secure_channel(args.gateway, credentials) as channel:
            stub = oversight_pb2_grpc.OversightStub(channel)
            try:
                answer: oversight_pb2.SignCheckpointResponse = await stub.SignCheckpoint(
                    oversight_pb2.SignCheckpointRequest(), timeout=args.timeout
                )
            except grpc.aio.AioRpcError as exc:
                raise rpc_failure(exc) from exc
            return answer

    return asyncio.run(ask())


def cmd_audit_checkpoint(args: argparse.Namespace, out: Console) -> int:
    """Ask a gateway (Oversight.SignCheckpoint) to sign a checkpoint of its audit log now."""
    from gateway.audit import CheckpointError, verify_checkpoint

    answer = _ask(args, agency_credentials(args, role="oversight agency"))
    checkpoint = answer.checkpoint
    verified = False
    if args.audit_cert is not None or args.pki is not None:
        try:
            verify_checkpoint(
                checkpoint.note,
                audit_public_key(args),
                checkpoint.key_name,
                origin=checkpoint.origin,
            )
        except CheckpointError as exc:
            raise Failure(f"the gateway's checkpoint does not verify: {exc}") from exc
        verified = True
    if args.out is not None:
        save_text(args.out, checkpoint.note)
    signed_at = checkpoint.signed_at.ToDatetime(tzinfo=UTC).isoformat()
    if args.json:
        document = {
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "root": b64(checkpoint.root_hash),
            "key_name": checkpoint.key_name,
            "signed_at": signed_at,
            "signed_now": answer.signed_now,
            "verified": verified,
            "note": checkpoint.note,
        }
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return 0
    state = "signed now" if answer.signed_now else "already covered the whole log"
    out.print(
        f"Checkpoint of {checkpoint.origin}, size {checkpoint.size}, signed at {signed_at} "
        f"by {checkpoint.key_name} ({state}"
        f"{'; signature verified' if verified else ''})."
        + (
            f" Saved to {args.out}: keep it, and give it as --checkpoint next time."
            if args.out
            else ""
        ),
        markup=False,
        soft_wrap=True,
    )
    if args.out is None:
        sys.stdout.write(checkpoint.note)
    return 0


def register(audit_verbs: Subparsers) -> None:
    audit_checkpoint = audit_verbs.add_parser(
        "checkpoint",
        help="ask a gateway to sign a checkpoint of its audit log now (Oversight.SignCheckpoint)",
        description="Ask a running gateway, as an oversight agency over mutual TLS, to sign a "
        "C2SP checkpoint of its audit log now (if the log grew since its latest one) and print "
        "it: a note an auditor keeps and later gives to `tongban audit verify --checkpoint`. "
        "The call is itself audited, and allowed once a minute per agency.",
        epilog="Example: tongban audit checkpoint --gateway localhost:7443 --pki out/pki "
        "--agency cq.data --out cq-checkpoint.txt",
    )
    audit_checkpoint.add_argument(
        "--gateway", required=True, metavar="HOST:PORT", help="the gateway to ask"
    )
    audit_checkpoint.add_argument(
        "--pki",
        type=Path,
        metavar="DIR",
        help="a dev PKI folder: use --agency's TLS key, its region's root CA and audit certificate",
    )
    audit_checkpoint.add_argument(
        "--agency", metavar="ID", help="with --pki: the oversight agency, e.g. cq.data"
    )
    audit_checkpoint.add_argument(
        "--ca", type=Path, metavar="PEM", help="the gateway region's root CA certificate"
    )
    audit_checkpoint.add_argument(
        "--cert", type=Path, metavar="PEM", help="the agency's TLS certificate chain"
    )
    audit_checkpoint.add_argument("--key", type=Path, metavar="PEM", help="the agency's TLS key")
    audit_checkpoint.add_argument(
        "--audit-cert",
        type=Path,
        metavar="PEM",
        help="the region's audit certificate: check the checkpoint's signature with its key",
    )
    audit_checkpoint.add_argument(
        "--out", type=Path, metavar="FILE", help="save the signed note to FILE"
    )
    audit_checkpoint.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the gateway (default 30)",
    )
    audit_checkpoint.add_argument("--json", action="store_true", help="print the result as JSON")
    audit_checkpoint.set_defaults(
        handler=cmd_audit_checkpoint, usage_error=audit_checkpoint.error, region=None
    )
