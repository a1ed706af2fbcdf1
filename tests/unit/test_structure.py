"""Architecture: the layering gateway -> registry -> signer, and gRPC and protobuf only at the
gateway's service edge. Read from the source (the import statements), not by importing it.

Domain modules take and return domain objects and know nothing of the wire: every module of
`registry` and `signer`, and the gateway modules in DOMAIN_GATEWAY_MODULES, which neither import
gRPC or protobuf nor reach a module that does. The modules in NO_WIRE_IMPORT_MODULES import
neither themselves but still reach gRPC through `gateway.errors` (where the gateway's error
classes live beside the gRPC status mapping); they are held to the direct rule until their
errors move out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "registry", "signer")
WIRE_ROOTS = ("grpc", "grpc_status", "grpc_health", "grpc_reflection", "tongban")  # tongban.v1
WIRE_PREFIXES = ("google.protobuf", "google.rpc")

DOMAIN_GATEWAY_MODULES = (
    "gateway._tables",
    "gateway.admission",
    "gateway.audit",
    "gateway.audit._checkpoint",
    "gateway.audit._log",
    "gateway.audit._merkle",
    "gateway.audit._postgres",
    "gateway.audit._record",
    "gateway.audit._sqlite",
    "gateway.audit._store",
    "gateway.audit.errors",
    "gateway.breaker",
    "gateway.cache",
    "gateway.cache._backend",
    "gateway.cache._cache",
    "gateway.cache._key",
    "gateway.cache._redis",
    "gateway.replay",
    "gateway.tokens",
)
NO_WIRE_IMPORT_MODULES = ("gateway.policy", "gateway.quota", "gateway.sealing")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def sources() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """The nodes of `tree`, leaving out `if TYPE_CHECKING:` blocks (not imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


@cache
def direct_imports(module: str) -> frozenset[str]:
    """The modules `module` imports at run time (anywhere in it, a function's body too);
    `from a.b import c` counts `a.b`, and `a.b.c` when that is a module of ours."""
    path = sources()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: a relative import"
            assert node.module, f"{module}: an import from nowhere"
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if f"{node.module}.{alias.name}" in sources()
            )
    return frozenset(found)


def _with_parents(module: str) -> list[str]:
    """Importing `a.b.c` runs `a` and `a.b` first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def reached(module: str) -> frozenset[str]:
    """Every module importing `module` runs, ours and foreign, through ours transitively."""
    seen: set[str] = set()
    todo = _with_parents(module)
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in sources():
            for imported in direct_imports(current):
                todo.extend(_with_parents(imported))
    return frozenset(seen - {module})


def is_wire(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] in WIRE_ROOTS or module.startswith(WIRE_PREFIXES)


def path_to(module: str, target: str) -> list[str]:
    """One import chain from `module` to `target`, for a failure message."""
    chains = [[module]]
    seen = {module}
    while chains:
        chain = chains.pop(0)
        if chain[-1] not in sources():
            continue
        for imported in sorted(direct_imports(chain[-1])):
            for step in _with_parents(imported):
                if step == target:
                    return [*chain, step]
                if step not in seen:
                    seen.add(step)
                    chains.append([*chain, step])
    return []


def domain_modules() -> list[str]:
    return sorted(
        [m for m in sources() if m.split(".")[0] in ("registry", "signer")]
        + list(DOMAIN_GATEWAY_MODULES)
    )


def test_the_listed_modules_exist() -> None:
    missing = [m for m in (*DOMAIN_GATEWAY_MODULES, *NO_WIRE_IMPORT_MODULES) if m not in sources()]
    assert not missing, f"listed as domain modules but not in the tree: {missing}"


@pytest.mark.parametrize("module", [*domain_modules(), *NO_WIRE_IMPORT_MODULES])
def test_a_domain_module_imports_neither_grpc_nor_protobuf(module: str) -> None:
    wire = sorted(m for m in direct_imports(module) if is_wire(m))
    assert not wire, f"{module} imports {wire}: convert protobuf messages at the service edge"


@pytest.mark.parametrize("module", domain_modules())
def test_a_domain_module_reaches_no_grpc_or_protobuf_through_another(module: str) -> None:
    wire = sorted(m for m in reached(module) if is_wire(m))
    assert not wire, f"{module} reaches {wire[0]} through {' -> '.join(path_to(module, wire[0]))}"


@pytest.mark.parametrize("module", sorted(m for m in sources() if m.startswith("registry")))
def test_registry_does_not_import_gateway(module: str) -> None:
    upward = sorted(m for m in reached(module) if m.split(".")[0] == "gateway")
    assert not upward, f"{module} imports {upward[0]}: {' -> '.join(path_to(module, upward[0]))}"


@pytest.mark.parametrize("module", sorted(m for m in sources() if m.startswith("signer")))
def test_signer_imports_neither_registry_nor_gateway(module: str) -> None:
    upward = sorted(m for m in reached(module) if m.split(".")[0] in ("gateway", "registry"))
    assert not upward, f"{module} imports {upward[0]}: {' -> '.join(path_to(module, upward[0]))}"


def test_the_import_graph_sees_what_a_module_pulls_in_through_others() -> None:
    # The analysis itself: gateway.policy imports no gRPC, yet reaches it via gateway.errors;
    # an import inside a function counts, one under TYPE_CHECKING does not.
    assert not any(is_wire(m) for m in direct_imports("gateway.policy"))
    assert path_to("gateway.policy", "grpc")[:2] == ["gateway.policy", "gateway.errors"]
    assert "gateway.server" in reached("gateway.workers")
    assert "signer._report" not in direct_imports("signer.errors")  # under TYPE_CHECKING
