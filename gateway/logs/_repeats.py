"""The repeat collapser: in an outage the same failure is logged for every request; the first
record of a (logger, level, message template) is written and its repeats within an interval are
counted, then said in one record; a traceback is written once per place."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_REPEAT_SECONDS",
    "MAX_REPEAT_KEYS",
    "NEVER_COLLAPSED",
    "REPEAT_ENV",
    "RepeatCollapser",
    "repeat_seconds_from_env",
]

REPEAT_ENV: Final = "TONGBAN_LOG_REPEAT_SECONDS"
DEFAULT_REPEAT_SECONDS: Final = 10.0  # a repeated record is written once per this interval
NEVER_COLLAPSED: Final = ("tongban.access",)  # loggers whose every record is written
MAX_REPEAT_KEYS: Final = 4096  # (logger, level, template) windows and traceback places remembered


@dataclass
class _Window:
    ends: float  # monotonic time the interval ends
    logger: str
    level: int
    template: str
    repeated: int = 0


_collapsers: weakref.WeakSet[RepeatCollapser] = weakref.WeakSet()


def _reset_collapsers_after_fork() -> None:
    for collapser in list(_collapsers):
        collapser._after_fork()


os.register_at_fork(after_in_child=_reset_collapsers_after_fork)


def _template(record: logging.LogRecord) -> str:
    """The record's message before its arguments: the stdlib's format string, or a structlog
    event's ``event``."""
    if isinstance(record.msg, Mapping):  # structlog's wrap_for_formatter: the event dict
        return str(record.msg.get("event", ""))
    return str(record.msg)


class RepeatCollapser(logging.Filter):
    """Handler filter: the first record of each (logger, level, template) within
    `interval_seconds` passes, its repeats are counted, and once the interval has ended one
    record with ``repeated`` = the count is written through `handler`. A traceback passes the
    first time its exception type is logged at a place (logger, file, line); later records there
    keep their line and ``exception_type``, not the traceback. `NEVER_COLLAPSED` loggers pass.

    The counts are written when a later record arrives or, without one, by a daemon thread at
    the interval's end (`background`); `flush()` writes every pending count at once."""

    def __init__(
        self,
        interval_seconds: float = DEFAULT_REPEAT_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        super().__init__()
        self.interval_seconds = interval_seconds
        self.handler: logging.Handler | None = None
        self._clock = clock
        self._background = background
        self._lock = threading.Lock()
        self._due = threading.Condition(self._lock)
        self._windows: OrderedDict[tuple[str, int, str], _Window] = OrderedDict()
        self._traced: OrderedDict[tuple[str, str, int, str], None] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._writing = threading.local()
        _collapsers.add(self)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks (the parent's thread may have held one), no thread,
        and no counts of the parent's records (the parent says those)."""
        self._lock = threading.Lock()
        self._due = threading.Condition(self._lock)
        self._thread = None
        self._windows.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._writing, "active", False) or record.name.startswith(NEVER_COLLAPSED):
            return True
        self._strip_repeated_traceback(record)
        if self.interval_seconds <= 0:
            return True
        key = (record.name, record.levelno, _template(record))
        with self._lock:
            now = self._clock()
            ended = self._take_ended(now)
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now + self.interval_seconds, *key)
                while len(self._windows) > MAX_REPEAT_KEYS:  # the oldest, said now
                    ended.append(self._windows.popitem(last=False)[1])
                passes = True
            else:
                window.repeated += 1
                passes = False
                self._wake()
        self._write(ended)
        return passes

    def flush(self) -> None:
        """Write every count still pending, whether or not its interval has ended."""
        with self._lock:
            pending = list(self._windows.values())
            self._windows.clear()
        self._write(pending)

    def _strip_repeated_traceback(self, record: logging.LogRecord) -> None:
        exc_info = record.exc_info
        if not exc_info or exc_info[0] is None:
            return
        kind = f"{exc_info[0].__module__}.{exc_info[0].__qualname__}"
        place = (record.name, record.pathname, record.lineno, kind)
        with self._lock:
            seen = place in self._traced
            self._traced[place] = None
            self._traced.move_to_end(place)
            while len(self._traced) > MAX_REPEAT_KEYS:
                self._traced.popitem(last=False)
        if seen:
            record.exc_info = None
            record.exc_text = None
            record.exception_type = kind

    def _take_ended(self, now: float) -> list[_Window]:
        """Under the lock: the windows whose interval has ended, removed. They all last one
        interval and are kept in the order they began, so the ended ones are at the front."""
        ended: list[_Window] = []
        while self._windows:
            first = next(iter(self._windows.values()))
            if first.ends > now:
                break
            ended.append(self._windows.popitem(last=False)[1])
        return ended

    def _wake(self) -> None:
        """Under the lock: make sure a thread writes the counts when their interval ends."""
        if not self._background:
            return
        if self._thread is None or not self._thread.is_alive():  # none yet, or lost in a fork
            self._thread = threading.Thread(
                target=self._run, name="tongban-log-repeats", daemon=True
            )
            self._thread.start()
        self._due.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                counting = next((w.ends for w in self._windows.values() if w.repeated), None)
                if counting is not None:  # the first to end of those with a count
                    self._due.wait(max(counting - self._clock(), 0.01))
                else:
                    self._due.wait()
                ended = self._take_ended(self._clock())
            self._write(ended)

    def _write(self, windows: list[_Window]) -> None:
        handler = self.handler
        if handler is None:
            return
        for window in windows:
            if not window.repeated:
                continue
            record = logging.LogRecord(
                window.logger,
                window.level,
                __file__,
                0,
                "%s [repeated %d more times in %gs]",
                (window.template, window.repeated, self.interval_seconds),
                None,
            )
            record.repeated = window.repeated
            self._writing.active = True
            try:
                handler.handle(record)
            finally:
                self._writing.active = False


def repeat_seconds_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """``TONGBAN_LOG_REPEAT_SECONDS``, else DEFAULT_REPEAT_SECONDS; 0 turns collapsing off."""
    text = environ.get(REPEAT_ENV, "").strip()
    if not text:
        return DEFAULT_REPEAT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        raise ValueError(f"{REPEAT_ENV}: seconds from 0 to 86400, not {text!r}")
    return seconds
