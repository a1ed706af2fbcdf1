"""Audit ids: what a client is given to name an audit record, ``<log origin>#<leaf index>``
(e.g. ``audit.tongban/330000#41``), made here and read back here only."""

from __future__ import annotations

from typing import Final

__all__ = ["audit_id", "parse_audit_id"]

MAX_INDEX_DIGITS: Final = 18  # below 2**63: an index PostgreSQL's bigint holds


def audit_id(origin: str, index: int) -> str:
    """The id of the record at `index` of the log `origin`."""
    return f"{origin}#{index}"


def parse_audit_id(text: str) -> tuple[str, int] | None:
    """(origin, index) of an audit id; None when `text` is not one."""
    origin, sep, index = text.rpartition("#")
    if not sep or not index.isdigit() or not index.isascii() or len(index) > MAX_INDEX_DIGITS:
        return None
    return origin, int(index)
