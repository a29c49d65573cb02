"""Asynchronous off-policy training on CPU: samples/s async / sync, where each actor group's time goes, and whether
learning suffers. The demo recipe (recipes/grpo_tiny_cpu.yaml) on the bench task (bench/common.py BENCH_TASK), 2 cores.

    python -m bench.async_pipeline                 # ~50 min on 2 cores: throughput (hf, vllm) + learning, 3 seeds
    python -m bench.async_pipeline --quick         # ~4 min: a few steps per run, smoke test
    python -m bench.async_pipeline --part throughput

throughput  from the demo's SFT warm-up (done once), STEPS RL steps per run in each mode: sync (pipeline.max_staleness
            0), async k = 1 and k = 2 (engines' threads on half the cores, the training ranks' on the rest),
            with the hf engine and, when installed, vllm; also pipeline.weight_update keep (syncs land between the
            decode steps of the batch in flight; the hf engine decodes with its loop, the default since
            2026-12-08); modes interleaved, REPEATS times. samples/s over steps
            3..STEPS (sum of batch sizes / sum of time/step: the wall time of the loop without logging), and
            the mean busy share of each actor group and the idle times.
learning    per seed, the demo as written (400 SFT + 200 GRPO steps) synchronously, then async k = 1 from the same
            SFT weights and prompts: held-out greedy accuracy (200 prompts) before / after, curves. Runs with the
            defaults before 2026-12-08 (bench/common.py FORMER_DEFAULTS), as its published figures did.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any, Sequence

from bench.common import (FORMER_DEFAULTS, curve, earlier_result, header, md_table, machine_info, parse_args,
                          ray_running, read_metrics, save_figure, setup_env, tiny_recipe, write_results)

NAME = "async_pipeline"
MODES = {"sync": 0, "async k=1": 1, "async k=2": 2}  # -> pipeline.max_staleness
KEEP = "pipeline.weight_update=keep"  # syncs land between decode steps (the hf engine: with its decode loop)
EXTRA_MODES = {  # engine -> mode -> (pipeline.max_staleness, more overrides)
    "hf": {"async k=1 keep (loop)": (1, [KEEP])},  # the hf engine decodes with its loop by default (auto)
    "vllm": {"async k=1 keep": (1, [KEEP])},
}


def _run(overrides: list[str], out: str, start: str | None) -> list[dict[str, Any]]:
    from rlhf.config.schema import Recipe
    from rlhf.runtime.controller import run

    recipe = tiny_recipe([*overrides, "run.progress=false", "run.save_every=0"], out)
    if start is not None:
        data = recipe.model_dump(mode="json")
        data["model"] = {"path": start}
        data["warmup"]["steps"] = 0
        recipe = Recipe.model_validate(data)
    run(recipe)
    return read_metrics(os.path.join(out, "metrics.jsonl"), "rl")


def _throughput_of(records: list[dict[str, Any]]) -> dict[str, float]:
    steady = [r for r in records if r["step"] >= 3] or records
    samples = sum(r["throughput/samples_per_s"] * r["time/step"] for r in steady)  # the batch sizes
    seconds = sum(r["time/step"] for r in steady)
    mean = lambda key: statistics.fmean(r.get(key, 0.0) for r in steady)  # noqa: E731
    return {"samples_per_s": samples / seconds, "step_s": seconds / len(steady),
            **{k: mean(k) for k in ("busy/engines", "busy/rewards", "busy/trainers", "time/generate", "time/score",
                                    "time/train", "time/sync", "time/idle/trainers", "time/idle/engines",
                                    "time/idle/sync_wait", "async/staleness_mean", "async/token_staleness_mean",
                                    "async/mixed_version_share", "offpolicy/masked_frac")}}


def throughput(tmp: str, quick: bool, repeats: int, engines: list[str]) -> dict[str, Any]:
    steps = 4 if quick else 30
    warm = os.path.join(tmp, "warm")
    _run(["warmup.steps=20" if quick else "warmup.steps=400", "run.steps=1", "eval.max_samples=8"], warm, None)
    start = os.path.join(warm, "sft")
    modes = {e: {**{m: (k, []) for m, k in MODES.items()}, **EXTRA_MODES.get(e, {})} for e in engines}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {e: {m: [] for m in modes[e]} for e in engines}
    for rep in range(repeats):
        for engine in engines:
            for i, (mode, (k, more)) in enumerate(modes[engine].items()):
                out = os.path.join(tmp, f"tp_{engine}_{i}_{rep}")
                recs = _run([f"run.steps={steps}", f"pipeline.max_staleness={k}", f"rollout.engine={engine}",
                             "eval.max_samples=8", *more], out, start)
                runs[engine][mode].append(_throughput_of(recs))
    return {"steps": steps, "repeats": repeats, "runs": runs}


def learning(tmp: str, quick: bool, seeds: list[int]) -> list[dict[str, Any]]:
    extra = ["warmup.steps=20", "run.steps=4", "eval.max_samples=16"] if quick else []
    out = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        start = None
        for mode in ("sync", "async k=1"):
            path = os.path.join(tmp, f"learn_{MODES[mode]}_s{seed}")
            t0 = time.perf_counter()
            # the published learning figures (6 seeds) predate 2026-12-08's defaults: pinned until re-measured
            rl = _run([*FORMER_DEFAULTS, f"run.seed={seed}", f"pipeline.max_staleness={MODES[mode]}", *extra], path,
                      start)
            evals = read_metrics(os.path.join(path, "metrics.jsonl"), "eval")
            acc = [r["eval/accuracy"] for r in evals if r.get("eval/accuracy") is not None]
            row[mode] = {"before": acc[0], "after": acc[-1], "minutes": round((time.perf_counter() - t0) / 60, 1),
                         "correct_curve": curve(rl, "reward/correct/mean"),
                         "samples_per_s": _throughput_of(rl)["samples_per_s"]}
            start = start or os.path.join(path, "sft")
        out.append(row)
    return out


def _spread(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def _figure(learn: list[dict[str, Any]], out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, color in (("sync", "tab:gray"), ("async k=1", "tab:red")):
        for i, row in enumerate(learn):
            pts = row[mode]["correct_curve"]
            smooth = [(s, statistics.fmean(v for _, v in pts[max(0, j - 9): j + 1])) for j, (s, _) in enumerate(pts)]
            ax.plot(*zip(*smooth), color=color, alpha=0.8 if i == 0 else 0.4, lw=1.5,
                    label=mode if i == 0 else None)
    ax.set(title=f"demo recipe: training correctness, {len(learn)} seeds (10-step mean)", xlabel="RL step",
           ylabel="reward/correct/mean")
    ax.legend()
    return save_figure(plt, fig, out_dir, NAME)


def _report(tp: dict[str, Any] | None, learn: list[dict[str, Any]], ratios: dict[str, float]) -> str:
    md = ""
    if tp:
        md += (f"\n## Throughput (demo recipe from its SFT weights, {tp['steps']} RL steps a run, steps 3.. counted, "
               f"{tp['repeats']} repeats, modes interleaved)\n\n")
        rows, busy = [], []
        for engine, modes in tp["runs"].items():
            base = [r["samples_per_s"] for r in modes["sync"]]
            for mode, runs in modes.items():
                sps = [r["samples_per_s"] for r in runs]
                rel = [a / b for a, b in zip(sps, base)]
                ratios[f"{engine}_{mode.replace(' ', '_').replace('=', '')}_over_sync"] = statistics.fmean(rel)
                rows.append([engine, mode, _spread(sps), _spread(rel) if mode != "sync" else "1"])
                m = lambda key: statistics.fmean(r.get(key, float("nan")) for r in runs)  # noqa: E731
                busy.append([engine, mode, m("step_s"), m("time/generate"), m("time/score"), m("time/train"),
                             m("busy/engines"), m("busy/rewards"), m("busy/trainers"), m("time/idle/trainers"),
                             m("time/idle/sync_wait"), m("async/staleness_mean"), m("async/token_staleness_mean"),
                             m("async/mixed_version_share")])
        md += md_table(["engine", "mode", "samples/s", "/ sync (same repeat)"], rows)
        md += "\n\n### Where the time goes (means per step, seconds; busy = share of the step's wall time)\n\n"
        md += md_table(["engine", "mode", "step", "generate", "score", "train", "busy engines", "busy rewards",
                        "busy trainers", "trainers idle", "sync wait", "staleness", "token staleness",
                        "mixed samples"], busy)
        md += "\n"
    if learn:
        md += "\n## Learning: held-out greedy accuracy, sync vs async k = 1 from the same SFT weights\n\n"
        rows = [[r["seed"], mode, r[mode]["before"], r[mode]["after"], r[mode]["samples_per_s"], r[mode]["minutes"]]
                for r in learn for mode in ("sync", "async k=1")]
        md += md_table(["seed", "mode", "before", "after", "samples/s", "minutes"], rows)
        diff = [r["async k=1"]["after"] - r["sync"]["after"] for r in learn]
        for mode in ("sync", "async k=1"):
            md += f"\n{mode}: accuracy after {_spread([r[mode]['after'] for r in learn])}."
        md += f"\nasync - sync (after, paired by seed): {_spread(diff)}.\n\n![curves]({NAME}.png)\n"
        ratios["learning_async_minus_sync"] = statistics.fmean(diff)
        ratios["learning_sync_after"] = statistics.fmean(r["sync"]["after"] for r in learn)
        ratios["learning_async_after"] = statistics.fmean(r["async k=1"]["after"] for r in learn)
    return md


def _kept_part(args: Any) -> dict[str, Any]:
    """With --part: the other part of the last (not --quick) results in --out, kept beside the new one."""
    earlier = None if not args.part or args.quick else earlier_result(args.out, NAME)
    other = "learning" if args.part == "throughput" else "throughput"
    if earlier is None or not earlier.get(other):
        return {}
    return {other: earlier[other], "part": other, "command": earlier["command"], "machine": earlier["machine"]}


def _kept_engines(args: Any, tp: dict[str, Any] | None) -> dict[str, Any]:
    """With --engines: the other engines' throughput runs of the last (not --quick) results in --out, merged into
    ``tp`` (same steps and repeats only); what was kept, for the report."""
    earlier = None if not args.engines or args.quick or not tp else earlier_result(args.out, NAME)
    old = (earlier or {}).get("throughput") or {}
    if not old or (old.get("steps"), old.get("repeats")) != (tp["steps"], tp["repeats"]):
        return {}
    engines = [e for e in old["runs"] if e not in tp["runs"]]
    for e in engines:
        tp["runs"][e] = old["runs"][e]
    return {"engines": engines, "command": earlier["command"], "date": earlier["machine"].get("date")} if engines \
        else {}


def _kept_seeds(args: Any, learn: list[dict[str, Any]]) -> dict[str, Any]:
    """With --part learning: the earlier (not --quick) learning rows of seeds not run now, merged into ``learn``
    (seed order); what was kept, for the report."""
    earlier = None if args.part != "learning" or args.quick or not learn else earlier_result(args.out, NAME)
    ran = {r["seed"] for r in learn}
    old = [r for r in (earlier or {}).get("learning") or [] if r["seed"] not in ran]
    if not old:
        return {}
    learn[:] = sorted(learn + old, key=lambda r: r["seed"])
    return {"seeds": [r["seed"] for r in old], "command": earlier["command"], "date": earlier["machine"].get("date")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from rlhf.rollout.vllm import vllm_available

    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--seeds": {"type": int, "nargs": "+", "default": [0, 1, 2]},
        "--repeats": {"type": int, "default": 2},
        "--part": {"choices": ["throughput", "learning"], "default": None},
        "--engines": {"nargs": "+", "choices": ["hf", "vllm"], "default": None}})
    setup_env()
    if args.quick:
        args.seeds, args.repeats = args.seeds[:1], 1
    engines = args.engines or (["hf", "vllm"] if vllm_available() and not args.quick else ["hf"])
    info = machine_info()
    command = f"python -m bench.{NAME}" + (" --quick" if args.quick else "") + \
        (f" --part {args.part}" if args.part else "") + \
        (f" --engines {' '.join(args.engines)}" if args.engines else "") + \
        (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] and not args.quick else "")
    tp, learn = None, []
    with ray_running(), tempfile.TemporaryDirectory(prefix="bench_async_") as tmp:
        if args.part in (None, "throughput"):
            tp = throughput(tmp, args.quick, args.repeats, engines)
        if args.part in (None, "learning"):
            learn = learning(tmp, args.quick, args.seeds)
    kept = _kept_part(args)
    tp, learn = tp or kept.get("throughput"), learn or kept.get("learning") or []
    other_engines = _kept_engines(args, tp)
    other_seeds = _kept_seeds(args, learn)
    ratios: dict[str, float] = {}
    md = header("Asynchronous off-policy training: async / sync on the demo recipe", command, info, args.quick)
    if kept:
        md += (f"\nThe {kept['part']} part is kept from the earlier run `{kept['command']}` "
               f"({kept['machine'].get('date')}); this command ran the {args.part} part.\n")
    if other_seeds:
        md += (f"\nLearning rows of seeds {other_seeds['seeds']} are kept from the earlier run "
               f"`{other_seeds['command']}` ({other_seeds['date']}); this command ran seeds {args.seeds}.\n")
    if other_engines:
        md += (f"\nThroughput of {', '.join(other_engines['engines'])} is kept from the earlier run "
               f"`{other_engines['command']}` ({other_engines['date']}); this command ran "
               f"{', '.join(args.engines)}.\n")
    md += _report(tp, learn, ratios)
    os.makedirs(args.out, exist_ok=True)
    figure = _figure(learn, args.out) if learn else None
    result = {"bench": NAME, "machine": info, "quick": args.quick, "command": command, "ratios": ratios,
              "required_ratios": ["hf_async_k1_over_sync"] if tp else [], "throughput": tp, "learning": learn,
              "figure": figure}
    result["paths"] = write_results(args.out, NAME, result, md)
    print(md)
    return result


if __name__ == "__main__":
    main()
