"""One federation and its published registry for the cases' tests (made once: a dev PKI)."""

from __future__ import annotations

import pytest
from flow_support import load_registry, make_fed
from support import Federation

from registry import Registry


@pytest.fixture(scope="package")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return make_fed(tmp_path_factory.mktemp("fed"))


@pytest.fixture(scope="package")
def registry(fed: Federation) -> Registry:
    return load_registry(fed)
