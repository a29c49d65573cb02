"""Front filling vs more weight vectors: the hypervolume of `rlhf sweep --fill` against the same budget spent on
more evenly spaced weight vectors (C-MORL's Pareto extension, rlhf/weighting/front_fill.py).

    python -m bench.front_fill             # ~12 min per seed on 2 cores: SFT warm-up, 7 GRPO runs
    python -m bench.front_fill --quick     # ~2 min: a few steps per run (smoke test, figures mean nothing)

Task: bench/multi_objective.py's arithmetic with `correct` (0/1) against `brief` (-0.25 per token beyond one). Per
seed one SFT warm-up is shared by every run (model.path = its model, no warm-up in the runs). Two arms, five GRPO
runs of the same length each (so the same number of training samples):

- fill: `rlhf sweep` over 3 evenly spaced weight vectors (1,0) (0.5,0.5) (0,1), then `--fill 2` on that sweep's
  output with `--resume` (the finished runs are re-read from their checkpoints): two constrained runs, each
  started from a neighbour's checkpoint, in the two largest gaps of the measured front (fewer when the front has
  fewer gaps; the table says so);
- even: 5 evenly spaced weight vectors (1,0) (0.75,0.25) (0.5,0.5) (0.25,0.75) (0,1). Its 3 vectors shared with
  the fill arm are the same runs (same recipe, seed and start): only (0.75,0.25) and (0.25,0.75) are trained again,
  so the arms differ exactly in how the last two runs were spent.

Figure: the hypervolume of each arm's points (held-out greedy evaluation after training, as `rlhf sweep` measures
them) w.r.t. the fixed reference (-0.1, -1.1) (each component's worst possible value less 10% of its range), and
their ratio fill / even; a plot of both fronts (front_fill.png).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any, Sequence

from bench.common import FORMER_DEFAULTS
from bench.common import header, machine_info, md_table, parse_args, ray_running, setup_env, tiny_recipe, \
    write_results
from bench.multi_objective import WARMUP_STEPS, rewards_for

NAME = "front_fill"
REFERENCE = (-0.1, -1.1)
BASE_VECTORS = ("1,0", "0.5,0.5", "0,1")
EXTRA_VECTORS = ("0.75,0.25", "0.25,0.75")  # the even arm's other two runs
FILL = 2


def recipe_for(seed: int, steps: int, out: str, sft_dir: str | None, quick: bool, warmup_steps: int,
               prompts: int = 16):
    """The sweep's recipe: the multi-objective task, static weights, evaluation only before and after."""
    overrides = [f"run.seed={seed}", f"run.steps={steps}", "run.save_every=0", "run.progress=false", "eval.every=0",
                 "eval.max_samples=100", "train.backend=torch", "train.num_ranks=1", "rollout.group_size=8",
                 f"rollout.prompts_per_step={prompts}", "train.micro_batch_size=128",
                 f"warmup.steps={0 if sft_dir else warmup_steps}"]
    if quick:
        overrides += ["rollout.group_size=4", "eval.max_samples=24"]

    def edit(d: dict) -> None:
        d["rewards"] = rewards_for(1)
        d["weighting"] = {"kind": "static", "normalize": "component_then_sum"}
        d["eval"]["accuracy_component"] = "correct"
        if sft_dir:
            d["model"] = {"path": sft_dir}

    return tiny_recipe([*FORMER_DEFAULTS, *overrides], out, edit)  # measured before 2026-12-08


