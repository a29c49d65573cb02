"""Step-time cost of the reward-vector width: K = 1, 4, 16 cheap reward components, side by side.

    python -m bench.reward_width            # ~2-3 min on 2 cores: scoring micro-bench + interleaved GRPO steps
    python -m bench.reward_width --quick    # seconds: smoke test (no GRPO runs)

What is timed, in one run on one machine:
  1. scoring a fixed rollout-sized batch (256 completions, 32 prompts x 8) through the real ``RewardGroup``
     with K components (copies of ``length_penalty`` / ``exact_match``): as configured by default (Ray; the
     rule-based components share one reward worker), with one Ray actor per component (each its own ``worker``;
     the layout before shared workers), and in-process (one thread per component, no Ray calls);
  2. the weighting + advantage path on the resulting vector (``build_weighting`` + ``GRPO.advantages``);
  3. (not --quick) whole GRPO steps of the tiny demo recipe (the on-policy stage of ``rlhf.runtime.rl``: produce
     then consume, as the pipeline drives it, on one training group and one engine), K=1 and K=16 steps interleaved in pairs so that drift of a
     shared machine hits both alike; plus K=1 steps with and without the K=16 group alive (the cost of its idle
     actors, none extra by default) and the idle reward actors' CPU use read from /proc.

Figures (ratios): score K16/K1, score+advantages K16/K1, Ray/in-process at K16, whole step K16/K1 (paired),
the extra scoring time of K16 as a share of a K1 step, and the idle actors' cost. Goal: a K=16 step within 5%
of a K=1 step.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from typing import Any, Sequence

from bench.common import (header, machine_info, md_table, median, parse_args, print_result, ratio, ray_running,
                          repeat_times, save_figure, setup_env, summary, timed, tiny_recipe, write_results)

NAME = "reward_width"
GOAL = 1.05  # a K=16 step within 5% of a K=1 step


def component_dicts(k: int, per_component: bool = False) -> list[dict[str, Any]]:
    """K cheap components: length_penalty and exact_match alternately, each with its own name; per_component:
    each in a reward worker of its own (one Ray actor per component) instead of the shared default."""
    out = []
    for j in range(k):
        if j % 2 == 0:
            out.append({"name": f"len{j}", "plugin": "length_penalty",
                        "args": {"target": 4, "coef": 0.1, "max_penalty": 1.0}, "weight": 1.0 / k})
        else:
            out.append({"name": f"exact{j}", "plugin": "exact_match", "weight": 1.0 / k})
        if per_component:
            out[-1]["worker"] = f"own{j}"
    return out


def make_batch(n_prompts: int, group_size: int, seed: int = 0) -> tuple[list[str], list[str], dict[str, list]]:
    """A rollout-sized batch of arithmetic prompts and plausible completions, with the runtime's columns."""
    rng = random.Random(seed)
    prompts, completions, answers, num_tokens, finished = [], [], [], [], []
    for _ in range(n_prompts):
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        prompt, answer = f"{a}+{b}=", str(a + b)
        for _ in range(group_size):
            c = rng.choice([answer, str(a + b + rng.randint(1, 5)), answer + " ok", str(rng.randint(0, 99))])
            prompts.append(prompt)
            completions.append(c)
            answers.append(answer)
            num_tokens.append(len(c) + rng.randint(0, 3))
            finished.append(rng.random() < 0.9)
    return prompts, completions, {"answer": answers, "num_tokens": num_tokens, "finished": finished}


