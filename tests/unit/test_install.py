"""A fresh install is the lock: `make install` takes requirements/lock.txt (exact versions, hashes)
and nothing else, the lock agrees with pyproject.toml, and the lower bounds pyproject.toml declares
are the versions requirements/lowest.txt pins (the ones `make check-lowest` tests).

The consistency checks read only files and the installed metadata: they never ask an index, so a
new release somewhere cannot turn them red."""

from __future__ import annotations

import importlib.metadata
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
LOWEST_LOCK = ROOT / "requirements" / "lowest.txt"
UV_LOCK = ROOT / "requirements" / "uv.txt"
MAKEFILE = ROOT / "Makefile"
PROJECT = "tongban"
VIA_PROJECT = "tongban (pyproject.toml)"
# The virtualenv's own installer: `python -m venv` puts it there and it only bootstraps uv.
SEEDED = {canonicalize_name("pip")}


@dataclass(frozen=True)
class Pin:
    """One entry of a lock written by `uv pip compile --generate-hashes`."""

    name: NormalizedName
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]
    via: frozenset[str]

    def applies_here(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path) -> list[Pin]:
    pins: list[Pin] = []
    requirement: Requirement | None = None
    hashes: list[str] = []
    via: set[str] = set()

    def close() -> None:
        if requirement is not None:
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {requirement} is not an exact pin"
            pins.append(
                Pin(
                    canonicalize_name(requirement.name),
                    Version(spec.version),
                    requirement.marker,
                    tuple(hashes),
                    frozenset(via),
                )
            )

    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.rstrip("\\").strip()
        if not line.startswith((" ", "#")) and text:
            close()
            requirement, hashes, via = Requirement(text), [], set()
        elif text.startswith("--hash="):
            hashes.append(text.removeprefix("--hash="))
        elif requirement is not None and text.startswith("#"):
            parent = text.lstrip("#").strip().removeprefix("via").strip()
            if parent:
                via.add(parent)
    close()
    return pins


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [Requirement(text) for text in declared]


def makefile_recipes() -> dict[str, list[str]]:
    """Each rule's target -> its recipe commands, continuation lines joined."""
    recipes: dict[str, list[str]] = {}
    target = ""
    pending = ""
    for line in MAKEFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("\t"):
            pending += line.strip().rstrip("\\") + " "
            if not line.endswith("\\"):
                recipes[target].append(pending.strip())
                pending = ""
        elif match := re.match(r"^([^\s#:=][^:=]*):(?!=)", line):
            target = match.group(1).strip()
            recipes.setdefault(target, [])
    return recipes


@pytest.mark.parametrize("lock", [LOCK, LOWEST_LOCK, UV_LOCK], ids=lambda p: p.name)
def test_every_pin_is_exact_with_hashes(lock: Path) -> None:
    pins = read_lock(lock)
    assert pins
    for pin in pins:
        assert pin.hashes, f"{lock.name}: {pin.name} has no hash"
        assert all(h.startswith("sha256:") for h in pin.hashes)
    # The lock names no index or download address: it installs from whatever index a machine uses,
    # and the hashes decide whether a file is the one locked.
    assert "://" not in lock.read_text(encoding="utf-8")


def test_make_install_takes_the_lock_and_only_the_lock() -> None:
    recipes = makefile_recipes()
    install = recipes["$(STAMP)"]
    assert any(
        "$(UV) pip sync" in command and "--require-hashes" in command and "$(LOCK)" in command
        for command in install
    ), install
    for target, commands in recipes.items():
        for command in commands:
            if not re.search(r"\bpip (install|sync)\b|\buv sync\b", command):
                continue
            builds_the_project = (
                "--no-deps" in command
                and "--no-build-isolation" in command
                and command.endswith("-e .")
            )
            assert "--require-hashes" in command or builds_the_project, (target, command)


def test_uv_bootstrap_is_pinned() -> None:
    (pin,) = read_lock(UV_LOCK)
    assert pin.name == "uv"
    declared = (ROOT / "requirements" / "uv.in").read_text(encoding="utf-8")
    assert f"uv=={pin.version}" in declared


def test_every_apt_get_install_skips_recommended_packages() -> None:
    install = re.compile(r"\bapt(?:-get)?\s+(?:-\S+\s+)*install\b")
    seen = 0
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        # Hidden folders hold virtualenvs, git and tool caches, except .ci (what CI runs).
        if (
            any(part.startswith(".") and part != ".ci" for part in relative.parts[:-1])
            or relative.parts[0] == "out"
            or "node_modules" in relative.parts  # what npm installed from the registry
            or not path.is_file()
            or path.suffix in {".pyc", ".txt", ".lock"}
            or path.stat().st_size > 1_000_000
        ):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if path == Path(__file__).resolve():
            continue
        for line in text.splitlines():
            for match in install.finditer(line):
                seen += 1
                command = line[match.start() :].split("&&")[0].split(";")[0]
                assert "--no-install-recommends" in command, f"{relative}: {line.strip()}"
    assert seen, "the Makefile installs promtool with apt-get"


