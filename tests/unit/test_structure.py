"""Architecture: the layering gateway -> registry -> signer, gRPC and protobuf only at the
gateway's service edge, and demo code off the serving path. Read from the source (the import
statements), not by importing it.

Domain modules take and return domain objects and know nothing of the wire: every module of
`registry` and `signer`, and the gateway modules in DOMAIN_GATEWAY_MODULES, which neither import
gRPC or protobuf nor reach a module that does. The modules in NO_WIRE_IMPORT_MODULES import
neither themselves but still reach gRPC through `gateway.errors` (where the gateway's error
classes live beside the gRPC status mapping); they are held to the direct rule until their
errors move out.

Demo and development code lives in `gateway.demo` (the dev PKI, the demo data system, the demo's
federation and stories). No module outside it and the CLI reaches it, function bodies included;
a CLI verb imports it only inside the verb, and `gateway serve` only in SERVE_DEV_ONLY, for
`--pki` or a configuration file with `[gateway] dev_pki`.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Callable, Iterator
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
    "gateway.audit._integrity",
    "gateway.audit._log",
    "gateway.audit._merkle",
    "gateway.audit._postgres",
    "gateway.audit._postgres_schema",
    "gateway.audit._record",
    "gateway.audit._sqlite",
    "gateway.audit._sqlite_reader",
    "gateway.audit._sqlite_schema",
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
NO_WIRE_IMPORT_MODULES = (
    "gateway.cases._binding",
    "gateway.flows",
    "gateway.flows._common",
    "gateway.flows._model",
    "gateway.flows.intake",
    "gateway.flows.owner",
    "gateway.flows.requester",
    "gateway.policy",
    "gateway.quota",
    "gateway.sealing",
)
DEMO = "gateway.demo"
CLI = "gateway.cli"
SERVE_VERB = "gateway.cli.gateway"
SERVE_DEV_ONLY = "_dev_config"  # the serve verb's function for a dev PKI's configuration


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


def _runtime_nodes(
    tree: ast.AST, leave_out: Callable[[ast.AST], bool] = lambda node: False
) -> Iterator[ast.AST]:
    """The nodes of `tree`, leaving out `if TYPE_CHECKING:` blocks (not imported at run time),
    and the nodes for which `leave_out` is true with everything in them."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (
                n
                for child in node.orelse
                if not leave_out(child)
                for n in [child, *_runtime_nodes(child, leave_out)]
            )
            continue
        if leave_out(node):
            continue
        yield node
        yield from _runtime_nodes(node, leave_out)


@cache
def direct_imports(module: str) -> frozenset[str]:
    """The modules `module` imports at run time (anywhere in it, a function's body too);
    `from a.b import c` counts `a.b`, and `a.b.c` when that is a module of ours."""
    return _imports_in(module, _runtime_nodes(_tree(module)))


def imports_outside_functions(
    module: str, functions: tuple[str, ...] | None = None
) -> frozenset[str]:
    """What `module` imports outside the bodies of `functions` (None: of every function)."""

    def in_a_body_left_out(node: ast.AST) -> bool:
        return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
            functions is None or node.name in functions
        )

    return _imports_in(module, _runtime_nodes(_tree(module), in_a_body_left_out))


def _tree(module: str) -> ast.Module:
    path = sources()[module]
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imports_in(module: str, nodes: Iterator[ast.AST]) -> frozenset[str]:
    found: set[str] = set()
    for node in nodes:
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
    return _closure(module, direct_imports)


def _closure(module: str, imports: Callable[[str], frozenset[str]]) -> frozenset[str]:
    """The modules `module` leads to by `imports` (what one module imports), transitively."""
    seen: set[str] = set()
    todo = _with_parents(module)
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in sources():
            for imported in imports(current):
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


# -- size: no module over MAX_MODULE_LINES, no function over MAX_FUNCTION_LINES (issue 15) -------
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80  # from its `def` line to its last, docstring and nested functions included
MEASURED_FOLDERS = (REPO / "bench",)  # beside the three packages (sources())


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def measured_files() -> list[Path]:
    """The modules the size rules hold for: those of the three packages (generated code,
    `tongban`, is not among them) and the benchmarks in MEASURED_FOLDERS."""
    packages = [p for p in sources().values() if "tongban" not in p.relative_to(REPO).parts]
    return packages + [path for folder in MEASURED_FOLDERS for path in sorted(folder.rglob("*.py"))]


def function_sizes(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(qualified name, lines from `def` to its end) of every function in `tree`, nested too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                yield name, node.end_lineno - node.lineno + 1
            yield from function_sizes(node, f"{name}.")
        else:
            yield from function_sizes(node, prefix)


@cache
def sizes() -> tuple[dict[str, int], dict[str, int]]:
    """(lines per module, lines per function as `path::qualname`) of the measured files."""
    modules: dict[str, int] = {}
    functions: dict[str, int] = {}
    for path in measured_files():
        text = path.read_text(encoding="utf-8")
        modules[_relative(path)] = len(text.splitlines())
        for name, lines in function_sizes(ast.parse(text, str(path))):
            functions[f"{_relative(path)}::{name}"] = lines
    return modules, functions


def test_no_module_is_over_600_lines() -> None:
    modules, _ = sizes()
    over = {m: n for m, n in modules.items() if n > MAX_MODULE_LINES}
    assert not over, (
        f"over {MAX_MODULE_LINES} lines: {over}; split each along its seams "
        "(docs/architecture.md says where each kind of code goes)"
    )


def test_no_function_is_over_80_lines() -> None:
    _, functions = sizes()
    over = {f: n for f, n in functions.items() if n > MAX_FUNCTION_LINES}
    assert not over, f"over {MAX_FUNCTION_LINES} lines: {over}; split each into named steps"


def test_the_size_measure_itself() -> None:
    # The measure: a method counted from its `def` to its last line, by its qualified name,
    # with a nested function counted in its own right (and in its parent's lines).
    tree = ast.parse(
        "class A:\n"
        "    def f(self):\n"
        '        """Doc."""\n'
        "        def g():\n"
        "            return 1\n"
        "        return g()\n"
        "\n"
        "async def h():\n"
        "    pass\n"
    )
    assert dict(function_sizes(tree)) == {"A.f": 5, "A.f.g": 2, "h": 2}
    modules, functions = sizes()
    assert "gateway/server.py" in modules
    assert "gateway/demo.py" not in modules  # being split elsewhere
    assert "bench/query_path.py" in modules  # the benchmarks too, their packages included
    assert any(m.startswith("bench/_query_path/") for m in modules)
    # A real method by its qualified name, its docstring's numbered plan counted in.
    assert functions["gateway/tokens.py::TokenVerifier.verify"] > 50


def test_every_package_of_the_source_is_shipped() -> None:
    """pyproject.toml lists the packages the wheel ships; a sub-package left off it works from
    the source tree and is missing from every install (the wheel test finds it much later)."""
    shipped = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("gateway", "signer", "registry")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found <= shipped, sorted(found - shipped)