def bench_scoring(ks: Sequence[int], n_prompts: int, group_size: int, repeats: int) -> dict[str, Any]:
    """Median seconds per call for score / advantages / both, per K, Ray and in-process."""
    import torch

    from rewards.api import build_scorer, check_component
    from rlhf.config.registry import build_objective
    from rlhf.config.schema import GRPOConfig, RewardComponentConfig, WeightingConfig
    from rlhf.scoring.group import RewardGroup
    from rlhf.weighting import build_weighting

    prompts, completions, columns = make_batch(n_prompts, group_size)
    group_ids = torch.arange(n_prompts).repeat_interleave(group_size)  # (B,)
    objective = build_objective(GRPOConfig(kind="grpo"))
    out: dict[str, Any] = {"batch_size": len(prompts), "repeats": repeats, "by_k": {}}
    for k in ks:
        comps = [RewardComponentConfig(**d) for d in component_dicts(k)]
        own = [RewardComponentConfig(**d) for d in component_dicts(k, per_component=True)]
        weighting = build_weighting(WeightingConfig(), comps)
        row: dict[str, Any] = {}
        # the floor: the same plugins called one after another in this process (no actors, no threads)
        scorers = [build_scorer(c, check_component(c)) for c in comps]
        serial_s = repeat_times(lambda: [sc.run(prompts, completions, columns) for sc in scorers], repeats, warmup=2)
        row["serial"] = {"score_s": summary(serial_s)}
        for backend, use_ray, layout in (("ray", True, comps), ("ray_per_component", True, own),
                                         ("thread", False, comps)):
            t_start, group = timed(lambda: RewardGroup(layout, use_ray=use_ray))
            try:
                actors = len(group.workers)  # Ray actors hosting the K components (0 in-process)
                plugin_time: list[float] = []

                def score() -> Any:
                    rv, metrics = group.score(prompts, completions, columns)
                    plugin_time.append(sum(v for n, v in metrics.items() if n.endswith("/time_s")))
                    return rv

                score_s = repeat_times(score, repeats, warmup=2)
                rv = score()
                adv_s = repeat_times(lambda: objective.advantages(rv, group_ids, weighting), repeats, warmup=1)
                both_s = repeat_times(lambda: objective.advantages(score(), group_ids, weighting), repeats, warmup=1)
            finally:
                group.shutdown()
            row[backend] = {
                "actors": actors,
                "start_s": t_start,
                "score_s": summary(score_s),
                "advantages_s": summary(adv_s),
                "score_and_advantages_s": summary(both_s),
                # the workers' timers, summed over components: includes waiting for a core, so with K > cores
                # it can exceed the call's wall time
                "plugin_time_sum_s": median(plugin_time),
            }
        out["by_k"][str(k)] = row
    # cost of one more component: least-squares slope of median score time over K (Ray backend)
    xs = [float(k) for k in ks]
    for backend in ("ray", "ray_per_component", "thread", "serial"):
        ys = [out["by_k"][str(k)][backend]["score_s"]["median"] for k in ks]
        out[f"{backend}_seconds_per_component"] = _slope(xs, ys)
    return out


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    import statistics

    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return math.nan
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else math.nan


