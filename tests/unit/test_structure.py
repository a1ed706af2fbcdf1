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


def is_demo(module: str) -> bool:
    return module == DEMO or module.startswith(DEMO + ".")


def in_cli(module: str) -> bool:
    return module.split(".")[:2] == CLI.split(".")


@cache
def loaded(module: str) -> frozenset[str]:
    """Every module importing `module` runs before any of its functions is called: the imports
    outside function bodies, through ours transitively."""
    return _closure(module, imports_outside_functions)


def _demo_run_by(imports: frozenset[str]) -> list[str]:
    """The demo modules that running these imports runs: a CLI module's verbs are not called by
    importing it (what loading it runs counts); any other module's functions may be (all that
    it reaches counts)."""
    found: set[str] = set()
    for imported in imports:
        for module in _with_parents(imported):
            run = loaded(module) if in_cli(module) else reached(module)
            found.update(m for m in (module, *run) if is_demo(m))
    return sorted(found)


def serving_modules() -> list[str]:
    """Every module of the three packages but the demo package and the CLI: the server, its
    services, configuration, audit, cache, peers, provider client, workers, registry, signer."""
    return sorted(m for m in sources() if not is_demo(m) and not in_cli(m))


@pytest.mark.parametrize("module", serving_modules())
def test_the_serving_path_does_not_import_demo_code(module: str) -> None:
    demo = sorted(m for m in reached(module) if is_demo(m))
    assert not demo, (
        f"{module} imports demo code ({demo[0]}): {' -> '.join(path_to(module, demo[0]))}"
    )


@pytest.mark.parametrize("module", sorted(m for m in sources() if in_cli(m)))
def test_the_cli_imports_demo_code_only_inside_the_verbs_that_run_it(module: str) -> None:
    """Loading `tongban` (every verb group's module) runs no demo code: a verb that needs it
    imports it in its body."""
    demo = sorted(m for m in loaded(module) if is_demo(m))
    assert not demo, f"{module} imports {demo[0]} when it is loaded: import it inside the verb"


def test_gateway_serve_imports_demo_code_only_for_a_dev_pki() -> None:
    """`gateway serve` with a production configuration runs no demo code: only the function
    for a dev PKI imports it."""
    demo = _demo_run_by(imports_outside_functions(SERVE_VERB, (SERVE_DEV_ONLY,)))
    assert not demo, f"{SERVE_VERB} imports {demo[0]} outside {SERVE_DEV_ONLY}"


def test_the_demo_checks_see_demo_imports_where_they_are() -> None:
    # The analysis itself: the serve verb's dev function and the demo verb do import demo code,
    # loading them does not; the server and the workers are checked as serving modules.
    assert "gateway.demo.config" in direct_imports(SERVE_VERB)
    assert _demo_run_by(direct_imports(SERVE_VERB))
    assert not _demo_run_by(imports_outside_functions(SERVE_VERB, (SERVE_DEV_ONLY,)))
    assert _demo_run_by(direct_imports("gateway.cli.demo"))
    assert "gateway.demo.run" not in loaded("gateway.cli.demo")
    assert {"gateway.server", "gateway.workers"} <= set(serving_modules())
    assert {"gateway.server", "gateway.workers"} <= reached(SERVE_VERB)
