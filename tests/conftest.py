"""Shared fixtures. Markers are registered in pyproject.toml (`integration`, `slow`)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
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
def free_port() -> Callable[[], int]:
    def pick() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port

    return pick