def one_seed(seed: int, steps: int, warmup_steps: int, quick: bool, tmp: str, prompts: int) -> dict[str, Any]:
    """Warm-up, the fill arm (3 vectors, then --fill on their sweep with --resume), the even arm's two more runs."""
    from rlhf.runtime.controller import run
    from rlhf.sweep import sweep
    from rlhf.weighting.front_fill import front_gaps

    t0 = time.perf_counter()
    warm = os.path.join(tmp, f"warmup_s{seed}")
    run(recipe_for(seed, 1, warm, None, quick, warmup_steps, prompts))  # the SFT warm-up (and one GRPO step, unused)
    sft_dir = os.path.join(warm, "sft")
    warmup_s = time.perf_counter() - t0

    fill_recipe = recipe_for(seed, steps, os.path.join(tmp, f"fill_s{seed}"), sft_dir, quick, warmup_steps, prompts)
    t0 = time.perf_counter()
    base = sweep(fill_recipe, BASE_VECTORS, REFERENCE)
    base_s = time.perf_counter() - t0
    n_fill = min(FILL, len(front_gaps([r["point"] for r in base["runs"]])))
    t0 = time.perf_counter()
    filled = sweep(fill_recipe, BASE_VECTORS, REFERENCE, resume=True, fill=n_fill) if n_fill else base
    fill_s = time.perf_counter() - t0

    even_recipe = recipe_for(seed, steps, os.path.join(tmp, f"even_s{seed}"), sft_dir, quick, warmup_steps, prompts)
    t0 = time.perf_counter()
    extra = sweep(even_recipe, EXTRA_VECTORS, REFERENCE)
    extra_s = time.perf_counter() - t0
    even_runs = sorted([{k: r[k] for k in ("weights", "point")} for r in base["runs"] + extra["runs"]],
                       key=lambda r: -r["weights"]["correct"])
    even_runs = [{"label": f"e{i}", **r} for i, r in enumerate(even_runs)]
    samples = steps * fill_recipe.rollout.prompts_per_step * fill_recipe.rollout.group_size
    return {"seed": seed, "warmup_s": warmup_s, "samples_per_run": samples,
            "fill": arm([{k: r.get(k) for k in ("label", "source", "weights", "point", "fill")}
                         for r in filled["runs"]], n_fill, base_s + fill_s),
            "even": arm(even_runs, 0, base_s + extra_s)}


def arm(runs: list[dict[str, Any]], n_fill: int, wall_s: float) -> dict[str, Any]:
    from rlhf.weighting.pareto import hypervolume, non_dominated

    points = [r["point"] for r in runs]
    weight_points = [r["point"] for r in runs if r.get("source") != "fill"]
    return {"runs": runs, "front": non_dominated(points), "hypervolume": hypervolume(points, REFERENCE),
            "hypervolume_weights_only": hypervolume(weight_points, REFERENCE), "fill_runs": n_fill,
            "trained_runs": len(runs), "wall_s": wall_s}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--steps": {"type": int, "default": None, "help": "GRPO steps per run (default 60; --quick 3)"},
        "--seeds": {"type": int, "default": None, "help": "seeds (default 1)"},
        "--prompts": {"type": int, "default": None, "help": "prompts per GRPO step, 8 samples each (default 16; "
                      "--quick 8)"},
        "--warmup-steps": {"type": int, "default": None,
                           "help": f"SFT warm-up steps shared per seed (default {WARMUP_STEPS}; --quick 100)"}})
    setup_env()
    quick = args.quick
    steps = args.steps or (3 if quick else 60)
    seeds = args.seeds or 1
    prompts = args.prompts or (8 if quick else 16)
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else (100 if quick else WARMUP_STEPS)
    info = machine_info()
    results = []
    with ray_running(), tempfile.TemporaryDirectory(prefix="bench_ff_") as tmp:
        for seed in range(seeds):
            results.append(one_seed(seed, steps, warmup_steps, quick, tmp, prompts))
            r = results[-1]
            print(f"seed {seed}: HV fill {r['fill']['hypervolume']:.4f} ({r['fill']['fill_runs']} fill runs), "
                  f"even {r['even']['hypervolume']:.4f}", flush=True)
    result = {"bench": NAME, "quick": quick, "machine": info, "steps": steps, "seeds": seeds, "prompts": prompts,
              "warmup_steps": warmup_steps, "reference": REFERENCE, "base_vectors": BASE_VECTORS,
              "extra_vectors": EXTRA_VECTORS, "per_seed": results}
    return finish(result, args.out)


def finish(result: dict[str, Any], out_dir: str) -> dict[str, Any]:
    ratios = [r["fill"]["hypervolume"] / r["even"]["hypervolume"] for r in result["per_seed"]
              if r["even"]["hypervolume"] > 0]
    result["ratios"] = {"fill_hv_over_even": statistics.fmean(ratios) if ratios else float("nan")}
    result["required_ratios"] = ["fill_hv_over_even"]
    result["plot"] = plot(result, out_dir)
    md = render(result)
    write_results(out_dir, NAME, result, md)
    print(md)
    return result


