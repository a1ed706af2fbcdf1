"""`tongban audit query`: list audit records by subject, agency, purpose, outcome, time."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gateway._tables import whole
from gateway.cli._arguments import parse_name, parse_region, parse_time, whole_number
from gateway.cli._common import Failure, Subparsers, read_input, usage
from gateway.cli.audit._store import check_store_options, on_store, parse_index, store_options

if TYPE_CHECKING:
    from gateway.audit import AuditQuery, AuditRecord, AuditStore

__all__ = ["AUDIT_OUTCOMES", "register"]

DEFAULT_QUERY_LIMIT = 50
MAX_QUERY_LIMIT = 10_000
MAX_PSEUDONYM_KEY_BYTES = 4096
AUDIT_OUTCOMES = ("allowed", "denied", "failed")  # gateway.audit.Outcome (imported lazily)
_PSEUDONYM = re.compile(r"[0-9a-f]{64}")
_OUTCOME_STYLES = {"allowed": "green", "denied": "yellow", "failed": "red"}


def parse_limit(text: str) -> int:
    return whole_number(text, "the limit is a whole number", 1, MAX_QUERY_LIMIT)


def parse_pseudonym(text: str) -> str:
    if not _PSEUDONYM.fullmatch(text.lower()):
        raise argparse.ArgumentTypeError(
            "a subject pseudonym is 64 hex digits (HMAC-SHA256); for a raw id use "
            "--subject-id with --pseudonym-key-file"
        )
    return text.lower()


def _subject_pseudonym(args: argparse.Namespace) -> str | None:
    from gateway.audit import pseudonymize

    if args.subject_id is None:
        if args.pseudonym_key_file is not None:
            usage(args, "--pseudonym-key-file goes with --subject-id")
        pseudonym: str | None = args.subject
        return pseudonym
    if args.pseudonym_key_file is None:
        usage(args, "--subject-id needs --pseudonym-key-file FILE (the id is only ever hashed)")
    if not args.subject_id:
        usage(args, "--subject-id is empty")
    path: Path = args.pseudonym_key_file
    key = read_input(path, "the pseudonym key", limit=MAX_PSEUDONYM_KEY_BYTES).rstrip(b"\r\n")
    try:
        return pseudonymize(args.subject_id, key)
    except ValueError as exc:  # the key is too short; the message never holds the id
        raise Failure(f"{path}: {exc}") from exc


def _record_row(index: int, record: AuditRecord) -> list[Text]:
    outcome = record.outcome.value
    shown = f"{outcome}: {record.reason}" if record.reason else outcome
    return [
        Text(str(index)),
        Text(record.time_text),
        Text(record.caller_agency),
        Text(record.caller_region),
        Text(record.provider_region),
        Text(record.dataset),
        Text(record.purpose),
        Text(record.case_id),
        Text(shown, style=_OUTCOME_STYLES.get(outcome, "")),
        Text(", ".join(record.fields)),
        Text("yes" if record.cache_hit else "no"),
    ]


def _record_columns(table: Table) -> None:
    for column in ("index", "time (UTC)", "caller agency", "caller region", "provider region"):
        table.add_column(column)
    for column in ("dataset", "purpose", "case id", "outcome", "fields", "cache hit"):
        table.add_column(column, overflow="fold")


def cmd_audit_query(args: argparse.Namespace, out: Console) -> int:
    from gateway.audit import AuditQuery, Outcome

    check_store_options(args)
    if args.since is not None and args.until is not None and args.since >= args.until:
        usage(args, "--since is before --until")
    query = AuditQuery(
        subject=_subject_pseudonym(args),
        caller_agency=args.agency,
        provider_region=args.provider_region,
        purpose=args.purpose,
        dataset=args.dataset,
        outcome=Outcome(args.outcome) if args.outcome else None,
        since=args.since,
        until=args.until,
        after_index=-1 if args.after is None else args.after,
        limit=args.limit,
    )

    if args.all:
        return _audit_query_all(args, out, query)

    async def work(store: AuditStore) -> list[tuple[int, AuditRecord]]:
        return await store.query(query)

    found = on_store(args, work)
    more = (
        f"More records may match: add --after {found[-1][0]} for the next page, or --all."
        if len(found) >= args.limit
        else ""
    )
    if args.json:
        for index, record in found:
            document = {"index": index, **json.loads(record.canonical)}
            sys.stdout.write(json.dumps(document, ensure_ascii=False, sort_keys=False) + "\n")
        if more:
            Console(stderr=True, highlight=False).print(more, markup=False, soft_wrap=True)
        return 0
    if not found:
        out.print("No audit record matches.")
        return 0
    table = Table(title=f"Audit records ({len(found)})", title_justify="left")
    _record_columns(table)
    for index, record in found:
        table.add_row(*_record_row(index, record))
    out.print(whole(table))
    if more:
        out.print(more, markup=False, soft_wrap=True)
    return 0


def _audit_query_all(args: argparse.Namespace, out: Console, first: AuditQuery) -> int:
    """Every matching record, a page of --limit at a time, each page printed as it is read;
    the listing ends at the log's size when it began (records appended meanwhile are not in it)."""
    import dataclasses

    async def work(store: AuditStore) -> int:
        end = (await store.head()).size
        query, shown = first, 0
        while True:
            page = [(i, r) for i, r in await store.query(query) if i < end]
            if not page:
                break
            if args.json:
                for index, record in page:
                    document = {"index": index, **json.loads(record.canonical)}
                    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                table = Table(
                    title=f"Audit records {shown + 1} to {shown + len(page)}", title_justify="left"
                )
                _record_columns(table)
                for index, record in page:
                    table.add_row(*_record_row(index, record))
                out.print(table)
            shown += len(page)
            if len(page) < query.limit:
                break
            query = dataclasses.replace(query, after_index=page[-1][0])
        return shown

    shown = on_store(args, work)
    if not shown and not args.json:
        out.print("No audit record matches.")
    return 0


