"""Per-rank peak memory of DeepSpeed ZeRO-0 / ZeRO-2 / ZeRO-3 on 2 ranks, the KL reference included.

    python -m bench.zero3_memory            # ~15 min on 2 cores: a 308M-parameter Llama (hidden 1024, 24 layers;
                                            # ZeRO-0 takes ~16 GiB over its 2 ranks), then the same pass again
                                            # with MALLOC_MMAP_THRESHOLD_ (below)
    python -m bench.zero3_memory --no-allocator-variant   # ~7 min: the first pass only
    python -m bench.zero3_memory --layers 12               # the 154M model of the 2026-12-07 figures
    python -m bench.zero3_memory --quick    # ~1 min: a ~5M model, no floor runs, no second pass: smoke test
                                            # (figures mean little: the per-process floor dominates)

What is measured, in one run on one machine: for each ZeRO stage (0, 2, 3) a fresh ``TrainGroup`` of 2 DeepSpeed
ranks (gloo, CPU; fresh processes, so each kernel high-water mark belongs to one configuration), float32, and
each rank's peak resident set (``TrainWorker.memory()``: VmHWM of the rank's process tree, what
``memory/peak_rss_gb/trainers`` reports as the max over the ranks) at three points:

  1. after ``build`` (the policy and its optimizer; under ZeRO-3 constructed partitioned),
  2. after ``load_reference`` (ZeRO-3: a DeepSpeed inference engine sharded over the ranks; else a full copy),
  3. after ``--steps`` (default 4) ``train_rl`` steps (GRPO, kl_coef 0.05, so the reference's forward runs) on 8
     synthetic sequences (random token ids, 16 prompt + 32 completion tokens, loss mask on the completion, random
     advantages). The peak after each step is kept: both stages' peaks grow over the first steps (ZeRO-0 by
     ~0.6 GiB from step 1 to 4 at 154M, ZeRO-3 by its heap), and a run's peak is what a user sizes a machine by.

The driver also reads each rank's current ``VmRSS`` / ``RssAnon`` / ``RssFile`` from /proc at each point (what
stays resident, next to the peak). The per-rank floor (Python + torch + transformers + DeepSpeed imported, the
gloo group up, a DeepSpeed engine built) is measured the same way with a trivially small model (~30k
parameters) at each stage and point: "increase" = peak - that baseline. Next to it, the bytes theory gives per
rank (fp32: params 4 Psi, grads 4 Psi, Adam 8 Psi; ZeRO-2 shards grads + Adam over N, ZeRO-3 also the params;
the reference 4 Psi, 4 Psi / N under ZeRO-3) and `rlhf plan`'s training-rank table for the same recipe (model
states + activations, without its CUDA overhead constant).

Second pass (full runs): the same groups in a child process whose Ray and ranks inherit
``MALLOC_MMAP_THRESHOLD_=1048576``, so glibc returns every freed buffer of 1 MiB or more to the kernel and RSS
follows the live tensors instead of what the heap keeps: it separates ZeRO-3's own footprint from the allocator's.

(The report, tables, verdict and plot, is bench/zero3_memory_report.py.)

Figure: peak RSS per rank, ZeRO-3 / ZeRO-0, after the step, reference included (max over the 2 ranks);
goal <= 0.6 (issue 20). Also ZeRO-2 / ZeRO-0, the same ratios of the increases over the floor, and both with
the allocator knob.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from typing import Any, Sequence

from bench.common import (
    machine_info,
    parse_args,
    print_result,
    ratio,
    ray_running,
    setup_env,
    timed,
    write_results,
)
from rlhf.plan.memory import has_master_copy
from rlhf.transport.placement import process_tree

NAME = "zero3_memory"
GOAL = 0.6  # peak RSS per rank, ZeRO-3 / ZeRO-0 (issue 20)
STAGES = (0, 2, 3)
POINTS = ("build", "reference", "step")
RANKS = 2
ROWS, PROMPT, COMPLETION = 8, 16, 32  # the synthetic experience batch: 8 sequences x 48 tokens
STEPS = 4  # GRPO steps per group; "after step" = after the last (peaks after each are kept too)
GIB = 2**30

MMAP_THRESHOLD = 2**20  # the allocator pass: glibc mmaps (and unmaps on free) every allocation >= 1 MiB

SIZES = {
    "full": dict(hidden_size=1024, intermediate_size=2816, num_layers=24, num_heads=16),  # 308M: params dominate
    "quick": dict(hidden_size=256, intermediate_size=768, num_layers=6, num_heads=4),
    "floor": dict(hidden_size=32, intermediate_size=32, num_layers=1, num_heads=2),  # the per-rank baseline
}


def build_model(root: str, size_name: str) -> tuple[str, int]:
    """A tiny-config float32 Llama of SIZES[size_name] saved under root; (its directory, its parameter count)."""
    from rlhf.config.schema import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny

    cfg = TinyModelConfig(max_position_embeddings=64, tokenizer_vocab_size=64, **SIZES[size_name])
    corpus = [f"{a}+{b}={a + b}" for a in range(30) for b in range(30)]
    path = materialize_tiny(cfg, corpus, os.path.join(root, f"model_{size_name}"), seed=0)
    return path, count_params(path)


def count_params(model_dir: str) -> int:
    """Parameters in the saved checkpoint (tied embeddings stored once), read from the safetensors header."""
    from safetensors import safe_open

    n = 0
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        for key in f.keys():
            shape = f.get_slice(key).get_shape()
            k = 1
            for d in shape:
                k *= d
            n += k
    return n


def make_recipe(workdir: str, model_dir: str, zero_stage: int):
    from rlhf.config.schema import Recipe

    return Recipe.model_validate({  # float32 on any CPU (auto picks bf16 on AMX), as the theory counts bytes
        "run": {"output_dir": os.path.join(workdir, f"run_z{zero_stage}")},
        "model": {"path": model_dir},  # the group is built from the directory given to build(); plan reads it
        "data": {"max_prompt_tokens": PROMPT},
        "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"prompts_per_step": ROWS // 4, "group_size": 4, "max_new_tokens": COMPLETION},
        "objective": {"kind": "grpo", "kl_coef": 0.05},
        "train": {"backend": "deepspeed", "zero_stage": zero_stage, "num_ranks": RANKS, "lr": 1e-5,
                  "precision": "fp32"},
    })


def synthetic_batch(vocab: int, seed: int = 0):
    """ROWS sequences of PROMPT + COMPLETION random token ids; loss on the completion, random advantages."""
    import torch

    from rlhf.types import ExperienceBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (ROWS, PROMPT + COMPLETION), generator=g)  # ids 0-3 are the special tokens
    return ExperienceBatch(input_ids=ids, attention_mask=torch.ones_like(ids),
                           loss_mask=torch.ones(ROWS, COMPLETION), advantages=torch.randn(ROWS, generator=g),
                           prompt_len=PROMPT)


def vocab_size(model_dir: str) -> int:
    with open(os.path.join(model_dir, "config.json")) as f:
        return int(json.load(f)["vocab_size"])


# --------------------------------------------------------------------------- /proc


def proc_now(pid: int) -> dict[str, float]:
    """A process tree's current VmRSS / RssAnon / RssFile and its VmHWM sum, GiB (read from the driver: the ranks
    run on this machine)."""
    out = {"rss": 0.0, "anon": 0.0, "file": 0.0, "hwm": 0.0}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "VmHWM:": "hwm"}
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    k = line.split(":", 1)[0] + ":"
                    if k in keys:
                        out[keys[k]] += int(line.split()[1]) / 2**20
        except (OSError, ValueError, IndexError):
            continue
    return out


def _environ(pid: int, key: str) -> str | None:
    """`key` in a process's environment (None if unset or unreadable): did the ranks inherit the allocator knob?"""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(key.encode() + b"="):
                    return item.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- one configuration


