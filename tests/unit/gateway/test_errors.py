"""The one place peers' rich statuses are read (`gateway.errors.error_info_of`): a reason outside
the contract's ErrorReason enum is no reason (T16: a peer's words never become our reason, an
audit record's reason or a metric label unchecked)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import (
    KNOWN_REASONS,
    MAX_PEER_TEXT_CHARS,
    MAX_STATUS_MESSAGE_BYTES,
    bounded_message,
    error_info_of,
    peer_text,
)


def _failed_call(
    reason: str, domain: str = "tongban", message: str = "why"
) -> grpc.aio.AioRpcError:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain))
    status = status_pb2.Status(code=7, message=message, details=[detail])
    return grpc.aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=message,
    )


@pytest.mark.parametrize(
    ("reason", "domain", "read"),
    [
        ("PURPOSE_NOT_APPROVED", "tongban", "PURPOSE_NOT_APPROVED"),
        ("REPORT_ANSWER_UNKNOWN", "tongban", "REPORT_ANSWER_UNKNOWN"),
        ("PURPOSE_NOT_APPROVED", "example.com", None),
        ("MADE_UP_BY_A_PEER_1", "tongban", None),
        ("ERROR_REASON_UNSPECIFIED", "tongban", None),
        ("11010519491231002X", "tongban", None),
        ("A" * 10_000, "tongban", None),
        ("", "tongban", None),
    ],
)
def test_only_the_contracts_reasons_are_read(reason: str, domain: str, read: str | None) -> None:
    info, message = error_info_of(_failed_call(reason, domain))
    assert (info.reason if info is not None else None) == read
    assert message == "why"


def test_the_known_reasons_are_the_proto_enum() -> None:
    assert "QUOTA_EXCEEDED" in KNOWN_REASONS
    assert "ERROR_REASON_UNSPECIFIED" not in KNOWN_REASONS


def test_a_long_message_is_cut() -> None:
    cut = bounded_message("é" * MAX_STATUS_MESSAGE_BYTES)
    assert len(cut.encode()) <= MAX_STATUS_MESSAGE_BYTES


def test_a_peers_words_reach_a_log_line_bounded_and_on_one_line() -> None:
    forged = "refused\n2026-12-06 INFO tongban.audit all is well " + "x" * 100_000
    text = peer_text(forged)
    assert "\n" not in text
    assert len(text) <= MAX_PEER_TEXT_CHARS + 10
    assert text.startswith("'refused\\n2026")


def test_a_failed_report_send_is_logged_bounded_with_the_contracts_reason_only() -> None:
    from gateway.reports._reporter import _failure

    failed = _failed_call("MADE_UP_BY_A_PEER_1", message="no\n" + "y" * 50_000)
    described = _failure(failed)
    assert described.startswith("PERMISSION_DENIED -: 'no\\n")
    assert len(described) < 300
    assert "MADE_UP" not in described
