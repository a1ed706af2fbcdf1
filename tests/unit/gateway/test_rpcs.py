"""Audit records name their RPC by its full method path, read from the compiled protos."""

from __future__ import annotations

import re
from pathlib import Path

from gateway import rpcs
from tongban.v1 import credentials_pb2_grpc, exchange_pb2_grpc, oversight_pb2_grpc


def test_names_are_the_paths_the_generated_stubs_call() -> None:
    assert rpcs.QUERY == "/tongban.v1.DataExchange/Query"
    assert rpcs.SIGN_CHECKPOINT == "/tongban.v1.Oversight/SignCheckpoint"
    called: set[str] = set()
    for module in (credentials_pb2_grpc, exchange_pb2_grpc, oversight_pb2_grpc):
        assert module.__file__ is not None
        called |= set(re.findall(r"'(/tongban\.v1\.\w+/\w+)'", Path(module.__file__).read_text()))
    named = {getattr(rpcs, n) for n in rpcs.__all__ if isinstance(getattr(rpcs, n), str)}
    assert len(named) == 12
    assert named <= called


def test_records_written_under_the_former_short_names_are_recognised() -> None:
    assert rpcs.made_by("/tongban.v1.Peer/Forward", rpcs.FORWARD)
    assert rpcs.made_by("Peer.Forward", rpcs.FORWARD)
    assert rpcs.made_by("Peer.ReportAccess", rpcs.REPORT_ACCESS)
    assert not rpcs.made_by("Peer.Forward", rpcs.REPORT_ACCESS)
    assert not rpcs.made_by("DataExchange.Query", rpcs.FORWARD)
