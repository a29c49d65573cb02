"""Hypervolume reached by static, hypervolume-guided and gradient-based weighting on a task whose objectives conflict.

    python -m bench.multi_objective            # ~45-60 min on 2 cores: 3 methods x 3 seeds
    python -m bench.multi_objective --quick    # ~3 min: 3 methods x 1 seed, a few steps (smoke test)

Task: the demo's synthetic arithmetic (operands 0-30, answers of 1-3 characters), two reward components that pull
apart: `correct` (math_answer, 0/1) and `brief` (length_penalty with target 1 token: -0.25 per token beyond one,
so every answer of two or more digits is penalised, and the cheapest way to be brief is to answer wrongly with one
digit). Per seed, one SFT warm-up is shared by the three methods (same starting model, same data order, same
budget of GRPO steps); each method then trains with its own `weighting.kind` and equal base weights.

Figure: for every run, the held-out greedy evaluations (before, every `--eval-every` steps, after) form a set of
(correct, brief) points; the hypervolume of that set w.r.t. the reference (0, -1) is what the run reached. Reported
per method as mean and spread over seeds, and as a ratio to static weighting in the same seed.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Any, Sequence

from bench.common import FORMER_DEFAULTS
from bench.common import header, machine_info, md_table, parse_args, ray_running, read_metrics, setup_env, \
    tiny_recipe, write_results

NAME = "multi_objective"
METHODS = ("static", "hypervolume", "gradient")
REFERENCE = (0.0, -1.0)
# A long warm-up leaves a policy that gets about half the held-out sums right, so RL has both objectives to trade
# (after the demo's 400 steps it got 9-21% right and every weighting walked to the brief corner).
WARMUP_STEPS = 1200
def rewards_for(brief_target: int = 1) -> list[dict[str, Any]]:
    return [
        {"name": "correct", "plugin": "math_answer", "weight": 1.0},
        {"name": "brief", "plugin": "length_penalty", "weight": 1.0,
         "args": {"target": brief_target, "coef": 0.25, "max_penalty": 1.0}},
    ]


def recipe_for(method: str, seed: int, steps: int, eval_every: int, out: str, sft_dir: str | None, quick: bool,
               warmup_steps: int | None = None, brief_target: int = 1):
    overrides = [f"run.seed={seed}", f"run.steps={steps}", "run.save_every=0", "run.progress=false",
                 f"eval.every={eval_every}", "eval.max_samples=100", "train.backend=torch", "train.num_ranks=1",
                 "rollout.prompts_per_step=16", "rollout.group_size=8", "train.micro_batch_size=128"]
    if quick:
        overrides += ["rollout.prompts_per_step=8", "eval.max_samples=32", "warmup.steps=60"]
    if warmup_steps is not None:
        overrides += [f"warmup.steps={warmup_steps}"]
    if sft_dir:
        overrides += ["warmup.steps=0"]

    def edit(d: dict) -> None:
        d["rewards"] = rewards_for(brief_target)
        d["weighting"] = {"kind": method, "normalize": "component_then_sum"}
        d["eval"]["accuracy_component"] = "correct"
        if sft_dir:
            d["model"] = {"path": sft_dir}

    return tiny_recipe([*FORMER_DEFAULTS, *overrides], out, edit)  # measured before 2026-12-08


def eval_points(out: str) -> list[tuple[float, float]]:
    records = read_metrics(os.path.join(out, "metrics.jsonl"), phase="eval")
    return [(r["eval/correct"], r["eval/brief"]) for r in records]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--steps": {"type": int, "default": None, "help": "GRPO steps per run (default 60; --quick 6)"},
        "--seeds": {"type": int, "default": None, "help": "seeds (default 3; --quick 1)"},
        "--eval-every": {"type": int, "default": None, "help": "held-out evaluation period (default 15)"},
        "--warmup-steps": {"type": int, "default": None,
                           "help": f"SFT warm-up steps shared per seed (default {WARMUP_STEPS}; --quick 60)"},
        "--brief-target": {"type": int, "default": 1, "help": "tokens `brief` allows before it penalises (default 1)"}})
    setup_env()
    from rlhf.runtime.controller import run
    from rlhf.weighting.pareto import hypervolume, non_dominated

    quick = args.quick
    steps = args.steps or (6 if quick else 60)
    seeds = args.seeds or (1 if quick else 3)
    eval_every = args.eval_every or (3 if quick else 15)
    warmup_steps = args.warmup_steps if args.warmup_steps is not None or quick else WARMUP_STEPS  # None: --quick's 60
    info = machine_info()
    runs: list[dict[str, Any]] = []
    with ray_running(), tempfile.TemporaryDirectory(prefix="bench_mo_") as tmp:
        for seed in range(seeds):
            sft_dir = None
            for method in METHODS:
                out = os.path.join(tmp, f"{method}_s{seed}")
                recipe = recipe_for(method, seed, steps, eval_every, out, sft_dir, quick, warmup_steps,
                                    args.brief_target)
                t0 = time.perf_counter()
                run(recipe)
                wall = time.perf_counter() - t0
                if sft_dir is None:  # the first run of the seed did the warm-up; the others start from it
                    sft_dir = os.path.join(out, "sft")
                points = eval_points(out)
                rl = read_metrics(os.path.join(out, "metrics.jsonl"))
                last = rl[-1] if rl else {}
                runs.append({"method": method, "seed": seed, "wall_s": wall, "points": points,
                             "front": [points[i] for i in non_dominated(points)],
                             "hypervolume": hypervolume(points, REFERENCE), "final": points[-1],
                             "final_weights": {k: v for k, v in last.items() if k.startswith("weights/")}})
                os.makedirs(args.out, exist_ok=True)
                with open(os.path.join(args.out, f"{NAME}.partial.json"), "w") as f:  # survives an interrupted run
                    json.dump({"runs": runs}, f)
                print(f"{method:12s} seed {seed}: HV {runs[-1]['hypervolume']:.4f}  final {points[-1]}  "
                      f"({wall:.0f} s)", flush=True)
    result = {"bench": NAME, "quick": quick, "machine": info, "steps": steps, "seeds": seeds,
              "warmup_steps": warmup_steps, "brief_target": args.brief_target,
              "eval_every": eval_every, "reference": REFERENCE, "runs": runs}
    return finish(result, args.out)


def finish(result: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Summary table, ratios, markdown and files from the runs (also: `python -m bench.multi_objective --render
    JSON` re-renders a saved result)."""
    table = summarize(result["runs"])
    result["summary"] = table
    result["ratios"] = {f"{m}_hv_over_static": table[m]["ratio_to_static"] for m in METHODS if m != "static"}
    result["ratios"].update({f"{m}_hv_rl_over_static": table[m]["rl_ratio_to_static"] for m in METHODS
                             if m != "static"})
    result["required_ratios"] = [f"{m}_hv_over_static" for m in METHODS if m != "static"]
    md = render(result)
    write_results(out_dir, NAME, result, md)
    print(md)
    return result


