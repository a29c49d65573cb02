"""Per-rank peak memory of DeepSpeed ZeRO-0 / ZeRO-2 / ZeRO-3 on 2 ranks, the KL reference included.

    python -m bench.zero3_memory            # ~8 min on 2 cores: a 154M-parameter Llama (hidden 1024, 12 layers),
                                            # then the same pass again with MALLOC_MMAP_THRESHOLD_ (below)
    python -m bench.zero3_memory --no-allocator-variant   # ~4 min: the first pass only
    python -m bench.zero3_memory --quick    # ~1 min: a ~5M model, no floor runs, no second pass: smoke test
                                            # (figures mean little: the per-process floor dominates)

What is measured, in one run on one machine: for each ZeRO stage (0, 2, 3) a fresh ``TrainGroup`` of 2 DeepSpeed
ranks (gloo, CPU; fresh processes, so each kernel high-water mark belongs to one configuration), float32, and
each rank's peak resident set (``TrainWorker.memory()``: VmHWM of the rank's process tree, what
``memory/peak_rss_gb/trainers`` reports as the max over the ranks) at three points:

  1. after ``build`` (the policy and its optimizer; under ZeRO-3 constructed partitioned),
  2. after ``load_reference`` (ZeRO-3: a DeepSpeed inference engine sharded over the ranks; else a full copy),
  3. after one ``train_rl`` step (GRPO, kl_coef 0.05, so the reference's forward runs) on 8 synthetic sequences
     (random token ids, 16 prompt + 32 completion tokens, loss mask on the completion, random advantages).

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

(A long file, ~570 lines: three stages x three points, the per-rank floor, the allocator pass in a child process
and the rendering of all of it; split it if it grows.)

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
    with_former_defaults,
    header,
    machine_info,
    md_table,
    parse_args,
    print_result,
    ratio,
    ray_running,
    save_figure,
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
GIB = 2**30

MMAP_THRESHOLD = 2**20  # the allocator pass: glibc mmaps (and unmaps on free) every allocation >= 1 MiB

SIZES = {
    "full": dict(hidden_size=1024, intermediate_size=2816, num_layers=12, num_heads=16),
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

    return Recipe.model_validate(with_former_defaults({  # measured before 2026-12-08
        "run": {"output_dir": os.path.join(workdir, f"run_z{zero_stage}")},
        "model": {"path": model_dir},  # the group is built from the directory given to build(); plan reads it
        "data": {"max_prompt_tokens": PROMPT},
        "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"prompts_per_step": ROWS // 4, "group_size": 4, "max_new_tokens": COMPLETION},
        "objective": {"kind": "grpo", "kl_coef": 0.05},
        "train": {"backend": "deepspeed", "zero_stage": zero_stage, "num_ranks": RANKS, "lr": 1e-5},
    }))


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


def measure(model_dir: str, workdir: str, stage: int, exp: Any) -> dict[str, Any]:
    """A fresh 2-rank group at `stage`: per rank, peak (VmHWM) and current RSS at start and after each point."""
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
        out["seconds"]["step"], metrics = timed(lambda: trainers.train_rl(exp))
        snap("step")
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
        "--child": dict(action="store_true", help=argparse.SUPPRESS)})  # the allocator pass, run by the parent
    setup_env()
    quick = args.quick
    info = machine_info()
    runs, psi, psi_floor, plans = measure_all(quick)
    result = analyse(runs, psi, psi_floor, plans)
    result.update({"bench": NAME, "quick": quick, "machine": info, "model": SIZES["quick" if quick else "full"],
                   "num_params": psi, "floor_params": psi_floor, "ranks": RANKS, "code": code_state(),
                   "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                   "batch": {"rows": ROWS, "prompt": PROMPT, "completion": COMPLETION}, "runs": runs,
                   "required_ratios": ["zero3_over_zero0_step", "zero2_over_zero0_step"]})
    if not (quick or args.child or args.no_allocator_variant):
        result["allocator_variant"] = allocator_variant()
        for key in ("zero3_over_zero0_step", "zero2_over_zero0_step", "zero3_over_zero0_step_increase"):
            result["ratios"][f"{key}_mmap_threshold"] = result["allocator_variant"]["ratios"][key]
    result["paths"] = write_results(args.out, NAME, result, render(result))
    result["paths"]["plot"] = plot(result, args.out)
    return result


def measure_all(quick: bool) -> tuple[dict[str, Any], int, int, dict[str, Any]]:
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
                    runs[f"floor_zero{stage}"] = measure(floor_dir, tmp, stage, exp_floor)
                runs[f"zero{stage}"] = measure(model_dir, tmp, stage, exp)
                _print_stage(stage, runs)
        plans = {f"zero{s}": plan_figures(make_recipe(tmp, model_dir, s)) for s in STAGES}
    return runs, psi, psi_floor, plans


def allocator_variant() -> dict[str, Any]:
    """The same pass in a child process (its own Ray) whose ranks inherit MALLOC_MMAP_THRESHOLD_: glibc then
    serves every allocation of MMAP_THRESHOLD bytes or more with its own mmap and unmaps it on free, so the
    ranks' RSS follows their live tensors instead of what the heap keeps after frees."""
    import subprocess
    import sys

    from bench.common import REPO_ROOT

    with tempfile.TemporaryDirectory(prefix="bench_zero3_memory_malloc_") as out:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
        subprocess.run([sys.executable, "-m", f"bench.{NAME}", "--child", "--out", out], env=env, cwd=REPO_ROOT,
                       check=True)
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


