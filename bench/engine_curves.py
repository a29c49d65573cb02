"""The demo's GRPO recipe with `rollout.engine: vllm` vs `hf`: do both learn alike? Reward curves on one plot.

    python -m bench.engine_curves            # ~7 min on a quiet 2-core machine: shared SFT, 80 GRPO steps per engine
    python -m bench.engine_curves --quick    # ~2 min: a few steps, smoke test

Same recipe (recipes/grpo_tiny_cpu.yaml: correctness, format and length components, DeepSpeed ZeRO-2, 2 ranks),
same seed, same starting model: the hf run does the SFT warm-up and the vllm run starts from its saved weights,
so both RL phases begin from identical weights and draw the same prompts. Only the engine differs (and, with vllm,
`rollout.tis_cap` as in recipes/grpo_vllm_tiny_cpu.yaml). The engines sample with their own random streams, so the
curves agree in trend, not step by step.

Figures: mean `correct` over the last quarter of steps, vllm / hf; held-out greedy accuracy at the end, vllm / hf;
and the rollout-vs-trainer logprob mismatch the vllm run logged (`mismatch/*`). Without vllm it says so and stops.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from typing import Any, Sequence

from bench.common import curve, header, machine_info, md_table, parse_args, ratio, ray_running, read_metrics, save_figure, \
    setup_env, tiny_recipe, without_vllm, write_results

NAME = "engine_curves"
ENGINES = ("hf", "vllm")
COMPONENTS = ("correct", "format", "length")


def recipe_for(engine: str, steps: int, eval_every: int, out: str, sft_dir: str | None, quick: bool):
    overrides = [f"run.steps={steps}", "run.save_every=0", "run.progress=false", f"eval.every={eval_every}",
                 f"rollout.engine={engine}"]
    if engine == "vllm":
        overrides += ["rollout.tis_cap=2.0", "rollout.vllm.kv_cache_gb=1"]
    if quick:
        overrides += ["warmup.steps=30", "rollout.prompts_per_step=8", "eval.max_samples=32"]
    if sft_dir:
        overrides += ["warmup.steps=0"]

    def edit(d: dict) -> None:
        if sft_dir:
            d["model"] = {"path": sft_dir}

    return tiny_recipe(overrides, out, edit)


def quarter_mean(points: list[tuple[int, float]], last: bool = True) -> float:
    """Mean over the last (or first) quarter of the steps, at least one step."""
    if not points:
        return float("nan")
    k = max(1, len(points) // 4)
    return statistics.fmean(v for _, v in (points[-k:] if last else points[:k]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--steps": {"type": int, "default": None, "help": "GRPO steps per engine (default 80; --quick 4)"}})
    setup_env()
    from rlhf.rollout.vllm import vllm_available
    from rlhf.runtime.controller import run

    info = machine_info()
    command = f"python -m bench.{NAME}" + (" --quick" if args.quick else "")
    title = "GRPO learning curves: vllm engine vs hf engine (same recipe, seed and start)"
    if not vllm_available():
        return without_vllm(NAME, title, command, info, args.quick, args.out)
    steps = args.steps or (4 if args.quick else 80)
    eval_every = max(1, steps // 4)
    runs: dict[str, dict[str, Any]] = {}
    with ray_running(), tempfile.TemporaryDirectory(prefix="bench_engine_curves_") as tmp:
        sft_dir = None
        for engine in ENGINES:
            out = os.path.join(tmp, engine)
            run(recipe_for(engine, steps, eval_every, out, sft_dir, args.quick))
            if sft_dir is None:  # the hf run did the warm-up; vllm starts from the same weights
                sft_dir = os.path.join(out, "sft")
            rl = read_metrics(os.path.join(out, "metrics.jsonl"))
            ev = read_metrics(os.path.join(out, "metrics.jsonl"), phase="eval")
            runs[engine] = {
                "curves": {c: curve(rl, f"reward/{c}/mean") for c in COMPONENTS},
                "eval": curve(ev, "eval/correct"),
                "mismatch": {k: [r[k] for r in rl if k in r] for k in ("mismatch/kl_k3", "mismatch/logprob_abs_max")},
                "step_s": statistics.median(r["time/step"] for r in rl),
            }
    summary = {e: {"correct_first_quarter": quarter_mean(r["curves"]["correct"], last=False),
                   "correct_last_quarter": quarter_mean(r["curves"]["correct"]),
                   **{f"{c}_last_quarter": quarter_mean(r["curves"][c]) for c in COMPONENTS if c != "correct"},
                   "eval_first": r["eval"][0][1] if r["eval"] else float("nan"),
                   "eval_last": r["eval"][-1][1] if r["eval"] else float("nan"),
                   "step_s_median": r["step_s"]} for e, r in runs.items()}
    ratios = {"vllm_over_hf_correct_last_quarter": ratio(summary["vllm"]["correct_last_quarter"],
                                                         summary["hf"]["correct_last_quarter"]),
              "vllm_over_hf_eval_last": ratio(summary["vllm"]["eval_last"], summary["hf"]["eval_last"]),
              "vllm_over_hf_step_s": ratio(summary["vllm"]["step_s_median"], summary["hf"]["step_s_median"])}
    result = {"bench": NAME, "machine": info, "quick": args.quick, "steps": steps, "eval_every": eval_every,
              "runs": runs, "summary": summary, "ratios": ratios,
              "required_ratios": ["vllm_over_hf_correct_last_quarter"]}
    md = render(result, command, title)
    result["paths"] = write_results(args.out, NAME, result, md)
    result["paths"]["plot"] = plot(result, args.out)
    print(md)
    return result


def render(result: dict[str, Any], command: str, title: str) -> str:
    s, r = result["summary"], result["ratios"]
    md = header(title, command, result["machine"], result["quick"])
    md += (f"\nRecipe: recipes/grpo_tiny_cpu.yaml (ZeRO-2, 2 ranks), {result['steps']} GRPO steps per engine after one "
           f"shared SFT warm-up; held-out greedy eval every {result['eval_every']} steps. vllm run: tis_cap 2.\n\n")
    md += md_table(["engine", "`correct`, first quarter", "`correct`, last quarter", "`format`, last quarter",
                    "`length`, last quarter", "held-out accuracy: start", "end", "s/step (median)"],
                   [[e, x["correct_first_quarter"], x["correct_last_quarter"], x["format_last_quarter"],
                     x["length_last_quarter"], x["eval_first"], x["eval_last"], x["step_s_median"]]
                    for e, x in s.items()])
    mm = result["runs"]["vllm"]["mismatch"]
    kl, lp = mm.get("mismatch/kl_k3") or [], mm.get("mismatch/logprob_abs_max") or []
    md += (f"\n\n**vllm / hf, `correct` over the last quarter: {r['vllm_over_hf_correct_last_quarter']:.2f}; "
           f"held-out accuracy at the end: {r['vllm_over_hf_eval_last']:.2f}**; step time vllm / hf "
           f"{r['vllm_over_hf_step_s']:.2f}.")
    if kl and lp:
        md += (f" Rollout vs trainer logprobs in the vllm run: k3 KL max {max(kl):.2e}, largest |Δ logprob| "
               f"max {max(lp):.2e} over the steps.")
    md += "\n"
    return md


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(COMPONENTS), figsize=(12, 3.5))
    for ax, comp in zip(axes, COMPONENTS):
        for color, (engine, r) in zip(("C0", "C3"), result["runs"].items()):
            pts = r["curves"][comp]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, label=f"{engine} (training batch)", lw=1)
            if comp == "correct" and r["eval"]:
                ax.plot([p[0] for p in r["eval"]], [p[1] for p in r["eval"]], color=color, marker="o", ls="--",
                        label=f"{engine} (held-out greedy)")
        ax.set_xlabel("GRPO step")
        ax.set_title(f"`{comp}` mean")
    axes[0].legend(fontsize=7)
    return save_figure(plt, fig, out_dir, NAME)


if __name__ == "__main__":
    main()
