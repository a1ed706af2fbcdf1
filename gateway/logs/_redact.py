"""What the log handler does to a record before it is written: credentials and subject ids
removed from every value (`redact_event`, `redact_text`), values bounded, control characters
escaped, the documented fields first, raw bytes in ``%s`` arguments logged by length only."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

from structlog.typing import EventDict, WrappedLogger

from registry import contains_citizen_id, is_valid_uscc

__all__ = [
    "MAX_EXCEPTION_CHARS",
    "MAX_VALUE_CHARS",
    "REDACTED_CREDENTIAL",
    "REDACTED_PRIVATE_KEY",
    "REDACTED_SUBJECT",
    "REDACTED_TOKEN",
    "drop_bytes_arguments",
    "escape_for_console",
    "json_dumps",
    "redact_event",
    "redact_text",
    "schema_order",
]

MAX_VALUE_CHARS: Final = 4096  # characters of one logged string value (event, field)
MAX_EXCEPTION_CHARS: Final = 16384  # characters of a formatted exception

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
# A citizen id between non-digits (it may sit inside a case id), in digits of any script and
# with a full-width X too (compared in NFKC form), a credit code between non-alphanumerics;
# redacted only when the check characters are right.
_CITIZEN_ID = re.compile(r"(?<!\d)\d{17}[\dXxＸｘ](?!\d)")
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
    text = _CITIZEN_ID.sub(  # any digits: full-width ones are compared in NFKC form
        lambda m: REDACTED_SUBJECT if contains_citizen_id(m.group(0)) else m.group(0), text
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


def escape_for_console(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """On a terminal: no control character of a value reaches it (a traceback keeps its lines)."""
    for key, value in list(event.items()):
        if isinstance(value, str) and not key.startswith("_"):
            pattern = _CONTROL_BUT_NEWLINE if key in ("exception", "stack") else _CONTROL
            event[key] = pattern.sub(_escape, value)
    return event


_FIRST: Final = ("ts", "level", "logger", "event", "pid", "worker")


def schema_order(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """The documented fields first, in the documented order; then the event's own."""
    event["pid"] = event.pop("process", None)
    ordered = {key: event.pop(key) for key in _FIRST if key in event}
    return {**ordered, **event}


def json_dumps(obj: Any, **_kwargs: Any) -> str:
    # ensure_ascii=False keeps Chinese readable; JSON escapes U+0000..U+001F itself.
    return _JSON_UNESCAPED.sub(_escape_json, json.dumps(obj, ensure_ascii=False, default=str))


def _escape_json(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def drop_bytes_arguments(record: logging.LogRecord) -> bool:
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
