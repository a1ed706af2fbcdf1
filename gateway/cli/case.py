"""`tongban case submit|show|list|act`: an agency's client of its own region's gateway for
cross-region cases (跨省通办 办件, the `tongban.v1.Cases` service; docs/cases.md).

Each verb is one gRPC call over mutual TLS (the agency's certificate: --pki and --agency, or
--ca, --cert and --key) with a request token: issued here from --pki as the region's identity
service would (`tongban token issue`), or read from the environment variable --token-env names
(never from the command line, where `ps` would show it). A refusal is one line with its contract
reason (exit 1); a wrong command line is exit 2 before anything is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from rich.console import Console

from gateway.cli._arguments import parse_name, whole_number
from gateway.cli._case_output import (
    CASE_FIELDS,
    LIST_FIELDS,
    case_document,
    print_case,
    print_cases,
    summary_document,
)
from gateway.cli._client import agency_credentials, connection_options, rpc_failure
from gateway.cli._common import (
    Failure,
    Parser,
    Subparsers,
    passphrase_options,
    read_input,
    request_token,
    usage,
)

if TYPE_CHECKING:
    import grpc

    from tongban.v1 import cases_pb2, cases_pb2_grpc

__all__ = ["register"]

MAX_NOTE_CHARS: Final = 1000  # gateway.cases.MAX_NOTE_CHARS: the gateway refuses longer
MAX_FILE_BYTES: Final = 12 * 1024 * 1024  # what one call may carry (the gateway's own bound)
MAX_LIST_LIMIT: Final = 5000
PAGE_SIZE: Final = 500  # the largest page ListCasesRequest allows
DEFAULT_OPERATOR: Final = "tongban case"
CASE_STATES: Final = ("open", "completed", "rejected")
_MATERIAL_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CASE_ID: Final = re.compile(r"[!-~]{1,128}")
_T = TypeVar("_T")


# argument types ---------------------------------------------------------------------------------
def parse_material_id(text: str) -> str:
    if not _MATERIAL_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a material id is the matter's (letters, digits, '.', '_', '-'), "
            "e.g. id-card"
        )
    return text


def parse_material(text: str) -> tuple[str, Path]:
    """ID=FILE: a material of the matter and the file that holds it."""
    material_id, equals, file = text.partition("=")
    if not equals or not file:
        raise argparse.ArgumentTypeError(f"{text!r}: give ID=FILE, e.g. id-card=id-card.jws")
    return parse_material_id(material_id), Path(file)


def parse_case_id(text: str) -> str:
    if not _CASE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a case id is printable ASCII without spaces, at most 128 characters"
        )
    return text


def parse_part(text: str) -> int:
    return whole_number(text, "a part is its index, a whole number", 0, 15)


def parse_limit(text: str) -> int:
    return whole_number(text, "the limit is a whole number", 1, MAX_LIST_LIMIT)


def parse_note(text: str) -> str:
    if len(text) > MAX_NOTE_CHARS:
        raise argparse.ArgumentTypeError(f"a note is at most {MAX_NOTE_CHARS} characters")
    if any(not c.isprintable() and c not in "\n" for c in text):
        raise argparse.ArgumentTypeError("a note holds no control characters")
    return text


# the call ---------------------------------------------------------------------------------------
def _call(
    args: argparse.Namespace, ask: Callable[[cases_pb2_grpc.CasesAsyncStub, Any], Awaitable[_T]]
) -> _T:
    """`ask(stub, metadata)` on a mutual-TLS channel to --gateway; a refusal is a Failure."""
    import grpc

    from tongban.v1 import cases_pb2_grpc

    credentials: grpc.ChannelCredentials = agency_credentials(args)
    metadata = (("authorization", f"Bearer {request_token(args)}"),)

    async def run() -> _T:
        async with grpc.aio.secure_channel(args.gateway, credentials) as channel:
            try:
                return await ask(cases_pb2_grpc.CasesStub(channel), metadata)
            except grpc.aio.AioRpcError as exc:
                raise rpc_failure(exc) from exc

    return asyncio.run(run())


def _content(path: Path, what: str) -> bytes:
    """A material's bytes; a compact JWS file's trailing line break is not part of it."""
    data = read_input(path, what, limit=MAX_FILE_BYTES)
    if data.startswith(b"eyJ") and data.rstrip().isascii():
        return data.rstrip()
    return data


def _materials(args: argparse.Namespace, given: list[tuple[str, Path]]) -> list[cases_pb2.Material]:
    from tongban.v1 import cases_pb2

    detached = dict(args.detached or [])
    ids = [material_id for material_id, _ in given]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        usage(args, f"material {', '.join(twice)} is given more than once")
    stray = sorted(set(detached) - set(ids) - {"result"})
    if stray:
        usage(args, f"--detached {', '.join(stray)}: no such material is given")
    total = 0
    materials = []
    for material_id, path in given:
        content = _content(path, f"material {material_id}")
        signed = b""
        if material_id in detached:
            signed = read_input(
                detached[material_id], f"the signed data of {material_id}", limit=MAX_FILE_BYTES
            )
        total += len(content) + len(signed)
        if total > MAX_FILE_BYTES:
            raise Failure(f"the materials are larger than {MAX_FILE_BYTES} bytes in all")
        materials.append(
            cases_pb2.Material(material_id=material_id, content=content, signed_data=signed)
        )
    return materials


def _show(args: argparse.Namespace, out: Console, case: cases_pb2.Case, headline: str) -> int:
    if args.json:
        sys.stdout.write(json.dumps(case_document(case), ensure_ascii=False, indent=2) + "\n")
    else:
        print_case(case, out, headline)
    return 0


# the verbs --------------------------------------------------------------------------------------
def cmd_case_submit(args: argparse.Namespace, out: Console) -> int:
    """Submit a case of a matter for an applicant with its materials (Cases.Submit)."""
    from tongban.v1 import cases_pb2

    if not args.material:
        usage(args, "give each material of the matter as --material ID=FILE")
    request = cases_pb2.SubmitCaseRequest(
        request_id=args.request_id,
        matter_code=args.matter,
        applicant_id=args.applicant,
        materials=_materials(args, args.material),
        note=args.note,
    )

    async def ask(stub: cases_pb2_grpc.CasesAsyncStub, metadata: Any) -> cases_pb2.Case:
        case: cases_pb2.Case = await stub.Submit(request, metadata=metadata, timeout=args.timeout)
        return case

    case = _call(args, ask)
    return _show(args, out, case, f"Submitted (request id {args.request_id}).")


def cmd_case_show(args: argparse.Namespace, out: Console) -> int:
    """One case as the gateway holds it (Cases.Get), its materials saved with --contents-to."""
    from tongban.v1 import cases_pb2

    folder: Path | None = args.contents_to
    if folder is not None and folder.exists() and not folder.is_dir():
        usage(args, f"--contents-to {folder}: not a folder")
    request = cases_pb2.GetCaseRequest(case_id=args.case_id, include_contents=folder is not None)

    async def ask(stub: cases_pb2_grpc.CasesAsyncStub, metadata: Any) -> cases_pb2.Case:
        case: cases_pb2.Case = await stub.Get(request, metadata=metadata, timeout=args.timeout)
        return case

    case = _call(args, ask)
    if folder is not None:
        saved = _save_contents(case, folder)
        out.print(f"Saved {saved} file(s) to {folder}.", markup=False, soft_wrap=True)
    return _show(args, out, case, "")


def _save_contents(case: cases_pb2.Case, folder: Path) -> int:
    """Each material's and result's bytes as <id>.bin (and <id>.signed for detached signed
    data); a result is named result-<part>."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, bytes, bytes]] = [
        (m.material_id, m.content, m.signed_data) for m in case.materials
    ]
    files += [
        (f"result-{p.index}", p.result.content, p.result.signed_data)
        for p in case.parts
        if p.HasField("result")
    ]
    saved = 0
    for n, (name, content, signed) in enumerate(files):
        stem = name if _MATERIAL_ID.fullmatch(name) else f"material-{n}"
        if sum(1 for other, _, _ in files if other == name) > 1:
            stem = f"{stem}-{n}"  # a material supplemented again keeps its first file too
        (folder / f"{stem}.bin").write_bytes(content)
        saved += 1
        if signed:
            (folder / f"{stem}.signed").write_bytes(signed)
            saved += 1
    return saved


