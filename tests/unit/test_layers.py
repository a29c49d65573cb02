"""The floors of DESIGN.md as import contracts (pyproject.toml [tool.importlinter], checked with import-linter):
the code as it is keeps them, and a floor that imports one above it, or two packages that import each other,
break them: the same check on a copy of the code with such an import added fails and names it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rlhf", "rewards", "launch")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    """lint-imports with the contracts of `cwd`/pyproject.toml on the packages found first on the path at `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
           "sys.exit(lint_imports_command())", "--no-cache"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_code_keeps_its_floors_and_has_no_package_cycle():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Floors only look down" in out.stdout and "No import cycle" in out.stdout
    assert "0 broken" in out.stdout


@pytest.fixture
def copy_of_the_code(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(path: Path, statement: str) -> None:
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text, path
    path.write_text(text.replace(anchor, anchor + "\n" + statement + "\n", 1))


def test_an_import_of_a_higher_floor_fails_the_check(copy_of_the_code: Path):
    # floor 1 (a pure objective) reaching up into the runtime (floor 5)
    _add_import(copy_of_the_code / "rlhf" / "objectives" / "grpo.py", "import rlhf.runtime.controller  # noqa")
    out = _lint(copy_of_the_code)
    assert out.returncode != 0
    assert "Floors only look down" in out.stdout and "BROKEN" in out.stdout
    assert "rlhf.objectives.grpo -> rlhf.runtime.controller" in out.stdout


def test_rollout_importing_the_runtime_fails_the_check(copy_of_the_code: Path):
    # the seam the restructure removed: engines driving the runtime's weight sync
    _add_import(copy_of_the_code / "rlhf" / "rollout" / "group.py", "from rlhf.runtime.sync import SyncCoordinator")
    out = _lint(copy_of_the_code)
    assert out.returncode != 0 and "rlhf.rollout.group -> rlhf.runtime.sync" in out.stdout


def test_siblings_that_import_each_other_fail_the_check(copy_of_the_code: Path):
    # rollout and train share floor 4 as independent siblings; a cycle between them breaks both contracts
    _add_import(copy_of_the_code / "rlhf" / "rollout" / "base.py", "import rlhf.train.settings  # noqa")
    _add_import(copy_of_the_code / "rlhf" / "train" / "settings.py", "import rlhf.rollout.base  # noqa")
    out = _lint(copy_of_the_code)
    assert out.returncode != 0
    assert "No import cycle among the packages BROKEN" in out.stdout