def _filter_options(audit_query: argparse.ArgumentParser) -> None:
    """Who the records are about and who asked, for what, with what outcome, when."""
    subject = audit_query.add_mutually_exclusive_group()
    subject.add_argument(
        "--subject-id", metavar="ID", help="the data subject's id (hashed with the pseudonym key)"
    )
    subject.add_argument(
        "--subject", type=parse_pseudonym, metavar="PSEUDONYM", help="the subject's pseudonym"
    )
    audit_query.add_argument(
        "--pseudonym-key-file",
        type=Path,
        metavar="FILE",
        help="file holding the deployment's pseudonym key (at least 16 bytes), for --subject-id",
    )
    audit_query.add_argument(
        "--agency", type=parse_name, metavar="ID", help="the calling agency, e.g. sc.hrss"
    )
    audit_query.add_argument(
        "--provider-region",
        type=parse_region,
        metavar="CODE",
        help="the region that provided the data (GB/T 2260)",
    )
    audit_query.add_argument(
        "--purpose", type=parse_name, metavar="CODE", help="the purpose, e.g. SI-TRANSFER"
    )
    audit_query.add_argument(
        "--dataset", type=parse_name, metavar="ID", help="the dataset, e.g. si.participation"
    )
    audit_query.add_argument("--outcome", choices=AUDIT_OUTCOMES, help="the decision")
    audit_query.add_argument(
        "--since",
        type=parse_time,
        metavar="ISO-TIME",
        help="records at or after this time, ISO 8601 with offset",
    )
    audit_query.add_argument(
        "--until",
        type=parse_time,
        metavar="ISO-TIME",
        help="records before this time, ISO 8601 with offset",
    )


def _page_options(audit_query: argparse.ArgumentParser) -> None:
    audit_query.add_argument(
        "--limit",
        type=parse_limit,
        default=DEFAULT_QUERY_LIMIT,
        metavar="N",
        help=f"records per page, 1 to {MAX_QUERY_LIMIT} (default {DEFAULT_QUERY_LIMIT})",
    )
    audit_query.add_argument(
        "--after",
        type=parse_index,
        metavar="INDEX",
        help="the next page: records after this index (the last one shown)",
    )
    audit_query.add_argument(
        "--all",
        action="store_true",
        help="follow the pages (of --limit records) to the end of the log as it was when the "
        "listing began",
    )
    audit_query.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per record (JSON lines, so that pages concatenate): index "
        "and the record's own fields (time, gateway, region, caller_agency, provider_region, "
        "dataset, purpose, case_id, subject, fields, outcome, reason, cache_hit, ...)",
    )


def register(audit_verbs: Subparsers) -> None:
    audit_query = audit_verbs.add_parser(
        "query",
        help="list audit records by subject, agency, purpose, outcome, time",
        description="List the audit records that match every filter given, oldest first, a page "
        "at a time. Subjects are recorded as pseudonyms (HMAC-SHA256 under the deployment's "
        "pseudonym key): give the pseudonym, or the raw id with the key file; a raw id is only "
        "hashed, never printed or stored.",
        epilog="Example: tongban audit query --sqlite audit-510000.db --subject-id 110105194912310021 "
        "--pseudonym-key-file secrets/audit-pseudonym.key --since 2026-11-01T00:00:00+08:00",
    )
    store_options(audit_query)
    _filter_options(audit_query)
    _page_options(audit_query)
    audit_query.set_defaults(handler=cmd_audit_query, usage_error=audit_query.error)