def cmd_case_list(args: argparse.Namespace, out: Console) -> int:
    """The cases this agency may see, newest change first (Cases.List, page after page)."""
    from tongban.v1 import cases_pb2

    state = (
        cases_pb2.CaseState.Value(f"CASE_STATE_{args.state.upper()}")
        if args.state
        else cases_pb2.CASE_STATE_UNSPECIFIED
    )

    async def ask(
        stub: cases_pb2_grpc.CasesAsyncStub, metadata: Any
    ) -> tuple[list[cases_pb2.Case], bool]:
        found: list[cases_pb2.Case] = []
        token = ""
        while True:
            page: cases_pb2.ListCasesResponse = await stub.List(
                cases_pb2.ListCasesRequest(
                    state=state,
                    overdue=args.overdue,
                    matter_code=args.matter or "",
                    page_size=min(PAGE_SIZE, args.limit - len(found)),
                    page_token=token,
                ),
                metadata=metadata,
                timeout=args.timeout,
            )
            found.extend(page.cases)
            token = page.next_page_token
            if not token or len(found) >= args.limit:
                return found[: args.limit], bool(token)

    cases, more = _call(args, ask)
    if args.json:
        document = [summary_document(case) for case in cases]
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return 0
    print_cases(cases, out, more)
    return 0