@pytest.mark.parametrize("lock", [LOCK, LOWEST_LOCK], ids=lambda p: p.name)
def test_lock_lists_exactly_what_pyproject_declares(lock: Path) -> None:
    pins = read_lock(lock)
    declared = {canonicalize_name(r.name): r for r in pyproject_requirements()}
    direct = {pin.name for pin in pins if VIA_PROJECT in pin.via}
    assert direct == set(declared), "run `make lock` after changing pyproject.toml"
    for pin in pins:
        if pin.name in declared:
            assert declared[pin.name].specifier.contains(pin.version, prereleases=True), (
                f"{lock.name} pins {pin.name}=={pin.version}, pyproject.toml asks "
                f"{declared[pin.name]}: run `make lock`"
            )
    parents = {pin.name for pin in pins} | {VIA_PROJECT}
    for pin in pins:
        assert pin.via, f"{lock.name}: nothing asks for {pin.name}"
        assert {canonicalize_name(p) if p != VIA_PROJECT else p for p in pin.via} <= {
            canonicalize_name(p) if p != VIA_PROJECT else p for p in parents
        }


def test_lock_is_closed_over_what_this_environment_needs() -> None:
    """Walk the requirements from pyproject.toml through the installed packages' own metadata:
    every package reached is locked at a version each requirement on the way allows, and the lock
    holds nothing that is not reached."""
    lock = Path(os.environ.get("TONGBAN_LOCK", LOCK))
    if not lock.is_absolute():
        lock = ROOT / lock
    pins = {pin.name: pin for pin in read_lock(lock) if pin.applies_here()}
    reached: set[NormalizedName] = set()
    walked: set[tuple[NormalizedName, frozenset[str]]] = set()
    queue = [(r, frozenset({"dev"})) for r in pyproject_requirements()]
    while queue:
        requirement, extras = queue.pop()
        environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        if requirement.marker is not None and not any(
            requirement.marker.evaluate(env) for env in environments
        ):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is needed here and not in {lock.name}"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"{lock.name} pins {name}=={pins[name].version}, something asks {requirement}"
        )
        reached.add(name)
        if (name, frozenset(requirement.extras)) in walked:
            continue
        walked.add((name, frozenset(requirement.extras)))
        for text in importlib.metadata.requires(name) or []:
            queue.append((Requirement(text), frozenset(requirement.extras)))
    assert set(pins) == reached, f"{lock.name} holds packages nothing here needs"


def test_installed_distributions_are_the_lock() -> None:
    """What got installed is the lock (make check-lowest points TONGBAN_LOCK at its own)."""
    lock = Path(os.environ.get("TONGBAN_LOCK", LOCK))
    if not lock.is_absolute():
        lock = ROOT / lock
    expected = {
        pin.name: pin.version for pin in read_lock(lock) + read_lock(UV_LOCK) if pin.applies_here()
    }
    installed = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in importlib.metadata.distributions()
    }
    assert installed.pop(canonicalize_name(PROJECT)) is not None
    for name in SEEDED:
        installed.pop(name, None)
    assert installed == expected, f"the virtualenv is not {lock.name}: run `make install`"


@pytest.mark.parametrize("lock", [LOCK, LOWEST_LOCK], ids=lambda p: p.name)
def test_lock_holds_the_build_backend(lock: Path) -> None:
    """The project is installed with --no-build-isolation: its build requirements come from the
    lock, with their hashes, instead of whatever the index offers that day."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = {pin.name: pin for pin in read_lock(lock)}
    for text in pyproject["build-system"]["requires"]:
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{lock.name} lacks the build requirement {requirement}"
        assert pin.marker is None
        assert requirement.specifier.contains(pin.version), (requirement, pin.version)


def test_lower_bounds_are_the_lowest_tested_versions() -> None:
    """Every dependency declares a lower bound, and requirements/lowest.txt (the lowest-direct
    resolution that `make check-lowest` installs and tests) pins exactly it."""
    lowest = {pin.name: pin.version for pin in read_lock(LOWEST_LOCK)}
    for requirement in pyproject_requirements():
        bounds = [
            Version(spec.version)
            for spec in requirement.specifier
            if spec.operator in {">=", "==", "~="}
        ]
        assert bounds, f"{requirement} declares no lower bound"
        name = canonicalize_name(requirement.name)
        assert lowest[name] == max(bounds), (
            f"pyproject.toml allows {requirement}, the lowest installable is {lowest[name]}: "
            "raise the bound to what `make check-lowest` tests"
        )


def test_the_browser_tests_npm_packages_are_locked_exactly_with_hashes() -> None:
    """What the browser tests take from the npm registry (axe-core) is pinned to one version in
    tests/browser/package.json, and the lock holds that version with its sha512, which `npm ci`
    (the Makefile's only npm install) checks."""
    import json

    folder = ROOT / "tests" / "browser"
    declared = json.loads((folder / "package.json").read_text(encoding="utf-8"))
    locked = json.loads((folder / "package-lock.json").read_text(encoding="utf-8"))
    wanted = {**declared.get("dependencies", {}), **declared.get("devDependencies", {})}
    assert wanted, "tests/browser/package.json declares nothing"
    for name, version in wanted.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version} is not one version"
        entry = locked["packages"][f"node_modules/{name}"]
        assert entry["version"] == version, name
        assert entry["integrity"].startswith("sha512-"), name
    assert all(
        entry.get("integrity", "").startswith("sha512-")
        for path, entry in locked["packages"].items()
        if path  # the root entry is the project itself
    )
    npm_lines = [
        line
        for line in MAKEFILE.read_text().splitlines()
        if re.search(r"\bnpm\s", line) and not line.startswith("#")
    ]
    installs = [line for line in npm_lines if re.search(r"\bnpm\s+(install|i|ci)\b", line)]
    assert installs
    assert all("npm ci " in line for line in installs), installs
