"""Where the GRPO step time goes: phases of the tiny demo recipe, and the glue between them.

    python -m bench.step_phases            # ~1 min on 2 cores: 10 GRPO steps of recipes/grpo_tiny_cpu.yaml
    python -m bench.step_phases --quick    # seconds: 3 steps, 8 prompts per step, smoke test

Runs ``rlhf.runtime.controller.run`` on recipes/grpo_tiny_cpu.yaml (warm-up off, progress off, output in a temp
dir) and reads ``time/*`` from metrics.jsonl (step 1 dropped: it warms caches up). Reports, per step, medians:

  - each phase's share of ``time/step``: generate, score, advantages, train, sync;
  - glue = (step - sum of phases) / step: what the step does between its timed phases (since 2026-12-06 this
    includes the learning-rate call to every rank, which the pipeline makes between produce and consume);
  - the loop outside ``time/step`` (logging, checkpoints, evals): the gap between consecutive metrics records
    minus the step;
  - inside train: the workers' own ``time/ref_old_logprobs`` + ``time/update`` vs the Ray call around them,
    next to the round trip of a no-op Ray call carrying one rank's shard of the same shape (measured here).

Goal: glue under 10% of the step.
"""

from __future__ import annotations

import contextlib
import tempfile
from typing import Any, Iterator, Sequence

from bench.common import (
    header,
    machine_info,
    md_table,
    median,
    parse_args,
    print_result,
    ratio,
    ray_running,
    read_metrics,
    repeat_times,
    save_figure,
    setup_env,
    summary,
    timed,
    tiny_recipe,
    write_results,
)

NAME = "step_phases"
PHASES = ("generate", "score", "advantages", "train", "sync")
GOAL = 0.10  # glue under 10% of the step


@contextlib.contextmanager
def per_rank_train_metrics(sink: list[list[dict[str, float]]]) -> Iterator[None]:
    """Record each rank's own train_rl metrics before `TrainGroup` averages them (it keeps only the max of each
    time/* key, and a max per key cannot give the slowest rank's total). Restored on exit."""
    import rlhf.train.group as group

    original = group._mean_metrics

    def recording(results: list[dict[str, float]]) -> dict[str, float]:
        if results and all("time/update" in r for r in results):
            sink.append([dict(r) for r in results])
        return original(results)

    group._mean_metrics = recording
    try:
        yield
    finally:
        group._mean_metrics = original


def run_recipe(steps: int, quick: bool, workdir: str) -> tuple[list[dict[str, Any]], float, Any]:
    from rlhf.runtime.controller import run

    overrides = ["warmup.steps=0", f"run.steps={steps}", "run.progress=false", "run.save_every=0",
                 "eval.max_samples=8" if quick else "eval.max_samples=32"]
    if quick:
        overrides.append("rollout.prompts_per_step=8")
    recipe = tiny_recipe(overrides, workdir)
    per_rank: list[list[dict[str, float]]] = []
    with per_rank_train_metrics(per_rank):
        wall, out = timed(lambda: run(recipe))
    records = read_metrics(out["metrics"])
    if len(per_rank) == len(records):  # one train_rl call per RL step
        for rec, ranks in zip(records, per_rank):
            rec["bench/worker_busy_max"] = max(r["time/ref_old_logprobs"] + r["time/update"] for r in ranks)
    return records, wall, recipe


