"""Shared fixtures. Markers are registered in pyproject.toml (`integration`, `slow`)."""

from __future__ import annotations

from collections.abc import Callable
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
def free_port() -> Callable[[], int]:
    return support.free_port
