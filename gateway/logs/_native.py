"""Relaying file descriptor 2: each line gRPC core (C) or anything else writes there, read
from a pipe and logged as an event (`relay_native_stderr` in `gateway.logs` sets the pipe up)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from typing import IO, Final

__all__ = ["MAX_NATIVE_LINE_BYTES", "relay_lines"]

MAX_NATIVE_LINE_BYTES: Final = 8192  # bytes of one line read from fd 2

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


def relay_lines(read_end: int) -> None:
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
