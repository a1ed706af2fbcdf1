"""What gRPC's own logger may say: a metadata value it cannot decode is withheld (moved here from
gateway.server, which installs it)."""

from __future__ import annotations

import logging

from gateway.audit import digest_form

__all__ = ["GRPC_CYTHON_LOGGER", "WithholdUndecodableMetadata", "withhold_undecodable_metadata"]

GRPC_CYTHON_LOGGER = "grpc._cython.cygrpc"


class WithholdUndecodableMetadata(logging.Filter):
    """grpc logs a metadata value that is not UTF-8 whole, at ERROR with a traceback ("Invalid
    encoding on %s"), before it reads it as Latin-1; the value may be a token or a citizen id.
    The record stays (a WARNING saying what happened) with the value withheld: its length and
    digest only. Installed on grpc's Cython logger by every `Gateway`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid encoding on %s" and isinstance(record.args, tuple):
            value = record.args[0] if record.args else b""
            record.msg = "a metadata value is not UTF-8 (read as Latin-1; value withheld: %s)"
            record.args = (digest_form(value if isinstance(value, bytes) else str(value)),)
            record.exc_info = record.exc_text = record.stack_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_WITHHOLD = WithholdUndecodableMetadata()


def withhold_undecodable_metadata() -> None:
    """Install the filter on grpc's Cython logger (once, however many gateways a process runs)."""
    grpc_log = logging.getLogger(GRPC_CYTHON_LOGGER)
    if _WITHHOLD not in grpc_log.filters:
        grpc_log.addFilter(_WITHHOLD)