def ray_roundtrip(recipe, records: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Round trip of a no-op Ray actor call that carries one rank's ExperienceBatch shard (same shape)."""
    import ray
    import torch

    from rlhf.types import ExperienceBatch

    r = recipe.rollout
    rows = r.prompts_per_step * r.group_size // recipe.train.num_ranks
    cols = recipe.data.max_prompt_tokens + r.max_new_tokens
    shard = ExperienceBatch(
        input_ids=torch.randint(0, 30, (rows, cols)),
        attention_mask=torch.ones(rows, cols, dtype=torch.long),
        loss_mask=torch.ones(rows, r.max_new_tokens),
        advantages=torch.randn(rows),
        prompt_len=recipe.data.max_prompt_tokens,
    )

    class Echo:
        def noop(self, batch: Any) -> dict[str, float]:
            return {"loss": 0.0}

    actors = [ray.remote(num_cpus=0)(Echo).remote() for _ in range(recipe.train.num_ranks)]
    try:
        call = lambda: ray.get([a.noop.remote(shard) for a in actors])  # noqa: E731  (one call per rank, as train_rl)
        times = repeat_times(call, repeats, warmup=2)
    finally:
        for a in actors:
            ray.kill(a)
    return {"rows": rows, "cols": cols, "seconds": summary(times)}


def analyse(records: list[dict[str, Any]]) -> dict[str, Any]:
    steps = records[1:] if len(records) > 2 else records  # step 1 warms up
    step = [r["time/step"] for r in steps]
    out: dict[str, Any] = {"steps_used": len(steps), "step_s": summary(step)}
    for p in PHASES:
        out[f"{p}_s"] = summary([r[f"time/{p}"] for r in steps])
        out[f"{p}_share"] = median([r[f"time/{p}"] / r["time/step"] for r in steps])
    glue = [r["time/step"] - sum(r[f"time/{p}"] for p in PHASES) for r in steps]
    out["glue_s"] = summary(glue)
    out["glue_share"] = median([g / r["time/step"] for g, r in zip(glue, steps)])
    # outside time/step: logging (and checkpoints or evals, none here), between two records
    gaps = [b["time"] - a["time"] - b["time/step"] for a, b in zip(records, records[1:])
            if "time" in a and "time" in b]
    gaps = gaps[1:] if len(gaps) > 2 else gaps
    out["loop_outside_step_s"] = summary(gaps)
    out["loop_outside_share"] = ratio(median(gaps), median(gaps) + median(step)) if gaps else float("nan")
    # inside train: worker-reported time vs the Ray call around it. The slowest rank's ref/old + update when the
    # per-rank metrics were caught, else the sum of the per-key maxima (an overestimate of the workers' time)
    out["train_inner_source"] = "slowest rank" if all("bench/worker_busy_max" in r for r in steps) else "key maxima"
    inner = [r.get("bench/worker_busy_max", r["time/ref_old_logprobs"] + r["time/update"]) for r in steps]
    out["train_ref_old_logprobs_s"] = summary([r["time/ref_old_logprobs"] for r in steps])
    out["train_update_s"] = summary([r["time/update"] for r in steps])
    out["train_outside_workers_s"] = summary([r["time/train"] - i for r, i in zip(steps, inner)])
    out["train_outside_share"] = median([(r["time/train"] - i) / r["time/train"] for r, i in zip(steps, inner)])
    # inside score: each component's own time (its worker's timer), to tell plugin cost from overhead
    names = sorted({k.split("/")[1] for r in steps for k in r if k.startswith("reward/") and k.endswith("/time_s")})
    out["score_components_s"] = {n: median([r[f"reward/{n}/time_s"] for r in steps]) for n in names}
    if names:  # the reward group's own cost: the call minus its slowest component (they run in parallel)
        over = [r["time/score"] - max(r[f"reward/{n}/time_s"] for n in names) for r in steps]
        out["score_outside_components_s"] = summary(over)
        out["score_outside_share"] = median([o / r["time/score"] for o, r in zip(over, steps)])
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0],
                      **{"--steps": {"type": int, "default": None, "help": "GRPO steps (default 10; --quick: 3)"}})
    setup_env()
    quick = args.quick
    steps = args.steps or (3 if quick else 10)
    info = machine_info()
    with ray_running():
        with tempfile.TemporaryDirectory(prefix="bench_step_phases_") as tmp:
            records, wall, recipe = run_recipe(steps, quick, tmp)
        roundtrip = ray_roundtrip(recipe, records, 10 if quick else 50)
    a = analyse(records)
    ratios = {
        "glue_share": a["glue_share"],
        "glue_over_step": ratio(a["glue_s"]["median"], a["step_s"]["median"]),
        "train_outside_share": a["train_outside_share"],
        "score_outside_share": a.get("score_outside_share", float("nan")),
        "loop_outside_share": a["loop_outside_share"],
        "train_outside_over_ray_roundtrip": ratio(a["train_outside_workers_s"]["median"],
                                                  roundtrip["seconds"]["median"]),
        **{f"{p}_share": a[f"{p}_share"] for p in PHASES},
    }
    r = recipe.rollout
    result = {
        "bench": NAME, "quick": quick, "machine": info, "goal": {"glue_share_max": GOAL},
        "recipe": {"steps": steps, "prompts_per_step": r.prompts_per_step, "group_size": r.group_size,
                   "max_new_tokens": r.max_new_tokens, "zero_stage": recipe.train.zero_stage,
                   "num_ranks": recipe.train.num_ranks, "rewards": [c.name for c in recipe.rewards]},
        "run_wall_s": wall, "analysis": a, "ray_roundtrip": roundtrip, "ratios": ratios,
        "per_step": [{k: v for k, v in rec.items() if k.startswith("time") or k == "step"} for rec in records],
        "required_ratios": ["glue_share", "train_outside_share", "generate_share", "train_share"],
    }
    result["paths"] = write_results(args.out, NAME, result, render(result, quick))
    result["paths"]["plot"] = plot(result, args.out)
    return result


