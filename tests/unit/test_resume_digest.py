"""What a resumed run may change: where it runs and where its directory now is (a run copied to shared storage
resumes there), not what is trained."""

from __future__ import annotations

import os

from rlhf.config import load_recipe
from rlhf.runtime.resume import digest

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "grpo_tiny_cpu.yaml")


def test_moved_run_and_its_environment_keep_the_digest():
    base = digest(load_recipe(RECIPE))
    assert digest(load_recipe(RECIPE, ["run.output_dir=/shared/runs/moved", "run.name=moved",
                                       "ray.env_vars.MALLOC_MMAP_THRESHOLD_=1048576", "ray.num_cpus=8"])) == base


def test_what_is_trained_changes_the_digest():
    base = digest(load_recipe(RECIPE))
    assert digest(load_recipe(RECIPE, ["train.lr=0.5"])) != base
    assert digest(load_recipe(RECIPE, ["rollout.group_size=3"])) != base
