"""The tests' port helpers (tests/support.py): a server whose picked port was taken before it
bound it is started again on new ports; any other failure is not retried."""

from __future__ import annotations

import errno
import socket

import grpc
import pytest
from support import free_port, port_taken, start_on_free_ports, start_processes_on_free_ports

from gateway._ports import check_listen_address_free
from gateway.errors import ConfigError


async def test_a_start_whose_port_was_taken_meanwhile_runs_again_on_a_new_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        taken = holder.getsockname()[1]
        picks = iter([taken])  # the first pick is the port another process took meanwhile
        tried: list[int] = []

        async def start() -> int:
            port = next(picks, None) or free_port()
            tried.append(port)
            check_listen_address_free("gateway.listen", f"127.0.0.1:{port}")  # as a gateway
            return port

        port = await start_on_free_ports(start)
    assert tried == [taken, port]
    assert port != taken


async def test_grpcs_own_bind_failure_counts_as_a_taken_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        with pytest.raises(RuntimeError) as caught:
            server.add_insecure_port(f"127.0.0.1:{holder.getsockname()[1]}")
    wrapped = ConfigError("gateway.listen: cannot bind")
    wrapped.__cause__ = caught.value
    assert port_taken(wrapped)


async def test_another_failure_is_not_retried_and_retries_are_bounded() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ConfigError("audit: the audit store cannot be opened")

    with pytest.raises(ConfigError):
        await start_on_free_ports(broken)
    assert calls == 1

    async def always_taken() -> None:
        nonlocal calls
        calls += 1
        raise OSError(errno.EADDRINUSE, "Address already in use")

    calls = 0
    with pytest.raises(OSError, match="already in use"):
        await start_on_free_ports(always_taken, attempts=3)
    assert calls == 3


def test_processes_are_started_again_when_one_exited_saying_its_port_is_in_use() -> None:
    said = [
        "gateway-510000 exited: gateway.listen: 127.0.0.1:20001 is already in use (another "
        "gateway?)"
    ]
    tried: list[int] = []

    def start() -> int:
        tried.append(len(tried))
        if said:
            raise AssertionError(said.pop())
        return len(tried)

    assert start_processes_on_free_ports(start) == 2

    def never_serving() -> None:
        raise AssertionError("gateway-510000 not serving")

    with pytest.raises(AssertionError, match="not serving"):
        start_processes_on_free_ports(never_serving)  # not a port: not tried again