def measure(model_dir: str, workdir: str, stage: int, exp: Any, steps: int = STEPS) -> dict[str, Any]:
    """A fresh 2-rank group at `stage`: per rank, peak (VmHWM) and current RSS at start and after each point
    ('step': after the last of `steps` updates on the same batch)."""
    import ray

    from rlhf.train.group import TrainGroup

    recipe = make_recipe(workdir, model_dir, stage)
    trainers = TrainGroup(recipe)
    try:
        pids = [json.loads(ray.get(w.ping.remote()))["pid"] for w in trainers.workers]
        out: dict[str, Any] = {"pids": pids, "points": {}, "seconds": {},
                               "rank_malloc_mmap_threshold": [_environ(pid, "MALLOC_MMAP_THRESHOLD_") for pid in pids]}

        def snap(point: str) -> None:
            peaks = ray.get([w.memory.remote() for w in trainers.workers])
            out["points"][point] = {"peak_gib": [p["rss"] for p in peaks], "now": [proc_now(pid) for pid in pids]}

        snap("start")
        out["seconds"]["build"], built = timed(lambda: trainers.build(model_dir, recipe.train.lr))
        out["params_seen_by_rank"] = built[0]["params"]
        snap("build")
        out["seconds"]["reference"], _ = timed(lambda: trainers.load_reference(model_dir))
        snap("reference")
        step_seconds, step_peaks = [], []
        for _ in range(steps):  # the peak of a run, not of its first step: both stages' heaps grow for a few steps
            seconds, metrics = timed(lambda: trainers.train_rl(exp))
            snap("step")
            step_seconds.append(seconds)
            step_peaks.append(max(out["points"]["step"]["peak_gib"]))
        out["seconds"]["step"] = sum(step_seconds) / steps
        out["step_seconds"], out["step_peaks_gib"] = step_seconds, step_peaks
        out["group_metric_gib"] = metrics.get("memory/peak_rss_gb/trainers")
        out["kl"] = metrics.get("kl")
        out["grad_norm"] = metrics.get("grad_norm")
        return out
    finally:
        trainers.shutdown()


