"""DPA steerability: one preference-conditioned policy per seed, evaluated at every eval vector; does each
conditioned component's measured value follow its weight?

    python -m bench.dpa_steer                       # recipes/dpa_rsf_tiny_cpu.yaml, seeds 0, 1, 2 (minutes each)
    python -m bench.dpa_steer --seeds 0 --steps 20  # one seed, fewer RL steps
    python -m bench.dpa_steer --quick               # a few steps of one seed (smoke test, not the figures)
    python -m bench.dpa_steer --recipe recipes/dpa_tiny_cpu.yaml   # any conditioned recipe (e.g. GRPO's)
    python -m bench.dpa_steer --recipe recipes/dpa_style_tiny_cpu.yaml --keep runs/dpa_steer  # keep each run
    python -m bench.dpa_steer --recipe recipes/dpa_style_tiny_cpu.yaml --keep runs/dpa_steer --rescore  # score
                                                    # the kept runs' final checkpoints again, no training

Every seed trains its own SFT warm-up (`run.seed` seeds the tiny model, its tokenizer's example vectors, the
warm-up's drawn vectors and batches). Runs go to a temporary directory, or under --keep DIR as DIR/seedS (metrics,
summary and checkpoints stay there). --from-warmup DIR starts each seed's objective from the warm-up an earlier run
of that seed saved (DIR/seedS/sft: the same recipe's warm-up, so only the objective's settings may differ); the
table then counts no warm-up steps and the "before" figures are that warm-up's.

For each seed the recipe is trained once (its SFT warm-up, then its objective; `run.seed` = the seed) and its final
evaluation is read: greedy completions of the held-out prompts with each of `conditioning.eval_vectors` written
into the prompt, scored by every reward component (eval/cond/I/NAME). Steerability of a conditioned component is
the Spearman rank correlation between its weight and its measured mean over the vectors (eval/cond/spearman/NAME;
undefined, shown as "–", when either is constant). The issue's bar: >= 0.9 for every component at >= 5 vectors,
in every seed. The table also gives the seed mean per vector and the Spearman of those means.

Greedy completions make each policy a switch (a component scores 0 or 1 per prompt, and a vector's mean ties with
its neighbour's at either end), while a user steers the policy's distribution. So the final checkpoint is also
scored by SAMPLED completions (--samples N per held-out prompt, default 8, at --temperature T, default 1; the
recipe's max_new_tokens and stop strings; sampling seeded by the seed): per vector, each component's mean over
the N samples of every prompt (the expected rate), and the Spearman of those means, beside the greedy figures.
This scoring runs in the bench process on the checkpoint (hf engine, reward plugins in-process, as
`rlhf sweep --conditioned --checkpoint` does). --samples 0: greedy only. --rescore (with --keep) trains nothing:
it scores each KEEP/seedS run's final checkpoint again, greedy and sampled (the "before" figures are read from
the run's KEEP/seedS/summary.json).

Writes bench/results/dpa_steer.{json,md}.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench.common import REPO_ROOT, header, machine_info, md_table, parse_args, ray_running, setup_env, \
    write_results

NAME = "dpa_steer"
DEFAULT_RECIPE = "recipes/dpa_rsf_tiny_cpu.yaml"
BAR = 0.9  # the rank correlation, per component and seed


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--recipe": {"default": DEFAULT_RECIPE, "help": f"a conditioned recipe (default {DEFAULT_RECIPE})"},
        "--seeds": {"default": "0,1,2", "help": "comma-separated run.seed values (default 0,1,2)"},
        "--steps": {"type": int, "default": None, "help": "RL steps (default: the recipe's; --quick 2)"},
        "--set": {"nargs": "*", "default": [], "help": "more recipe overrides KEY=VALUE"},
        "--keep": {"default": None, "help": "write each seed's run to KEEP/seedS and keep it (default: a temporary "
                   "directory, removed)"},
        "--samples": {"type": int, "default": 8, "help": "sampled completions per held-out prompt and vector, scored "
                      "beside the greedy ones (default 8; 0: greedy only)"},
        "--temperature": {"type": float, "default": 1.0, "help": "temperature of those samples (default 1)"},
        "--from-warmup": {"default": None, "help": "start each seed's objective from DIR/seedS/sft (the SFT warm-up "
                          "an earlier run of the same seed saved) instead of training the warm-up again"},
        "--rescore": {"action": "store_true", "help": "with --keep: train nothing, score the kept runs' final "
                      "checkpoints again (greedy and sampled)"}})
    if args.rescore and not args.keep:
        raise SystemExit("--rescore scores the runs under --keep DIR; give --keep")
    setup_env()
    from rlhf.config import load_recipe
    from rlhf.data.conditioning import rank_correlation
    from rlhf.runtime.controller import run

    seeds = [int(s) for s in args.seeds.split(",")] if not args.quick else [0]
    info = machine_info()
    runs: list[dict[str, Any]] = []
    recipe = None
    with ray_running(), tempfile.TemporaryDirectory(prefix="bench_dpa_steer_") as scratch:
        tmp = args.keep or scratch
        for seed in seeds:
            overrides = [f"run.output_dir={tmp}/seed{seed}", "run.progress=false", f"run.seed={seed}",
                         "run.save_every=0", "eval.every=0", *args.set]
            if args.quick:
                overrides += ["warmup.steps=4", "run.steps=2", "eval.max_samples=8"]
            elif args.steps:
                overrides += [f"run.steps={args.steps}"]
            if args.from_warmup:
                overrides += [f"model.path={Path(args.from_warmup).resolve()}/seed{seed}/sft", "model.tiny=null",
                              "warmup.steps=0"]
            recipe = load_recipe(Path(REPO_ROOT) / args.recipe, overrides)
            if not recipe.conditioning.enabled:
                raise SystemExit(f"{args.recipe}: conditioning.enabled is false; this bench needs a conditioned recipe")
            t0 = time.perf_counter()
            summary = _rescored(recipe, args.keep, seed) if args.rescore else run(recipe)
            runs.append({"seed": seed, "wall_s": time.perf_counter() - t0, **_read(summary, recipe)})
            if args.samples:
                runs[-1]["sampled"] = sampled(recipe, summary["checkpoint"], args.samples, args.temperature)
            print(f"seed {seed}: greedy {runs[-1]['spearman']}, sampled "
                  f"{runs[-1].get('sampled', {}).get('spearman')} ({runs[-1]['wall_s']:.0f} s)", flush=True)
    assert recipe is not None
    components = list(recipe.conditioning.components)
    others = [c.name for c in recipe.rewards if c.name not in components]
    vectors = recipe.conditioning.evaluation_vectors()
    mean = [{name: sum(r["per_vector"][i][name] for r in runs) / len(runs) for name in runs[0]["per_vector"][i]}
            for i in range(len(vectors))]
    mean_spearman = {c: rank_correlation([v[j] for v in vectors], [m[c] for m in mean])
                     for j, c in enumerate(components)}
    steers = {c: all(_ok(r["spearman"][c]) for r in runs) for c in components}
    result = {"bench": NAME, "quick": args.quick, "machine": info, "recipe": args.recipe, "overrides": args.set,
              "seeds": seeds, "kept_runs": args.keep, "from_warmup": args.from_warmup, "steps": recipe.run.steps,
              "warmup_steps": recipe.warmup.steps,
              "objective": recipe.objective.kind, "components": components, "vectors": vectors, "runs": runs,
              "seed_mean": mean, "seed_mean_spearman": mean_spearman, "bar": BAR, "steers": steers,
              "samples": args.samples, "temperature": args.temperature, "rescored": args.rescore,
              "ratios": {}, "required_ratios": []}
    md = header("DPA: steering one conditioned policy with the preference in its prompt",
                f"python -m bench.{NAME} --recipe {args.recipe} --seeds {args.seeds}"
                + (" --quick" if args.quick else "")
                + (f" --steps {args.steps}" if args.steps else "")
                + (f" --set {' '.join(args.set)}" if args.set else "")
                + (f" --samples {args.samples}" if args.samples != 8 else "")
                + (f" --temperature {args.temperature:g}" if args.temperature != 1.0 else "")
                + (f" --from-warmup {args.from_warmup}" if args.from_warmup else "")
                + (" --rescore" if args.rescore else ""), info, args.quick)
    md += (f"\n{args.recipe} (objective {recipe.objective.kind}): {recipe.warmup.steps} SFT warm-up steps, then "
           f"{recipe.run.steps} steps; seeds {seeds}; {sum(r['wall_s'] for r in runs):.0f} s in all. Greedy "
           f"completions of {recipe.eval.max_samples} held-out prompts at each vector, scored by every component. "
           f"Spearman: rank correlation of a component's weight with its measured mean over the {len(vectors)} "
           f"vectors (bar {BAR}).\n\n")
    cols = [*components, *others, "completion_tokens_mean"]
    rows = []
    for r in runs:
        for i, v in enumerate(vectors):
            rows.append([r["seed"], " ".join(f"{x:g}" for x in v), *[r["per_vector"][i].get(c) for c in cols]])
    for i, v in enumerate(vectors):
        rows.append(["mean", " ".join(f"{x:g}" for x in v), *[mean[i].get(c) for c in cols]])
    md += md_table(["seed", f"v ({' '.join(components)})", *[c.replace("completion_tokens_mean", "tokens")
                                                             for c in cols]], rows)
    md += ("\n\nSpearman (weight vs measured value) per component, and its range over the vectors (max - min of "
           "the means: a Spearman of 1 over near-equal values is noise; before training the vectors differ only by "
           "chance), after training and before it (the warmed-up policy):\n\n")
    md += md_table(["seed", *components, *[f"range {c}" for c in components],
                    *[f"{c} before" for c in components]],
                   [[r["seed"], *[r["spearman"][c] for c in components], *[r["range"][c] for c in components],
                     *[r["spearman_before"][c] for c in components]] for r in runs]
                   + [["seed mean", *[mean_spearman[c] for c in components],
                       *[_range([m[c] for m in mean]) for c in components], *["" for _ in components]]])
    if all("sampled" in r for r in runs):
        md += _sampled_md(runs, vectors, components, cols, result)
    md += "\n\nSteers (>= " + f"{BAR} in every seed): " + ", ".join(
        f"{c}: {'yes' if ok else 'no'}" for c, ok in steers.items()) + "\n"
    if "steers_sampled" in result:
        md += "Steers by sampled means (>= " + f"{BAR} in every seed): " + ", ".join(
            f"{c}: {'yes' if ok else 'no'}" for c, ok in result["steers_sampled"].items()) + "\n"
    paths = write_results(args.out, NAME, result, md)
    result["paths"] = paths
    print(md)
    print(paths["markdown"])
    return result


def _read(summary: dict[str, Any], recipe: Any) -> dict[str, Any]:
    """Per eval vector, every component's mean (and tokens) after training; the Spearman per component."""
    after = summary["eval_after"]
    names = [c.name for c in recipe.rewards] + ["completion_tokens_mean"]
    vectors = recipe.conditioning.evaluation_vectors()
    per_vector = [{n: after[f"cond/{i}/{n}"] for n in names if f"cond/{i}/{n}" in after}
                  for i in range(len(vectors))]
    spearman = {c: after.get(f"cond/spearman/{c}") for c in recipe.conditioning.components}
    spread = {c: _range([p[c] for p in per_vector]) for c in recipe.conditioning.components}
    before = summary.get("eval_before") or {}
    before_vec = [{n: before[f"cond/{i}/{n}"] for n in names if f"cond/{i}/{n}" in before}
                  for i in range(len(vectors))]
    return {"per_vector": per_vector, "spearman": spearman, "range": spread, "per_vector_before": before_vec,
            "spearman_before": {c: before.get(f"cond/spearman/{c}") for c in recipe.conditioning.components}}


