"""An installed `tongban` works from any folder (issue 13): the demo and the registry commands
read the demo registry source from the package (`registry.DEMO_SOURCE`), never from a path
relative to the current folder; and a wheel carries that source."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO

from gateway.demo.stories import SCENARIOS
from registry import DEMO_SOURCE

pytestmark = pytest.mark.integration

TONGBAN = Path(sys.executable).parent / "tongban"  # the console script of this virtualenv
DEMO_TIMEOUT = 300  # seconds: a hang guard on a loaded 2-core machine
SOURCE_FILES = sorted(p.name for p in (REPO / "conf" / "registry").glob("*.toml"))


def tongban(cwd: Path, *argv: str | Path, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(TONGBAN), *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty folder outside the repository: no conf/ to lean on."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    assert not folder.resolve().is_relative_to(REPO)
    return folder


def test_the_package_ships_the_conf_registry_source() -> None:
    # One copy: the package's is conf/registry itself (a link), so the two cannot drift.
    assert sorted(p.name for p in DEMO_SOURCE.glob("*.toml")) == SOURCE_FILES
    assert DEMO_SOURCE.resolve() == (REPO / "conf" / "registry").resolve()


def test_the_demo_runs_from_any_folder(elsewhere: Path) -> None:
    out = tongban(elsewhere, "demo", "--dir", "out", timeout=DEMO_TIMEOUT)
    assert f"{len(SCENARIOS)} of {len(SCENARIOS)} scenarios behaved as expected." in out
    assert (elsewhere / "out" / "published" / "current.jws").is_file()  # --dir: an output


def test_the_registry_commands_run_from_any_folder(elsewhere: Path) -> None:
    tongban(elsewhere, "pki", "init", "--out", "pki", "--regions", "330000,510000,500000")
    tongban(elsewhere, "registry", "build", "--pki", "pki", "--out", "draft.json")
    published = tongban(elsewhere, "registry", "publish", "--pki", "pki", "--out", "published")
    assert "Published registry version 1" in published
    shown = tongban(elsewhere, "registry", "show", "published/current.jws", "--pki", "pki")
    assert "signature verified" in shown
    tongban(elsewhere, "keys", "rotate", "--pki", "pki", "--owner", "sc.hrss", "--usage", "seal")
    assert "version 2" in tongban(
        elsewhere, "registry", "publish", "--pki", "pki", "--out", "published"
    )


def clean_copy(target: Path) -> Path:
    """The repository's files (tracked or not ignored), links kept: a build here uses no
    `build/` left by an earlier one."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source, copy = REPO / name, target / name
        if not source.is_symlink() and not source.is_file():
            continue  # listed but deleted in the work tree
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(source.readlink())
        else:
            shutil.copy2(source, copy)
    return target


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path  # of a throwaway environment the wheel is installed in
    site: Path  # its site-packages


def purelib(python: Path | str) -> str:
    return subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`pip wheel` of a clean copy of the repository, installed with `pip install --no-deps` in
    a throwaway environment that borrows this one's dependencies but not its editable Tongban."""
    root = tmp_path_factory.mktemp("wheel")
    wheels = root / "wheels"
    tree = clean_copy(root / "tree")
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run([*build, str(tree)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("tongban-*.whl")
    target = root / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    site = Path(purelib(python))
    # A plain path entry: the .pth files in it (the editable install's) are not processed.
    (site / "dependencies.pth").write_text(purelib(sys.executable) + "\n", encoding="utf-8")
    install = [*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return Installed(wheel, python, site)


def test_the_wheel_carries_the_demo_registry_source(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = set(archive.namelist())
        shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("registry/demo-source/")}
        assert sorted(shipped) == SOURCE_FILES
        for name in SOURCE_FILES:  # the files themselves, not links to a clone
            assert (
                archive.read(f"registry/demo-source/{name}")
                == (REPO / "conf" / "registry" / name).read_bytes()
            )


def test_the_installed_package_finds_its_source_from_any_folder(
    installed: Installed, elsewhere: Path
) -> None:
    found = subprocess.run(
        [
            str(installed.python),
            "-c",
            "import registry; print(registry.__file__, registry.DEMO_SOURCE)",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(found[0]).is_relative_to(installed.site), found
    assert Path(found[1]) == installed.site / "registry" / "demo-source"
    assert sorted(p.name for p in Path(found[1]).glob("*.toml")) == SOURCE_FILES


def test_the_installed_wheel_plays_the_demo_from_any_folder(
    installed: Installed, elsewhere: Path
) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        shipped = {n for n in archive.namelist() if n.endswith("/__init__.py")}
    packages = {
        str(p.relative_to(REPO))
        for top in ("gateway", "signer", "registry")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert packages <= shipped, sorted(packages - shipped)
    done = subprocess.run(
        [str(installed.python.parent / "tongban"), "demo"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
