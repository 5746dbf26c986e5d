"""The wheel holds every package folder of the source tree and the tiny weights (issue 27).

CI and the README install with `-e`, which reads the source tree and so hides a package that the wheel
leaves out (t2vturbo.teachers and t2vturbo.convert once were). This builds the wheel offline with the
installed setuptools (no build isolation) from a copy of the packaged folders, and compares its contents
with the folders on disk. .ci/run installs a wheel into a clean environment and runs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the import name it is installed as (pyproject's package-dir)
ROOTS = {"t2vturbo": "t2vturbo", "cli": "t2vturbo_cli"}
WEIGHTS = Path("t2vturbo") / "tiny" / "weights"

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


def _installed_path(rel: Path) -> str:
    """The path a source file `rel` (relative to the repo) has inside the wheel."""
    return "/".join((ROOTS[rel.parts[0]], *rel.parts[1:]))


def _package_folders() -> dict[Path, list[Path]]:
    """Every folder under t2vturbo/ or cli/ that holds .py files -> those files (relative to the repo)."""
    folders: dict[Path, list[Path]] = {}
    for top in ROOTS:
        for py in sorted((ROOT / top).rglob("*.py")):
            rel = py.relative_to(ROOT)
            if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            folders.setdefault(rel.parent, []).append(rel)
    return folders


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools.build_meta")
    src = tmp_path_factory.mktemp("src")
    # a copy, so the build's build/ and *.egg-info stay out of the checkout and no stale build/lib of an
    # earlier build can put a since-deleted module into this wheel
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for top in ROOTS:
        shutil.copytree(ROOT / top, src / top, ignore=_IGNORE)
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))",
            str(out),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, (
        f"building the wheel failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    )
    wheels = list(out.glob("t2vturbo-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}: {sorted(p.name for p in out.iterdir())}"
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_every_package_folder_is_in_the_wheel(wheel_names):
    folders = _package_folders()
    assert Path("t2vturbo") in folders and Path("cli") in folders
    missing_folders = sorted(
        str(folder)
        for folder, files in folders.items()
        if not any(_installed_path(f) in wheel_names for f in files)
    )
    assert not missing_folders, (
        f"package folders not in the wheel: {missing_folders} (pyproject.toml's [tool.setuptools] must find them)"
    )
    missing_files = sorted(
        str(f) for files in folders.values() for f in files if _installed_path(f) not in wheel_names
    )
    assert not missing_files, f"modules not in the wheel: {missing_files}"


def test_the_wheel_ships_the_tiny_weights_and_package_data(wheel_names):
    on_disk = sorted(p.relative_to(ROOT) for p in (ROOT / WEIGHTS).rglob("*") if p.is_file())
    assert any(p.suffix == ".safetensors" for p in on_disk), f"no tiny weights found under {WEIGHTS}"
    missing = [str(p) for p in on_disk if _installed_path(p) not in wheel_names]
    assert not missing, f"tiny weights not in the wheel: {missing}"
    assert "t2vturbo/py.typed" in wheel_names


def test_the_wheel_installs_only_our_two_top_level_packages_and_the_command(wheel, wheel_names):
    tops = {name.split("/", 1)[0] for name in wheel_names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == set(ROOTS.values()), f"unexpected top-level names in the wheel: {sorted(tops)}"
    (entry_points,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    assert "t2vturbo = t2vturbo_cli.main:app" in text, text
