"""Address syntax of the configuration: `host:port` endpoints (IPv4, bracketed IPv6, RFC 1123
host names), checked where `gateway.config` reads them and where the command line takes them."""

from __future__ import annotations

import ipaddress
import re

from gateway._errors import ConfigError

__all__ = ["split_endpoint"]

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # RFC 1123
MAX_HOST_NAME_CHARS = 253


def split_endpoint(value: str, *, any_port: bool = False) -> tuple[str, int]:
    """`host:port` (an IPv6 address in brackets: `[::1]:7330`) as (host, port), the host
    without brackets; ValueError says what is wrong. `any_port`: port 0 (any free) allowed."""
    if not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError("an address has no spaces or control characters")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("not HOST:PORT, e.g. 127.0.0.1:7330 or [::1]:7330")
    if host.startswith("[") or host.endswith("]"):
        host = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:7330")
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            labels = host.removesuffix(".").split(".")
            if (
                len(host) > MAX_HOST_NAME_CHARS
                or not all(_HOST_LABEL.fullmatch(label) for label in labels)
                or labels[-1].isdigit()  # 10.1.2.300: a bad IPv4 address, not a name
            ):
                raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    least = 0 if any_port else 1
    if not (port_text.isascii() and port_text.isdigit()) or not least <= int(port_text) <= 65535:
        raise ValueError(f"the port is a number from {least} to 65535")
    return host, int(port_text)


def _is_endpoint(value: str) -> bool:
    try:
        split_endpoint(value)
    except ValueError:
        return False
    return True


def _check_host_port(key: str, value: str, *, any_port: bool = True) -> None:
    try:
        split_endpoint(value, any_port=any_port)
    except ValueError as exc:
        raise ConfigError(f"{key}: {value!r} is not host:port ({exc})") from exc
