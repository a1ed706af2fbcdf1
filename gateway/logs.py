"""How Tongban writes its logs: one handler, structlog over the stdlib, nothing hand-formatted.

Every logger of the process (``tongban.*``, gRPC's ``grpc._cython.cygrpc``, ``asyncio``,
``psycopg``, ``redis``...) reaches one handler on the root logger, whose
`structlog.stdlib.ProcessorFormatter` turns each record into an event and renders it:

* ``json`` (whenever stderr is not a terminal): one JSON object per line, the fields of
  docs/logging.md. JSON escapes every control character, and the renderer also escapes the
  characters Python's ``str.splitlines`` breaks on (U+0085, U+2028, U+2029...), so no value can
  start a line, whatever a client put in a dataset id (threat T17);
* ``console`` (on a terminal): structlog's readable renderer, control characters escaped too.

``--log-format`` or ``TONGBAN_LOG_FORMAT`` forces either.

In an outage the same failure is logged for every request; `RepeatCollapser`, a filter of the
one handler, keeps the log readable: the first record of a (logger, level, message template) is
written, its repeats within ``TONGBAN_LOG_REPEAT_SECONDS`` (10 s; 0 turns collapsing off) are
counted, and when that interval ends one record says how many there were (``repeated``). A
traceback is written the first time an exception type is logged at a place (file and line),
later ones without it (``exception_type`` names it). The access log (``tongban.access``: one
event per audited access) is never collapsed.

Before rendering, `redact_event` removes credentials from the event and every field, the
exception text and the ``%s`` arguments included (threat T18): bearer values, JWT/JWS-shaped
strings, PEM private-key blocks, ``authorization`` metadata values, and raw subject ids (a
citizen id or credit code with a valid check character). Raw bytes in ``%s`` arguments are
logged by length only: gRPC logs an undecodable metadata value as its bytes (``Invalid encoding
on b'Bearer eyJ...'``), and those bytes can be a token or a citizen id.

gRPC core (C) writes its own lines to file descriptor 2, past Python's logging. Two controls:
``GRPC_TRACE`` is removed from the environment before gRPC loads (`scrub_grpc_trace`, called by
``gateway/__init__.py``: the tracers print every header, the token in hex too); and a serving
process relays fd 2 through `relay_native_stderr`, which reads each line the C core (or anything
else) writes there and logs it as an event, redacted and rendered like the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Final, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from registry import is_valid_citizen_id, is_valid_uscc

__all__ = [
    "DEFAULT_REPEAT_SECONDS",
    "FORMAT_ENV",
    "LOG_FORMATS",
    "MAX_VALUE_CHARS",
    "REPEAT_ENV",
    "LogFormat",
    "RepeatCollapser",
    "bind_worker",
    "configure_logging",
    "make_handler",
    "redact_event",
    "redact_text",
    "relay_native_stderr",
    "repeat_seconds_from_env",
    "scrub_grpc_trace",
]

LogFormat = Literal["json", "console"]
LOG_FORMATS: Final = ("json", "console")
FORMAT_ENV: Final = "TONGBAN_LOG_FORMAT"
REPEAT_ENV: Final = "TONGBAN_LOG_REPEAT_SECONDS"
DEFAULT_REPEAT_SECONDS: Final = 10.0  # a repeated record is written once per this interval
NEVER_COLLAPSED: Final = ("tongban.access",)  # loggers whose every record is written
MAX_REPEAT_KEYS: Final = 4096  # (logger, level, template) windows and traceback places remembered
MAX_VALUE_CHARS: Final = 4096  # characters of one logged string value (event, field)
MAX_EXCEPTION_CHARS: Final = 16384  # characters of a formatted exception
MAX_NATIVE_LINE_BYTES: Final = 8192  # bytes of one line read from fd 2

# What removes a credential from text. Order matters: a PEM block before the base64 in it.
_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# `authorization` metadata in the forms libraries print it: a: b, a=b, ('a', 'b'), "a": "b".
_AUTHORIZATION = re.compile(r"""(?i)(authorization['"]?\s*[:=,]\s*(?:b?['"])?)[^'"\r\n]*""")
# A password in a URL (redis://:pw@host, postgresql://user:pw@host) or a libpq DSN (password=pw).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
_DSN_PASSWORD = re.compile(r"""(?i)\b(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'"]+)""")
_BEARER = re.compile(r"(?i)\bbearer(?:\s|\\[trnx]|%20|\+)+[^\s'\",;)\]}]*")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,2}")
_THREE_SEGMENTS = re.compile(r"[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}")
# A citizen id between non-digits (it may sit inside a case id), a credit code between
# non-alphanumerics; redacted only when the check characters are right.
_CITIZEN_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")
_USCC = re.compile(r"(?<![0-9A-Za-z])[0-9A-Z]{18}(?![0-9A-Za-z])")

# Characters JSON leaves as they are but a line reader may take for the end of a line
# (str.splitlines: U+0085, U+2028, U+2029), or that act on a terminal (DEL, C1 controls) or
# reorder text (bidirectional controls): the renderers escape them.
_JSON_UNESCAPED = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_CONTROL_BUT_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)

