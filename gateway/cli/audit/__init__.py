"""`tongban audit`: read a region's audit log straight from its store, for oversight staff
(query, verify, prove, prune), and ask a gateway to sign a checkpoint. One module per verb."""

from __future__ import annotations

from gateway.cli._common import Parser, Subparsers
from gateway.cli.audit import checkpoint, evidence, proof, prune, query, show_request, verify
from gateway.cli.audit.query import AUDIT_OUTCOMES

__all__ = ["AUDIT_OUTCOMES", "register"]


def register(commands: Subparsers) -> None:
    audit = commands.add_parser(
        "audit",
        help="query, verify and prove the audit log (oversight)",
        description="Read a region's audit log straight from its store (an SQLite file or a "
        "PostgreSQL schema), for oversight staff: query who accessed what, verify that nothing "
        "was altered, reordered or removed, and prove a record's inclusion or the log's "
        "consistency. Nothing here writes to the log.",
        epilog="Example: tongban audit verify --sqlite audit-510000.db --pki out/pki --region 510000",
    )
    audit_verbs = audit.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=Parser
    )
    for verb in (
        verify,
        query,
        show_request,
        proof,
        prune,
        checkpoint,
        evidence,
    ):  # the order of `tongban audit --help`
        verb.register(audit_verbs)
