"""`ray.env_vars`: the recipe's environment variables reach every actor's process environment (where glibc reads
MALLOC_* at start-up), numbers are written as strings, bad names are recipe errors, and a Ray started by the caller
without them is refused with the key named rather than silently ignored."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from rlhf.config import RecipeError, load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "recipes", "grpo_tiny_cpu.yaml")


def test_values_become_strings_and_names_are_checked():
    r = load_recipe(RECIPE, ["ray.env_vars.MALLOC_MMAP_THRESHOLD_=1048576", "ray.env_vars.RLHF_FLAG=true"])
    assert r.ray.env_vars == {"MALLOC_MMAP_THRESHOLD_": "1048576", "RLHF_FLAG": "true"}
    with pytest.raises(RecipeError, match=r"ray\.env_vars: '9LIVES' is not an environment variable name"):
        load_recipe(RECIPE, ["ray.env_vars.9LIVES=1"])
    with pytest.raises(RecipeError, match=r"ray\.env_vars"):
        load_recipe(RECIPE, ["ray.env_vars.EMPTY=null"])


def test_env_reaches_the_actor_process_environment():
    """A fresh driver (its own local Ray, as `rlhf train` starts it): the actor's /proc/self/environ -- the
    environment its process was started with, which glibc's allocator reads -- holds the recipe's variables."""
    script = textwrap.dedent(f"""
        import os, ray
        from rlhf.config import load_recipe
        from rlhf.runtime.controller import _init_ray
        recipe = load_recipe({RECIPE!r}, ["ray.env_vars.MALLOC_MMAP_THRESHOLD_=1048576", "ray.num_cpus=1"])
        assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
        assert _init_ray(recipe)

        @ray.remote(num_cpus=0)
        def start_environment():
            with open("/proc/self/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\\0") if b"=" in e)
            return env.get(b"MALLOC_MMAP_THRESHOLD_"), os.environ.get("TOKENIZERS_PARALLELISM")

        print("RESULT", ray.get(start_environment.remote()))
        ray.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RESULT (b'1048576', 'false')" in out.stdout, out.stdout + out.stderr[-2000:]


def test_ray_started_without_them_is_refused(ray_session):
    from rlhf.runtime.controller import _check_env_reached

    _check_env_reached({})
    _check_env_reached({"TOKENIZERS_PARALLELISM": "false"})  # the session's Ray has it
    with pytest.raises(RecipeError, match=r"ray\.env_vars: \['RLHF_NOT_IN_THIS_RAY'\] cannot reach the actors"):
        _check_env_reached({"RLHF_NOT_IN_THIS_RAY": "1"})
