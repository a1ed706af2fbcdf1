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

This module configures the handler; its parts: `_redact` (redaction, bounds, escapes, field
order), `_repeats` (`RepeatCollapser`) and `_native` (the lines read from fd 2).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, MutableMapping
from types import TracebackType
from typing import IO, Final, Literal

import structlog
from structlog.typing import Processor

from gateway.logs._native import relay_lines
from gateway.logs._redact import (
    MAX_VALUE_CHARS,
    drop_bytes_arguments,
    escape_for_console,
    json_dumps,
    redact_event,
    redact_text,
    schema_order,
)
from gateway.logs._repeats import (
    DEFAULT_REPEAT_SECONDS,
    REPEAT_ENV,
    RepeatCollapser,
    repeat_seconds_from_env,
)

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

_removed_grpc_trace: str | None = None


def scrub_grpc_trace(environ: MutableMapping[str, str] = os.environ) -> None:
    """Remove GRPC_TRACE before gRPC core loads: it reads it once, and its tracers (``http``,
    ``all``...) print every request header to stderr, the bearer token as text and in hex."""
    global _removed_grpc_trace  # noqa: PLW0603 - reported once logging is configured
    value = environ.pop("GRPC_TRACE", None)
    if value:
        _removed_grpc_trace = value


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
            schema_order,
            structlog.processors.JSONRenderer(serializer=json_dumps),
        ]
    return [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_event,
        escape_for_console,
        schema_order,
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
    handler.addFilter(drop_bytes_arguments)
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
        target=relay_lines, args=(read_end,), name="tongban-stderr-relay", daemon=True
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
