"""`tongban audit show-request`: the signed request an owner's audit record keeps, opened,
verified against the registry, and told as who asked for what, about whom, when.

A Peer.Forward record keeps the requesting gateway's signed request (docs/audit.md, "Signed
requests"): its digest in the record, the JWS itself encrypted under a key derived from the
deployment's pseudonym key. This command opens it (so it needs that key), checks it against the
record's digest, verifies its signature with the requesting region's audit key in the registry
at the time it was signed, checks that it says what the record says, and prints it; the raw
subject id it holds is never printed (give --subject-id to check that it is that subject's).
`--jws-out` writes the signed request itself, for an outsider to check with any JWS library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from gateway.cli._common import Failure, Subparsers, read_input, usage, utc_now
from gateway.cli.audit._store import check_store_options, on_store, parse_index, store_options

if TYPE_CHECKING:
    from gateway.audit import AuditRecord, AuditStore
    from gateway.forward_signing import SignedForward
    from registry import Registry

__all__ = ["pseudonym_key_options", "read_pseudonym_key", "register"]

MAX_PSEUDONYM_KEY_BYTES = 4096
_PAGE = 1000  # records read at a time while looking for a request id


def _registry(args: argparse.Namespace) -> Registry:
    from registry import SnapshotVerifier, load_trusted_root, pki_trusted_root_path

    authority = load_trusted_root(args.authority or pki_trusted_root_path(args.pki))
    snapshot = read_input(args.snapshot, "the registry snapshot")
    # now=None: an old request is proved with the keys the registry publishes, expired or not
    return SnapshotVerifier(authority).verify(snapshot, held_version=None, now=None).registry


def _found(args: argparse.Namespace) -> tuple[int, AuditRecord]:
    """(index, record) of the Peer.Forward record asked for."""

    async def work(store: AuditStore) -> tuple[int, AuditRecord] | None:
        from gateway.audit import AuditQuery, AuditRecord
        from gateway.kept_request import FORWARD_RPCS

        if args.index is not None:
            rows = await store.rows(args.index, args.index + 1)
            if not rows:
                return None
            return args.index, AuditRecord.from_canonical(rows[0].canonical)
        after = -1
        while True:
            page = await store.query(AuditQuery(after_index=after, limit=_PAGE))
            for index, record in page:
                if record.rpc in FORWARD_RPCS and record.request_id == args.request_id:
                    return index, record
            if len(page) < _PAGE:
                return None
            after = page[-1][0]

    found = on_store(args, work)
    if found is None:
        what = (
            f"no record {args.index}"
            if args.index is not None
            else f"no Peer.Forward record with request id {args.request_id}"
        )
        raise Failure(f"{what} in this audit log")
    return found


def _proved(
    index: int, record: AuditRecord, key: bytes, registry: Registry
) -> tuple[str, SignedForward]:
    from gateway.audit import KeptRequestError
    from gateway.kept_request import prove_kept_request

    try:
        return prove_kept_request(record, key, registry, now=utc_now())
    except KeptRequestError as exc:
        raise Failure(f"record {index}: {exc}") from exc


def _facts(index: int, record: AuditRecord, signed: SignedForward) -> dict[str, Any]:
    document = signed.document
    request = document.request
    return {
        "index": index,
        "verified": True,
        "kid": signed.kid,
        "request_digest": signed.digest,
        "requesting_region": document.requesting_region,
        "owner_region": document.owner_region,
        "caller_agency": document.caller_agency,
        "caller_operator": document.caller_operator,
        "dataset": request.dataset,
        "purpose": request.purpose,
        "case_id": request.case_id,
        "fields": list(request.fields),
        "request_id": request.request_id,
        "credential_type": document.credential_type,
        "subject": record.subject,
        "issued_at": document.issued_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "recorded_at": record.time_text,
        "outcome": record.outcome.value,
        "reason": record.reason,
    }


def read_pseudonym_key(args: argparse.Namespace) -> bytes | None:
    """The pseudonym key of --pseudonym-key-file or --pseudonym-key-env (None when neither is
    given), or a one-line `Failure`; the key itself is never in a message."""
    if args.pseudonym_key_file is not None:
        where = str(args.pseudonym_key_file)
        data = read_input(args.pseudonym_key_file, "the pseudonym key", MAX_PSEUDONYM_KEY_BYTES)
    elif args.pseudonym_key_env is not None:
        where = f"environment variable {args.pseudonym_key_env}"
        value = os.environ.get(args.pseudonym_key_env)
        if value is None:
            raise Failure(f"{where} (the pseudonym key) is not set")
        data = value.encode()
    else:
        return None
    key = data.rstrip(b"\r\n")
    if len(key) < 16:
        raise Failure(f"{where}: the pseudonym key is at least 16 bytes")
    return key


def pseudonym_key_options(parser: argparse.ArgumentParser, *, required: bool, why: str) -> None:
    """--pseudonym-key-file FILE | --pseudonym-key-env VAR: the deployment's pseudonym key."""
    key = parser.add_mutually_exclusive_group(required=required)
    key.add_argument(
        "--pseudonym-key-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the deployment's pseudonym key, {why}",
    )
    key.add_argument(
        "--pseudonym-key-env",
        metavar="VAR",
        help="environment variable holding the pseudonym key, instead of --pseudonym-key-file",
    )