# --------------------------------------------------------------------------- report


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    """Peak RSS per rank (max over ranks) per stage at each point, the floor shaded."""
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None
    peak, floor = result["peak_gib"], result["floor_gib"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.26
    colours = {"build": "tab:blue", "reference": "tab:orange", "step": "tab:red"}
    for i, point in enumerate(POINTS):
        xs = [j + (i - 1) * width for j in range(len(STAGES))]
        ax.bar(xs, [peak[s][point] for s in STAGES], width, color=colours[point], label=f"after {point}")
        if all(math.isfinite(floor[s][point]) for s in STAGES):
            ax.bar(xs, [floor[s][point] for s in STAGES], width, color="lightgrey", hatch="//", edgecolor="grey")
    var = result.get("allocator_variant")
    if var:  # the allocator pass's peak after the step, on the step bars
        ax.scatter([j + width for j in range(len(STAGES))], [var["peak_gib"][s]["step"] for s in STAGES],
                   marker="_", s=400, color="black", zorder=3, label="after step, MALLOC_MMAP_THRESHOLD_ 1 MiB")
    ax.set_xticks(range(len(STAGES)), [f"ZeRO-{s}" for s in STAGES])
    ax.set_ylabel("peak RSS per rank, GiB (max of 2 ranks)")
    r = result["ratios"]
    ax.set_title(f"{result['num_params'] / 1e6:.0f}M params fp32, 2 ranks: ZeRO-3 / ZeRO-0 = "
                 f"{r['zero3_over_zero0_step']:.2f} (goal <= {GOAL})", fontsize=10)
    ax.set_ylim(0, 1.55 * max(peak[s]["step"] for s in STAGES))  # room for the legend above the bars
    ax.legend(title="hatched: floor (tiny model)", fontsize=8, title_fontsize=8, loc="upper left", ncol=2)
    return save_figure(plt, fig, out_dir, NAME)


def render(result: dict[str, Any]) -> str:
    quick = result["quick"]
    cmd = "python -m bench.zero3_memory" + (" --quick" if quick else "")
    m, psi = result["model"], result["num_params"]
    peak, floor, inc, theo, plan = (result[k] for k in ("peak_gib", "floor_gib", "increase_gib", "theory_gib",
                                                         "plan_gib"))
    runs, r = result["runs"], result["ratios"]
    lines = [header("ZeRO-3 memory: per-rank peak RSS, ZeRO-0 / 2 / 3, reference included", cmd,
                    result["machine"], quick)]
    lines.append(f"Model: tiny-config Llama, hidden {m['hidden_size']}, intermediate {m['intermediate_size']}, "
                 f"{m['num_layers']} layers: **{psi:,} parameters** ({4 * psi / GIB:.2f} GiB float32 = 4 Psi). "
                 f"{RANKS} DeepSpeed ranks (gloo, CPU), float32, a fresh group (fresh processes) per stage. "
                 f"Step: GRPO, kl_coef 0.05, {ROWS} sequences x {PROMPT + COMPLETION} tokens (random ids). "
                 "Peak = each rank's VmHWM (`TrainWorker.memory()`), GiB; the max over the 2 ranks unless a "
                 "column says per rank.\n")
    lines.append(f"**Figure: peak RSS per rank after the step, ZeRO-3 / ZeRO-0 = {r['zero3_over_zero0_step']:.3f}** "
                 f"(goal <= {GOAL}: {'meets' if r['zero3_over_zero0_step'] <= GOAL else 'misses'}); "
                 f"ZeRO-2 / ZeRO-0 = {r['zero2_over_zero0_step']:.3f}. Over the floor (peak - the same run with a "
                 f"{result['floor_params']:,}-parameter model): ZeRO-3 / ZeRO-0 = "
                 f"{r['zero3_over_zero0_step_increase']:.3f}, ZeRO-2 / ZeRO-0 = "
                 f"{r['zero2_over_zero0_step_increase']:.3f}; theory (below, no DeepSpeed extras) "
                 f"{r['zero3_over_zero0_theory']:.3f}.\n")
    lines.append("## Peak RSS per rank (GiB)\n")
    rows = []
    for s in STAGES:
        pts = runs[f"zero{s}"]["points"]
        per_rank = " / ".join(f"{v:.2f}" for v in pts["step"]["peak_gib"])
        rows.append([f"ZeRO-{s}", peak[s]["start"], peak[s]["build"], peak[s]["reference"], peak[s]["step"],
                     per_rank, ratio(peak[s]["step"], peak[0]["step"])])
    for s in (STAGES if "floor_zero0" in runs else ()):
        rows.append([f"floor, ZeRO-{s}", floor[s]["start"], floor[s]["build"], floor[s]["reference"],
                     floor[s]["step"], " / ".join(f"{v:.2f}" for v in runs[f"floor_zero{s}"]["points"]["step"]
                                                  ["peak_gib"]), ""])
    lines.append(md_table(["run", "actor started", "after build", "after load_reference", "after step",
                           "after step, rank 0 / 1", "/ ZeRO-0"], rows))
    lines.append("\nThe floor: the same three calls with a "
                 f"{result['floor_params']:,}-parameter model at the same stage (Python, torch, transformers, "
                 "DeepSpeed imported, the gloo group and a DeepSpeed engine up). 'actor started': before `build` "
                 "(DeepSpeed not yet imported).\n")
    lines.append("## Resident after each point (GiB, rank 0 / rank 1: current VmRSS = anonymous + file-backed)\n")
    rows = []
    for s in STAGES:
        pts = runs[f"zero{s}"]["points"]
        rows.append([f"ZeRO-{s}"] + [" / ".join(f"{n['rss']:.2f} = {n['anon']:.2f} + {n['file']:.2f}"
                                               for n in pts[p]["now"]) for p in POINTS])
    lines.append(md_table(["run", "after build", "after load_reference", "after step"], rows))
    lines.append("\nFile-backed pages: transformers maps the safetensors checkpoint, and a model loaded without a "
                 "conversion keeps its tensors in that mapping until they are written. Under ZeRO-0/2 the "
                 "reference stays there (page cache, shared by the ranks) and is faulted in by its first forward; "
                 "rank 0's policy is too until DeepSpeed's broadcast / the first update copies it. The reference's "
                 "resident cost per rank (ZeRO-0/2: RssFile growth over the step; ZeRO-3: VmRSS growth over "
                 "`load_reference`): " + ", ".join(f"ZeRO-{s} {result['reference_gib'][s]:.2f}" for s in STAGES)
                 + f" GiB (4 Psi = {4 * psi / GIB:.2f}).\n")
    lines.append("## Increase over the floor vs theory and `rlhf plan` (GiB per rank)\n")
    rows = []
    var = result.get("allocator_variant")
    for s in STAGES:
        t, p = theo[s], plan[s]
        planned = p.get("total", float("nan")) if isinstance(p, dict) else float("nan")
        vinc = var["increase_gib"][s]["step"] if var else float("nan")
        rows.append([f"ZeRO-{s}", inc[s]["build"], inc[s]["reference"], inc[s]["step"], vinc, t["params"],
                     t["grads"], t["adam"], t["reference"], t["total"], t["master"], t["with_master"], planned,
                     ratio(inc[s]["step"], t["with_master"])])
    lines.append(md_table(["stage", "increase: build", "+ reference", "+ step", "+ step, malloc 1 MiB",
                           "theory: params", "grads", "Adam", "reference", "total", "DeepSpeed fp32 master",
                           "total with it", "`rlhf plan`", "measured / theory with master"], rows))
    lines.append("\nTheory: fp32 params 4 Psi, grads 4 Psi, Adam 8 Psi per rank; ZeRO-2 shards grads and Adam "
                 f"over N = {RANKS}, ZeRO-3 also the params; the reference 4 Psi (4 Psi / N under ZeRO-3). "
                 "DeepSpeed fp32 master: the fp32 copy of the rank's partition DeepSpeed keeps even for fp32 "
                 "weights at ZeRO-1/2; ZeRO-3 updates the partition itself (`shared_master_partitions` in "
                 "rlhf/train/deepspeed.py; DeepSpeed 0.19.8 alone cloned it). 'malloc 1 MiB': the allocator pass "
                 "below. `rlhf plan`: its training-GPU table for the same recipe without the CUDA overhead row "
                 "(model states + reference + activations): "
                 + "; ".join(f"ZeRO-{s}: " + (", ".join(f"{k} {v:.2f}" for k, v in plan[s].items())
                                               if "error" not in plan[s] else plan[s]["error"]) for s in STAGES)
                 + ".\n")
    secs = "; ".join(f"ZeRO-{s}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[f"zero{s}"]["seconds"].items())
                     for s in STAGES)
    lines.append(f"Seconds: {secs}. The group's own metric `memory/peak_rss_gb/trainers` after the step: "
                 + ", ".join(f"ZeRO-{s} {runs[f'zero{s}']['group_metric_gib']:.2f}" for s in STAGES) + ".\n")
    if result.get("allocator_variant"):
        lines.append(allocator_section(result))
    code = result["code"]
    lines.append(f"Code: HEAD {code['head']}" + (f" with uncommitted changes to {', '.join(code['rlhf_dirty'])} "
                 f"(diff sha256 {code['rlhf_diff_sha256']})" if code["rlhf_dirty"] else "") + ".\n")
    lines.append("## Verdict\n")
    lines.append(verdict(result))
    return "\n".join(lines)


def allocator_section(result: dict[str, Any]) -> str:
    v = result["allocator_variant"]
    peak, vpeak, r, vr = result["peak_gib"], v["peak_gib"], result["ratios"], v["ratios"]
    inherited = all(x == str(MMAP_THRESHOLD) for run in v["runs"].values()
                    for x in run.get("rank_malloc_mmap_threshold", [None]))
    rows = []
    for s in STAGES:
        now = result["runs"][f"zero{s}"]["points"]["step"]["now"]
        vnow = v["runs"][f"zero{s}"]["points"]["step"]["now"]
        rows.append([f"ZeRO-{s}", peak[s]["build"], vpeak[s]["build"], peak[s]["reference"], vpeak[s]["reference"],
                     peak[s]["step"], vpeak[s]["step"], max(n["anon"] for n in now), max(n["anon"] for n in vnow),
                     ratio(vpeak[s]["step"], vpeak[0]["step"])])
    lines = ["\n## The allocator: the same pass with MALLOC_MMAP_THRESHOLD_ = "
             f"{MMAP_THRESHOLD:,} bytes (peak RSS per rank, GiB, max over ranks)\n",
             "glibc serves large allocations from its heap once a freed mmapped chunk has raised its dynamic "
             "threshold (up to 32 MiB), and a freed heap chunk stays resident. ZeRO-3 allocates and frees every "
             "module's gathered parameters and gradients on each forward and backward; with the threshold fixed "
             "at 1 MiB every such buffer is its own mapping, returned to the kernel when freed, so RSS follows the "
             "live tensors. Ranks inherited the setting: " + ("yes" if inherited else "**no** (see JSON)") + ".\n",
             md_table(["stage", "build", "build, 1 MiB", "+ reference", "+ reference, 1 MiB", "after step",
                       "after step, 1 MiB", "anonymous resident after step", "same, 1 MiB", "/ ZeRO-0, 1 MiB"], rows),
             f"\nWith the threshold: ZeRO-3 / ZeRO-0 after the step {vr['zero3_over_zero0_step']:.3f} (default "
             f"{r['zero3_over_zero0_step']:.3f}), ZeRO-2 / ZeRO-0 {vr['zero2_over_zero0_step']:.3f}; over the floor "
             f"ZeRO-3 / ZeRO-0 {vr['zero3_over_zero0_step_increase']:.3f}. The reference's resident partition "
             f"under ZeRO-3: {v['reference_gib'][3]:.2f} GiB (default allocator {result['reference_gib'][3]:.2f}). "
             "What the knob costs in time (one step, s, default -> 1 MiB): "
             + ", ".join(f"ZeRO-{s} {result['runs'][f'zero{s}']['seconds']['step']:.1f} -> "
                         f"{v['runs'][f'zero{s}']['seconds']['step']:.1f}" for s in STAGES)
             + f" (one step each; every large allocation becomes an mmap whose pages fault in afresh; load "
             f"{result['machine'].get('load_avg_1m', math.nan):.1f} at the start of the first pass, "
             f"{v['machine'].get('load_avg_1m', math.nan):.1f} of the second).\n"]
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> str:
    r, peak, floor, theo = result["ratios"], result["peak_gib"], result["floor_gib"], result["theory_gib"]
    fig = r["zero3_over_zero0_step"]
    meets = "meets" if fig <= GOAL else "misses"
    text = (f"ZeRO-3 {meets} the goal (<= {GOAL}): its per-rank peak after a step with the reference is {fig:.2f} of "
            f"ZeRO-0's ({peak[3]['step']:.2f} vs {peak[0]['step']:.2f} GiB); ZeRO-2 is at "
            f"{r['zero2_over_zero0_step']:.2f}. ")
    if math.isfinite(floor[3]["step"]):
        text += (f"Every rank pays a floor of {floor[3]['step']:.2f} GiB whatever the model; over it ZeRO-3 / ZeRO-0 "
                 f"is {r['zero3_over_zero0_step_increase']:.2f}, against {r['zero3_over_zero0_theory']:.2f} in theory "
                 + (f"({r['zero3_over_zero0_theory_with_master']:.2f} with DeepSpeed's fp32 master partition, "
                    f"{theo[3]['master']:.2f} GiB per rank). " if theo[3]["master"] else
                    "(ZeRO-3 keeps no fp32 master partition over fp32 weights: shared_master_partitions). "))
    var = result.get("allocator_variant")
    if var:
        vp, over = var["peak_gib"], var["increase_gib"][3]["step"] - theo[3]["with_master"]
        text += (f"The glibc heap accounts for {peak[3]['step'] - vp[3]['step']:.2f} GiB of ZeRO-3's peak (ZeRO-0: "
                 f"{peak[0]['step'] - vp[0]['step']:.2f}): with MALLOC_MMAP_THRESHOLD_ = 1 MiB in the ranks' "
                 f"environment ZeRO-3 / ZeRO-0 is {var['ratios']['zero3_over_zero0_step']:.2f}, over the floor "
                 f"{var['ratios']['zero3_over_zero0_step_increase']:.2f}; ZeRO-3's increase "
                 f"{var['increase_gib'][3]['step']:.2f} GiB then sits {over:.2f} GiB above the theory "
                 f"with the master partition (the step's transients: the flattened fp32 "
                 f"gradient partition, one gathered module and its gradient, activations). ")
    ref = result["reference_gib"]
    text += (f"The reference keeps {ref[0]:.2f} GiB resident per rank under ZeRO-0 (file-backed pages of the mapped "
             f"checkpoint, shared by the ranks in the page cache but counted in each rank's RSS) and {ref[3]:.2f} "
             f"under ZeRO-3 (its partition is {theo[3]['reference']:.2f}"
             + (f"; {var['reference_gib'][3]:.2f} with the 1 MiB threshold" if var else "") + ").")
    return text


if __name__ == "__main__":
    print_result(main())