def _act_request(args: argparse.Namespace) -> cases_pb2.ActRequest:
    from tongban.v1 import cases_pb2

    request = cases_pb2.ActRequest(
        request_id=args.request_id, case_id=args.case_id, part=args.part, note=args.note
    )
    if args.result is not None and not args.approve:
        usage(args, "--result goes with --approve")
    if args.detached and args.supplement is None and args.result is None:
        usage(args, "--detached goes with --supplement or --result")
    if args.accept:
        request.action = cases_pb2.CASE_ACTION_ACCEPT
    elif args.request_material is not None:
        if not args.note:
            usage(args, "--request-material needs --note (what is missing, and why)")
        request.action = cases_pb2.CASE_ACTION_REQUEST_MATERIAL
        request.material_ids.extend(args.request_material)
    elif args.supplement is not None:
        request.action = cases_pb2.CASE_ACTION_SUPPLEMENT
        request.materials.extend(_materials(args, args.supplement))
    elif args.approve:
        request.action = cases_pb2.CASE_ACTION_APPROVE
        if args.result is not None:
            (result,) = _materials(args, [("result", args.result)])
            request.result.CopyFrom(result)
    else:
        if not args.note:
            usage(args, "--reject needs --note (why; the applicant is told)")
        request.action = cases_pb2.CASE_ACTION_REJECT
    return request


def cmd_case_act(args: argparse.Namespace, out: Console) -> int:
    """Act on a part of a case (Cases.Act): accept, ask for material, supplement, approve,
    reject."""
    from tongban.v1 import cases_pb2

    request = _act_request(args)

    async def ask(stub: cases_pb2_grpc.CasesAsyncStub, metadata: Any) -> cases_pb2.Case:
        case: cases_pb2.Case = await stub.Act(request, metadata=metadata, timeout=args.timeout)
        return case

    case = _call(args, ask)
    action = cases_pb2.CaseAction.Name(request.action).removeprefix("CASE_ACTION_").lower()
    return _show(
        args, out, case, f"Done: {action} on part {args.part} (request id {args.request_id})."
    )


# the parsers ------------------------------------------------------------------------------------
def _request_id() -> str:
    return f"cli-{secrets.token_hex(8)}"


def _common(parser: argparse.ArgumentParser, *, json_fields: tuple[str, ...]) -> None:
    connection_options(parser, "agency", "sc.hsa")
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        help="the environment variable holding the request token (default: issue one from --pki)",
    )
    parser.add_argument(
        "--operator",
        type=parse_name,
        default=DEFAULT_OPERATOR,
        metavar="NAME",
        help=f"with --pki: the operator the token names (default {DEFAULT_OPERATOR!r})",
    )
    passphrase_options(parser)
    parser.add_argument("--json", action="store_true", help=f"print JSON: {', '.join(json_fields)}")


def _request_id_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--request-id",
        type=parse_name,
        default=None,
        metavar="ID",
        help="your id of this call, unique per agency: the same call sent again with it answers "
        "what the first made (default: a new one)",
    )


def _detached_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detached",
        type=parse_material,
        action="append",
        metavar="ID=FILE",
        help="the signed data of a detached JWS or of a GB/T 38540 SES_Signature given as "
        "material ID (ID 'result' for --result)",
    )


def _register_submit(verbs: Subparsers) -> None:
    submit = verbs.add_parser(
        "submit",
        help="submit a case of a matter for an applicant (Cases.Submit)",
        description="As a window agency (收件), submit a case of a matter of the registry's "
        "catalogue for an applicant, with the matter's materials (sealed credentials and "
        "documents: a JWS, an OFD file or a GB/T 38540 SES_Signature, recognised by content). "
        "The gateway verifies each material's seal, records the case and delivers it to every "
        "region with a part. Sent again with the same --request-id, it answers the case made.",
        epilog="Example: tongban case submit --gateway localhost:7510 --pki out/pki --agency "
        "sc.hsa --matter 000125002100 --applicant 500101199001011234 --material "
        "id-card=id-card.jws --material filing-form=filing-form.jws",
    )
    submit.add_argument(
        "--matter", required=True, type=parse_name, metavar="CODE", help="the matter's code"
    )
    submit.add_argument(
        "--applicant",
        required=True,
        type=parse_name,
        metavar="ID",
        help="the applicant's citizen id or USCC (sent to the gateway only; shown masked)",
    )
    submit.add_argument(
        "--material",
        type=parse_material,
        action="append",
        metavar="ID=FILE",
        help="a material of the matter and its file (repeat for each)",
    )
    _detached_option(submit)
    submit.add_argument(
        "--note", type=parse_note, default="", help="a note for the handling agencies"
    )
    _request_id_option(submit)
    _common(submit, json_fields=CASE_FIELDS)
    submit.set_defaults(handler=_with_request_id(cmd_case_submit), usage_error=submit.error)


