"""The gRPC server's transport limits, each with why. `Gateway.start` reads them through
`gateway.server` (which imports them), so a test may lower one there."""

from __future__ import annotations

__all__ = [
    "HANDSHAKE_TIMEOUT_SECONDS",
    "KEEPALIVE_OPTIONS",
    "MAX_CONCURRENT_RPCS",
    "MAX_CONNECTION_IDLE_SECONDS",
    "MAX_MESSAGE_BYTES",
    "MAX_PENDING_CALLS",
    "MAX_STREAMS_PER_CONNECTION",
]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # bytes: a registry snapshot is the largest message
# Calls one gateway process handles at once; more are refused by gRPC at once with
# RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded"), before any Python work is done for them.
# A backstop only: gRPC counts a call from its HEADERS, without knowing who makes it, so the
# budgets per caller and per kind of caller (gateway/admission.py, 2,100 calls in all) refuse
# first, and this cap stays above their sum for calls between their HEADERS and that refusal.
MAX_CONCURRENT_RPCS = 4000
# HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may hold open at once (a client
# opening more gets them refused by the transport; gRPC clients queue them instead).
MAX_STREAMS_PER_CONNECTION = 100
# Calls gRPC has received but the event loop has not yet taken up (a burst of streams on many
# connections arrives faster than the loop can refuse them). Past this many gRPC sheds new calls
# at random, up to all of them at twice this: a legitimate call as likely as an attacker's, as
# CANCELLED. Sized like MAX_CONCURRENT_RPCS so that a burst queues for the caller budgets to sort.
MAX_PENDING_CALLS = MAX_CONCURRENT_RPCS
# A connection that has not finished its TLS handshake in this long is closed (gRPC's default is
# 120 s: an attacker's half-open handshakes would hold descriptors and memory that long).
HANDSHAKE_TIMEOUT_SECONDS = 10
# A connection with no call open for this long is closed with GOAWAY (clients reconnect when they
# next call; a Registry.Watch stream keeps its connection busy). Connections cost memory too.
MAX_CONNECTION_IDLE_SECONDS = 300
# HTTP/2 keepalive: quiet connections (a Registry.Watch stream between publishes, a peer channel
# at night) are pinged so that proxies and NATs do not cut them; clients may ping every 30 s.
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
)