# --------------------------------------------------------------------------- theory, plan


def theory(psi: int, stage: int, n: int = RANKS) -> dict[str, float]:
    """fp32 model-state bytes per rank as ZeRO partitions them, and the reference; ``master`` is what DeepSpeed
    0.19 adds for fp32 weights: ZeRO-1/2 always clone an fp32 master partition (stage_1_and_2.py); ZeRO-3 means
    to share it and does since rlhf/train/deepspeed.py ``shared_master_partitions`` (its own check compares
    ``tensor.device`` with a device name, never equal in torch 2.x, so before that it cloned too)."""
    params = 4 * psi / (n if stage == 3 else 1)
    grads = 4 * psi / (n if stage >= 2 else 1)
    adam = 8 * psi / (n if stage >= 1 else 1)
    ref = 4 * psi / (n if stage == 3 else 1)
    master = 4 * psi / n if has_master_copy(4, stage) else 0.0
    return {"params": params, "grads": grads, "adam": adam, "reference": ref,
            "total": params + grads + adam + ref, "master": master, "with_master": params + grads + adam + ref + master}


def plan_figures(recipe: Any) -> dict[str, float] | None:
    """`rlhf plan`'s training-rank rows for the recipe (bytes), without the CUDA overhead; None if it fails."""
    try:
        from rlhf.plan import plan_recipe

        rows = {what: value for what, value, _ in plan_recipe(recipe).tables[0].rows}
    except Exception as e:  # noqa: BLE001 - a side figure: the bench's own numbers do not depend on it
        return {"error": f"{type(e).__name__}: {e}"}  # type: ignore[dict-item]
    states = sum(v for k, v in rows.items() if k in ("parameters", "gradients", "optimizer state",
                                                      "optimizer step buffer", "ZeRO-3 gathered module"))
    ref = rows.get("reference model", 0.0)
    act = rows.get("activations", 0.0)
    return {"model_states": states, "reference": ref, "activations": act, "total": states + ref + act,
            "rows": rows}


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--no-allocator-variant": dict(action="store_true", help="skip the second pass with "
                                       f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} (full runs make it by default)"),
        "--steps": dict(type=int, default=None, help=f"GRPO steps per group (default {STEPS}; --quick 2)"),
        "--layers": dict(type=int, default=None, help="decoder layers of the full model (default 24: 308M)"),
        "--child": dict(action="store_true", help=argparse.SUPPRESS)})  # the allocator pass, run by the parent
    setup_env()
    quick = args.quick
    info = machine_info()
    steps = args.steps or (2 if quick else STEPS)
    if args.layers:
        SIZES["full"] = dict(SIZES["full"], num_layers=args.layers)
    runs, psi, psi_floor, plans = measure_all(quick, steps)
    result = analyse(runs, psi, psi_floor, plans)
    result.update({"bench": NAME, "quick": quick, "machine": info, "model": SIZES["quick" if quick else "full"],
                   "num_params": psi, "floor_params": psi_floor, "ranks": RANKS, "steps": steps, "code": code_state(),
                   "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                   "batch": {"rows": ROWS, "prompt": PROMPT, "completion": COMPLETION}, "runs": runs,
                   "required_ratios": ["zero3_over_zero0_step", "zero2_over_zero0_step"]})
    if not (quick or args.child or args.no_allocator_variant):
        result["allocator_variant"] = allocator_variant(steps, SIZES["full"]["num_layers"])
        for key in ("zero3_over_zero0_step", "zero2_over_zero0_step", "zero3_over_zero0_step_increase"):
            result["ratios"][f"{key}_mmap_threshold"] = result["allocator_variant"]["ratios"][key]
    from bench.zero3_memory_report import plot, render

    result["paths"] = write_results(args.out, NAME, result, render(result))
    result["paths"]["plot"] = plot(result, args.out)
    return result