def sampled(recipe: Any, checkpoint: str, n: int, temperature: float) -> dict[str, Any]:
    """The checkpoint's SAMPLED completions (n per held-out prompt at ``temperature``) at every eval vector, scored
    in this process (the training actors are gone): per vector every component's mean (its expected rate), and
    the Spearman per conditioned component of those means."""
    from rlhf.data.conditioning import build_conditioner
    from rlhf.sweep import _local_evaluation

    conditioner = build_conditioner(recipe.conditioning, [c.name for c in recipe.rewards], recipe.run.seed)
    rollout_fn, group, rows = _local_evaluation(recipe, checkpoint)
    try:
        return sampled_scores(rollout_fn, group, rows, conditioner, n, temperature, recipe.rollout.max_new_tokens,
                              tuple(recipe.rollout.stop), recipe.run.seed, [c.name for c in recipe.rewards])
    finally:
        group.shutdown()


def sampled_scores(rollout_fn: Any, rewards: Any, rows: list[dict], conditioner: Any, n: int, temperature: float,
                   max_new_tokens: int, stop: tuple[str, ...], seed: int | None, names: list[str]) -> dict[str, Any]:
    """``evaluate_at_vectors`` with n samples per prompt at ``temperature`` (not greedy): {"per_vector": [{NAME: mean
    over the n samples of every row (every row counts n times), "completion_tokens_mean": ...}], "spearman":
    {component: rank correlation of its weight with those means}, "range": {component: max - min}, "n", "temperature"}.
    """
    from rlhf.runtime.evaluate import evaluate_at_vectors
    from rlhf.types import SamplingSettings

    settings = SamplingSettings(n=n, max_new_tokens=max_new_tokens, temperature=temperature, greedy=False, stop=stop,
                                seed=seed)
    scores = evaluate_at_vectors(rollout_fn, rewards, rows, settings, conditioner)
    keys = [*names, "completion_tokens_mean"]
    per_vector = [{k: scores[f"cond/{i}/{k}"] for k in keys if f"cond/{i}/{k}" in scores}
                  for i in range(len(conditioner.eval_vectors))]
    components = list(conditioner.components)
    return {"n": n, "temperature": temperature, "per_vector": per_vector,
            "spearman": {c: scores[f"cond/spearman/{c}"] for c in components},
            "range": {c: _range([p[c] for p in per_vector]) for c in components}}


