"""MAH-DPO: one two-head policy, each head trained on its own objective's preference labels; the heads' pair
accuracy on every objective and the reward components as the mix of the heads moves, over several seeds.

    python -m bench.mah_dpo              # ~10-20 min on 2 cores: recipes/mah_dpo_tiny_cpu.yaml, seeds 0, 1, 2
    python -m bench.mah_dpo --quick      # ~1-2 min: one seed, a few steps (smoke test, not the figures)

Trains recipes/mah_dpo_tiny_cpu.yaml once per seed (``--seeds``; SFT warm-up, then MAH-DPO: head `correct` on the
`correct` labels of the wrong-answer pairs, head `chatty` on the chatter pairs' `chatty` labels — it prefers
"42 ok" to "42" — one trunk) and reads each run's final evaluation:

- the pair-accuracy table: held-out pair accuracy of every head on every objective's labelled pairs
  (eval/head/H/pair_acc/OBJ: how often head H's implicit reward beta * log(pi_H / ref) ranks the pair as OBJ's
  label says); a head that "beats the others on its own objective" has the largest entry of its objective's
  column. At step 0 every head is the reference (implicit rewards ~0). Per seed, and the mean and range.
- the front: greedy completions of the held-out prompts on the hf engine at each mix w of the heads' logits
  (sum_k w_k logits_k = the merged head's), scored by the recipe's reward components `correct` (math_answer),
  `chatty` (an integer, then a remark; finished) and `integer` (a bare integer, finished: a well-formed answer);
  the mixes are `--mixes` (default 7 points from the first head alone to the second alone). Per seed and mean.

Writes bench/results/mah_dpo.{json,md,png} (the figure: the mean front, each seed's faint).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any, Sequence

from bench.common import REPO_ROOT, header, machine_info, md_table, parse_args, ray_running, save_figure, \
    setup_env, write_results

NAME = "mah_dpo"
RECIPE = "recipes/mah_dpo_tiny_cpu.yaml"
DEFAULT_MIXES = "1,0 0.83,0.17 0.67,0.33 0.5,0.5 0.33,0.67 0.17,0.83 0,1"


def _train(seed: int, mixes: list[list[float]], args: Any, tmp: str) -> dict[str, Any]:
    """One seed: train the recipe, return its per-head pair-accuracy table and front (module docstring)."""
    from rlhf.config import load_recipe
    from rlhf.runtime.controller import run

    overrides = [f"run.output_dir={tmp}/run_{seed}", "run.progress=false", f"run.seed={seed}",
                 f"objective.eval_mixes={mixes}", "eval.every=0"]
    if args.quick:
        overrides += ["warmup.steps=10", "run.steps=4"]
    elif args.steps:
        overrides += [f"run.steps={args.steps}"]
    overrides += list(args.set or [])
    recipe = load_recipe(REPO_ROOT / RECIPE, overrides)
    t0 = time.perf_counter()
    summary = run(recipe)
    wall = time.perf_counter() - t0
    heads = list(recipe.objective.heads)
    components = [c.name for c in recipe.rewards]
    before, after = summary["eval_before"], summary["eval_after"]

    def acc(scores: dict[str, float]) -> dict[str, dict[str, float]]:
        return {h: {o: scores[f"head/{h}/pair_acc/{o}"] for o in heads} for h in heads}

    front = [{"mix": dict(zip(heads, m)), **{c: after[f"mix/{i}/{c}"] for c in components},
              "completion_tokens_mean": after[f"mix/{i}/completion_tokens_mean"]} for i, m in enumerate(mixes)]
    table = acc(after)
    return {"seed": seed, "wall_s": wall, "recipe": recipe, "heads": heads, "components": components,
            "pair_acc": table, "pair_acc_before": acc(before),
            "own_head_best": {o: all(table[o][o] > table[h][o] for h in heads if h != o) for o in heads},
            "front": front, "front_before": [{c: before[f"mix/{i}/{c}"] for c in components}
                                             for i in range(len(mixes))]}


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--mixes": {"default": DEFAULT_MIXES, "help": f"space-separated mixes of the heads (default {DEFAULT_MIXES})"},
        "--steps": {"type": int, "default": None, "help": "MAH-DPO steps (default: the recipe's; --quick 4)"},
        "--seeds": {"default": "0,1,2", "help": "comma-separated run.seed values, one run each (--quick: the first)"},
        "--set": {"action": "append", "help": "extra recipe override KEY=VALUE (repeatable; e.g. "
                  "objective.nll_coef=0 to measure without the NLL term)"}})
    setup_env()
    mixes = [[float(x) for x in m.split(",")] for m in args.mixes.split()]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    seeds = seeds[:1] if args.quick else seeds
    info = machine_info()
    runs, retries = [], []
    with ray_running(), tempfile.TemporaryDirectory(prefix="bench_mah_dpo_") as tmp:
        for seed in seeds:
            for attempt in (1, 2):  # a run killed from outside (e.g. Ray's OOM killer on a shared machine): once more
                try:
                    runs.append(_train(seed, mixes, args, os.path.join(tmp, f"try{attempt}")))
                    break
                except Exception as e:  # noqa: BLE001 — reported in the results, then retried once
                    if attempt == 2:
                        raise
                    retries.append({"seed": seed, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                    print(f"bench.mah_dpo: seed {seed} failed ({type(e).__name__}); retrying once", flush=True)
    recipe, heads, components = runs[0]["recipe"], runs[0]["heads"], runs[0]["components"]
    mean_acc = {h: {o: _mean([r["pair_acc"][h][o] for r in runs]) for o in heads} for h in heads}
    spread_acc = {h: {o: [min(r["pair_acc"][h][o] for r in runs), max(r["pair_acc"][h][o] for r in runs)]
                      for o in heads} for h in heads}
    mean_front = [{"mix": runs[0]["front"][i]["mix"],
                   **{c: _mean([r["front"][i][c] for r in runs]) for c in [*components, "completion_tokens_mean"]}}
                  for i in range(len(mixes))]
    mean_before = [{c: _mean([r["front_before"][i][c] for r in runs]) for c in components} for i in range(len(mixes))]
    own_best_all = {o: all(r["own_head_best"][o] for r in runs) for o in heads}
    obj = recipe.objective
    per_seed = [{k: v for k, v in r.items() if k not in ("recipe", "heads", "components")} for r in runs]
    result = {"bench": NAME, "quick": args.quick, "machine": info, "recipe": RECIPE, "overrides": args.set or [],
              "steps": recipe.run.steps, "warmup_steps": recipe.warmup.steps, "seeds": seeds,
              "beta": obj.beta, "nll_coef": getattr(obj, "nll_coef", 0.0),
              "wall_s": sum(r["wall_s"] for r in runs), "eval_pairs": recipe.eval.max_samples,
              "pair_acc_mean": mean_acc, "pair_acc_range": spread_acc, "own_head_best_every_seed": own_best_all,
              "front_mean": mean_front, "front_before_mean": mean_before, "runs": per_seed, "retries": retries,
              "ratios": {}, "required_ratios": []}
    command = f"python -m bench.{NAME}" + (" --quick" if args.quick else "") + \
        "".join(f" --set {s}" for s in args.set or [])
    md = header("MAH-DPO: per-head pair accuracy and the front of the heads' mixes", command, info, args.quick)
    md += (f"\n{RECIPE}{' with ' + ', '.join(args.set) if args.set else ''}, seeds {seeds}: {recipe.warmup.steps} "
           f"SFT warm-up steps, then {recipe.run.steps} MAH-DPO steps (heads {heads}, beta {obj.beta}, nll_coef "
           f"{result['nll_coef']}); {result['wall_s']:.0f} s in all. Held-out pairs: up to {recipe.eval.max_samples}; "
           "each objective labels its own subset.\n\n"
           "Held-out pair accuracy of each head (row) on each objective's labelled pairs (column), after training, "
           "mean over the seeds [min, max] (before: every head is the reference, implicit rewards ~0):\n\n")
    md += md_table(["head", *[f"pair_acc/{o}" for o in heads]],
                   [[h, *[f"{mean_acc[h][o]:.3g} [{spread_acc[h][o][0]:.3g}, {spread_acc[h][o][1]:.3g}]"
                          for o in heads]] for h in heads])
    md += "\n\nPer seed (head: accuracy on each objective's pairs):\n\n"
    md += md_table(["seed", *[f"{h} on {o}" for o in heads for h in heads], "own head best"],
                   [[r["seed"], *[r["pair_acc"][h][o] for o in heads for h in heads],
                     ", ".join(f"{o}: {'yes' if r['own_head_best'][o] else 'no'}" for o in heads)] for r in runs])
    md += "\n\nOwn head strictly best on its objective, on every seed: " + ", ".join(
        f"{o}: {'yes' if v else 'no'}" for o, v in own_best_all.items())
    md += ("\n\nGreedy completions of the held-out prompts at each mix of the heads' logits (hf engine), scored by "
           "the reward components (not trained on), mean over the seeds; `before`: the reference (every mix is "
           "the same model):\n\n")
    md += md_table([*[f"w_{h}" for h in heads], *components, "tokens", *[f"{c} before" for c in components]],
                   [[*[p["mix"][h] for h in heads], *[p[c] for c in components], p["completion_tokens_mean"],
                     *[b[c] for c in components]] for p, b in zip(mean_front, mean_before)])
    if len(runs) > 1:
        md += "\n\nPer seed, each component at each mix (first head's weight " + \
            " → ".join(f"{m[0]:g}" for m in mixes) + "):\n\n"
        md += md_table(["seed", *components],
                       [[r["seed"], *[" / ".join(f"{p[c]:.2f}" for p in r["front"]) for c in components]]
                        for r in runs])
    md += "\n"
    paths = write_results(args.out, NAME, result, md)
    png = _plot(mean_front, mean_before, [r["front"] for r in runs], heads, components, args.out)
    if png:
        md += f"\n![the front of the mixes]({os.path.basename(png)})\n"
        paths = write_results(args.out, NAME, {**result, "figure": png}, md)
    result["paths"] = paths
    print(md)
    print(paths["markdown"])
    return result


def _plot(front: list[dict], before: list[dict], seeds: list[list[dict]], heads: list[str], components: list[str],
          out_dir: str) -> str | None:
    """Left: the front (first component vs second) of the mixes; right: every component against the first head's
    weight. The mean over the seeds bold, each seed faint."""
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None or len(components) < 2:
        return None
    x, y = components[0], components[1]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, run in enumerate(seeds if len(seeds) > 1 else []):
        ax.plot([p[x] for p in run], [p[y] for p in run], ".-", color="tab:blue", alpha=0.25, lw=0.8,
                label="each seed" if i == 0 else None)
    ax.plot([p[x] for p in front], [p[y] for p in front], "o-", color="tab:blue", label="after MAH-DPO (mean)")
    for p in front:
        ax.annotate(f"{p['mix'][heads[0]]:.2f}", (p[x], p[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([before[0][x]], [before[0][y]], "s", color="tab:gray", label="reference (SFT)")
    ax.set_xlabel(f"{x} (held-out greedy mean)")
    ax.set_ylabel(f"{y} (held-out greedy mean)")
    ax.set_title(f"Mixing the heads (labels: weight of head {heads[0]})", fontsize=9)
    ax.legend(fontsize=7)
    w = [p["mix"][heads[0]] for p in front]
    for n, c in enumerate(components):
        color = f"C{n}"
        for run in seeds if len(seeds) > 1 else []:
            ax2.plot(w, [p[c] for p in run], "-", color=color, alpha=0.2, lw=0.8)
        ax2.plot(w, [p[c] for p in front], "o-", color=color, label=f"{c} (mean)")
        ax2.axhline(before[0][c], color=color, ls=":", lw=0.8)
    ax2.set_xlabel(f"weight of head {heads[0]} (1 - weight of head {heads[1]})" if len(heads) == 2
                   else f"weight of head {heads[0]}")
    ax2.set_ylabel("held-out greedy mean (dotted: reference)")
    ax2.set_ylim(-0.02, 1.02)
    ax2.legend(fontsize=7)
    return save_figure(plt, fig, out_dir, NAME)


if __name__ == "__main__":
    main()
