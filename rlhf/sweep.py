"""`rlhf sweep`: one training per weight vector, every model evaluated on every component, the Pareto front.

    rlhf sweep recipes/grpo_tiny_cpu.yaml --weights 1,0,0 1,1,0 1,1,1 [key.path=value ...] [--reference ...]

Each weight vector sets `rewards[i].weight` (one number per reward component, in the recipe's order) and trains
into OUT/sweep/w<i>/ (OUT = the recipe's run.output_dir). The held-out evaluation after training (greedy
completions scored by every component, `eval_after` in the run's summary) is that model's point. Written to OUT/sweep/:
`sweep.json` (every point, the non-dominated ones, the hypervolume), `sweep.md` (the table) and `sweep.png` (the
points and the front, first two components; needs matplotlib). On-policy RL objectives, and MODPO:

    rlhf sweep recipes/modpo_tiny_cpu.yaml --weights 1,0,0 0.5,0.3,0.2 0.2,0.4,0.4

A MODPO weight vector is (preference_weight, then one weight per reward component), a point on the simplex. MODPO
trains on fixed pairs and never generates, so each trained model is then evaluated here: the preference objective
by its held-out pair accuracy (``pref_accuracy``, the share of pairs whose implicit reward ranks chosen first), every
reward component by greedy completions of the held-out prompts (the hf engine, in this process), scored by the
recipe's components.

Hypervolume reference: `--reference` (one value per component), default each component's worst value over the
points minus 10% of its range (or 0.1 when all points agree), so every point adds volume.

A preference-conditioned recipe (``conditioning``, DPA) trains ONE model and steers it by the weights written into
the prompt, so its sweep scores one model at many weight vectors (one weight per conditioned component, in
`conditioning.components` order; default `conditioning.eval_vectors`):

    rlhf sweep recipes/dpa_tiny_cpu.yaml --conditioned [--weights 1,0 0.5,0.5 0,1] [--checkpoint DIR]

It trains the recipe into OUT (or takes --checkpoint's model), renders each vector into the held-out prompts, and
writes the same files; `spearman` holds each component's rank correlation between its weight and its value.

Front filling (C-MORL): ``--fill N`` then finds the N largest gaps of the measured front and fills each with a
constrained run into OUT/sweep/fill<i>/ (rlhf/weighting/front_fill.py states the rule):

    rlhf sweep recipes/grpo_tiny_cpu.yaml --weights 1,0 0.5,0.5 0,1 --fill 2 [--resume]

A fill run is the recipe with the maximised component's weight 1 and the others' 0, a lower bound on each other
component (``weighting.constraints``, Lagrange multipliers, added to the recipe's own), started from the model of
the neighbour's final checkpoint (``model.path`` = its model/ directory, which holds the tokenizer; no warm-up;
the KL reference is that model too). It is evaluated like the other points and marked ``source: fill`` in
sweep.json (with its gap and bounds), in the table and in the plot; ``hypervolume_before_fill`` is the weight
vectors' points alone, w.r.t. the same reference. With ``--resume`` the weight-vector runs that finished are
re-read from their checkpoints, so ``--fill`` can follow an earlier sweep.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from rlhf.config.schema import Recipe

PREFERENCE = "preference"  # the MODPO preference objective's name in the front


def parse_weights(specs: Sequence[str], n_components: int) -> list[list[float]]:
    vectors = []
    for spec in specs:
        try:
            w = [float(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(f"--weights {spec!r}: expected comma-separated numbers, e.g. 1,0.5") from None
        if len(w) != n_components:
            raise ValueError(f"--weights {spec!r} has {len(w)} values; the recipe has {n_components} reward "
                             "components (one weight each, in the recipe's order)")
        vectors.append(w)
    if not vectors:
        raise ValueError("--weights: give at least one weight vector")
    return vectors


def sweep(recipe: Recipe, weight_specs: Sequence[str], reference: Sequence[float] | None = None,
          resume: bool = False, conditioned: bool = False, checkpoint: str | None = None,
          fill: int = 0) -> dict[str, Any]:
    from rlhf.config.registry import capabilities, kinds_where

    if conditioned:
        if fill:
            raise ValueError(f"--fill {fill}: a conditioned sweep scores one model; filling trains more models "
                             "(drop --conditioned)")
        return conditioned_sweep(recipe, weight_specs, checkpoint, reference, resume)
    if checkpoint is not None:
        raise ValueError("rlhf sweep: --checkpoint scores one preference-conditioned model; add --conditioned")
    weights = capabilities(recipe.objective).sweep_weights
    modpo = weights == "preference_and_rewards"  # the preference objective's weight first, then the components'
    if weights is None:
        raise ValueError(f"rlhf sweep: objective {recipe.objective.kind} has no per-component evaluation; sweep "
                         f"works with {', '.join(kinds_where('sweep_weights'))}")
    names = ([PREFERENCE] if modpo else []) + [c.name for c in recipe.rewards]
    if modpo and PREFERENCE in names[1:]:
        raise ValueError(f"rlhf sweep: a reward component may not be named {PREFERENCE!r} in a MODPO sweep")
    vectors = parse_weights(weight_specs, len(names))
    if reference is not None and len(reference) != len(names):
        raise ValueError(f"--reference has {len(reference)} values; the recipe has {len(names)} components")
    if fill:  # before any training is spent
        _check_fill(recipe, fill, len(vectors), weights)
    root = os.path.join(recipe.run.output_dir, "sweep")
    os.makedirs(root, exist_ok=True)
    runs = []
    for i, w in enumerate(vectors):
        data = recipe.model_dump(mode="json")
        if modpo:
            data["objective"]["preference_weight"] = w[0]
        for comp, value in zip(data["rewards"], w[1:] if modpo else w):
            comp["weight"] = value
        data["run"]["output_dir"] = os.path.join(root, f"w{i}")
        data["run"]["name"] = f"{recipe.run.name}-w{i}"
        runs.append({"label": f"w{i}", "source": "weights", "weights": dict(zip(names, w)),
                     **_train_point(Recipe.model_validate(data), names, modpo, resume, f"w{i}")})
    if fill:
        _write(root, names, runs, reference)  # the weight vectors' sweep is on disk before any fill run
        runs += fill_front(recipe, root, names, runs, fill, resume)
    return _write(root, names, runs, reference)


def _train_point(run_recipe: Recipe, names: list[str], modpo: bool, resume: bool, label: str) -> dict[str, Any]:
    """Train one run (resumed when asked and it has a checkpoint) and evaluate it on every component."""
    from rlhf.runtime.controller import run

    out = run_recipe.run.output_dir
    summary = run(run_recipe, resume=resume and _has_checkpoint(out))
    evals = summary["eval_after"]
    if modpo:
        evals = {PREFERENCE: evals["pref_accuracy"], **generated_scores(run_recipe, summary["checkpoint"])}
    missing = [n for n in names if n not in evals]
    if missing:
        raise RuntimeError(f"rlhf sweep: run {label} evaluated no {missing}; is eval disabled?")
    return {"point": [float(evals[n]) for n in names], "output_dir": out, "checkpoint": summary["checkpoint"]}


# ------------------------------------------------------------------------------------------ front filling


def _check_fill(recipe: Recipe, fill: int, n_vectors: int, weights: str) -> None:
    """--fill's requirements, checked before the weight-vector runs train."""
    if fill < 1:
        raise ValueError(f"--fill {fill}: give the number of gaps to fill, a positive integer")
    if weights != "rewards":
        raise ValueError(f"--fill {fill}: fill runs bound reward components (weighting.constraints); objective "
                         f"{recipe.objective.kind} sweeps the weights {weights!r}, not the reward components'")
    if len(recipe.rewards) < 2:
        raise ValueError(f"--fill {fill}: a front needs at least two reward components")
    if recipe.model.lora is not None:
        raise ValueError(f"--fill {fill}: fill runs start from a checkpoint's full model; with model.lora a "
                         "checkpoint holds an adapter (export it with `rlhf export`, or drop model.lora)")
    if n_vectors < fill + 1:
        raise ValueError(f"--fill {fill}: {n_vectors} weight vector(s) make at most {max(0, n_vectors - 1)} "
                         "gap(s); give more --weights")