def actor_cpu_seconds(tag: bytes = b"RewardWorker") -> tuple[float, int]:
    """CPU seconds used so far by this machine's Ray actor processes of one class (Linux /proc), and their count."""
    import glob

    tick = os.sysconf("SC_CLK_TCK")
    total, count = 0.0, 0
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            with open(proc + "/cmdline", "rb") as f:
                if tag not in f.read():
                    continue
            with open(proc + "/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            count += 1
        except (OSError, IndexError, ValueError):  # the process ended while we read it
            continue
    return total, count


def idle_cores(tag: bytes, seconds: float = 3.0) -> dict[str, float]:
    import time

    cpu0, n = actor_cpu_seconds(tag)
    t0 = time.perf_counter()
    time.sleep(seconds)
    cpu1, _ = actor_cpu_seconds(tag)
    return {"reward_actors" if tag == b"RewardWorker" else "actors": n,
            "cores_used": (cpu1 - cpu0) / (time.perf_counter() - t0)}


class BareActor:
    """An actor that does nothing: the floor of what an idle Ray actor process costs."""

    def ready(self) -> bool:
        return True


def bare_actor_idle(n: int = 4) -> dict[str, float]:
    import ray

    actors = [ray.remote(num_cpus=0)(BareActor).remote() for _ in range(n)]
    try:
        ray.get([a.ready.remote() for a in actors])
        return idle_cores(b"BareActor")
    finally:
        for a in actors:
            ray.kill(a)


def bench_full_step(pairs: int, solo: int, workdir: str) -> dict[str, Any]:
    """Whole GRPO steps of the tiny recipe, K=1 and K=16 interleaved in one process (ABBA order), so that the
    machine's drift hits both alike. One training group and one engine; two reward groups, both alive during the
    pairs. Before and after the pairs, `solo` K=1 steps run while the K=16 group does not exist: the cost of
    16 idle actors (their background threads) on the other phases."""
    import time

    from rlhf.config.pipeline import behaviour_logprobs
    from rlhf.config.registry import build_objective
    from rlhf.config.schema import RewardComponentConfig
    from rlhf.data import PromptSampler
    from rlhf.models.load import resolve_model_dir
    from rlhf.rollout.functions import build_rollout_fn
    from rlhf.rollout.group import RolloutGroup
    from rlhf.runtime.collect import Collector, RewardScorer, training_sampling
    from rlhf.runtime.data import load_data
    from rlhf.runtime.estimators import RewardAdvantages
    from rlhf.runtime.rl import PolicyGradientUpdate, RLStage
    from rlhf.runtime.sync import SyncCoordinator, resolve_weight_sync
    from rlhf.scoring.group import RewardGroup
    from rlhf.train.group import TrainGroup
    from rlhf.transport.placement import has_gpus
    from rlhf.weighting import build_weighting

    def edit(data: dict) -> None:
        data["rewards"] = component_dicts(1)
        data["eval"]["accuracy_component"] = None

    recipe = tiny_recipe(["warmup.steps=0", "run.progress=false"], workdir, edit)
    seed = recipe.run.seed
    train_rows, _ = load_data(recipe, seed)
    corpus = lambda: [r["prompt"] + " " + r.get("completion", "") for r in train_rows]  # noqa: E731
    model_dir, _ = resolve_model_dir(recipe.model, corpus, workdir, seed)
    objective = build_objective(recipe.objective)
    sampler = PromptSampler(train_rows, recipe.rollout.prompts_per_step, seed)
    groups: dict[int, Any] = {}
    weightings: dict[int, Any] = {}
    stages: dict[int, Any] = {}
    steps: dict[str, list[dict[str, float]]] = {"1": [], "16": [], "1_solo": []}
    trainers = TrainGroup(recipe)
    engines = sync = None
    step_no = 0

    def one_step(k: int, label: str | None) -> None:
        nonlocal step_no
        step_no += 1
        m = stages[k].consume(stages[k].produce(step_no))
        if label is not None:
            steps[label].append(m)

    def add_group(k: int) -> None:
        comps = [RewardComponentConfig(**d) for d in component_dicts(k)]
        groups[k] = RewardGroup(comps)
        weightings[k] = build_weighting(recipe.weighting, comps)
        rollout_fn = build_rollout_fn(recipe, engines)
        collector = Collector(sampler, rollout_fn, RewardScorer(groups[k], rollout_fn),
                              lambda step, round_: training_sampling(recipe, step, round_))
        estimator = RewardAdvantages(objective, weightings[k], trainers, False, recipe.weighting.gradient.max_samples)
        stages[k] = RLStage(collector=collector, weighting=weightings[k], engines=engines, sync=sync,
                            update=PolicyGradientUpdate(trainers, estimator, False, behaviour_logprobs(recipe)),
                            evaluator=dict, summary={})

    idle: dict[str, float] = {}
    actors: dict[str, int] = {}
    try:
        trainers.build(model_dir, recipe.train.lr)
        trainers.load_reference(model_dir)
        engines = RolloutGroup(recipe, model_dir)
        sync = SyncCoordinator(trainers, engines, resolve_weight_sync(recipe, has_gpus()), recipe.rollout.sync_timeout_s)
        sync.sync(0)
        add_group(1)
        one_step(1, None)  # warm-up
        for _ in range(solo):
            one_step(1, "1_solo")
        add_group(16)
        actors = {str(k): len(g.workers) for k, g in groups.items()}  # Ray actors of each group
        one_step(16, None)  # warm-up
        idle = idle_cores(b"RewardWorker")  # what do both groups' reward actors cost while nobody calls them?
        for i in range(pairs):
            for k in ((1, 16) if i % 2 == 0 else (16, 1)):
                one_step(k, str(k))
        groups.pop(16).shutdown()
        for _ in range(solo):
            one_step(1, "1_solo")
    finally:
        for g in groups.values():
            g.shutdown()
        if engines is not None:
            engines.shutdown()
        trainers.shutdown()

    def stats(records: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "step_s": summary([r["time/step"] for r in records]),
            "score_s": summary([r["time/score"] for r in records]),
            "generate_s": summary([r["time/generate"] for r in records]),
            "train_s": summary([r["time/train"] for r in records]),
            "step_excl_score_s": summary([r["time/step"] - r["time/score"] for r in records]),
            "completion_tokens_mean": median([r["rollout/completion_tokens_mean"] for r in records]),
        }

    out: dict[str, Any] = {"pairs": pairs, "solo_steps": 2 * solo, "idle": idle, "idle_bare": bare_actor_idle(),
                           "actors": actors}
    out.update({label: stats(records) for label, records in steps.items()})
    # per pair: K=16 step / K=1 step of the same pair (the pairs are adjacent in time)
    out["pair_ratios"] = [a["time/step"] and b["time/step"] / a["time/step"] for a, b in zip(steps["1"], steps["16"])]
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0],
                      **{"--pairs": {"type": int, "default": 10, "help": "interleaved (K=1, K=16) GRPO step pairs"}})
    setup_env()
    quick = args.quick
    ks = [1, 4] if quick else [1, 4, 16]  # each Ray reward actor takes ~1.5 s to start on 2 cores
    n_prompts, group_size = (8, 8) if quick else (32, 8)
    repeats = 5 if quick else 30
    info = machine_info()
    with ray_running():
        scoring = bench_scoring(ks, n_prompts, group_size, repeats)
        full_step = None
        if not quick:
            with tempfile.TemporaryDirectory(prefix="bench_reward_width_") as tmp:
                full_step = bench_full_step(args.pairs, max(2, args.pairs // 2), tmp)

    by = scoring["by_k"]
    kmax, kmin = str(max(ks)), str(min(ks))
    med = lambda k, b, what: by[k][b][what]["median"]  # noqa: E731
    # kmax is 16 (4 with --quick); the keys say kmax so that a quick run's JSON has the same shape
    ratios = {
        "score_kmax_over_k1": ratio(med(kmax, "ray", "score_s"), med(kmin, "ray", "score_s")),
        "score_and_advantages_kmax_over_k1": ratio(med(kmax, "ray", "score_and_advantages_s"),
                                                   med(kmin, "ray", "score_and_advantages_s")),
        "advantages_kmax_over_k1": ratio(med(kmax, "ray", "advantages_s"), med(kmin, "ray", "advantages_s")),
        "ray_over_thread_score_kmax": ratio(med(kmax, "ray", "score_s"), med(kmax, "thread", "score_s")),
        "ray_over_thread_score_k1": ratio(med(kmin, "ray", "score_s"), med(kmin, "thread", "score_s")),
        "ray_over_serial_score_kmax": ratio(med(kmax, "ray", "score_s"), med(kmax, "serial", "score_s")),
        # what sharing one worker saves: one actor per component against the default layout, same K
        "per_component_over_shared_score_kmax": ratio(med(kmax, "ray_per_component", "score_s"),
                                                      med(kmax, "ray", "score_s")),
        "score_kmax_over_k1_per_component": ratio(med(kmax, "ray_per_component", "score_s"),
                                                  med(kmin, "ray_per_component", "score_s")),
    }
    if full_step is not None:
        s1, s16, solo = full_step["1"], full_step["16"], full_step["1_solo"]
        ratios["step_k16_over_k1"] = ratio(s16["step_s"]["median"], s1["step_s"]["median"])
        ratios["step_k16_over_k1_pair_median"] = median(full_step["pair_ratios"])
        # the same question with less noise: the extra scoring time alone, as a share of a K=1 step
        ratios["score_delta_share_of_k1_step"] = ratio(
            s16["score_s"]["median"] - s1["score_s"]["median"], s1["step_s"]["median"])
        # from the micro-bench: extra score + advantage time of K=16 over the measured K=1 step
        ratios["microbench_delta_share_of_k1_step"] = ratio(
            med(kmax, "ray", "score_and_advantages_s") - med(kmin, "ray", "score_and_advantages_s"),
            s1["step_s"]["median"])
        # 16 more idle actors: K=1 steps while they exist, over K=1 steps while they do not
        ratios["k1_step_with_idle_k16_group_over_without"] = ratio(s1["step_excl_score_s"]["median"],
                                                                   solo["step_excl_score_s"]["median"])
        ratios["idle_reward_actor_cores_share"] = ratio(full_step["idle"]["cores_used"], info["cores_usable"])
        # the steadier estimate: per-call scoring delta + the cores the idle actors take from a CPU-bound step
        # a run configured with K=16 against one with K=1: the paired steps (both groups alive) carry the per-call
        # cost, the blocks with and without the K=16 group the idle cost
        ratios["measured_step_k16_over_k1"] = (ratios["step_k16_over_k1_pair_median"]
                                               * ratios["k1_step_with_idle_k16_group_over_without"])
        # the idle cost of the actors K=16 runs beyond K=1 (none when they share the default worker); cores_used
        # was measured on the actors of both groups
        idle = full_step["idle"]
        extra = full_step["actors"]["16"] - full_step["actors"]["1"]
        ratios["estimated_step_k16_over_k1"] = 1 + ratios["score_delta_share_of_k1_step"] + ratio(
            idle["cores_used"] * extra / max(1, idle["reward_actors"]), info["cores_usable"])
    result = {
        "bench": NAME, "quick": quick, "machine": info, "goal": {"step_k16_over_k1_max": GOAL},
        "ks": ks, "kmax": max(ks), "scoring": scoring, "full_step": full_step, "ratios": ratios,
        "required_ratios": ["score_kmax_over_k1", "score_and_advantages_kmax_over_k1", "ray_over_thread_score_kmax"],
    }
    result["paths"] = write_results(args.out, NAME, result, render(result, quick))
    result["paths"]["plot"] = plot(result, args.out)
    return result


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    """Milliseconds per scoring call vs K: Ray actors, in-process threads, and the plugins' own time."""
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None

    ks, by = result["ks"], result["scoring"]["by_k"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, get in (
        ("score, Ray (default: shared worker)", lambda r: r["ray"]["score_s"]["median"]),
        ("score, Ray, one actor per component", lambda r: r["ray_per_component"]["score_s"]["median"]),
        ("score + advantages, Ray", lambda r: r["ray"]["score_and_advantages_s"]["median"]),
        ("score, in-process threads", lambda r: r["thread"]["score_s"]["median"]),
        ("plugins called serially (the work)", lambda r: r["serial"]["score_s"]["median"]),
        ("worker timers summed over K (incl. waiting for a core)", lambda r: r["ray"]["plugin_time_sum_s"]),
    ):
        ax.plot(ks, [get(by[str(k)]) * 1e3 for k in ks], marker="o", label=label)
    ax.set_xlabel("K reward components")
    ax.set_ylabel("ms per call (median)")
    ax.set_xticks(ks)
    ax.set_title(f"Scoring {result['scoring']['batch_size']} completions")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, out_dir, NAME)


def render(result: dict[str, Any], quick: bool) -> str:
    sc, ratios, fs = result["scoring"], result["ratios"], result["full_step"]
    by = sc["by_k"]
    cmd = "python -m bench.reward_width" + (" --quick" if quick else "")
    ks = ", ".join(str(k) for k in result["ks"])
    lines = [header(f"Reward-vector width: K = {ks} components", cmd, result["machine"], quick)]
    lines.append(f"Scoring a batch of {sc['batch_size']} completions, median of {sc['repeats']} calls "
                 "(seconds). `ray` = the real `RewardGroup` as configured by default (the rule-based components "
                 "share one Ray actor and run there one after another); `ray, per component` = one Ray actor per "
                 "component (each its own `worker`); `thread` = the same "
                 "group in-process (one thread per component); `serial` = the same bound plugins called one after "
                 "another in the driver (the work itself); `worker timers, sum` = each component's own timer "
                 "summed over K (it includes waiting for one of the 2 cores, so it can exceed the call).\n")
    rows = []
    for k in result["ks"]:
        r, t, o = by[str(k)]["ray"], by[str(k)]["thread"], by[str(k)]["ray_per_component"]
        rows.append([k, r["score_s"]["median"], o["score_s"]["median"], r["advantages_s"]["median"],
                     r["score_and_advantages_s"]["median"], t["score_s"]["median"],
                     by[str(k)]["serial"]["score_s"]["median"], r["plugin_time_sum_s"], r["start_s"], o["start_s"]])
    lines.append(md_table(["K", "score (ray)", "score (ray, per component)", "weighting+advantages",
                           "score+advantages (ray)", "score (thread)", "score (serial)", "worker timers, sum",
                           "group start (ray)", "group start (per component)"], rows))
    lines.append("")
    lines.append(f"One more component costs {sc['ray_seconds_per_component'] * 1e3:.2f} ms per scoring call with "
                 f"Ray (shared worker), {sc['ray_per_component_seconds_per_component'] * 1e3:.2f} ms with one actor "
                 f"per component, {sc['thread_seconds_per_component'] * 1e3:.2f} ms with threads and "
                 f"{sc['serial_seconds_per_component'] * 1e3:.2f} ms serially (least-squares slope over K).\n")
    if fs is not None:
        lines.append(f"Whole GRPO steps of the tiny recipe (warm-up off), in one process: {fs['pairs']} pairs of "
                     "a K=1 and a K=16 step, interleaved (ABBA), both reward groups alive; and "
                     f"{fs['solo_steps']} K=1 steps before and after the pairs while the K=16 group does not exist. "
                     "Medians in seconds.\n")
        lines.append(md_table(
            ["steps", "time/step", "(min)", "time/score", "time/generate", "time/train", "step − score",
             "completion tokens"],
            [[label, fs[key]["step_s"]["median"], fs[key]["step_s"]["min"], fs[key]["score_s"]["median"],
              fs[key]["generate_s"]["median"], fs[key]["train_s"]["median"], fs[key]["step_excl_score_s"]["median"],
              fs[key]["completion_tokens_mean"]]
             for label, key in (("K=1 (paired)", "1"), ("K=16 (paired)", "16"), ("K=1, no K=16 group", "1_solo"))]))
        lines.append("")
        idle = fs["idle"]
        bare = fs["idle_bare"]
        lines.append(f"Reward actors: {fs['actors']['1']} for K=1, {fs['actors']['16']} for K=16. "
                     f"Idle cost: the {idle['reward_actors']} reward actors used {idle['cores_used']:.3f} cores "
                     f"while nobody called them; {bare['actors']} actors of an empty class used "
                     f"{bare['cores_used']:.3f} (3 s samples, /proc CPU time).\n")
    lines.append("## Ratios\n")
    kmax = str(result["kmax"])
    lines.append(md_table(["ratio", "value"], [[k.replace("kmax", "k" + kmax), v] for k, v in ratios.items()]))
    lines.append("")
    lines.append("## Verdict\n")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> str:
    ratios, sc = result["ratios"], result["scoring"]
    by, kmax = sc["by_k"], result["kmax"]
    top, low = by[str(kmax)], by[str(min(result["ks"]))]
    adv = [by[str(k)]["ray"]["advantages_s"]["median"] * 1e3 for k in result["ks"]]
    ms = lambda x: f"{x * 1e3:.1f} ms"  # noqa: E731
    where = (f"Where the time goes at K={kmax}: the plugins' own work, called serially in one process, is "
             f"{ms(top['serial']['score_s']['median'])}; the real group takes {ms(top['ray']['score_s']['median'])} "
             f"with the default shared worker (K=1: {ms(low['ray']['score_s']['median'])}) and "
             f"{ms(top['ray_per_component']['score_s']['median'])} with one Ray actor per component "
             f"({ratios['per_component_over_shared_score_kmax']:.2f}x the shared worker). One more component adds "
             f"{ms(sc['ray_seconds_per_component'])} per call in the shared worker, "
             f"{ms(sc['ray_per_component_seconds_per_component'])} as an actor of its own, against "
             f"{ms(sc['serial_seconds_per_component'])} of work. "
             f"Weighting + advantages take {min(adv):.1f}–{max(adv):.1f} ms over K = {result['ks']}.")
    if "step_k16_over_k1" not in ratios:
        return "--quick: no full-step runs, so the 5% goal is not judged here. " + where
    share = ratios["score_delta_share_of_k1_step"]
    micro = ratios["microbench_delta_share_of_k1_step"]
    paired = ratios["step_k16_over_k1_pair_median"]
    idle_ratio = ratios["k1_step_with_idle_k16_group_over_without"]
    est = ratios["estimated_step_k16_over_k1"]
    meets = est <= GOAL
    q1, q3 = _quartiles(result["full_step"]["pair_ratios"])
    fs = result["full_step"]
    extra = fs["actors"]["16"] - fs["actors"]["1"]
    per_actor = ratio(fs["idle"]["cores_used"], fs["idle"]["reward_actors"])
    measured = ratios["measured_step_k16_over_k1"]
    head = (f"**{'Meets' if meets else 'Misses'} the goal** (K=16 within 5% of K=1 for the whole step): a run "
            f"with K=16 components takes an estimated {est:.3f}x the step time of a run with K=1. Per call, the "
            f"extra scoring time of K=16 is {share:+.1%} of a K=1 step in the GRPO steps ({micro:+.1%} by the "
            f"micro-bench). K=16 runs {extra} reward actor(s) more than K=1 ({fs['actors']['16']} against "
            f"{fs['actors']['1']}; an idle actor takes {per_actor * 100:.2f}% of a core in Ray's background "
            "threads), so the estimate charges no idle cost when the components share the default worker. "
            f"Measured directly: {paired:.3f}x (median over {fs['pairs']} interleaved step pairs with both groups "
            f"alive, interquartile range {q1:.3f}–{q3:.3f}) and {idle_ratio:.3f}x (K=1 steps, score left out, "
            f"while the K=16 group existed against before it started and after it was killed), {measured:.3f}x "
            "together; on this shared 2-core machine single steps vary by more than 5%, so the direct figure is "
            "the noisier one. ")
    return head + where


if __name__ == "__main__":
    print_result(main())
