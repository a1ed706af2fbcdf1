"""The audit record bounds every value it holds (docs/threats.md T16): a value outside its
field's grammar or over its bound is recorded as length and digest, never raw, and never
refused; the digest form decodes back to the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from audit_contract import make_record

from gateway.audit import (
    FIELD_GRAMMARS,
    MAX_RECORD_FIELDS,
    MAX_RECORD_TEXT_CHARS,
    AuditRecord,
    digest_form,
    is_digest_form,
    recordable,
)

CITIZEN_ID = "11010519491231002X"  # valid GB 11643 (the standard's example)
HUGE = "C" * (9 * 1024 * 1024)


def test_the_digest_form_is_sha256_and_utf8_length() -> None:
    assert digest_form("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad;len=3"
    )
    assert digest_form("浙") == f"sha256:{hashlib.sha256('浙'.encode()).hexdigest()};len=3"
    # a lone surrogate has no UTF-8, and still a digest (the audit never crashes on a value)
    assert is_digest_form(digest_form("\ud800"))


# (field, value, recorded raw?)
BOUNDS = [
    ("case_id", "CASE-2026-0001", True),
    ("case_id", "浙人社办〔2026〕12号", True),
    ("case_id", "c" * MAX_RECORD_TEXT_CHARS, True),
    ("case_id", "c" * (MAX_RECORD_TEXT_CHARS + 1), False),
    ("case_id", HUGE, False),
    ("case_id", "C-1\n", False),
    ("case_id", "C-1\u202e", False),  # a format character (right-to-left override)
    ("case_id", f"case of {CITIZEN_ID}", False),
    ("case_id", CITIZEN_ID.lower(), False),
    ("case_id", "\ud800", False),
    ("request_id", "req-1", True),
    ("request_id", "r" * MAX_RECORD_TEXT_CHARS, True),
    ("request_id", "r" * (MAX_RECORD_TEXT_CHARS + 1), False),
    ("request_id", "r 1", False),
    ("request_id", CITIZEN_ID, False),
    ("request_id", "请求-1", False),
    ("purpose", "SI-TRANSFER", True),
    ("purpose", CITIZEN_ID, False),
    ("purpose", "1SI", False),
    ("purpose", "P" * 65, False),
    ("dataset", "si.participation", True),
    ("dataset", CITIZEN_ID, False),
    ("dataset", "si participation", False),
    ("caller_agency", "sc.hrss", True),
    ("caller_agency", "x" * 1000, False),
    ("caller_operator", "经办人 张三", True),
    ("caller_operator", CITIZEN_ID, False),
    ("caller_operator", "op\x00", False),
    ("caller_operator", "o" * (MAX_RECORD_TEXT_CHARS + 1), False),
    ("gateway", "gateway-510000", True),
    ("gateway", "g" * 200, False),
    ("region", "510000", True),
    ("region", "5100001", False),
    ("caller_region", CITIZEN_ID, False),
    ("provider_region", "33000A", False),
    ("rpc", "DataExchange.Query", True),
    ("rpc", "/tongban.v1.DataExchange/Query", True),
    ("rpc", "/tongban.v1.Oversight/SubjectAccess\n", False),
    ("rpc", "tongban.v1.DataExchange/Query", False),
    ("rpc", "x" * 100, False),
    ("reason", "FIELD_NOT_ALLOWED", True),
    ("reason", "field not allowed", False),
    ("reason", "A" * 65, False),
    ("agreement_id", "CY-SI-2026", True),
    ("agreement_id", "CY SI", False),
    ("agreement_id", "removed records 0 to 7", True),  # an Audit.Prune record's range
    ("sealed_digest", "ab" * 32, True),
    ("sealed_digest", "AB" * 32, False),
]


@pytest.mark.parametrize(
    ("name", "value", "raw"),
    BOUNDS,
    ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BOUNDS)],
)
def test_each_value_is_recorded_raw_only_within_its_grammar_and_bound(
    name: str, value: str, raw: bool
) -> None:
    record = dataclasses.replace(make_record(1), **{name: value})
    held = getattr(record, name)
    assert held == (value if raw else digest_form(value))
    if not raw:
        assert value not in record.canonical.decode()
    assert AuditRecord.from_canonical(record.canonical) == record


def test_every_text_field_has_a_grammar() -> None:
    text = {
        f.name
        for f in dataclasses.fields(AuditRecord)
        if f.init and f.type == "str" and f.name != "subject"
    }
    assert text == set(FIELD_GRAMMARS)


@pytest.mark.parametrize(
    ("fields", "recorded"),
    [
        (("name", "status"), ("name", "status")),
        ((CITIZEN_ID, "name"), (digest_form(CITIZEN_ID), "name")),
        (("f" * 65,), (digest_form("f" * 65),)),
        (
            tuple(f"f{i}" for i in range(MAX_RECORD_FIELDS)),
            tuple(f"f{i}" for i in range(MAX_RECORD_FIELDS)),
        ),
        (
            tuple(f"f{i}" for i in range(MAX_RECORD_FIELDS + 1)),
            (digest_form("\n".join(sorted(f"f{i}" for i in range(MAX_RECORD_FIELDS + 1)))),),
        ),
    ],
    ids=["names", "a citizen id", "too long", "as many as allowed", "too many"],
)
def test_fields_are_bounded_in_number_and_grammar(
    fields: tuple[str, ...], recorded: tuple[str, ...]
) -> None:
    record = dataclasses.replace(make_record(1), fields=fields)
    assert record.fields == recorded
    assert AuditRecord.from_canonical(record.canonical).canonical == record.canonical


def test_a_record_of_megabyte_values_is_a_few_hundred_bytes() -> None:
    values = dict.fromkeys(FIELD_GRAMMARS, HUGE)
    record = dataclasses.replace(
        make_record(1), **values, fields=(HUGE, *(f"f{i}" for i in range(99)))
    )
    assert len(record.canonical) < 4096
    assert all(is_digest_form(getattr(record, name)) for name in FIELD_GRAMMARS)


def test_a_digest_form_is_kept_as_it_is() -> None:
    once = recordable(HUGE, FIELD_GRAMMARS["case_id"])
    assert recordable(once, FIELD_GRAMMARS["case_id"]) == once
    for name, grammar in FIELD_GRAMMARS.items():
        assert recordable(once, grammar) == once, name


def test_a_value_that_is_not_text_is_refused() -> None:
    with pytest.raises(TypeError):
        dataclasses.replace(make_record(1), case_id=12)  # type: ignore[arg-type]


def test_stored_bytes_decode_to_themselves_even_from_before_the_bounds() -> None:
    """A record written before the bounds is evidence: it decodes, and verifies, unchanged."""
    document = json.loads(make_record(1).canonical)
    document["case_id"] = "c" * 500
    document["purpose"] = "1-OLD"
    legacy = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    decoded = AuditRecord.from_canonical(legacy)
    assert decoded.canonical == legacy
    assert decoded.case_id == "c" * 500
    # a record made now from the same values is bounded
    assert dataclasses.replace(decoded, case_id=decoded.case_id).case_id == digest_form("c" * 500)


def test_a_record_like_the_last_is_bounded_as_any_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each field's last value is recorded as it was without being tested again: records made
    one after another, values repeated, out of bounds or not, have the bytes of records made
    with nothing remembered."""
    from gateway.audit import _record

    variants: list[dict[str, object]] = [
        {},
        {"request_id": "r 1", "purpose": "11010519491231002X"},
        {},
        {"fields": ("name", "x" * 300), "caller_operator": "op\n"},
        {"fields": ("name", "x" * 300)},
        {"case_id": "case 9", "fields": ()},
        {"purpose": "11010519491231002X"},
        {},
    ]

    def made() -> list[bytes]:
        return [dataclasses.replace(make_record(i), **v).canonical for i, v in enumerate(variants)]

    remembered = made()

    class Forgetful(dict[str, tuple[str, str]]):
        def __setitem__(self, key: str, value: tuple[str, str]) -> None:
            pass  # nothing kept

    class ForgetfulList(list[tuple[tuple[str, ...], tuple[str, ...]]]):
        def __setitem__(self, index: object, value: object) -> None:
            pass

    monkeypatch.setattr(_record, "_LAST_RECORDED", Forgetful())
    monkeypatch.setattr(_record, "_LAST_FIELDS", ForgetfulList([((), ())]))
    assert made() == remembered
    assert b"sha256:" in remembered[1]
    assert b"sha256:" in remembered[3]


