"""The scripts in bench/ run as `python bench/NAME.py`, which puts bench/ first on sys.path: a
script named like a module the scripts import shadows it (issue 13: bench/gateway.py made
`python bench/audit.py` fail with "No module named 'gateway.config'"). So does a package in
bench/ (bench/_query_path/, the code of query_path.py), imported by its name alone."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
FIRST_PARTY = {"gateway", "signer", "registry", "tongban"}


def imported_top_level(script: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_bench_script_shadows_a_module() -> None:
    scripts = sorted(BENCH.glob("*.py"))
    assert scripts, "bench/ has no scripts"
    packages = {init.parent.name for init in BENCH.glob("*/__init__.py")}
    code = [*scripts, *(path for name in packages for path in (BENCH / name).rglob("*.py"))]
    imported = set().union(*(imported_top_level(s) for s in code)) - packages
    shadowing = {
        name
        for name in {s.stem for s in scripts} | packages
        if name in FIRST_PARTY | imported | set(sys.stdlib_module_names)
    }
    assert not shadowing, (
        f"bench scripts or packages named like a module they may import: {shadowing}"
    )
    # A script and a package of one name: `import NAME` finds the package, never the script.
    assert not {s.stem for s in scripts} & packages, "a bench script named like a bench package"
