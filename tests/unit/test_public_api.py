"""Each package promises its public surface through `__all__` (internals live in `_module.py`)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest


def _defined_publicly(package: ModuleType) -> set[str]:
    """Classes and functions that the package's private modules define under a public name."""
    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                names.add(name)
    return names


@pytest.mark.parametrize("name", ["signer", "registry"])
def test_all_is_exact(name: str) -> None:
    package = importlib.import_module(name)
    promised = package.__all__
    assert len(promised) == len(set(promised)), "a name is listed twice"
    missing = [n for n in promised if not hasattr(package, n)]
    assert not missing, f"__all__ promises names the package lacks: {missing}"


def test_signer_exports_everything_its_modules_export() -> None:
    import signer

    assert _defined_publicly(signer) <= set(signer.__all__)


def test_signer_depends_on_neither_registry_nor_gateway() -> None:
    import signer

    for info in pkgutil.iter_modules(signer.__path__):
        module = importlib.import_module(f"signer.{info.name}")
        tree = ast.parse(inspect.getsource(module))
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        imported |= {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }
        roots = {name.split(".")[0] for name in imported}
        assert not roots & {"registry", "gateway"}, (
            f"signer.{info.name} imports {roots & {'registry', 'gateway'}}"
        )