def cmd_audit_show_request(args: argparse.Namespace, out: Console) -> int:
    from gateway.audit import pseudonymize

    check_store_options(args)
    if (args.index is None) == (args.request_id is None):
        usage(args, "give exactly one of --request-id and --index")
    if args.authority is None and args.pki is None:
        usage(args, "--snapshot needs --authority or --pki, to check the snapshot's signature")
    key = read_pseudonym_key(args)
    assert key is not None
    registry = _registry(args)
    index, record = _found(args)
    jws, signed = _proved(index, record, key, registry)
    facts = _facts(index, record, signed)
    if args.subject_id is not None:
        facts["subject_matches"] = pseudonymize(args.subject_id, key) == record.subject
    if args.jws_out is not None:
        _write_private(args.jws_out, jws)
    if args.json:
        sys.stdout.write(json.dumps(facts, ensure_ascii=False) + "\n")
    else:
        _print(out, facts)
    return 0 if facts.get("subject_matches", True) else 1


def _write_private(path: Path, text: str) -> None:
    """The signed request holds a raw subject id: its file is readable by its owner only."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(text + "\n")
    except OSError as exc:
        raise Failure(f"{path}: cannot write the signed request ({exc.strerror})") from exc


def _print(out: Console, facts: dict[str, Any]) -> None:
    fields = ", ".join(facts["fields"]) or "(all the purpose allows)"
    lines = [
        f"Record {facts['index']}: a signed request, verified with audit key {facts['kid']} "
        f"of region {facts['requesting_region']} (the registry's key at the signing time).",
        f"  who:   region {facts['requesting_region']}, agency {facts['caller_agency']}, "
        f"operator {facts['caller_operator'] or '-'}",
        f"  what:  dataset {facts['dataset'] or '-'} of region {facts['owner_region']}, "
        f"fields {fields}",
        f"  why:   purpose {facts['purpose']}, case {facts['case_id'] or '-'}, "
        f"request {facts['request_id']}",
        f"  whom:  subject pseudonym {facts['subject']}",
        f"  when:  signed {facts['issued_at']}, recorded {facts['recorded_at']} "
        f"({facts['outcome']}{': ' + facts['reason'] if facts['reason'] else ''})",
        f"  proof: SHA-256 of the signed request {facts['request_digest']} (in the record)",
    ]
    if "subject_matches" in facts:
        lines.append(
            "  the subject id given is this request's subject"
            if facts["subject_matches"]
            else "  the subject id given is NOT this request's subject"
        )
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def register(audit_verbs: Subparsers) -> None:
    show = audit_verbs.add_parser(
        "show-request",
        help="show and verify the signed request a Peer.Forward record keeps",
        description="Open the signed request the owner's audit record keeps (with the "
        "deployment's pseudonym key), verify its signature with the requesting region's audit "
        "key in the registry snapshot at the time it was signed, check that it says what the "
        "record says, and print who asked for what, about whom (as a pseudonym), when. The raw "
        "subject id is never printed. Exit 1 when it does not verify.",
        epilog="Example: tongban audit show-request --sqlite audit-330000.db --request-id req-1 "
        "--pseudonym-key-file secrets/audit-pseudonym.key --snapshot out/published/current.jws "
        "--pki out/pki",
    )
    store_options(show)
    which = show.add_mutually_exclusive_group()
    which.add_argument("--request-id", metavar="ID", help="the request id of the record")
    which.add_argument("--index", type=parse_index, metavar="INDEX", help="the record's index")
    pseudonym_key_options(show, required=True, why="which the kept request is sealed with")
    show.add_argument(
        "--snapshot",
        type=Path,
        required=True,
        metavar="JWS",
        help="registry snapshot that publishes the requesting region's audit key",
    )
    trust = show.add_mutually_exclusive_group()
    trust.add_argument(
        "--authority",
        type=Path,
        metavar="ROOT",
        help="the trusted root (root.json) or one authority key's PEM, to check the snapshot",
    )
    trust.add_argument(
        "--pki", type=Path, metavar="DIR", help="a PKI folder, to use its trusted root"
    )
    show.add_argument(
        "--subject-id",
        metavar="ID",
        help="check that the request was about this subject (hashed, never printed; exit 1 if not)",
    )
    show.add_argument(
        "--jws-out",
        type=Path,
        metavar="FILE",
        help="write the signed request itself (it holds the raw subject id: mode 0600), for an "
        "outsider to verify",
    )
    show.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    show.set_defaults(handler=cmd_audit_show_request, usage_error=show.error)