REDACTED_PRIVATE_KEY: Final = "[redacted:private-key]"
REDACTED_CREDENTIAL: Final = "[redacted:credential]"
REDACTED_TOKEN: Final = "[redacted:token]"  # noqa: S105 - what replaces one
REDACTED_SUBJECT: Final = "[redacted:subject-id]"

_removed_grpc_trace: str | None = None


def scrub_grpc_trace(environ: MutableMapping[str, str] = os.environ) -> None:
    """Remove GRPC_TRACE before gRPC core loads: it reads it once, and its tracers (``http``,
    ``all``...) print every request header to stderr, the bearer token as text and in hex."""
    global _removed_grpc_trace  # noqa: PLW0603 - reported once logging is configured
    value = environ.pop("GRPC_TRACE", None)
    if value:
        _removed_grpc_trace = value


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def redact_text(text: str) -> str:
    """`text` without private keys, bearer values, tokens, authorization values, passwords in
    URLs and DSNs, or subject ids."""
    text = _PEM_PRIVATE.sub(REDACTED_PRIVATE_KEY, text)
    text = _AUTHORIZATION.sub(lambda m: m.group(1) + REDACTED_CREDENTIAL, text)
    text = _BEARER.sub(REDACTED_CREDENTIAL, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED_CREDENTIAL}@", text)
    text = _DSN_PASSWORD.sub(lambda m: m.group(1) + REDACTED_CREDENTIAL, text)
    text = _JWT.sub(REDACTED_TOKEN, text)
    text = _THREE_SEGMENTS.sub(REDACTED_TOKEN, text)
    text = _CITIZEN_ID.sub(
        lambda m: REDACTED_SUBJECT if is_valid_citizen_id(m.group(0).upper()) else m.group(0),
        text,
    )
    return _USCC.sub(lambda m: REDACTED_SUBJECT if is_valid_uscc(m.group(0)) else m.group(0), text)


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more characters]"