def _rescored(recipe: Any, keep: str, seed: int) -> dict[str, Any]:
    """A kept run's summary with its final checkpoint's greedy evaluation done again here (eval_after); the
    "before" figures from the run's summary.json when there is one (else none)."""
    from rlhf.sweep import conditioned_scores
    from rlhf.train.checkpoint import latest

    run_dir = Path(keep) / f"seed{seed}"
    checkpoint = latest(str(run_dir))
    if checkpoint is None:
        raise SystemExit(f"--rescore: {run_dir} has no checkpoint (checkpoints/latest)")
    saved = run_dir / "summary.json"
    before = json.loads(saved.read_text()).get("eval_before") if saved.is_file() else None
    after = conditioned_scores(recipe, str(checkpoint), recipe.conditioning.evaluation_vectors())
    return {"eval_before": before, "eval_after": after, "checkpoint": str(checkpoint)}


def _sampled_md(runs: list[dict[str, Any]], vectors: list[list[float]], components: list[str], cols: list[str],
                result: dict[str, Any]) -> str:
    """The sampled figures per seed and vector, their seed means, and the Spearman per seed (also into result)."""
    from rlhf.data.conditioning import rank_correlation

    n, t = runs[0]["sampled"]["n"], runs[0]["sampled"]["temperature"]
    mean = [{c: sum(r["sampled"]["per_vector"][i][c] for r in runs) / len(runs) for c in cols}
            for i in range(len(vectors))]
    mean_spearman = {c: rank_correlation([v[j] for v in vectors], [m[c] for m in mean])
                     for j, c in enumerate(components)}
    result["sampled_seed_mean"], result["sampled_seed_mean_spearman"] = mean, mean_spearman
    result["steers_sampled"] = {c: all(_ok(r["sampled"]["spearman"][c]) for r in runs) for c in components}
    md = (f"\n\nSampled: {n} completions per held-out prompt at temperature {t:g}, at each vector; each value is "
          f"the mean over all of them (the policy's expected rate):\n\n")
    rows = [[r["seed"], " ".join(f"{x:g}" for x in v), *[r["sampled"]["per_vector"][i].get(c) for c in cols]]
            for r in runs for i, v in enumerate(vectors)]
    rows += [["mean", " ".join(f"{x:g}" for x in v), *[mean[i].get(c) for c in cols]] for i, v in enumerate(vectors)]
    md += md_table(["seed", f"v ({' '.join(components)})", *[c.replace("completion_tokens_mean", "tokens")
                                                             for c in cols]], rows)
    md += "\n\nSpearman of the sampled means, beside the greedy one, and the sampled range over the vectors:\n\n"
    md += md_table(["seed", *[f"{c} sampled" for c in components], *[f"{c} greedy" for c in components],
                    *[f"range {c} sampled" for c in components]],
                   [[r["seed"], *[r["sampled"]["spearman"][c] for c in components],
                     *[r["spearman"][c] for c in components], *[r["sampled"]["range"][c] for c in components]]
                    for r in runs]
                   + [["seed mean", *[mean_spearman[c] for c in components], *["" for _ in components],
                       *[_range([m[c] for m in mean]) for c in components]]])
    return md


def _range(values: list[float]) -> float:
    """max - min of a component's means over the vectors (how far the weights move it)."""
    return max(values) - min(values) if values else float("nan")


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == x and x >= BAR


if __name__ == "__main__":
    main()
