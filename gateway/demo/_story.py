"""What every demo scenario shares (`gateway.demo.stories`, `gateway.demo.case_stories`): the
result a scenario reports, what earlier scenarios leave for later ones, and small helpers."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc
from rich.table import Table

from gateway.errors import error_info_of
from tongban.v1 import exchange_pb2

if TYPE_CHECKING:
    from gateway.demo.federation import Federation

__all__ = [
    "CALL_TIMEOUT",
    "Result",
    "Scenario",
    "Story",
    "mask",
    "query",
    "rpc_reason",
]

CALL_TIMEOUT = 10.0  # seconds: one call, up to two gateway hops, on a loaded 2-core machine


@dataclass
class Result:
    """What a scenario observed; `ok` when it is what the scenario expects."""

    ok: bool
    summary: str
    table: Table | None = None


@dataclass
class Story:
    """What earlier scenarios leave for later ones."""

    citizen: str = (
        ""  # the 重庆 citizen whose social insurance is asked about (the case's applicant)
    )
    first_seal: str = ""
    audit_ids: list[str] = field(default_factory=list)
    # The 多地联办 case the query scenarios run in: open, its 重庆 part handled by `handler`.
    case_id: str = ""
    handler: str = ""
    window: str = ""
    # Queries about `citizen` the scenarios expect the requesting gateway to refuse (each leaves
    # a denied record in the citizen's trail there).
    denials_expected: int = 0


Scenario = Callable[["Federation", Story], Awaitable[Result]]


def mask(subject_id: str) -> str:
    """A citizen id as a transcript shows it: region and check character only."""
    return subject_id[:6] + "*" * (len(subject_id) - 7) + subject_id[-1:]


def rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    """The `google.rpc.ErrorInfo` reason of a failed call ("" when it carries none)."""
    info, _ = error_info_of(exc)
    return info.reason if info is not None else ""


def query(
    provider_region: str,
    dataset: str,
    purpose: str,
    subject_id: str,
    *,
    fields: Sequence[str] = (),
    case_id: str = "",
) -> exchange_pb2.QueryRequest:
    return exchange_pb2.QueryRequest(
        provider_region=provider_region,
        dataset=dataset,
        purpose=purpose,
        subject_id=subject_id,
        fields=list(fields),
        case_id=case_id or f"CASE-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3).upper()}",
        request_id=f"demo-{secrets.token_hex(8)}",
    )