def fill_front(recipe: Recipe, root: str, names: list[str], runs: list[dict[str, Any]], fill: int,
               resume: bool = False) -> list[dict[str, Any]]:
    """The ``fill`` constrained runs of the largest gaps of ``runs``' front, trained into ROOT/fill<i>/ and
    evaluated like the others (rows of sweep.json, ``source: fill``)."""
    from rlhf.weighting.front_fill import fill_specs

    try:
        specs = fill_specs([r["point"] for r in runs], fill)
    except ValueError as e:
        raise ValueError(f"{e} (sweep.json holds the weight vectors' front; rerun with --resume and a smaller "
                         "--fill, or more --weights)") from None
    filled = []
    for i, spec in enumerate(specs):
        label = f"fill{i}"
        run_recipe = fill_recipe(recipe, spec, runs[spec.start]["checkpoint"], os.path.join(root, label),
                                 f"{recipe.run.name}-{label}")
        info = {**spec.to_json(names), "pair": [runs[k]["label"] for k in spec.pair],
                "start": runs[spec.start]["label"]}
        filled.append({"label": label, "source": "fill", "fill": info,
                       "weights": {n: float(k == spec.maximize) for k, n in enumerate(names)},
                       **_train_point(run_recipe, names, False, resume, label)})
    return filled


