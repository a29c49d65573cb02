"""`rlhf launch local RECIPE [key.path=value ...]`: train on this machine, in this process (= `rlhf train`).

Ray starts locally unless the recipe sets ray.address. `--dry-run` prints the equivalent `rlhf train` command.
"""

from __future__ import annotations

import argparse
from typing import Any

from launch.common import Job, LaunchError, shell_join

HELP = "train on this machine, in this process (the same as `rlhf train`)"
DESCRIPTION = __doc__


def add_arguments(parser: Any) -> None:
    """No flags of its own: the shared ones (--dry-run, --resume, --overwrite) are all it takes."""


def command(job: Job) -> list[str]:
    return ["rlhf", "train", job.recipe_path, *job.overrides, *job.train_flags]


def launch(job: Job, args: Any) -> int:
    if job.dry_run:
        print(shell_join(command(job)))
        return 0
    if job.train_here is None:
        raise LaunchError("launch local trains in this process: it needs `rlhf train` handed over by the CLI")
    train_args = argparse.Namespace(recipe=job.recipe_path, overrides=list(job.overrides),
                                    resume="--resume" in job.train_flags, overwrite="--overwrite" in job.train_flags)
    return job.train_here(train_args)