def render(result: dict[str, Any]) -> str:
    r = result
    flags = " --quick" if r["quick"] else (f" --steps {r['steps']} --warmup-steps {r['warmup_steps']} --prompts "
                                           f"{r['prompts']} --seeds {r['seeds']}")
    md = header("Front filling vs more weight vectors: hypervolume", f"python -m bench.{NAME}{flags}", r["machine"],
                r["quick"])
    md += (f"\nTask: arithmetic, `correct` (0/1) vs `brief` (-0.25 per token beyond 1); a shared SFT warm-up of "
           f"{r['warmup_steps']} steps per seed, then 5 GRPO runs of {r['steps']} steps per arm "
           f"({r['per_seed'][0]['samples_per_run']} samples each). fill: weight vectors {' '.join(r['base_vectors'])}, "
           f"then `--fill 2` (constrained runs from a neighbour's checkpoint); even: the same 3 runs and "
           f"{' '.join(r['extra_vectors'])}. HV of each arm's held-out greedy points w.r.t. {tuple(r['reference'])}; "
           f"{r['seeds']} seed(s).\n\n")
    md += md_table(["seed", "HV fill", "HV even", "fill / even", "HV of the 3 shared runs", "fill runs",
                    "train+eval s, fill", "train+eval s, even"],
                   [[x["seed"], x["fill"]["hypervolume"], x["even"]["hypervolume"],
                     x["fill"]["hypervolume"] / x["even"]["hypervolume"] if x["even"]["hypervolume"] else float("nan"),
                     x["fill"]["hypervolume_weights_only"], x["fill"]["fill_runs"], x["fill"]["wall_s"],
                     x["even"]["wall_s"]] for x in r["per_seed"]])
    md += f"\n\nMean HV fill / even: **{r['ratios']['fill_hv_over_even']:.4g}**\n\nPoints (correct, brief):\n\n"
    rows = []
    for x in r["per_seed"]:
        for name in ("fill", "even"):
            for i, run in enumerate(x[name]["runs"]):
                how = ", ".join(f"{k}={v:g}" for k, v in run["weights"].items())
                if run.get("source") == "fill":
                    f = run["fill"]
                    how = (f"max {f['maximize']} s.t. " + ", ".join(f"{k} >= {v:.3g}" for k, v in f["bounds"].items())
                           + f" from {f['start']} (gap {f['pair'][0]}-{f['pair'][1]})")
                rows.append([x["seed"], name, run["label"], how, f"({run['point'][0]:.3f}, {run['point'][1]:.3f})",
                             "yes" if i in x[name]["front"] else ""])
    md += md_table(["seed", "arm", "run", "weights / constraint", "point", "front"], rows)
    if r.get("plot"):
        md += f"\n\n![fronts]({os.path.basename(r['plot'])})\n"
    return md


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    """Both arms' points and fronts, one panel per seed (front_fill.png)."""
    from bench.common import save_figure
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None
    seeds = result["per_seed"]
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4.5), squeeze=False)
    for ax, x in zip(axes[0], seeds):
        for name, colour, marker, offset in (("even", "C0", "s", -0.004), ("fill", "C3", "o", 0.004)):
            a = x[name]
            pts = [r["point"] for r in a["runs"]]
            front = sorted(a["front"], key=lambda i: pts[i][0])
            ax.plot([pts[i][0] + offset for i in front], [pts[i][1] for i in front], "-", color=colour, alpha=0.6,
                    label=f"{name}: front, HV {a['hypervolume']:.3f}")
            ws = [i for i, r in enumerate(a["runs"]) if r.get("source") != "fill"]
            ax.scatter([pts[i][0] + offset for i in ws], [pts[i][1] for i in ws], marker=marker, color=colour,
                       s=28, label=f"{name}: weight vectors")
            fl = [i for i, r in enumerate(a["runs"]) if r.get("source") == "fill"]
            if fl:
                ax.scatter([pts[i][0] + offset for i in fl], [pts[i][1] for i in fl], marker="D", s=50,
                           facecolors="none", edgecolors=colour, linewidths=1.5, label="fill: constrained runs")
                for i in fl:
                    ax.annotate(a["runs"][i]["label"], (pts[i][0], pts[i][1]), fontsize=7, xytext=(4, 3),
                                textcoords="offset points")
        ax.set_xlabel("correct")
        ax.set_ylabel("brief")
        ax.set_title(f"seed {x['seed']}: fill / even HV "
                     f"{x['fill']['hypervolume'] / x['even']['hypervolume'] if x['even']['hypervolume'] else 0:.3f}")
        ax.legend(fontsize=7)
    os.makedirs(out_dir, exist_ok=True)
    return save_figure(plt, fig, out_dir, NAME)


if __name__ == "__main__":
    main()