def measure_all(quick: bool, steps: int) -> tuple[dict[str, Any], int, int, dict[str, Any]]:
    """Every group of one pass: per stage the floor (full runs) and the model; with `rlhf plan`'s figures."""
    with tempfile.TemporaryDirectory(prefix="bench_zero3_memory_") as tmp:
        model_dir, psi = build_model(tmp, "quick" if quick else "full")
        floor_dir, psi_floor = build_model(tmp, "floor")
        print(f"[{NAME}] model: {psi:,} parameters ({4 * psi / GIB:.2f} GiB float32); floor model: {psi_floor:,}"
              + (f"; MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']}"
                 if "MALLOC_MMAP_THRESHOLD_" in os.environ else ""), flush=True)
        exp, exp_floor = synthetic_batch(vocab_size(model_dir)), synthetic_batch(vocab_size(floor_dir))
        runs: dict[str, Any] = {}
        with ray_running():
            for stage in STAGES:
                if not quick:  # --quick: no floor runs (each group costs ~15 s to start and build)
                    runs[f"floor_zero{stage}"] = measure(floor_dir, tmp, stage, exp_floor, steps)
                runs[f"zero{stage}"] = measure(model_dir, tmp, stage, exp, steps)
                _print_stage(stage, runs)
        plans = {f"zero{s}": plan_figures(make_recipe(tmp, model_dir, s)) for s in STAGES}
    return runs, psi, psi_floor, plans


def allocator_variant(steps: int, layers: int) -> dict[str, Any]:
    """The same pass in a child process (its own Ray) whose ranks inherit MALLOC_MMAP_THRESHOLD_: glibc then
    serves every allocation of MMAP_THRESHOLD bytes or more with its own mmap and unmaps it on free, so the
    ranks' RSS follows their live tensors instead of what the heap keeps after frees."""
    import subprocess
    import sys

    from bench.common import REPO_ROOT

    with tempfile.TemporaryDirectory(prefix="bench_zero3_memory_malloc_") as out:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
        subprocess.run([sys.executable, "-m", f"bench.{NAME}", "--child", "--steps", str(steps), "--layers",
                        str(layers), "--out", out], env=env, cwd=REPO_ROOT, check=True)
        with open(os.path.join(out, f"{NAME}.json")) as f:
            child = json.load(f)
    keep = ("peak_gib", "floor_gib", "increase_gib", "reference_gib", "ratios", "runs", "malloc_mmap_threshold",
            "machine")
    return {k: _int_keys(child[k]) for k in keep}