def _redact_value(value: object, limit: int = MAX_VALUE_CHARS) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {str(_redact_value(k)): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact_text(_bounded(str(value), limit))


def redact_event(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """structlog processor: every value of the event redacted and bounded (keys are ours)."""
    for key, value in list(event.items()):
        if key.startswith("_"):  # _record, _from_structlog: structlog's own
            continue
        limit = MAX_EXCEPTION_CHARS if key in ("exception", "stack") else MAX_VALUE_CHARS
        event[key] = _redact_value(value, limit)
    return event


def _escape_for_console(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """On a terminal: no control character of a value reaches it (a traceback keeps its lines)."""
    for key, value in list(event.items()):
        if isinstance(value, str) and not key.startswith("_"):
            pattern = _CONTROL_BUT_NEWLINE if key in ("exception", "stack") else _CONTROL
            event[key] = pattern.sub(_escape, value)
    return event


_FIRST: Final = ("ts", "level", "logger", "event", "pid", "worker")


def _schema_order(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """The documented fields first, in the documented order; then the event's own."""
    event["pid"] = event.pop("process", None)
    ordered = {key: event.pop(key) for key in _FIRST if key in event}
    return {**ordered, **event}


def _json_dumps(obj: Any, **_kwargs: Any) -> str:
    # ensure_ascii=False keeps Chinese readable; JSON escapes U+0000..U+001F itself.
    return _JSON_UNESCAPED.sub(_escape_json, json.dumps(obj, ensure_ascii=False, default=str))


def _escape_json(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def _drop_bytes_arguments(record: logging.LogRecord) -> bool:
    """Handler filter: raw bytes in ``%s`` arguments by their length only (see module doc)."""
    args = record.args
    if isinstance(args, tuple) and any(isinstance(a, bytes | bytearray) for a in args):
        record.args = tuple(
            f"<{len(a)} bytes>" if isinstance(a, bytes | bytearray) else a for a in args
        )
        if record.name == "grpc._cython.cygrpc":
            # Its traceback says only "can't decode byte 0x..": one line is enough.
            record.exc_info = None
            record.exc_text = None
    return True


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


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.CallsiteParameterAdder(
            {structlog.processors.CallsiteParameter.PROCESS}
        ),
    ]


def _renderer(fmt: LogFormat, *, colors: bool) -> list[Processor]:
    if fmt == "json":
        return [
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,
            _schema_order,
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ]
    return [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_event,
        _escape_for_console,
        _schema_order,
        # Colours only on a terminal: they are the renderer's own escapes, added after ours.
        structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback, timestamp_key="ts"
        ),
    ]


def resolve_format(requested: str | None, stream: IO[str]) -> LogFormat:
    """The format asked for (option, then TONGBAN_LOG_FORMAT), else by where the log goes."""
    chosen = requested or os.environ.get(FORMAT_ENV, "")
    if chosen in LOG_FORMATS:
        return "json" if chosen == "json" else "console"
    if chosen:
        raise ValueError(f"{FORMAT_ENV}: json or console, not {chosen!r}")
    return "console" if stream.isatty() else "json"


class _Handler(logging.StreamHandler[IO[str]]):
    def handleError(self, record: logging.LogRecord) -> None:
        # Never the stdlib's default (a traceback with the record's arguments, on stderr).
        with contextlib.suppress(Exception):
            self.stream.write(
                '{"level":"error","logger":"tongban.logs",'
                '"event":"a log record could not be written"}\n'
            )


_handler: logging.StreamHandler[IO[str]] | None = None


def make_handler(
    fmt: LogFormat,
    stream: IO[str],
    *,
    repeat_seconds: float = DEFAULT_REPEAT_SECONDS,
    collapser: RepeatCollapser | None = None,
) -> logging.StreamHandler[IO[str]]:
    """The one handler: `fmt` rendering of every record on `stream`, redacted, one per line,
    repeats collapsed (`collapser`, else a `RepeatCollapser(repeat_seconds)`)."""
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = _Handler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderer(fmt, colors=stream.isatty()),
            ],
        )
    )
    handler.addFilter(_drop_bytes_arguments)
    collapser = collapser if collapser is not None else RepeatCollapser(repeat_seconds)
    collapser.handler = handler
    handler.addFilter(collapser)
    return handler


