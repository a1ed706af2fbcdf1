"""Fixtures of the fuzz tests: one cluster per test module, on an event loop the tests drive.

Example counts: `TONGBAN_FUZZ_EXAMPLES` (default 50 per RPC); the long target sets it to 10000:

    TONGBAN_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/fuzz -m fuzz -p no:cacheprovider

With `TONGBAN_FUZZ_REPORT=1` each test prints how many calls it made and how they ended.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from fuzz.fuzz_support import Harness, harness_for


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """Three gateways and their demo data systems for the whole module, on one event loop."""
    with harness_for(tmp_path_factory.mktemp("fuzz")) as h:
        yield h


@pytest.fixture(autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """With TONGBAN_FUZZ_REPORT set: the calls of each test, their outcomes, and its time."""
    if not os.environ.get("TONGBAN_FUZZ_REPORT") or "harness" not in request.fixturenames:
        yield
        return
    h: Harness = request.getfixturevalue("harness")
    calls, outcomes, started = h.calls, h.outcomes.copy(), time.monotonic()
    yield
    new = h.outcomes - outcomes
    print(
        f"\n{request.node.name}: {h.calls - calls} calls in {time.monotonic() - started:.1f} s: "
        + ", ".join(f"{k} ×{v}" for k, v in new.most_common())
    )
