"""The root of the gateway's error tree, free of gRPC and protobuf.

Domain modules (the audit log, the cache and its breaker, the replay window, request tokens)
subclass `GatewayError` from here, so that raising one of their errors never imports the wire.
`gateway.errors` draws the whole tree, re-exports these classes, and holds the table from
reason to gRPC status that the service edge reads.
"""

from __future__ import annotations

__all__ = ["ConfigError", "GatewayError"]


class GatewayError(Exception):
    """Root of the gateway's own errors."""


class ConfigError(GatewayError):
    """A configuration problem; the message names the file and key."""
