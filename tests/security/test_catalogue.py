"""docs/threats.md cannot rot: every pytest node id it names exists, and every threat names the
code that stops it and at least one test. (That the tests pass is the suite's own business.)"""

from __future__ import annotations

import re
import subprocess
import sys

from support import REPO

CATALOGUE = REPO / "docs" / "threats.md"
NODE_ID = re.compile(r"`(tests/[\w/.-]+\.py::[^`]+)`")
CODE = re.compile(r"`(?:gateway|signer|registry)/[\w/.-]+\.py`")
COLLECT_TIMEOUT_SECONDS = 120


def node_ids(text: str) -> list[str]:
    return NODE_ID.findall(text)


def collected(files: list[str]) -> set[str]:
    """The node ids pytest collects from `files`, as `--collect-only -q` prints them."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=COLLECT_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}


def test_every_node_id_in_the_catalogue_exists() -> None:
    ids = node_ids(CATALOGUE.read_text(encoding="utf-8"))
    assert len(ids) >= 40, "the catalogue lost its tests"
    files = sorted({node.split("::", 1)[0] for node in ids})
    missing_files = [f for f in files if not (REPO / f).is_file()]
    assert not missing_files, f"files named in docs/threats.md do not exist: {missing_files}"
    found = collected(files)
    # A parametrised test may be named as a whole (all its cases) or one case at a time.
    missing = [
        node
        for node in ids
        if node not in found and not any(f.startswith(node + "[") for f in found)
    ]
    assert not missing, "node ids in docs/threats.md that pytest does not collect:\n" + "\n".join(
        missing
    )


def test_every_threat_names_its_control_and_a_test() -> None:
    text = CATALOGUE.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    threats = [s for s in sections if re.match(r"T\d+ ", s)]
    assert len(threats) >= 14
    for section in threats:
        title = section.splitlines()[0]
        assert CODE.search(section), f"{title}: names no control in gateway/, signer/ or registry/"
        assert node_ids(section), f"{title}: names no test"


def test_node_ids_are_found_in_a_sample() -> None:
    sample = "see `tests/unit/a_test.py::test_x[case one]` and `tests/b.py::test_y`, not `x.py`"
    assert node_ids(sample) == ["tests/unit/a_test.py::test_x[case one]", "tests/b.py::test_y"]
