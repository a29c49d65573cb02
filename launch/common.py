"""What every launcher shares: the validated job, the `rlhf train` command it runs, and running a submit tool.

`rlhf launch TARGET RECIPE [key.path=value ...]` validates RECIPE in rlhf/cli.py (the same `load_recipe` + reward
plugin checks as `rlhf validate`) before a target sees it, so no target submits a recipe with errors. A target
then gets a :class:`Job`: the recipe as resolved (extends + overrides + defaults, as YAML text, which is what
travels to the cluster), and the flags for `rlhf train`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rlhf.config import Recipe, recipe_to_yaml


class LaunchError(RuntimeError):
    """A launch that cannot go on; the message says what to fix (a flag, a missing tool, the submit tool's error)."""


@dataclass(frozen=True)
class Job:
    """One validated recipe, ready to be rendered for a target."""

    recipe_path: str  # as the user gave it
    overrides: tuple[str, ...]  # as the user gave them (already applied in `recipe` and `resolved_yaml`)
    recipe: Recipe
    resolved_yaml: str  # the recipe with extends, overrides and defaults applied: what is shipped to a cluster
    train_flags: tuple[str, ...] = ()  # "--resume" / "--overwrite", passed on to `rlhf train`
    dry_run: bool = False
    # `rlhf train` in this process (the CLI hands it over, so launchers never import the CLI): the `local` target
    train_here: Callable[[Any], int] | None = None

    @property
    def name(self) -> str:
        """The run's name, usable as a job name: letters, digits, '-', '_' and '.' only."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.recipe.run.name).strip("-.") or "rlhf"


class Target(Protocol):
    """A launch target module (launch/local.py, ray.py, slurm.py, k8s.py)."""

    HELP: str
    DESCRIPTION: str

    def add_arguments(self, parser: Any) -> None: ...

    def launch(self, job: Job, args: Any) -> int: ...


def make_job(recipe_path: str, overrides: Sequence[str], recipe: Recipe, *, resume: bool = False,
             overwrite: bool = False, dry_run: bool = False, train_here: Callable[[Any], int] | None = None) -> Job:
    flags = ("--resume",) if resume else ("--overwrite",) if overwrite else ()
    return Job(recipe_path=recipe_path, overrides=tuple(overrides), recipe=recipe,
               resolved_yaml=recipe_to_yaml(recipe), train_flags=flags, dry_run=dry_run, train_here=train_here)


def train_command(recipe_file: str, job: Job, *overrides: str, executable: str = "rlhf") -> list[str]:
    """`rlhf train RECIPE_FILE [overrides] [--resume|--overwrite]` for a shipped (already resolved) recipe file."""
    return [executable, "train", recipe_file, *overrides, *job.train_flags]


def shell_join(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def output_dir_note(job: Job, where: str) -> str | None:
    """A warning when run.output_dir is relative: it then resolves against `where` (the job's working directory)."""
    out = job.recipe.run.output_dir
    if os.path.isabs(out):
        return None
    return (f"note: run.output_dir={out!r} is relative, so the outputs go under {where}; set run.output_dir to an "
            "absolute path on storage you can read afterwards (e.g. run.output_dir=/shared/runs/NAME)")


def warn(message: str | None) -> None:
    if message:
        print(message, file=sys.stderr)


def require_executable(name: str, what: str) -> str:
    """The path of `name` on PATH, or LaunchError saying what it is needed for."""
    path = shutil.which(name)
    if path is None:
        raise LaunchError(f"`{name}` is not on PATH; it is needed to {what} (use --dry-run to only print it)")
    return path


def run_tool(cmd: Sequence[str], *, stdin: str | None = None, timeout: float = 120.0) -> str:
    """Run a submit tool (sbatch, kubectl); its stdout, or LaunchError with its exit status and stderr."""
    try:
        proc = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`{shell_join(cmd)}` did not answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LaunchError(f"`{shell_join(cmd)}` failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def write_file(path: str, text: str, mode: int = 0o644) -> str:
    """Write `text` to `path` (creating its directory); the absolute path."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def print_section(title: str, body: str) -> None:
    """Dry-run output: a titled block, so several artefacts (a script and the recipe) read apart."""
    print(f"# ---- {title}")
    print(body if body.endswith("\n") else body + "\n", end="")
