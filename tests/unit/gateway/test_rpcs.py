"""Audit records name their RPC by its full method path, read from the compiled protos."""

from __future__ import annotations

import re
from pathlib import Path

from gateway import rpcs
from tongban.v1 import (
    cases_pb2_grpc,
    consents_pb2_grpc,
    credentials_pb2_grpc,
    exchange_pb2_grpc,
    oversight_pb2_grpc,
    tracker_pb2_grpc,
)


def test_names_are_the_paths_the_generated_stubs_call() -> None:
    assert rpcs.QUERY == "/tongban.v1.DataExchange/Query"
    assert rpcs.SIGN_CHECKPOINT == "/tongban.v1.Oversight/SignCheckpoint"
    assert rpcs.CASES_SUBMIT == "/tongban.v1.Cases/Submit"
    assert rpcs.DELIVER_CASE_EVENTS == "/tongban.v1.Peer/DeliverCaseEvents"
    assert rpcs.TRAIL == "/tongban.v1.Tracker/Trail"
    assert rpcs.SUBJECT_TRAIL == "/tongban.v1.Peer/SubjectTrail"
    called: set[str] = set()
    for module in (
        cases_pb2_grpc,
        consents_pb2_grpc,
        credentials_pb2_grpc,
        exchange_pb2_grpc,
        oversight_pb2_grpc,
        tracker_pb2_grpc,
    ):
        assert module.__file__ is not None
        called |= set(re.findall(r"'(/tongban\.v1\.\w+/\w+)'", Path(module.__file__).read_text()))
    named = {getattr(rpcs, n) for n in rpcs.__all__ if isinstance(getattr(rpcs, n), str)}
    assert len(named) == 24
    assert named <= called


def test_records_written_under_the_former_short_names_are_recognised() -> None:
    assert rpcs.made_by("/tongban.v1.Peer/Forward", rpcs.FORWARD)
    assert rpcs.made_by("Peer.Forward", rpcs.FORWARD)
    assert rpcs.made_by("Peer.ReportAccess", rpcs.REPORT_ACCESS)
    assert not rpcs.made_by("Peer.Forward", rpcs.REPORT_ACCESS)
    assert not rpcs.made_by("DataExchange.Query", rpcs.FORWARD)
