"""Issue 14, point 4: logs stay readable in an outage. The one handler's `RepeatCollapser`
writes the first record of a (logger, level, template), counts its repeats within the interval
and then writes one record with the count; a traceback only the first time its exception type is
logged at a place; the access log is never collapsed. A fake clock drives the interval."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.logs import (
    DEFAULT_REPEAT_SECONDS,
    REPEAT_ENV,
    RepeatCollapser,
    make_handler,
    repeat_seconds_from_env,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Logged:
    stream: io.StringIO
    clock: FakeClock
    collapser: RepeatCollapser

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def events(self) -> list[str]:
        return [str(line["event"]) for line in self.lines()]


@pytest.fixture
def logged() -> Iterator[Logged]:
    """Loggers under ``tongban.test-repeats`` and ``tongban.access`` that reach only a JSON
    handler with a collapser on a fake clock (10 s)."""
    clock = FakeClock()
    collapser = RepeatCollapser(10.0, clock=clock, background=False)
    stream = io.StringIO()
    handler = make_handler("json", stream, collapser=collapser)
    loggers = [logging.getLogger(n) for n in ("tongban.test-repeats", "tongban.access")]
    saved = [(lg.propagate, lg.level, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.propagate = False
        lg.setLevel(logging.DEBUG)
        lg.handlers[:] = [handler]
    try:
        yield Logged(stream, clock, collapser)
    finally:
        for lg, (propagate, level, handlers) in zip(loggers, saved, strict=True):
            lg.propagate, lg.level, lg.handlers[:] = propagate, level, handlers


LOG = logging.getLogger("tongban.test-repeats")


def test_a_repeat_is_written_once_then_counted_at_the_end_of_the_interval(logged: Logged) -> None:
    for n in range(300):
        LOG.warning("audit commit of %d records failed", n)
        logged.clock.now += 0.01  # 300 in 3 s
    assert logged.events() == ["audit commit of 0 records failed"]  # the first, never dropped
    logged.clock.now += 10
    LOG.warning("audit commit of %d records failed", 7)  # the next interval's first
    lines = logged.lines()
    assert [line["event"] for line in lines] == [
        "audit commit of 0 records failed",
        "audit commit of %d records failed [repeated 299 more times in 10s]",
        "audit commit of 7 records failed",
    ]
    assert lines[1]["repeated"] == 299
    assert (lines[1]["level"], lines[1]["logger"]) == ("warning", "tongban.test-repeats")


def test_only_the_same_logger_level_and_template_collapse(logged: Logged) -> None:
    other = logging.getLogger("tongban.test-repeats.other")
    other.propagate = True
    for _ in range(3):
        LOG.warning("the store failed: %s", "a")
        LOG.error("the store failed: %s", "a")
        LOG.warning("the cache failed: %s", "a")
        other.warning("the store failed: %s", "a")
    assert logged.events() == [
        "the store failed: a",
        "the store failed: a",
        "the cache failed: a",
        "the store failed: a",
    ]
    logged.collapser.flush()
    repeats = [line["repeated"] for line in logged.lines() if "repeated" in line]
    assert repeats == [2, 2, 2, 2]


def test_the_access_log_is_never_collapsed(logged: Logged) -> None:
    access = logging.getLogger("tongban.access")
    for n in range(200):
        access.info("access", extra={"audit_id": f"o#{n}"})
    lines = logged.lines()
    assert len(lines) == 200
    assert [line["audit_id"] for line in lines] == [f"o#{n}" for n in range(200)]
    logged.collapser.flush()
    assert len(logged.lines()) == 200  # nothing counted, nothing to say


def _fail(kind: type[Exception]) -> None:
    try:
        raise kind("the write failed")
    except kind:
        LOG.exception("audit commit failed")


def _fail_elsewhere() -> None:
    try:
        raise OSError("the write failed")
    except OSError:
        LOG.exception("audit commit failed elsewhere")


def test_a_traceback_only_the_first_time_at_a_place(logged: Logged) -> None:
    for _ in range(3):
        _fail(OSError)
        logged.clock.now += 11  # each in an interval of its own: every line is written
    _fail(ValueError)  # another exception type at the same place
    _fail_elsewhere()  # the same type at another place
    _fail_elsewhere()
    lines = logged.lines()
    assert [line["event"] for line in lines] == ["audit commit failed"] * 4 + [
        "audit commit failed elsewhere"
    ]
    with_traceback = ["exception" in line for line in lines]
    assert with_traceback == [True, False, False, True, True]
    assert lines[1]["exception_type"] == "builtins.OSError"
    assert "Traceback" in str(lines[0]["exception"])


def test_no_interval_turns_collapsing_off_but_not_the_traceback_rule() -> None:
    stream = io.StringIO()
    handler = make_handler("json", stream, repeat_seconds=0)
    logger = logging.getLogger("tongban.test-repeats.off")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        for _ in range(5):
            try:
                raise OSError("x")
            except OSError:
                logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 5
    assert ["exception" in line for line in lines] == [True, False, False, False, False]


def test_the_count_is_written_by_itself_when_nothing_else_is_logged() -> None:
    stream = io.StringIO()
    handler = make_handler("json", stream, repeat_seconds=0.2)
    logger = logging.getLogger("tongban.test-repeats.background")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for _ in range(4):
            logger.warning("the audit database is not available")
        deadline = time.monotonic() + 10  # a hang guard, never a bound asserted
        while "repeated" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("repeated") for line in lines] == [None, 3]


@pytest.mark.parametrize(
    ("value", "seconds"), [("", DEFAULT_REPEAT_SECONDS), ("0", 0.0), (" 2.5 ", 2.5)]
)
def test_the_interval_from_the_environment(value: str, seconds: float) -> None:
    assert repeat_seconds_from_env({REPEAT_ENV: value}) == seconds


@pytest.mark.parametrize("value", ["ten", "-1", "nan", "1e9"])
def test_a_wrong_interval_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=REPEAT_ENV):
        repeat_seconds_from_env({REPEAT_ENV: value})


def test_a_forked_worker_counts_afresh() -> None:
    """`tongban gateway serve --workers N` forks after logging began: the child gets fresh locks
    (the parent's counting thread may hold one at the fork) and none of the parent's counts."""
    stream = io.StringIO()
    handler = make_handler("json", stream, repeat_seconds=60)
    logger = logging.getLogger("tongban.test-repeats.fork")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for _ in range(3):
            logger.warning("the audit database is not available")  # the thread is counting
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's result comes back through the pipe
            try:
                stream.seek(0)
                stream.truncate()
                logger.warning("the audit database is not available")
                os.write(write_end, stream.getvalue().encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            written = pipe.read().decode()
        os.waitpid(child, 0)
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(text) for text in written.splitlines()]
    assert line["event"] == "the audit database is not available"
    assert "repeated" not in line


def test_a_wrong_interval_in_the_environment_stops_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(REPEAT_ENV, "soon")
    with pytest.raises(SystemExit) as stopped:
        main(["pki", "init", "--out", str(tmp_path / "pki"), "--regions", "330000"])
    assert stopped.value.code == 2
    assert REPEAT_ENV in capsys.readouterr().err
    assert not (tmp_path / "pki").exists()  # stopped before it ran
