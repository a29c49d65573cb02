"""Launchers: run one recipe on a laptop, a Ray cluster, Slurm or Kubernetes (KubeRay).

    rlhf launch local RECIPE [key.path=value ...]                      # = rlhf train, in this process
    rlhf launch ray   RECIPE --address http://HEAD:8265 [--no-wait]    # ray job submit
    rlhf launch slurm RECIPE --nodes 2 --gpus-per-node 8 [...]         # sbatch: Ray head + workers, then train
    rlhf launch k8s   RECIPE --image IMG [--apply]                     # KubeRay RayJob (+ ConfigMap with the recipe)

Every target gets the recipe only after rlhf/cli.py validated it (as `rlhf validate` does), and `--dry-run`
prints what would be submitted (command, sbatch script, manifest) without submitting anything. One module per
target; what they share is in launch/common.py.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from launch.common import LaunchError, Target, make_job

TARGETS = ("local", "ray", "slurm", "k8s")


def target(name: str) -> Target:
    if name not in TARGETS:
        raise LaunchError(f"unknown launch target {name!r}; choose one of {', '.join(TARGETS)}")
    return importlib.import_module(f"launch.{name}")  # type: ignore[return-value]


def add_parsers(launch_parser: Any) -> None:
    """One sub-command per target under `rlhf launch`, each with the shared arguments and its own flags."""
    sub = launch_parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name in TARGETS:
        mod = target(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("recipe", help="path to a recipe YAML")
        p.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")
        p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--resume", action="store_true", help="pass --resume to `rlhf train`")
        g.add_argument("--overwrite", action="store_true", help="pass --overwrite to `rlhf train`")
        mod.add_arguments(p)


def launch(args: Any, recipe: Any, train_here: Any = None) -> int:
    """Run target `args.target` for an already validated recipe; its exit status. `train_here(args)` is `rlhf
    train` in this process (the CLI's), for the `local` target."""
    job = make_job(args.recipe, args.overrides, recipe, resume=args.resume, overwrite=args.overwrite,
                   dry_run=args.dry_run, train_here=train_here)
    try:
        return target(args.target).launch(job, args)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


__all__ = ["TARGETS", "LaunchError", "add_parsers", "launch", "target"]