def render(result: dict[str, Any], quick: bool) -> str:
    a, rt, rc = result["analysis"], result["ray_roundtrip"], result["recipe"]
    cmd = "python -m bench.step_phases" + (" --quick" if quick else "")
    lines = [header("Where the GRPO step time goes", cmd, result["machine"], quick)]
    lines.append(f"recipes/grpo_tiny_cpu.yaml, warm-up off, {rc['steps']} steps (step 1 dropped: "
                 f"{a['steps_used']} used), {rc['prompts_per_step']} prompts x {rc['group_size']} samples, "
                 f"{rc['max_new_tokens']} new tokens, ZeRO-{rc['zero_stage']} on {rc['num_ranks']} ranks, "
                 f"rewards {rc['rewards']}. Whole run (start-up, evals, checkpoint, plot included): "
                 f"{result['run_wall_s']:.0f} s. Medians in seconds.\n")
    rows = [[p, a[f"{p}_s"]["median"], f"{a[f'{p}_share']:.1%}"] for p in PHASES]
    rows.append(["**glue** (step − phases)", a["glue_s"]["median"], f"{a['glue_share']:.1%}"])
    rows.append(["**step**", a["step_s"]["median"], "100%"])
    lines.append(md_table(["phase", "seconds", "share of step"], rows))
    lines.append("")
    lines.append("Inside `time/train` (the `TrainGroup.train_rl` Ray call on both ranks; the worker rows are "
                 "the logged per-timer maxima over ranks; the outside part is `time/train` minus the "
                 f"{a['train_inner_source']}'s ref/old + update):\n")
    lines.append(md_table(["part", "seconds", "share of train"], [
        ["ref/old logprobs (worker)", a["train_ref_old_logprobs_s"]["median"],
         f"{ratio(a['train_ref_old_logprobs_s']['median'], a['train_s']['median']):.1%}"],
        ["update (worker)", a["train_update_s"]["median"],
         f"{ratio(a['train_update_s']['median'], a['train_s']['median']):.1%}"],
        ["outside the workers (Ray call, shard transfer, set-up)", a["train_outside_workers_s"]["median"],
         f"{a['train_outside_share']:.1%}"],
        [f"for scale: no-op Ray call with a {rt['rows']}x{rt['cols']} shard per rank", rt["seconds"]["median"], ""],
    ]))
    lines.append("")
    sc = a["score_components_s"]
    lines.append("Inside `time/score`: each component's time in its own worker (they run in parallel):\n")
    srows = [[n, v, f"{ratio(v, a['score_s']['median']):.0%}"] for n, v in sc.items()]
    if "score_outside_components_s" in a:
        srows.append(["outside the slowest component (Ray calls, result checks, vector)",
                      a["score_outside_components_s"]["median"], f"{a['score_outside_share']:.0%}"])
    lines.append(md_table(["component", "seconds", "share of score"], srows))
    lines.append("")
    lines.append("With warm-up off the policy is random, so `correct` (math-verify) parses 8 tokens of noise per "
                 "sample, which is slower than parsing the short answers a warmed-up policy writes.\n")
    lines.append(f"Outside `time/step` (the metrics log; the `set_lr` Ray call is inside the step since 2026-12-06): "
                 f"{a['loop_outside_step_s']['median'] * 1e3:.1f} ms per step "
                 f"({a['loop_outside_share']:.1%} of the loop).\n")
    lines.append("## Ratios\n")
    lines.append(md_table(["ratio", "value"], [[k, v] for k, v in result["ratios"].items()]))
    lines.append("\n## Verdict\n")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> str:
    a, rt = result["analysis"], result["ray_roundtrip"]
    glue = a["glue_share"]
    top = max(PHASES, key=lambda p: a[f"{p}_share"])
    text = (f"**{'Meets' if glue < GOAL else 'Misses'} the goal** (glue under 10%): glue is {glue:.1%} of the step "
            f"({a['glue_s']['median'] * 1e3:.1f} ms): sampling the prompts, the weighting's observation, the "
            "learning-rate call to every rank (between produce and consume) and the metrics dict. ")
    if glue >= GOAL:
        text += ("That is above the goal: look at the collector (rlhf/runtime/collect.py: prompt sampling, the rows' "
                 "columns) and the `ExperienceBatch` construction of the policy-gradient update (rlhf/runtime/rl.py), "
                 "the only untimed code of a step. ")
    text += f"The largest phase is {top} ({a[f'{top}_share']:.0%} of the step)"
    sc = a["score_components_s"]
    if sc:
        slowest = max(sc, key=sc.get)
        text += (f"; inside score, component `{slowest}` alone takes {sc[slowest] * 1e3:.0f} ms of "
                 f"{a['score_s']['median'] * 1e3:.0f} ms, so scoring time is the plugin's own work, not the "
                 f"reward workers' overhead ({a['score_outside_components_s']['median'] * 1e3:.0f} ms)")
    outside, rtt = a["train_outside_workers_s"]["median"], rt["seconds"]["median"]
    text += (f". Of `time/train`, {a['train_outside_share']:.0%} ({outside * 1e3:.0f} ms) is outside the workers' "
             f"own timers; a no-op Ray call carrying the same shard to each rank takes {rtt * 1e3:.1f} ms here. ")
    if outside > 2 * rtt:
        text += ("Most of it is therefore not transport but what `train_rl` does before its timers start (moving "
                 "the shard to the device, building the objective, unpickling the shard) and the ranks waiting "
                 "for each other's cores. ")
    else:
        text += "The two are of the same size: that gap is the Ray call itself. "
    text += (f"Outside the step, the loop spends {a['loop_outside_step_s']['median'] * 1e3:.0f} ms per step "
             f"({a['loop_outside_share']:.1%}) on logging.")
    return text


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    """A stacked bar per step: phases + glue (PNG next to the JSON)."""
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None

    per = result["per_step"]
    steps = [r["step"] for r in per]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bottom = [0.0] * len(per)
    for p in PHASES:
        vals = [r[f"time/{p}"] for r in per]
        ax.bar(steps, vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    glue = [r["time/step"] - b for r, b in zip(per, bottom)]
    ax.bar(steps, glue, bottom=bottom, label="glue", color="black")
    ax.set_xlabel("step")
    ax.set_ylabel("seconds")
    ax.set_title("GRPO step time by phase (tiny recipe)")
    ax.legend(fontsize=8, ncol=3)
    return save_figure(plt, fig, out_dir, NAME)


if __name__ == "__main__":
    print_result(main())
