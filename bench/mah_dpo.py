"""MAH-DPO: one two-head policy, each head trained on its own objective's preference labels; the heads' pair
accuracy on every objective and the reward components as the mix of the heads moves.

    python -m bench.mah_dpo              # ~3-5 min on 2 cores: recipes/mah_dpo_tiny_cpu.yaml, trained once
    python -m bench.mah_dpo --quick      # ~1-2 min: a few steps (smoke test, not the figures)

Trains recipes/mah_dpo_tiny_cpu.yaml once (SFT warm-up, then MAH-DPO: head `correct` on the near-miss pairs'
`correct` labels, head `chatty` on the chatter pairs' `chatty` labels — it prefers "42 ok" to "42" — one trunk)
and reads its final evaluation:

- the pair-accuracy table: held-out pair accuracy of every head on every objective's labelled pairs
  (eval/head/H/pair_acc/OBJ: how often head H's implicit reward beta * log(pi_H / ref) ranks the pair as OBJ's
  label says); a head that "beats the others on its own objective" has the largest entry of its objective's
  column. At step 0 every head is the reference (implicit rewards ~0).
- the front: greedy completions of the held-out prompts on the hf engine at each mix w of the heads' logits
  (sum_k w_k logits_k = the merged head's), scored by the recipe's reward components `correct` (math_answer) and
  `chatty` (an integer, then a remark; finished); the mixes are `--mixes` (default 7 points from the first head
  alone to the second alone).

Writes bench/results/mah_dpo.{json,md,png}.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Sequence

from bench.common import REPO_ROOT, header, machine_info, md_table, parse_args, ray_running, save_figure, \
    setup_env, write_results

NAME = "mah_dpo"
DEFAULT_MIXES = "1,0 0.83,0.17 0.67,0.33 0.5,0.5 0.33,0.67 0.17,0.83 0,1"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--mixes": {"default": DEFAULT_MIXES, "help": f"space-separated mixes of the heads (default {DEFAULT_MIXES})"},
        "--steps": {"type": int, "default": None, "help": "MAH-DPO steps (default: the recipe's; --quick 4)"},
        "--seed": {"type": int, "default": 0}})
    setup_env()
    from rlhf.config import load_recipe
    from rlhf.runtime.controller import run

    mixes = [[float(x) for x in m.split(",")] for m in args.mixes.split()]
    info = machine_info()
    with ray_running(), tempfile.TemporaryDirectory(prefix="bench_mah_dpo_") as tmp:
        overrides = [f"run.output_dir={tmp}/run", "run.progress=false", f"run.seed={args.seed}",
                     f"objective.eval_mixes={mixes}", "eval.every=0"]
        if args.quick:
            overrides += ["warmup.steps=10", "run.steps=4"]
        elif args.steps:
            overrides += [f"run.steps={args.steps}"]
        recipe = load_recipe(REPO_ROOT / "recipes" / "mah_dpo_tiny_cpu.yaml", overrides)
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
    front_before = [{c: before[f"mix/{i}/{c}"] for c in components} for i in range(len(mixes))]
    table = acc(after)
    own_best = {o: max(heads, key=lambda h: table[h][o]) == o for o in heads}
    result = {"bench": NAME, "quick": args.quick, "machine": info, "recipe": "recipes/mah_dpo_tiny_cpu.yaml",
              "steps": recipe.run.steps, "warmup_steps": recipe.warmup.steps, "seed": args.seed, "wall_s": wall,
              "eval_pairs": min(recipe.eval.max_samples, 10**9), "pair_acc": table, "pair_acc_before": acc(before),
              "own_head_best": own_best, "front": front, "front_before": front_before,
              "ratios": {}, "required_ratios": []}
    md = header("MAH-DPO: per-head pair accuracy and the front of the heads' mixes",
                f"python -m bench.{NAME}" + (" --quick" if args.quick else ""), info, args.quick)
    md += (f"\nrecipes/mah_dpo_tiny_cpu.yaml, seed {args.seed}: {recipe.warmup.steps} SFT warm-up steps, then "
           f"{recipe.run.steps} MAH-DPO steps (heads {heads}, beta {recipe.objective.beta}); {wall:.0f} s. Held-out "
           f"pairs: up to {recipe.eval.max_samples}; each objective labels its own subset.\n\n"
           "Held-out pair accuracy of each head (row) on each objective's labelled pairs (column), after training "
           "(before: every head is the reference, implicit rewards ~0):\n\n")
    md += md_table(["head", *[f"pair_acc/{o}" for o in heads]], [[h, *[table[h][o] for o in heads]] for h in heads])
    md += "\n\nOwn head best on its objective: " + ", ".join(f"{o}: {'yes' if v else 'no'}"
                                                             for o, v in own_best.items())
    md += ("\n\nGreedy completions of the held-out prompts at each mix of the heads' logits (hf engine), scored by "
           "the reward components (not trained on); `before`: the reference (every mix is the same model):\n\n")
    md += md_table([*[f"w_{h}" for h in heads], *components, "tokens", *[f"{c} before" for c in components]],
                   [[*[p["mix"][h] for h in heads], *[p[c] for c in components], p["completion_tokens_mean"],
                     *[b[c] for c in components]] for p, b in zip(front, front_before)])
    md += "\n"
    paths = write_results(args.out, NAME, result, md)
    png = _plot(front, front_before, heads, components, args.out)
    if png:
        md += f"\n![the front of the mixes]({os.path.basename(png)})\n"
        paths = write_results(args.out, NAME, {**result, "figure": png}, md)
    result["paths"] = paths
    print(md)
    print(paths["markdown"])
    return result


def _plot(front: list[dict], before: list[dict], heads: list[str], components: list[str],
          out_dir: str) -> str | None:
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None or len(components) < 2:
        return None
    x, y = components[0], components[1]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([p[x] for p in front], [p[y] for p in front], "o-", color="tab:blue", label="after MAH-DPO (mixes)")
    for p in front:
        ax.annotate(f"{p['mix'][heads[0]]:.2f}", (p[x], p[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([before[0][x]], [before[0][y]], "s", color="tab:gray", label="reference (SFT)")
    ax.set_xlabel(f"{x} (held-out greedy mean)")
    ax.set_ylabel(f"{y} (held-out greedy mean)")
    ax.set_title(f"Mixing the heads (labels: weight of head {heads[0]})", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(plt, fig, out_dir, NAME)


if __name__ == "__main__":
    main()
