"""An installed `tongban` works from any folder (issue 13): the demo and the registry commands
read the demo registry source from the package (`registry.DEMO_SOURCE`), never from a path
relative to the current folder; and a wheel carries that source."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from support import REPO

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
    assert "8 of 8 scenarios behaved as expected." in out
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


def test_the_wheel_carries_the_demo_registry_source(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    tree = clean_copy(tmp_path / "tree")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(tree),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("tongban-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("registry/demo-source/")}
        assert sorted(shipped) == SOURCE_FILES
        for name in SOURCE_FILES:  # the files themselves, not links to a clone
            assert (
                archive.read(f"registry/demo-source/{name}")
                == (REPO / "conf" / "registry" / name).read_bytes()
            )

    # Installed in a throwaway environment (this one's site-packages for the dependencies, but
    # not its editable install of Tongban), the package finds its source from any folder.
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    ours = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dependencies = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A plain path entry: the .pth files in it (the editable install's) are not processed.
    Path(ours, "dependencies.pth").write_text(dependencies + "\n", encoding="utf-8")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    found = subprocess.run(
        [
            str(python),
            "-c",
            "import registry; print(registry.__file__); print(registry.DEMO_SOURCE)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found[0].startswith(ours), found
    assert Path(found[1]) == Path(ours) / "registry" / "demo-source"
    assert sorted(p.name for p in Path(found[1]).glob("*.toml")) == SOURCE_FILES
