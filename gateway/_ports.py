"""Is a listening address free? Asked before a gateway binds, so that a second gateway on a
port another one holds refuses to start instead of sharing it.

gRPC's core sets `SO_REUSEPORT` on Linux unless told not to (`grpc.so_reuseport` = 0): two
gateways on one port would then both start and the kernel would spread connections over them,
each with its own audit log (or both writing one SQLite file). A gateway therefore binds with
`SO_REUSEPORT` only under `--workers`, whose supervisor asks here first, before any worker
binds. The question is asked with a plain `bind()` (no `listen()`): without `SO_REUSEPORT` it
fails with `EADDRINUSE` while any socket listens on that address, whoever holds it. What binds
between the question and the gateway's own bind is not caught (a moment's window).

`free_loopback_port` picks a port for servers that must know their ports before they start
(the demo's gateways, told each other's): at random below the kernel's ephemeral range, where
no outgoing connection takes its source port, so a port picked and released is not soon
someone else's, as one picked by binding port 0 is.
"""

from __future__ import annotations

import errno
import random
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

__all__ = ["check_listen_address_free", "check_ports_free", "free_loopback_port"]

PICKED_PORTS_FROM: Final = 20000  # below: ports servers are commonly configured on
_random = random.SystemRandom()


def free_loopback_port() -> int:
    """A loopback port no socket holds now, picked at random below the ephemeral range where
    that range leaves room, else the one the kernel gives for port 0."""
    high = _ephemeral_low() - 1
    for _ in range(200) if high > PICKED_PORTS_FROM else ():
        port = _random.randint(PICKED_PORTS_FROM, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        given: int = probe.getsockname()[1]
        return given


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def check_ports_free(config: GatewayConfig) -> None:
    """ConfigError if another process listens on the gateway's gRPC or metrics address."""
    check_listen_address_free("gateway.listen", config.listen)
    if config.metrics_listen:
        check_listen_address_free("gateway.metrics_listen", config.metrics_listen)


def check_listen_address_free(key: str, address: str, *, who: str = "another gateway") -> None:
    """Raise ConfigError naming `key` (e.g. `gateway.listen`) unless every address `address`
    (host:port, IPv6 in brackets) resolves to can be bound now. Port 0 is always free."""
    host, _, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    port = int(port_text)
    try:
        resolved = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"{key}: cannot resolve {host!r} ({exc.strerror})") from exc
    for family, kind, protocol, _, where in resolved:
        with socket.socket(family, kind, protocol) as probe:
            # As gRPC and asyncio do: a port whose old connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"{key}: {address} is already in use ({who}?)") from exc
                raise ConfigError(f"{key}: cannot bind {address} ({exc.strerror})") from exc
