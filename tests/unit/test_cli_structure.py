"""Architecture: the shape of the code, checked (issue 15). A module that grows past its limit,
or a function that does too many things to read at once, fails here rather than in review."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
CLI = REPO / "gateway" / "cli"


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function or method, nested ones too, longer than `limit` lines
    from its `def` to its last line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_the_function_measure_counts_from_def_to_last_line() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    source = f"def long():\n{body}\nasync def short():\n    return 1\n"
    assert _long_functions(source, 80) == [("long", 81)]
    assert _long_functions(source, 81) == []


def test_the_cli_is_a_package_of_modules() -> None:
    assert not (REPO / "gateway" / "cli.py").exists()
    assert len(_modules(CLI)) > 10


@pytest.mark.parametrize("path", _modules(CLI), ids=lambda p: str(p.relative_to(REPO)))
def test_no_cli_module_is_over_the_limit(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines"
    long = _long_functions(source, MAX_FUNCTION_LINES)
    assert not long, f"{path.relative_to(REPO)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_verb_group_registers_its_own_parsers() -> None:
    """Each public module of the CLI package is a verb group with a `register(commands)`, and
    the top-level parser is built from exactly those."""
    import gateway.cli

    groups = {
        info.name
        for info in pkgutil.iter_modules(gateway.cli.__path__)
        if not info.name.startswith("_")
    }
    assert groups == {group.__name__.rsplit(".", 1)[1] for group in gateway.cli.VERB_GROUPS}
    for name in groups:
        assert callable(importlib.import_module(f"gateway.cli.{name}").register)


def test_the_console_script_and_python_m_run_the_cli() -> None:
    from gateway.cli import main

    (script,) = importlib.metadata.entry_points(group="console_scripts", name="tongban")
    assert script.load() is main
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("tongban ")