def test_a_records_time_is_written_as_strftime_writes_it() -> None:
    """The time text without strftime's call: the same text for any time and offset (a year
    below 1000, which strftime writes unpadded, is still written by it)."""
    import random
    from datetime import UTC, datetime, timedelta, timezone

    from gateway.audit._record import _time

    rng = random.Random(7)
    times = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1000, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 21, 9, 30, 0, 5, tzinfo=timezone(timedelta(hours=8))),
    ]
    times += [
        datetime(2, 1, 1, tzinfo=UTC)
        + timedelta(microseconds=rng.randrange(315_000_000_000_000_000))
        for _ in range(2000)
    ]
    for value in times:
        assert _time(value) == value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_record_of_a_call_that_is_not_a_query_fills_what_such_a_call_lacks() -> None:
    """`AuditRecord.of_call` (oversight, the tracker, cases, seals, malformed requests): the
    gateway after its region, the provider region its own unless given, never a cache hit nor
    an agreement, the latency counted from `started`; its bytes are those of the same record
    made field by field, and it is bounded as any record is."""
    import time
    from datetime import UTC, datetime

    from gateway.audit import Outcome

    at = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    started = time.perf_counter() - 0.25
    made = AuditRecord.of_call(
        time=at,
        region="500000",
        rpc="/tongban.v1.Tracker/Trail",
        outcome=Outcome.DENIED,
        reason="SUBJECT_NOT_CALLER",
        started=started,
        caller_agency="cq.hrss",
        caller_region="500000",
        fields=("returned=0",),
        registry_version=3,
    )
    assert 250_000 <= made.latency_us < 60_000_000
    by_hand = AuditRecord(
        time=at,
        gateway="gateway-500000",
        region="500000",
        rpc="/tongban.v1.Tracker/Trail",
        request_id="",
        caller_agency="cq.hrss",
        caller_operator="",
        caller_region="500000",
        provider_region="500000",
        dataset="",
        purpose="",
        case_id="",
        subject="",
        fields=("returned=0",),
        outcome=Outcome.DENIED,
        reason="SUBJECT_NOT_CALLER",
        cache_hit=False,
        latency_us=made.latency_us,
        sealed_digest="",
        registry_version=3,
        agreement_id="",
    )
    assert made.canonical == by_hand.canonical
    unread = AuditRecord.of_call(
        time=at, region="510000", rpc="/x.Y/Z", outcome=Outcome.DENIED, provider_region=""
    )
    assert (unread.gateway, unread.provider_region, unread.latency_us) == ("gateway-510000", "", 0)
    named = AuditRecord.of_call(
        time=at, region="510000", rpc="/x.Y/Z", outcome=Outcome.ALLOWED, gateway="gw-a"
    )
    assert named.gateway == "gw-a"
    bounded = AuditRecord.of_call(
        time=at, region="510000", rpc="/x.Y/Z", outcome=Outcome.DENIED, purpose=CITIZEN_ID
    )
    assert CITIZEN_ID not in bounded.canonical.decode()
