"""How `tongban verify` shows a validation report: JSON for programs, tables for people.

The registry, when there is one, names the owners and regions; a document verified against
`--ca` anchors alone has none, and its report says what the certificates say."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

from registry import Registry
from signer import Indication, ValidationReport

__all__ = ["Context", "print_report", "report_json"]

_HEADLINE_COLOURS = {
    Indication.TOTAL_PASSED: "green",
    Indication.TOTAL_FAILED: "red",
    Indication.INDETERMINATE: "yellow",
}


@dataclass(frozen=True, slots=True)
class Context:
    """What the report was made against: a registry (maybe stale), or outside anchors only."""

    registry: Registry | None
    stale: bool


def _time(report: ValidationReport) -> str | None:
    return f"{report.signing_time:%Y-%m-%dT%H:%M:%SZ}" if report.signing_time else None


def _signature_json(report: ValidationReport) -> dict[str, object]:
    """The facts of one signature: the keys of every report, a container's and its members'."""
    return {
        "format": report.format or None,
        "indication": report.indication.value,
        "sub_indication": report.sub_indication.value if report.sub_indication else None,
        "message": report.message,
        "signed_at": _time(report),
        "proof_of_existence": (
            f"{report.proof_of_existence:%Y-%m-%dT%H:%M:%SZ}" if report.proof_of_existence else None
        ),
        "signer": {
            "subject": report.signer_subject,
            "kid": report.signer_kid,
            "owner": report.owner,
            "region": report.owner_region,
        },
        "kind": report.kind.value if report.kind else None,
        "algorithm": report.algorithm,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in report.checks],
    }


def report_json(report: ValidationReport, context: Context) -> dict[str, object]:
    """The report for `--json`: the keys of earlier versions (signer_subject, signing_time, ...)
    and the newer ones (format, signed_at, signer, signatures)."""
    payload = report.payload
    registry = context.registry
    return {
        **_signature_json(report),
        "signer_subject": report.signer_subject,
        "signer_kid": report.signer_kid,
        "owner": report.owner,
        "owner_region": report.owner_region,
        "signing_time": _time(report),
        "content_type": report.content_type,
        "registry_version": registry.version if registry else None,
        "registry_expires_at": f"{registry.expires_at:%Y-%m-%dT%H:%M:%SZ}" if registry else None,
        "registry_stale": context.stale,
        "payload": base64.b64encode(payload).decode("ascii") if payload is not None else None,
        "signatures": [_signature_json(s) for s in report.signatures],
    }


def _party(registry: Registry | None, owner: str) -> str:
    """`浙江省人力资源和社会保障厅 (zj.hrss)` for an agency, `浙江省 (330000)` for a region."""
    if registry is None:
        return owner
    agency = registry.agency(owner)
    region = registry.region(owner)
    name = agency.name if agency else region.name if region else ""
    return f"{name} ({owner})" if name else owner


def _headline(report: ValidationReport) -> Text:
    indication = report.indication
    headline = Text(indication.value, style=f"bold {_HEADLINE_COLOURS[indication]}")
    if report.sub_indication is not None:
        headline.append(f" / {report.sub_indication.value}", style=_HEADLINE_COLOURS[indication])
    if report.passed:
        # "e-seal by 浙江省 (330000) made at ... is valid" reads better without "is valid" here.
        headline.append(f" — {report.message.removesuffix(' is valid')}")
    else:
        headline.append(f" — {report.message}")
    return headline


def _facts(report: ValidationReport, context: Context) -> Table:
    registry = context.registry
    region = registry.region(report.owner_region) if registry else None
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    rows = (
        ("format", report.format),
        ("signer", report.signer_subject),
        ("kid", report.signer_kid),
        ("owner", _party(registry, report.owner) if report.owner else ""),
        ("region", f"{region.name} ({report.owner_region})" if region else report.owner_region),
        ("kind", f"e-{report.kind.value}" if report.kind else ""),
        (
            "signing time",
            f"{report.signing_time:%Y-%m-%d %H:%M:%SZ} (claimed)" if report.signing_time else "",
        ),
        (
            "existed at",
            f"{report.proof_of_existence:%Y-%m-%d %H:%M:%SZ} (time-stamp)"
            if report.proof_of_existence
            else "",
        ),
        ("algorithm", report.algorithm),
        ("content type", report.content_type),
        ("registry version", str(registry.version) if registry else "none (--ca anchors only)"),
    )
    for name, value in rows:
        facts.add_row(name, Text(value or "—"))
    return facts


def _checks(report: ValidationReport, title: str) -> Table:
    checks = Table(title=title, title_justify="left")
    checks.add_column("")
    checks.add_column("check", no_wrap=True)
    checks.add_column("detail", overflow="fold")
    for check in report.checks:
        mark = Text("✓", style="green") if check.passed else Text("✗", style="red")
        checks.add_row(mark, Text(check.name), Text(check.detail))
    return checks


def print_report(out: Console, report: ValidationReport, context: Context) -> None:
    """The headline, the facts and the checks; then the same for each signature a container
    (an OFD file) holds."""
    out.print(_headline(report), soft_wrap=True)
    out.print(_facts(report, context))
    out.print(_checks(report, "Checks"))  # prose details wrap; the check names keep their width
    for number, signature in enumerate(report.signatures, start=1):
        out.print()
        out.print(
            Text(f"Signature {number}: ", style="bold") + _headline(signature), soft_wrap=True
        )
        out.print(_facts(signature, context))
        out.print(_checks(signature, f"Checks of signature {number}"))