def fill_recipe(recipe: Recipe, spec: Any, checkpoint: str, output_dir: str, name: str) -> Recipe:
    """The recipe of one fill run (module docstring): weight 1 on ``spec.maximize`` and 0 on the others, a lower
    bound on every other component (after the recipe's own constraints), the model of ``checkpoint`` (a step
    directory: its model/ holds weights and tokenizer), no warm-up."""
    model_dir = os.path.join(checkpoint, "model")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"--fill: {checkpoint} has no model/ directory to start a fill run from")
    data = recipe.model_dump(mode="json")
    for k, comp in enumerate(data["rewards"]):
        comp["weight"] = 1.0 if k == spec.maximize else 0.0
    data["weighting"]["constraints"] = [*data["weighting"]["constraints"],
                                        *({"component": data["rewards"][j]["name"], "min": bound}
                                          for j, bound in sorted(spec.bounds.items()))]
    data["model"].update(path=model_dir, tiny=None, tokenizer=None)
    data["warmup"]["steps"] = 0
    data["run"]["output_dir"] = output_dir
    data["run"]["name"] = name
    return Recipe.model_validate(data)


def _write(root: str, names: list[str], runs: list[dict[str, Any]], reference: Sequence[float] | None,
           **more: Any) -> dict[str, Any]:
    """The front, its hypervolume and the files of a sweep's points (sweep.json, sweep.md, sweep.png)."""
    from rlhf.weighting.pareto import hypervolume, non_dominated

    points = [r["point"] for r in runs]
    ref = list(reference) if reference is not None else default_reference(points)
    front = non_dominated(points)
    result = {"components": names, "reference": ref, "runs": runs, "front": front,
              "hypervolume": hypervolume(points, ref), **more}
    if any(r.get("source") == "fill" for r in runs):  # the same reference: what filling added
        result["hypervolume_before_fill"] = hypervolume([r["point"] for r in runs if r["source"] != "fill"], ref)
    with open(os.path.join(root, "sweep.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(root, "sweep.md"), "w") as f:
        f.write(render(result))
    result["plot"] = plot(result, os.path.join(root, "sweep.png"))
    return result


def conditioned_sweep(recipe: Recipe, weight_specs: Sequence[str] | None, checkpoint: str | None = None,
                      reference: Sequence[float] | None = None, resume: bool = False) -> dict[str, Any]:
    """One preference-conditioned model (trained from ``recipe``, or ``checkpoint``) scored at many weight vectors
    (module docstring); the points are the conditioned components' held-out means at each vector."""
    from rlhf.config.conditioning import check_vectors
    from rlhf.runtime.controller import run

    c = recipe.conditioning
    if not c.enabled:
        raise ValueError("rlhf sweep --conditioned: the recipe trains no preference-conditioned model "
                         "(conditioning.enabled is false); without --conditioned, sweep trains one model per vector")
    names = list(c.components)
    vectors = parse_weights(weight_specs, len(names)) if weight_specs else c.evaluation_vectors()
    check_vectors(vectors, len(names), "--weights")
    if reference is not None and len(reference) != len(names):
        raise ValueError(f"--reference has {len(reference)} values; conditioning.components has {len(names)}")
    root = os.path.join(recipe.run.output_dir, "sweep")
    if checkpoint is None:
        checkpoint = run(recipe, resume=resume and _has_checkpoint(recipe.run.output_dir))["checkpoint"]
    os.makedirs(root, exist_ok=True)
    scores = conditioned_scores(recipe, checkpoint, vectors)
    runs = [{"weights": dict(zip(names, v)), "point": [float(scores[f"cond/{i}/{n}"]) for n in names],
             "score": scores[f"cond/{i}/score"], "checkpoint": checkpoint} for i, v in enumerate(vectors)]
    return _write(root, names, runs, reference, conditioned=True,
                  spearman={n: scores[f"cond/spearman/{n}"] for n in names})


def conditioned_scores(recipe: Recipe, checkpoint: str, vectors: list[list[float]]) -> dict[str, float]:
    """The checkpoint's greedy completions of the held-out prompts rendered at each vector, scored by every
    component (rlhf/runtime/evaluate.py ``evaluate_at_vectors``: cond/I/NAME, cond/spearman/NAME)."""
    from rlhf.data.conditioning import build_conditioner
    from rlhf.runtime.collect import eval_sampling
    from rlhf.runtime.evaluate import evaluate_at_vectors

    conditioning = recipe.conditioning.model_copy(update={"eval_vectors": vectors})
    conditioner = build_conditioner(conditioning, [c.name for c in recipe.rewards], recipe.run.seed)
    rollout_fn, group, rows = _local_evaluation(recipe, checkpoint)
    try:
        return evaluate_at_vectors(rollout_fn, group, rows, eval_sampling(recipe), conditioner)
    finally:
        group.shutdown()


def _local_evaluation(recipe: Recipe, checkpoint: str) -> tuple[Any, Any, list[dict]]:
    """(rollout function over an hf engine of the checkpoint's model, the recipe's reward group, held-out rows),
    all in this process: the training actors are gone by now."""
    from rlhf.rollout.functions import SingleTurn
    from rlhf.rollout.hf import HFEngine
    from rlhf.runtime.data import load_data
    from rlhf.scoring.group import RewardGroup

    _, rows = load_data(recipe, recipe.run.seed)
    engine = HFEngine(os.path.join(checkpoint, "model"), dtype=recipe.model.dtype,
                      trust_remote_code=recipe.model.trust_remote_code, chat_template=recipe.data.chat_template,
                      max_prompt_tokens=recipe.data.max_prompt_tokens)
    rollout_fn = SingleTurn(engine, skip_columns=("prompt", "chosen", "rejected", "completion"), skip_private=True)
    return rollout_fn, RewardGroup(recipe.rewards, use_ray=False), rows[: recipe.eval.max_samples]


def generated_scores(recipe: Recipe, checkpoint: str) -> dict[str, float]:
    """Every reward component's mean over greedy completions of the held-out prompts by the checkpoint's model
    (hf engine and reward plugins in this process: the training actors are gone by now)."""
    from rlhf.runtime.collect import eval_sampling
    from rlhf.runtime.evaluate import evaluate_generated

    rollout_fn, group, rows = _local_evaluation(recipe, checkpoint)
    try:
        scores = evaluate_generated(rollout_fn, group, rows, eval_sampling(recipe))
    finally:
        group.shutdown()
    return {name: scores[name] for name in group.names}


def _has_checkpoint(out: str) -> bool:
    return os.path.exists(os.path.join(out, "checkpoints", "latest"))


def default_reference(points: list[list[float]]) -> list[float]:
    ref = []
    for k in range(len(points[0])):
        col = [p[k] for p in points]
        span = max(col) - min(col)
        ref.append(min(col) - (0.1 * span if span > 0 else 0.1))
    return ref


def render(result: dict[str, Any]) -> str:
    names = result["components"]
    lines = ["| run | " + " | ".join(f"w[{n}]" for n in names) + " | " + " | ".join(names) + " | front |",
             "|" + "---|" * (2 * len(names) + 2)]
    for i, r in enumerate(result["runs"]):
        ws = " | ".join(f"{r['weights'][n]:g}" for n in names)
        ps = " | ".join(f"{v:.4f}" for v in r["point"])
        lines.append(f"| {r.get('label', f'w{i}')} | {ws} | {ps} | {'yes' if i in result['front'] else ''} |")
    ref = ", ".join(f"{v:.4g}" for v in result["reference"])
    lines.append(f"\nHypervolume of the {len(result['front'])} non-dominated points w.r.t. ({ref}): "
                 f"**{result['hypervolume']:.6g}**\n")
    filled = [r for r in result["runs"] if r.get("source") == "fill"]
    if filled:  # front filling: each fill run's gap, its bounds, and the hypervolume it added
        lines.append(f"Front filling: hypervolume {result['hypervolume_before_fill']:.6g} from the weight vectors "
                     f"alone, {result['hypervolume']:.6g} with the {len(filled)} fill run(s):\n")
        for r in filled:
            f = r["fill"]
            bounds = ", ".join(f"{n} >= {v:.4g}" for n, v in f["bounds"].items())
            lines.append(f"- {r['label']}: maximise {f['maximize']} s.t. {bounds}; from {f['start']}'s checkpoint "
                         f"(gap {f['pair'][0]}-{f['pair'][1]}, normalised size {f['size']:.4g})")
        lines.append("")
    if result.get("conditioned"):  # one model steered by the prompt's weights: how well each component follows
        lines.append("One preference-conditioned model at every vector; rank correlation of each component's weight "
                     "with its value: " + ", ".join(f"{n} {r:.3f}" for n, r in result["spearman"].items()) + "\n")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> str | None:
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None or len(result["components"]) < 2:
        return None
    names = result["components"]
    xs = [r["point"][0] for r in result["runs"]]
    ys = [r["point"][1] for r in result["runs"]]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    fill = [i for i, r in enumerate(result["runs"]) if r.get("source") == "fill"]
    ax.scatter(xs, ys, color="0.6", label="runs")
    front = sorted(result["front"], key=lambda i: xs[i])
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "o-", color="C3", label="Pareto front")
    if fill:  # the fill runs on top, another marker
        ax.scatter([xs[i] for i in fill], [ys[i] for i in fill], marker="D", s=46, facecolors="none",
                   edgecolors="C0", linewidths=1.5, zorder=3, label="front filling (constrained)")
    for i, r in enumerate(result["runs"]):
        text = r["label"] if r.get("source") == "fill" else ",".join(f"{r['weights'][n]:g}" for n in names)
        ax.annotate(text, (xs[i], ys[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    hv = f"HV {result['hypervolume']:.4g}"
    if fill:
        hv += f" (before filling {result['hypervolume_before_fill']:.4g})"
    ax.set_title(f"sweep: {hv}" + (" (first two components)" if len(names) > 2 else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
