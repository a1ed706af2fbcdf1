"""`tongban tracker trail`: one subject's accesses in every region's audit log, through the
gateway of the caller's own region (the `tongban.v1.Tracker` service; docs/oversight.md "The
citizen's data tracker").

One gRPC call over mutual TLS (the agency's certificate: --pki and --agency, or --ca, --cert and
--key) with a request token: issued here from --pki as the region's identity service would (for
a citizen portal with --applicant, the citizen the token is for), or read from the environment
variable --token-env names. A refusal is one line with its contract reason (exit 1); a wrong
command line is exit 2 before anything is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console

from gateway.cli._arguments import parse_name, parse_region, parse_time
from gateway.cli._client import agency_credentials, connection_options, rpc_failure
from gateway.cli._common import (
    Parser,
    Subparsers,
    passphrase_options,
    request_token,
    usage,
)

if TYPE_CHECKING:
    from tongban.v1 import tracker_pb2

__all__ = ["register"]

DEFAULT_OPERATOR: Final = "tongban tracker"
OUTCOMES: Final = {0: "", 1: "allowed", 2: "denied", 3: "failed"}


def _request(args: argparse.Namespace) -> tracker_pb2.TrailRequest:
    from google.protobuf.timestamp_pb2 import Timestamp

    from tongban.v1 import tracker_pb2

    if args.since is not None and args.until is not None and args.since >= args.until:
        usage(args, "--since is before --until")
    request = tracker_pb2.TrailRequest(
        subject_id=args.subject_id or "", regions=list(dict.fromkeys(args.region or ()))
    )
    for name in ("since", "until"):
        value = getattr(args, name)
        if value is not None:
            stamp = Timestamp()
            stamp.FromDatetime(value)
            getattr(request, name).CopyFrom(stamp)
    return request


def _document(answer: tracker_pb2.TrailResponse) -> dict[str, Any]:
    entries = [
        {
            "time": e.time.ToDatetime().isoformat() + "Z",
            "region": e.region,
            "audit_id": e.audit_id,
            "audit_index": e.audit_index,
            "requester_agency": e.requester_agency,
            "requester_agency_name": e.requester_agency_name,
            "requester_region": e.requester_region,
            "dataset": e.dataset,
            "purpose": e.purpose,
            "purpose_name": e.purpose_name,
            "case_id": e.case_id,
            "cache_hit": e.cache_hit,
            "outcome": OUTCOMES.get(e.outcome, ""),
            "reason": e.reason,
            "rpc": e.rpc,
            "consent_id": e.consent_id,
        }
        for e in answer.entries
    ]
    regions = [
        {
            "region": r.region,
            "answered": r.answered,
            "problem": r.problem,
            "entries": r.entries,
            "truncated": r.truncated,
        }
        for r in answer.regions
    ]
    return {"entries": entries, "regions": regions}


def _print(document: dict[str, Any], out: Console) -> None:
    for region in document["regions"]:
        state = "answered" if region["answered"] else f"NOT ANSWERED ({region['problem']})"
        more = ", more not shown: ask with a later --since" if region["truncated"] else ""
        out.print(
            f"region {region['region']}: {state}, {region['entries']} entries{more}",
            markup=False,
            soft_wrap=True,
        )
    for e in document["entries"]:
        cached = " (cache)" if e["cache_hit"] else ""
        reason = f" {e['reason']}" if e["reason"] else ""
        out.print(
            f"{e['time']} {e['audit_id']} {e['requester_agency']} "
            f"{e['requester_agency_name']} ({e['requester_region']}) {e['dataset']} "
            f"{e['purpose']} {e['case_id']} {e['outcome']}{reason}{cached}",
            markup=False,
            soft_wrap=True,
        )


def cmd_tracker_trail(args: argparse.Namespace, out: Console) -> int:
    """One subject's trail across regions (Tracker.Trail)."""
    import grpc

    from tongban.v1 import tracker_pb2_grpc

    if not args.subject_id and not args.applicant:
        usage(args, "give --subject-id ID (oversight) or --applicant ID (a citizen portal)")
    request = _request(args)
    credentials = agency_credentials(args)
    metadata = (("authorization", f"Bearer {request_token(args, applicant=args.applicant or '')}"),)

    async def run() -> tracker_pb2.TrailResponse:
        async with grpc.aio.secure_channel(args.gateway, credentials) as channel:
            stub = tracker_pb2_grpc.TrackerStub(channel)
            try:
                answer: tracker_pb2.TrailResponse = await stub.Trail(
                    request, metadata=metadata, timeout=args.timeout
                )
            except grpc.aio.AioRpcError as exc:
                raise rpc_failure(exc) from exc
            return answer

    document = _document(asyncio.run(run()))
    if args.json:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    else:
        _print(document, out)
    return 0


def register(commands: Subparsers) -> None:
    tracker = commands.add_parser(
        "tracker",
        help="the citizen's data tracker: a subject's accesses in every region",
        description="A client of the gateway's Tracker service (docs/oversight.md).",
    )
    verbs = tracker.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    trail = verbs.add_parser(
        "trail",
        help="one subject's accesses across regions, oldest first (Tracker.Trail)",
        description="Ask the gateway of your region for one subject's accesses in every "
        "region's audit log: as an oversight agency for any subject (--subject-id), or as a "
        "citizen portal for the citizen the token is for (--applicant). Regions that did not "
        "answer, refused, or whose sealed answer did not verify are named.",
        epilog="Example: tongban tracker trail --gateway localhost:7330 --pki out/pki --agency "
        "zj.data --subject-id 330106195705031281",
    )
    trail.add_argument(
        "--subject-id", type=parse_name, metavar="ID", help="the subject (oversight agencies)"
    )
    trail.add_argument(
        "--applicant",
        type=parse_name,
        metavar="ID",
        help="with --pki: issue a citizen portal's token for this citizen (their own trail)",
    )
    trail.add_argument(
        "--region",
        type=parse_region,
        action="append",
        metavar="CODE",
        help="ask only this region (repeat; default every region of the registry)",
    )
    trail.add_argument("--since", type=parse_time, metavar="ISO-TIME", help="accesses from then")
    trail.add_argument("--until", type=parse_time, metavar="ISO-TIME", help="accesses before then")
    connection_options(trail, "agency", "zj.data")
    trail.add_argument(
        "--token-env",
        metavar="VAR",
        help="the environment variable holding the request token (default: issue one from --pki)",
    )
    trail.add_argument(
        "--operator",
        type=parse_name,
        default=DEFAULT_OPERATOR,
        metavar="NAME",
        help=f"with --pki: the operator the token names (default {DEFAULT_OPERATOR!r})",
    )
    passphrase_options(trail)
    trail.add_argument("--json", action="store_true", help="print JSON: entries, regions")
    trail.set_defaults(handler=cmd_tracker_trail, usage_error=trail.error)
