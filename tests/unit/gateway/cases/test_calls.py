"""The page token of a case listing (gateway.cases._calls): opaque, read strictly."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from gateway.cases import CaseSummary
from gateway.cases._calls import read_page_token, write_page_token
from gateway.errors import Refusal

CASE_ID = "510000-20261207-0123456789"
AT = datetime(2026, 12, 7, 8, 0, 0, 123456, tzinfo=UTC)


def _summary() -> CaseSummary:
    return CaseSummary(
        case_id=CASE_ID,
        matter_code="11100000000013338W3420200001",
        window_region="510000",
        window_agency="sc.window",
        applicant="ab" * 32,
        state="open",
        submitted_at=AT,
        due_at=AT,
        updated_at=AT,
        agencies=("sc.window",),
        ready_regions=(),
        handling=(),
    )


def test_a_token_reads_back_as_the_position_it_was_made_from() -> None:
    token = write_page_token(_summary())
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert read_page_token(token) == (AT, CASE_ID)
    assert read_page_token("") is None


def _issued_padded() -> str:
    raw = json.dumps(["2026-12-07T08:00:00.123456Z", CASE_ID]).encode()
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-token!", id="not base64url"),
        pytest.param("!" + write_page_token(_summary()), id="a stray character in front"),
        pytest.param(write_page_token(_summary())[:8] + "." + write_page_token(_summary())[8:]),
        pytest.param(write_page_token(_summary()) + "==", id="padding added"),
        pytest.param(_issued_padded().replace("=", "") + "+/", id="standard alphabet"),
        pytest.param(write_page_token(_summary())[:-1], id="cut short"),
        pytest.param(base64.urlsafe_b64encode(b'["x", "y"]').decode().rstrip("="), id="no case"),
        pytest.param("A" * 600, id="too long"),
    ],
)
def test_a_token_not_issued_here_is_refused_naming_the_field(token: str) -> None:
    with pytest.raises(Refusal) as caught:
        read_page_token(token)
    assert caught.value.reason == "INVALID_ARGUMENT_FORMAT"
    assert caught.value.metadata == {"field": "page_token"}
    assert "page_token" in caught.value.message
