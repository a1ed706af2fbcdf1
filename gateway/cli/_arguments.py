"""Argument types shared by several verb groups: each turns one command-line word into a value
or refuses it with a message that says what was expected (argparse prints it, exit code 2)."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway._endpoints import split_endpoint
from gateway.provider._net import is_loopback
from registry import PROVINCES
from signer import KeyReference, Pkcs11Uri, SignerError, key_reference, parse_pkcs11_uri

__all__ = [
    "MAX_DURATION_DAYS",
    "parse_duration",
    "parse_endpoint",
    "parse_key",
    "parse_listen",
    "parse_loopback_endpoint",
    "parse_loopback_listen",
    "parse_name",
    "parse_pkcs11_key_uri",
    "parse_region",
    "parse_regions",
    "parse_time",
    "whole_number",
]

MAX_DURATION_DAYS = 36500  # days: any period longer than a century is a typo
MAX_DURATION_SECONDS = MAX_DURATION_DAYS * 86400
_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def whole_number(text: str, what: str, least: int, most: int | None = None) -> int:
    """`text` as a whole number from `least` to `most` (or up, if None), or the error
    "'text': `what` from `least` to `most`" (what: e.g. "the limit is a whole number")."""
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least or (most is not None and value > most):
        bound = "up" if most is None else f"to {most}"
        raise argparse.ArgumentTypeError(f"{text!r}: {what} from {least} {bound}")
    return value


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= MAX_DURATION_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a duration is more than 0 and at most {MAX_DURATION_DAYS}d"
        )
    return timedelta(seconds=seconds)


def parse_regions(text: str) -> list[str]:
    codes = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in codes if c not in PROVINCES]
    if not codes or unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or text!r}: not GB/T 2260 province-level codes (e.g. 330000,510000)"
        )
    return codes


def parse_region(text: str) -> str:
    """One GB/T 2260 province-level code (the first, if several are given)."""
    return parse_regions(text)[0]


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
        if value.tzinfo is not None:
            return value.astimezone(UTC)
    except (ValueError, OverflowError):
        pass
    raise argparse.ArgumentTypeError(
        f"{text!r} is not an ISO 8601 time with an offset, e.g. 2026-11-21T10:00:00+08:00"
    )


def parse_name(text: str) -> str:
    """An id, a code or a reason given on the command line: one non-empty line."""
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a non-empty value without line breaks or control characters"
        )
    return text


def _address(text: str, *, any_port: bool = False, loopback: bool = False) -> str:
    try:
        split_endpoint(text, any_port=any_port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    if loopback and not is_loopback(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a loopback address: plaintext gRPC stays on this machine "
            "(127.0.0.1, [::1], localhost)"
        )
    return text


def parse_listen(text: str) -> str:
    """HOST:PORT to listen on; port 0 picks a free one."""
    return _address(text, any_port=True)


def parse_endpoint(text: str) -> str:
    """HOST:PORT of a server to call."""
    return _address(text)


def parse_loopback_endpoint(text: str) -> str:
    """HOST:PORT of a data system: called in plaintext, so on this machine."""
    return _address(text, loopback=True)


def parse_loopback_listen(text: str) -> str:
    return _address(text, any_port=True, loopback=True)


def parse_key(text: str) -> KeyReference:
    """A private key: a file path, or the PKCS#11 URI of a key in a cryptographic module."""
    try:
        return key_reference(text, Path())
    except SignerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_pkcs11_key_uri(text: str) -> Pkcs11Uri:
    """A PKCS#11 URI (RFC 7512) naming a key in a cryptographic module."""
    try:
        return parse_pkcs11_uri(text)
    except SignerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