def _int_keys(x: Any) -> Any:
    """JSON turned the stage keys into strings: back to ints ("0" -> 0), elsewhere unchanged."""
    if isinstance(x, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in x.items()}
    return x


def code_state() -> dict[str, Any]:
    """HEAD and the uncommitted changes under rlhf/ (others edit it while benches run): what was measured."""
    import hashlib
    import subprocess

    from bench.common import REPO_ROOT

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = git("diff", "HEAD", "--", "rlhf")
    return {"head": git("rev-parse", "--short", "HEAD").strip(),
            "rlhf_dirty": git("diff", "HEAD", "--name-only", "--", "rlhf").split(),
            "rlhf_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None}


def _print_stage(stage: int, runs: dict[str, Any]) -> None:
    r, f = runs[f"zero{stage}"], runs.get(f"floor_zero{stage}")
    peaks = " ".join(f"{p}={max(r['points'][p]['peak_gib']):.2f}" for p in POINTS)
    floor = f"; floor after step {max(f['points']['step']['peak_gib']):.2f}" if f else ""
    print(f"[{NAME}] ZeRO-{stage}: peak GiB (max over ranks) {peaks}{floor}", flush=True)


def analyse(runs: dict[str, Any], psi: int, psi_floor: int, plans: dict[str, Any]) -> dict[str, Any]:
    peak = {s: {p: max(runs[f"zero{s}"]["points"][p]["peak_gib"]) for p in ("start", *POINTS)} for s in STAGES}
    floor = {s: {p: max(runs[f"floor_zero{s}"]["points"][p]["peak_gib"]) if f"floor_zero{s}" in runs
                 else math.nan for p in ("start", *POINTS)} for s in STAGES}
    increase = {s: {p: peak[s][p] - floor[s][p] for p in POINTS} for s in STAGES}
    theo = {s: theory(psi, s) for s in STAGES}
    ratios = {
        "zero3_over_zero0_step": ratio(peak[3]["step"], peak[0]["step"]),
        "zero2_over_zero0_step": ratio(peak[2]["step"], peak[0]["step"]),
        "zero3_over_zero0_step_increase": ratio(increase[3]["step"], increase[0]["step"]),
        "zero2_over_zero0_step_increase": ratio(increase[2]["step"], increase[0]["step"]),
        "zero3_over_zero0_theory": ratio(theo[3]["total"], theo[0]["total"]),
        "zero3_over_zero0_theory_with_master": ratio(theo[3]["with_master"], theo[0]["with_master"]),
        "zero3_over_zero0_build": ratio(peak[3]["build"], peak[0]["build"]),
        "zero3_over_zero0_reference": ratio(peak[3]["reference"], peak[0]["reference"]),
    }
    return {"peak_gib": peak, "floor_gib": floor, "increase_gib": increase, "reference_gib": reference_cost(runs),
            "theory_gib": {s: {k: v / GIB for k, v in t.items()} for s, t in theo.items()},
            "plan_gib": {s: ({k: v / GIB for k, v in p.items() if k != "rows"} if "error" not in p else p)
                         for s, p in ((int(k[-1]), v) for k, v in plans.items())},
            "ratios": ratios}


def reference_cost(runs: dict[str, Any]) -> dict[int, float]:
    """What the reference keeps resident per rank (GiB, max over ranks). ZeRO-3: the growth of VmRSS over
    ``load_reference`` (its partition). ZeRO-0/2: transformers maps the safetensors file and the full copy stays
    in those file pages, untouched until the step's reference forward faults them in: the growth of RssFile over
    the step (rank 0's policy pages turn anonymous at that step's update, so the max over ranks is rank 1's)."""
    out = {}
    for s in STAGES:
        pts = runs[f"zero{s}"]["points"]
        if s == 3:
            out[s] = max(b["rss"] - a["rss"] for a, b in zip(pts["build"]["now"], pts["reference"]["now"]))
        else:
            out[s] = max(b["file"] - a["file"] for a, b in zip(pts["reference"]["now"], pts["step"]["now"]))
    return out


if __name__ == "__main__":
    print_result(main())