def _register_show_and_list(verbs: Subparsers) -> None:
    show = verbs.add_parser(
        "show",
        help="show one case: parts, materials, history (Cases.Get)",
        description="Show a case as this agency's gateway holds it: its parts and their "
        "states, the materials as verified on arrival, and every change in the order applied.",
        epilog="Example: tongban case show 510000-20261207-3F9A2C51D0 --gateway localhost:7500 "
        "--pki out/pki --agency cq.hsa",
    )
    show.add_argument("case_id", type=parse_case_id, metavar="CASE_ID", help="the case (办件编号)")
    show.add_argument(
        "--contents-to",
        type=Path,
        metavar="DIR",
        help="also fetch the materials' and results' bytes and save them in DIR",
    )
    _common(show, json_fields=CASE_FIELDS)
    show.set_defaults(handler=cmd_case_show, usage_error=show.error)
    listing = verbs.add_parser(
        "list",
        help="list the cases this agency submitted, handles or may take (Cases.List)",
        description="List the cases this agency may see (those it submitted or handles, and "
        "those with a part ready for its region), newest change first.",
        epilog="Example: tongban case list --gateway localhost:7500 --pki out/pki --agency "
        "cq.hsa --overdue",
    )
    listing.add_argument("--state", choices=CASE_STATES, help="only cases in this state")
    listing.add_argument(
        "--overdue", action="store_true", help="only open cases past their time limit"
    )
    listing.add_argument("--matter", type=parse_name, metavar="CODE", help="only this matter")
    listing.add_argument(
        "--limit",
        type=parse_limit,
        default=50,
        metavar="N",
        help=f"at most N cases (default 50, at most {MAX_LIST_LIMIT})",
    )
    _common(listing, json_fields=LIST_FIELDS)
    listing.set_defaults(handler=cmd_case_list, usage_error=listing.error)


def _register_act(verbs: Subparsers) -> None:
    act = verbs.add_parser(
        "act",
        help="accept, ask for material, supplement, approve or reject a part (Cases.Act)",
        description="Act on a part of a case: an agency of the part's region accepts it (and "
        "alone acts on it from then on), asks for material, approves it (with the result, a "
        "sealed document or credential, required for the handling part) or rejects it; the "
        "window agency supplements the material asked for.",
        epilog="Example: tongban case act 510000-20261207-3F9A2C51D0 --part 1 --approve --result "
        "filing.jws --gateway localhost:7500 --pki out/pki --agency cq.hsa",
    )
    act.add_argument("case_id", type=parse_case_id, metavar="CASE_ID", help="the case (办件编号)")
    act.add_argument(
        "--part", required=True, type=parse_part, metavar="N", help="the part's index (from 0)"
    )
    action = act.add_mutually_exclusive_group(required=True)
    action.add_argument("--accept", action="store_true", help="take the part (READY)")
    action.add_argument(
        "--request-material",
        nargs="+",
        type=parse_material_id,
        metavar="ID",
        help="ask the window for these materials of the matter (with --note)",
    )
    action.add_argument(
        "--supplement",
        nargs="+",
        type=parse_material,
        metavar="ID=FILE",
        help="as the window agency: the materials asked for",
    )
    action.add_argument("--approve", action="store_true", help="approve the part")
    action.add_argument("--reject", action="store_true", help="reject the part (with --note)")
    act.add_argument(
        "--result", type=Path, metavar="FILE", help="with --approve: the sealed result"
    )
    _detached_option(act)
    act.add_argument("--note", type=parse_note, default="", help="why (the part keeps it)")
    _request_id_option(act)
    _common(act, json_fields=CASE_FIELDS)
    act.set_defaults(handler=_with_request_id(cmd_case_act), usage_error=act.error)


def _with_request_id(
    handler: Callable[[argparse.Namespace, Console], int],
) -> Callable[[argparse.Namespace, Console], int]:
    """The handler, with a new request id when none is given (printed, so that the call can be
    sent again with it after a lost answer)."""

    def run(args: argparse.Namespace, out: Console) -> int:
        if args.request_id is None:
            args.request_id = _request_id()
        return handler(args, out)

    return run


def register(commands: Subparsers) -> None:
    case = commands.add_parser(
        "case",
        help="cross-region cases (跨省通办 办件): submit, show, list, act",
        description="An agency's client of its gateway's Cases service: submit a case of a "
        "matter, show one, list them, act on a part (docs/cases.md).",
    )
    verbs = case.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    _register_submit(verbs)
    _register_show_and_list(verbs)
    _register_act(verbs)