def configure_logging(
    level: str = "WARNING", fmt: str | None = None, *, stream: IO[str] | None = None
) -> LogFormat | None:
    """Send every logger's records through one redacting handler on `stream` (stderr), and
    return the format chosen. Like `logging.basicConfig`, leave a process whose root logger
    already has someone else's handlers alone (a host application, pytest): return None."""
    global _handler  # noqa: PLW0603 - the one handler of the process
    stream = stream if stream is not None else sys.stderr
    chosen = resolve_format(fmt, stream)  # a wrong TONGBAN_LOG_FORMAT is refused in any case
    repeat_seconds = repeat_seconds_from_env()
    root = logging.getLogger()
    if any(h is not _handler for h in root.handlers):
        return None
    collapser = RepeatCollapser(repeat_seconds)
    handler = make_handler(chosen, stream, collapser=collapser)
    atexit.register(collapser.flush)  # the counts still pending when the process ends
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
    logging.captureWarnings(True)
    # An uncaught exception is one event with its traceback as a field, not lines of text.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    if _removed_grpc_trace is not None:
        logging.getLogger("tongban.logs").warning(
            "GRPC_TRACE=%s ignored: gRPC core's tracers print request headers, tokens "
            "included, to stderr",
            _removed_grpc_trace,
        )
    return chosen


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("tongban").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("tongban").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def bind_worker(number: int) -> None:
    """In a forked worker: its events carry ``worker`` (the handler itself is inherited)."""
    structlog.contextvars.bind_contextvars(worker=number)


# gRPC core's lines: "E1206 21:29:34.920954   13187 file.cc:123] message" (absl).
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)$", re.DOTALL)
_ABSL_LEVELS = {
    b"I": logging.INFO,
    b"W": logging.WARNING,
    b"E": logging.ERROR,
    b"F": logging.CRITICAL,
}


def _native_event(line: bytes) -> tuple[str, int, str]:
    """(logger, level, message) of one line written to fd 2."""
    line = line.rstrip(b"\r\n")
    match = _ABSL_LINE.match(line)
    if match is not None:
        where = match.group(2).decode("ascii", "backslashreplace")
        text = match.group(3).decode("utf-8", "backslashreplace")
        return "grpc.core", _ABSL_LEVELS[match.group(1)], f"{where}: {text}"
    return "stderr", logging.WARNING, line.decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def relay_native_stderr() -> Iterator[None]:
    """While inside: whatever is written to fd 2 (gRPC core's C logging, a stray print) becomes
    a log event, and the log itself goes to the original stderr. Forked children inherit both.
    """
    if _handler is None:
        raise RuntimeError("configure_logging() first")
    handler = _handler
    sys.stderr.flush()
    original = os.dup(2)
    log_stream = os.fdopen(
        os.dup(original), "w", encoding="utf-8", errors="backslashreplace", buffering=1
    )
    read_end, write_end = os.pipe()
    previous = handler.setStream(log_stream)
    os.dup2(write_end, 2)
    os.close(write_end)
    reader = threading.Thread(
        target=_relay, args=(read_end,), name="tongban-stderr-relay", daemon=True
    )
    reader.start()

    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(original, 2)  # this process's write end of the pipe closes: the reader ends
        reader.join(timeout=5)
        handler.setStream(previous if previous is not None else sys.stderr)
        log_stream.close()
        os.close(original)


def _relay(read_end: int) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as pipe, contextlib.suppress(OSError):
        reader = _lines(pipe)
        for line in reader:
            name, level, message = _native_event(line)
            # The line is its own template (no arguments: never %-formatted), so that repeats
            # of one line collapse and different lines do not.
            logging.getLogger(name).log(level, message)


def _lines(pipe: IO[bytes]) -> Iterator[bytes]:
    pending = b""
    while chunk := pipe.read(65536):
        pending += chunk
        while (end := pending.find(b"\n")) >= 0 or len(pending) > MAX_NATIVE_LINE_BYTES:
            cut = end + 1 if 0 <= end < MAX_NATIVE_LINE_BYTES else MAX_NATIVE_LINE_BYTES
            yield pending[:cut]
            pending = pending[cut:]
    if pending:
        yield pending