def render(result: dict[str, Any]) -> str:
    r = result
    md = header("Multi-objective weighting: hypervolume reached", f"python -m bench.{NAME}"
                + (" --quick" if r["quick"] else "")
                + (f" --warmup-steps {r['warmup_steps']}" if r.get("warmup_steps") else ""), r["machine"], r["quick"])
    md += (f"\nTask: arithmetic, rewards `correct` (0/1) vs `brief` (-0.25 per token beyond "
           f"{r.get('brief_target', 1)}); {r['steps']} GRPO steps per run after a shared SFT warm-up per seed "
           f"({r.get('warmup_steps') or 400} steps); held-out greedy eval every {r['eval_every']} steps; HV w.r.t. "
           f"{tuple(r['reference'])}: of each run's eval points (HV), and of its points after the shared start "
           f"(HV after start: where RL took it); {r['seeds']} seed(s).\n\n")
    md += md_table(["weighting", "HV mean", "HV min", "HV max", "HV / static (same seed), mean",
                    "HV after start, mean", "HV after start / static, mean", "final correct", "final brief",
                    "final simplex weight of `correct`"],
                   [[m, t["hv_mean"], t["hv_min"], t["hv_max"], t["ratio_to_static"], t["hv_rl_mean"],
                     t["rl_ratio_to_static"], t["final_correct"], t["final_brief"], t["final_weight_correct"]]
                    for m, t in r["summary"].items()])
    md += "\n\nPer run (eval points: before RL, then every eval):\n\n"
    md += md_table(["weighting", "seed", "HV", "HV after start", "points (correct, brief)"],
                   [[x["method"], x["seed"], x["hypervolume"], _hv(x["points"][1:]),
                     " ".join(f"({a:.2f}, {b:.2f})" for a, b in x["points"])] for x in r["runs"]])
    return md


def _hv(points: list) -> float:
    from rlhf.weighting.pareto import hypervolume

    return hypervolume([tuple(p) for p in points], REFERENCE) if points else 0.0


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    static = {r["seed"]: r for r in runs if r["method"] == "static"}
    for m in METHODS:
        rs = [r for r in runs if r["method"] == m]
        hv = [r["hypervolume"] for r in rs]
        ratios = [r["hypervolume"] / static[r["seed"]]["hypervolume"] for r in rs
                  if r["seed"] in static and static[r["seed"]]["hypervolume"]]
        rl_ratios = [_hv(r["points"][1:]) / _hv(static[r["seed"]]["points"][1:]) for r in rs
                     if r["seed"] in static and _hv(static[r["seed"]]["points"][1:])]
        weights = [r["final_weights"].get("weights/simplex/correct", 0.5) for r in rs]
        out[m] = {"hv_mean": statistics.fmean(hv), "hv_min": min(hv), "hv_max": max(hv),
                  "ratio_to_static": statistics.fmean(ratios) if ratios else float("nan"),
                  "hv_rl_mean": statistics.fmean(_hv(r["points"][1:]) for r in rs),
                  "rl_ratio_to_static": statistics.fmean(rl_ratios) if rl_ratios else float("nan"),
                  "final_correct": statistics.fmean(r["final"][0] for r in rs),
                  "final_brief": statistics.fmean(r["final"][1] for r in rs),
                  "final_weight_correct": statistics.fmean(weights)}
    return out


def _render_saved(argv: Sequence[str]) -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--render", required=True, help="a saved multi_objective.json")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    with open(a.render) as f:
        finish(json.load(f), a.out)


if __name__ == "__main__":
    import sys

    _render_saved(sys.argv[1:]) if "--render" in sys.argv else main()
