"""Shared fixtures. Markers are registered in pyproject.toml (`integration`, `slow`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import support
from support import DEMO_SOURCE, Federation, make_federation

from registry import RegistrySource, load_source

__all__ = ["DEMO_SOURCE", "Federation", "make_federation"]

pytest_plugins = ["cli_support"]  # the `run` fixture of the CLI tests


@pytest.fixture(scope="session")
def demo_source() -> RegistrySource:
    return load_source(DEMO_SOURCE)


@pytest.fixture
def federation(tmp_path: Path) -> Federation:
    """A fresh federation with version 1 published."""
    fed = make_federation(tmp_path)
    fed.publish()
    return fed


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[support.RedisServer]:
    """A Redis server of the test's own, on a free port: for tests that stop, kill or fill it."""
    server = support.RedisServer(support.free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def free_port() -> Callable[[], int]:
    return support.free_port


@pytest.fixture(scope="session", autouse=True)
def _one_idle_event_loop() -> Iterator[None]:
    """Before each async test pytest-asyncio asks for the thread's current event loop (to put it
    back after); on Python 3.11 that call makes a new loop whenever none is set, which nobody
    closes: a ResourceWarning (its self-pipe sockets) wherever the garbage collector later finds
    it, failing an unrelated test. One idle loop, current for the whole session and closed at
    its end, is what it finds instead."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()
