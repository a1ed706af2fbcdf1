"""gateway/logs/: one event per line whatever a value holds (T17), no credential or raw subject
id in any part of a record (T18), gRPC core's own stderr lines relayed and redacted, GRPC_TRACE
removed before gRPC loads."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_contract import make_record
from cli_support import Run
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import REPO

from gateway.audit import MemoryAuditStore
from gateway.audit._log import AuditLog
from gateway.logs import (
    FORMAT_ENV,
    MAX_VALUE_CHARS,
    bind_worker,
    make_handler,
    redact_text,
    resolve_format,
    scrub_grpc_trace,
)

JWT = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJvcGVyYXRvci03IiwiYWdlbmN5Ijoic2MuaHJzcyJ9"
    ".MEUCIQDx1n0pQn2yq8pZKk9yK6cC1G7nJYw5rV3mWQ2a4XbC"
)
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n"
    "-----END PRIVATE KEY-----"
)
CITIZEN_ID = "500109196407144697"  # a valid GB 11643 id (check character right)
CITIZEN_ID_X = "51010419900101006X"  # valid too, its check character X (written x at times)
USCC = "91500112156194884Q"  # a valid unified social credit code
SECRETS = {
    "jwt": JWT,
    "bearer": f"Bearer {JWT[:20]}opaque-token-value",
    "garbage bearer": "Bearer not-a-jwt-Zm9vYmFy",
    "pem": PEM,
    "citizen id": CITIZEN_ID,
    "citizen id in a case id": f"CASE{CITIZEN_ID_X.lower()}-2",
    "uscc": USCC,
    "redis url": "redis://:s3cret-Redis-pw@10.0.0.5:6379/0",
    "postgres url": "postgresql://tongban:s3cret-Pg-pw@db.internal/tongban",
    "libpq dsn": "host=db user=tongban password='s3cret Pg pw' dbname=tongban",
}
# What must not survive of each: the token, the key body, the id.
MARKERS = {
    "jwt": [JWT, JWT.split(".")[1]],
    "bearer": ["opaque-token-value", "Bearer "],
    "garbage bearer": ["not-a-jwt-Zm9vYmFy", "Bearer "],
    "pem": ["MC4CAQAwBQYDK2VwBCIEIJ", "BEGIN PRIVATE KEY"],
    "citizen id": [CITIZEN_ID],
    "citizen id in a case id": [CITIZEN_ID_X[:-1]],
    "uscc": [USCC],
    "redis url": ["s3cret-Redis-pw"],
    "postgres url": ["s3cret-Pg-pw"],
    "libpq dsn": ["s3cret"],
}
HOSTILE = "si.participation\r\n2026-12-06 INFO tongban.access: allowed\u2028\x85\x1b[2J\x00end"


@pytest.fixture(params=["json", "console"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def logged(fmt: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own whose records reach only the handler under test."""
    stream = io.StringIO()
    handler = make_handler("json" if fmt == "json" else "console", stream)
    logger = logging.getLogger(f"tongban.test-logs.{fmt}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def _json_lines(text: str) -> list[dict[str, object]]:
    assert text.endswith("\n")
    lines = text.splitlines()  # also breaks at U+2028, U+0085...: none may be in the output
    assert lines == text.split("\n")[:-1]
    return [json.loads(line) for line in lines]


def test_a_crlf_dataset_id_cannot_start_a_line_in_json(
    logged: tuple[logging.Logger, io.StringIO], fmt: str
) -> None:
    logger, stream = logged
    logger.info("dataset %s allowed", HOSTILE)
    logger.info("access", extra={"dataset": HOSTILE, "purpose": HOSTILE[::-1]})
    text = stream.getvalue()
    if fmt == "console":
        assert len(text.splitlines()) == 2
        assert not {"\r", "\x1b", "\x00"} & set(text)
        assert "\\x0d\\x0a2026-12-06" in text
        return
    first, second = _json_lines(text)
    assert first["event"] == f"dataset {HOSTILE} allowed"  # escaped, not altered
    assert second["event"] == "access"
    assert second["dataset"] == HOSTILE
    assert second["purpose"] == HOSTILE[::-1]
    assert list(first)[:5] == ["ts", "level", "logger", "event", "pid"]
    assert first["level"] == "info"
    assert first["logger"] == "tongban.test-logs.json"


@pytest.mark.parametrize("what", list(SECRETS))
@pytest.mark.parametrize("where", ["message", "argument", "field", "exception", "nested field"])
def test_credentials_and_subject_ids_are_removed_from_every_part_of_a_record(
    logged: tuple[logging.Logger, io.StringIO], what: str, where: str
) -> None:
    logger, stream = logged
    secret = SECRETS[what]
    if where == "message":
        logger.warning(f"refused {secret} here")  # the attack: text in the message
    elif where == "argument":
        logger.warning("refused %s here (%r)", secret, secret)
    elif where == "field":
        logger.warning("refused", extra={"value": secret})
    elif where == "nested field":
        logger.warning("refused", extra={"metadata": [("authorization", secret), {"k": secret}]})
    else:
        try:
            raise ValueError(f"cannot parse {secret!r}")
        except ValueError:
            logger.exception("failed")
    text = stream.getvalue()
    assert text.strip(), "nothing was logged"
    for marker in MARKERS[what]:
        assert marker not in text, f"{what} in the {where}: {text}"
    assert "[redacted:" in text


def test_authorization_metadata_values_are_removed_in_the_forms_libraries_print(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    logger.warning("metadata (('authorization', 'opaque-value-1'),)")
    logger.warning("HDR: authorization: opaque-value-2")
    logger.warning('{"authorization": "opaque-value-3"}')
    logger.warning("authorization=opaque-value-4 next")
    text = stream.getvalue()
    assert "opaque-value" not in text
    assert text.count("[redacted:credential]") == 4


def test_raw_bytes_arguments_are_logged_by_length_only(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    """gRPC's `_decode` logs an undecodable metadata value as its bytes, with a traceback."""
    logger, stream = logged
    grpc_logger = logging.getLogger("grpc._cython.cygrpc")
    value = b"opaque\xfftoken-" + CITIZEN_ID.encode()
    for handler in logger.handlers:
        grpc_logger.addHandler(handler)
    grpc_logger.propagate = False
    # What the handler does alone: a Gateway built earlier in this process may have put its
    # own filter on grpc's logger (gateway/server.py WithholdUndecodableMetadata).
    filters = list(grpc_logger.filters)
    for found in filters:
        grpc_logger.removeFilter(found)
    try:
        try:
            value.decode("utf8")
        except UnicodeDecodeError:
            grpc_logger.exception("Invalid encoding on %s", value)
        logger.info("sent %s", b"opaque-bytes")
    finally:
        for handler in logger.handlers:
            grpc_logger.removeHandler(handler)
        grpc_logger.propagate = True
        for found in filters:
            grpc_logger.addFilter(found)
    text = stream.getvalue()
    assert "opaque" not in text
    assert CITIZEN_ID not in text
    assert f"Invalid encoding on <{len(value)} bytes>" in text
    assert "Traceback" not in text  # one line: the traceback only said "can't decode"


def test_an_oversize_value_is_bounded(logged: tuple[logging.Logger, io.StringIO], fmt: str) -> None:
    logger, stream = logged
    logger.warning("dataset", extra={"dataset": "d" * (MAX_VALUE_CHARS * 10)})
    text = stream.getvalue()
    assert len(text) < MAX_VALUE_CHARS + 500
    assert f"[{MAX_VALUE_CHARS * 9} more characters]" in text


def test_the_access_event_has_named_fields(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    async def append() -> None:
        log = AuditLog(
            MemoryAuditStore(),
            origin="audit.tongban/510000",
            key=ed25519.Ed25519PrivateKey.generate(),
            key_name="test",
        )
        await log.open()
        await log.append(make_record(3))
        await log.close()

    caplog.set_level(logging.INFO, logger="tongban.access")
    asyncio.run(append())
    (record,) = [r for r in caplog.records if r.name == "tongban.access"]
    assert record.getMessage() == "access"
    fields = record.__dict__
    assert fields["audit_id"] == "audit.tongban/510000#0"
    assert fields["dataset"] == "si.participation"
    assert fields["outcome"] == "allowed"
    assert fields["field_count"] == 2
    assert fields["cache_hit"] is False
    assert len(str(fields["subject"])) == 16


def test_redact_text_leaves_ordinary_text_alone() -> None:
    text = (
        "registry version 7 from 510000; seal-ab12cd34 TOTAL_PASSED; 500000 重庆 si.participation "
        "audit.tongban/510000#12 110105194912310022 "  # an id whose check character is wrong
        "redis://127.0.0.1:6379/0 http://127.0.0.1:9090/metrics password policy"
    )
    assert redact_text(text) == text


def test_a_citizen_id_in_full_width_digits_is_redacted() -> None:
    """Full-width digits (and X) are the same citizen id in NFKC form: redacted as the ASCII
    one is; a wrong check character stays."""
    for citizen in (
        "11010519491231002X",
        "１１０１０５１９４９１２３１００２Ｘ",
        "１１０１０５１９４９１２３１００２x",
    ):
        redacted = redact_text(f"asked for {citizen} today")
        assert citizen not in redacted
        assert redacted.startswith("asked for ")
        assert redacted.endswith(" today")
    assert (
        redact_text("１１０１０５１９４９１２３１００２２")
        == "１１０１０５１９４９１２３１００２２"
    )


def test_the_format_follows_the_option_then_the_environment_then_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv(FORMAT_ENV, raising=False)
    assert resolve_format(None, io.StringIO()) == "json"
    assert resolve_format(None, Tty()) == "console"
    assert resolve_format("json", Tty()) == "json"
    monkeypatch.setenv(FORMAT_ENV, "console")
    assert resolve_format(None, io.StringIO()) == "console"
    assert resolve_format("json", io.StringIO()) == "json"
    monkeypatch.setenv(FORMAT_ENV, "xml")
    with pytest.raises(ValueError, match="json or console"):
        resolve_format(None, io.StringIO())


def test_grpc_trace_is_removed_before_grpc_loads() -> None:
    environ = {"GRPC_TRACE": "http,hpack_parser", "GRPC_VERBOSITY": "DEBUG"}
    scrub_grpc_trace(environ)
    assert environ == {"GRPC_VERBOSITY": "DEBUG"}
    # And in a real process: the gateway package goes first, whatever imports grpc after.
    done = subprocess.run(
        [sys.executable, "-c", "import gateway, os, grpc; print(os.environ.get('GRPC_TRACE'))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GRPC_TRACE": "all"},
    )
    assert done.stdout.strip() == "None"


RELAY_SCRIPT = r"""
import logging, os, sys
from gateway.logs import configure_logging, relay_native_stderr
assert configure_logging("INFO", "json") == "json"
with relay_native_stderr():
    # What gRPC core (C, absl) writes to fd 2, and a stray Python write to sys.stderr.
    os.write(2, b"E1206 21:29:34.920954   13187 hpack_parser.cc:713] HDR: authorization: "
                b"Bearer TOKEN-ONE\nI1206 21:29:34.9 13187 x.cc:1] part")
    os.write(2, b"ial line " + sys.argv[1].encode() + b"\n")
    print("stray\r\x1b[31m Bearer TOKEN-TWO", file=sys.stderr)
    logging.getLogger("tongban.test").warning("python %s", "event")
    os.write(2, b"unterminated \xff\xfe")
"""


def test_what_is_written_to_fd_2_becomes_redacted_json_events(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with err.open("wb") as stderr:
        subprocess.run(
            [sys.executable, "-c", RELAY_SCRIPT, CITIZEN_ID],
            cwd=REPO,
            stderr=stderr,
            check=True,
        )
    text = err.read_text(encoding="utf-8")
    events = _json_lines(text)
    by_event = {str(e["event"]): e for e in events}
    assert by_event["hpack_parser.cc:713: HDR: authorization: [redacted:credential]"] == {
        **by_event["hpack_parser.cc:713: HDR: authorization: [redacted:credential]"],
        "logger": "grpc.core",
        "level": "error",
    }
    assert "x.cc:1: partial line [redacted:subject-id]" in by_event
    assert by_event["python event"]["logger"] == "tongban.test"
    assert any(e["logger"] == "stderr" and "stray" in str(e["event"]) for e in events)
    assert any(str(e["event"]).startswith("unterminated ") for e in events)
    for leaked in ("TOKEN-", CITIZEN_ID, "\x1b"):
        assert leaked not in text


def test_a_workers_events_say_which_worker(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged

    def in_worker() -> None:
        bind_worker(3)
        logger.warning("serving")

    contextvars.copy_context().run(in_worker)
    logger.warning("supervising")
    text = stream.getvalue()
    worker, supervisor = text.splitlines()
    assert ("worker=3" in worker) or json.loads(worker)["worker"] == 3
    assert "worker" not in supervisor


def test_a_wrong_log_format_is_a_usage_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run("--log-format", "xml", "token", "issue", "--help")
    assert code == 2
    assert "--log-format" in err
    monkeypatch.setenv(FORMAT_ENV, "xml")
    code, _, err = run("token", "issue", "--pki", "nowhere", "--agency", "a", "--operator", "o")
    assert code == 2
    assert f"{FORMAT_ENV}: json or console, not 'xml'" in err


UNCAUGHT_SCRIPT = r"""
import threading
from gateway.logs import configure_logging
configure_logging("WARNING", "json")
def fail():
    raise RuntimeError("in a thread: Bearer TOKEN-THREE")
thread = threading.Thread(target=fail, name="worker-thread")
thread.start()
thread.join()
raise ValueError("could not read Bearer TOKEN-FOUR\nsecond line")
"""


def test_an_uncaught_exception_is_one_redacted_event() -> None:
    done = subprocess.run(
        [sys.executable, "-c", UNCAUGHT_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    in_thread, in_main = _json_lines(done.stderr)
    assert in_thread["event"] == "uncaught exception in thread worker-thread"
    assert in_main["event"] == "uncaught exception"
    assert in_main["level"] == "critical"
    assert "ValueError: could not read [redacted:credential]" in str(in_main["exception"])
    assert "TOKEN-" not in done.stderr
