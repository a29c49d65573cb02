"""Multi-turn agents on CPU: does the calculator agent learn its tool, and does GiGPO beat episode-level GRPO on a
game whose states repeat? Three seeds each.

    python -m bench.agents            # ~60-80 min on 2 cores: 3 calculator runs, 3 x (GiGPO, GRPO) game runs
    python -m bench.agents --quick    # ~3 min: a few steps per run, smoke test
    python -m bench.agents --only game --seeds 0 1

calculator  recipes/agent_calculator_tiny_cpu.yaml as written (SFT warm-up on demonstrations of which half call
            the tool, then GRPO on the environment's `correct`): held-out success (greedy, 200 prompts) before and
            after RL, and the tool-call rate (episodes with a tool call), per seed.
game        recipes/agent_game_tiny_cpu.yaml: per seed, the GRPO run does the SFT warm-up and the GiGPO run starts
            from its saved weights, so both RL phases begin from the same policy and draw the same prompts; only
            the advantage differs (episode-level group advantage vs GiGPO's episode + anchor-state step advantage,
            omega 1, gamma 0.95). Held-out `solved` before/after, turns per episode, curves on one plot.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any, Sequence

from bench.common import FORMER_DEFAULTS
from bench.common import REPO_ROOT, curve, earlier_result, header, machine_info, md_table, parse_args, ray_running, \
    read_metrics, save_figure, setup_env, write_results

NAME = "agents"


def _recipe(name: str, overrides: list[str], out: str, start: str | None = None, objective: str | None = None
            ) -> Any:
    """The recipe with overrides; `start`: begin from these weights (no warm-up); `objective`: grpo keeps the
    recipe's surrogate settings and drops GiGPO's own keys."""
    from rlhf.config import load_recipe
    from rlhf.config.schema import Recipe

    recipe = load_recipe(REPO_ROOT / "recipes" / name, [*FORMER_DEFAULTS, *overrides, f"run.output_dir={out}",
                                                        "run.progress=false",
                                                        "run.save_every=0"])
    data = recipe.model_dump(mode="json")
    if start is not None:
        data["model"] = {"path": start}
        data["warmup"]["steps"] = 0
    if objective == "grpo":
        shared = ("clip_eps", "clip_eps_high", "kl_coef", "kl_ratio_correction", "loss_agg", "epochs",
                  "mini_batches", "scale_std", "eps")
        data["objective"] = {"kind": "grpo", **{k: v for k, v in data["objective"].items() if k in shared}}
    return Recipe.model_validate(data)


def _eval(records: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in records if r.get(key) is not None]
    return (values[0], values[-1]) if values else (float("nan"), float("nan"))


def _smooth(points: list[tuple[int, float]], k: int = 5) -> list[tuple[int, float]]:
    out = []
    for i in range(len(points)):
        window = [v for _, v in points[max(0, i - k + 1): i + 1]]
        out.append((points[i][0], statistics.fmean(window)))
    return out


def run_calculator(seed: int, tmp: str, quick: bool) -> dict[str, Any]:
    from rlhf.runtime.controller import run

    out = os.path.join(tmp, f"calculator_s{seed}")
    extra = ["warmup.steps=20", "run.steps=3", "eval.max_samples=16", "eval.every=0"] if quick else []
    started = time.perf_counter()
    run(_recipe("agent_calculator_tiny_cpu.yaml", [f"run.seed={seed}", *extra], out))
    minutes = round((time.perf_counter() - started) / 60, 1)
    evals, rl = read_metrics(os.path.join(out, "metrics.jsonl"), "eval"), read_metrics(
        os.path.join(out, "metrics.jsonl"), "rl")
    before, after = _eval(evals, "eval/accuracy")
    tool_before, tool_after = _eval(evals, "eval/agent/episodes_with_tool_call")
    return {"seed": seed, "success_before": before, "success_after": after, "tool_rate_before": tool_before,
            "tool_rate_after": tool_after, "minutes": minutes,
            "success_curve": curve(rl, "reward/correct/mean"),
            "tool_curve": curve(rl, "agent/episodes_with_tool_call")}


def run_game(seed: int, tmp: str, quick: bool) -> dict[str, dict[str, Any]]:
    from rlhf.runtime.controller import run

    extra = ["warmup.steps=20", "run.steps=3", "eval.max_samples=16", "eval.every=0"] if quick else []
    out: dict[str, dict[str, Any]] = {}
    start = None
    for kind in ("grpo", "gigpo"):  # the GRPO run does the warm-up; GiGPO starts from the same weights
        path = os.path.join(tmp, f"game_{kind}_s{seed}")
        started = time.perf_counter()
        run(_recipe("agent_game_tiny_cpu.yaml", [f"run.seed={seed}", *extra], path, start, kind))
        minutes = round((time.perf_counter() - started) / 60, 1)
        if start is None:
            start = os.path.join(path, "sft")
        evals = read_metrics(os.path.join(path, "metrics.jsonl"), "eval")
        rl = read_metrics(os.path.join(path, "metrics.jsonl"), "rl")
        before, after = _eval(evals, "eval/accuracy")
        turns_before, turns_after = _eval(evals, "eval/agent/turns_mean")
        out[kind] = {"seed": seed, "success_before": before, "success_after": after, "turns_before": turns_before,
                     "eval_curve": curve(evals, "eval/accuracy"),
                     "turns_after": turns_after, "minutes": minutes,
                     "success_curve": curve(rl, "reward/solved/mean"), "turns_curve": curve(rl, "agent/turns_mean")}
    return out


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.fmean(finite) if finite else float("nan")


def _spread(values: Sequence[float]) -> str:
    finite = [v for v in values if v == v]
    if not finite:
        return "n/a"
    return f"{statistics.fmean(finite):.3f} (min {min(finite):.3f}, max {max(finite):.3f})"


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    steps = sorted({s for c in curves for s, _ in c})
    by = [dict(c) for c in curves]
    return [(s, statistics.fmean(d[s] for d in by if s in d)) for s in steps]


def _figure(calc: list[dict], game: list[dict[str, dict]], out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if calc:
        ax = axes[0]
        for key, label, color in (("success_curve", "correct", "tab:green"),
                                  ("tool_curve", "episodes with a tool call", "tab:blue")):
            for r in calc:
                ax.plot(*zip(*_smooth(r[key])), color=color, alpha=0.25, lw=1)
            ax.plot(*zip(*_smooth(_mean_curve([r[key] for r in calc]))), color=color, lw=2, label=label)
        ax.set(title=f"calculator agent (GRPO), {len(calc)} seeds", xlabel="RL step", ylabel="rate (training)")
        ax.legend()
    if game:
        for ax, key, ylabel in ((axes[1], "success_curve", "solved (training)"),
                                (axes[2], "turns_curve", "turns per episode (training)")):
            for kind, color in (("gigpo", "tab:red"), ("grpo", "tab:gray")):
                runs = [g[kind] for g in game]
                for r in runs:
                    ax.plot(*zip(*_smooth(r[key])), color=color, alpha=0.25, lw=1)
                ax.plot(*zip(*_smooth(_mean_curve([r[key] for r in runs]))), color=color, lw=2, label=kind)
            ax.set(title=f"guess-the-number game, {len(game)} seeds", xlabel="RL step", ylabel=ylabel)
            ax.legend()
    return save_figure(plt, fig, out_dir, NAME)


def _kept_part(args: Any) -> dict[str, Any]:
    """With --only: the other part of the last full (not --quick) results in --out, to keep beside the new one."""
    earlier = None if args.quick else earlier_result(args.out, NAME)
    if earlier is None:
        return {}
    other = "game" if args.only == "calculator" else "calculator"
    return {other: earlier.get(other) or [], "command": earlier.get("command") or f"python -m bench.{NAME}",
            "machine": earlier["machine"]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--seeds": {"type": int, "nargs": "+", "default": [0, 1, 2]},
        "--only": {"choices": ["calculator", "game"], "default": None}})
    setup_env()
    if args.quick and args.seeds == [0, 1, 2]:
        args.seeds = [0]  # a smoke test: one seed
    info = machine_info()
    command = f"python -m bench.{NAME}" + (" --quick" if args.quick else "") + \
        ("" if args.seeds in ([0, 1, 2], [0]) else " --seeds " + " ".join(map(str, args.seeds))) + \
        (f" --only {args.only}" if args.only else "")
    calc: list[dict] = []
    game: list[dict[str, dict]] = []
    with ray_running(), tempfile.TemporaryDirectory(prefix="bench_agents_") as tmp:
        for seed in args.seeds:
            if args.only in (None, "calculator"):
                calc.append(run_calculator(seed, tmp, args.quick))
            if args.only in (None, "game"):
                game.append(run_game(seed, tmp, args.quick))
    kept = _kept_part(args) if args.only else {}
    calc, game = calc or kept.get("calculator", []), game or kept.get("game", [])
    md = header("Multi-turn agents: a calculator tool, and GiGPO vs GRPO on a game", command, info, args.quick)
    if kept:
        other = "game" if args.only == "calculator" else "calculator"
        md += (f"\nThe {other} part is kept from the earlier full run `{kept['command']}` "
               f"({kept['machine'].get('date')}); this command re-ran the {args.only} part.\n")
    ratios: dict[str, float] = {}
    if calc:
        rows = [[r["seed"], f"{r['success_before']:.3f}", f"{r['success_after']:.3f}",
                 f"{r['tool_rate_before']:.3f}", f"{r['tool_rate_after']:.3f}", r["minutes"]] for r in calc]
        gain = [r["success_after"] - r["success_before"] for r in calc]
        md += "\n## Calculator agent (recipes/agent_calculator_tiny_cpu.yaml)\n\nHeld-out greedy success and " \
              "tool-call rate, before and after RL:\n\n"
        md += md_table(["seed", "success before", "after", "tool calls before", "after", "minutes"], rows)
        md += f"\nSuccess gain (after - before): {_spread(gain)} over {len(calc)} seeds.\n"
        ratios["calculator_success_gain"] = _mean(gain)
        ratios["calculator_tool_rate_after"] = _mean([r["tool_rate_after"] for r in calc])
    if game:
        rows = []
        for g in game:
            for kind in ("grpo", "gigpo"):
                r = g[kind]
                mid = ", ".join(f"{step}: {v:.2f}" for step, v in r["eval_curve"][1:])
                rows.append([r["seed"], kind, f"{r['success_before']:.3f}", mid, f"{r['success_after']:.3f}",
                             f"{r['turns_before']:.2f}", f"{r['turns_after']:.2f}", r["minutes"]])
        md += "\n## Game (recipes/agent_game_tiny_cpu.yaml): GiGPO vs episode-level GRPO, same start per seed\n\n"
        md += md_table(["seed", "objective", "solved before", "held-out solved at eval steps", "after",
                        "turns before", "after", "minutes"], rows)
        for kind in ("grpo", "gigpo"):
            md += f"\n{kind}: solved after RL {_spread([g[kind]['success_after'] for g in game])}."
        diff = [g["gigpo"]["success_after"] - g["grpo"]["success_after"] for g in game]
        md += f"\nGiGPO - GRPO (solved after, paired by seed): {_spread(diff)}.\n"
        ratios["game_gigpo_minus_grpo"] = _mean(diff)
        ratios["game_gigpo_solved_after"] = _mean([g["gigpo"]["success_after"] for g in game])
        ratios["game_grpo_solved_after"] = _mean([g["grpo"]["success_after"] for g in game])
        for kind in ("grpo", "gigpo"):  # always >= 1 turn: what the smoke test checks is finite and positive
            ratios[f"game_{kind}_turns_after"] = _mean([g[kind]["turns_after"] for g in game])
    os.makedirs(args.out, exist_ok=True)
    figure = _figure(calc, game, args.out)
    md += f"\n![curves]({NAME}.png)\n"
    result = {"bench": NAME, "machine": info, "quick": args.quick, "seeds": args.seeds, "ratios": ratios,
              "command": kept.get("command", command) if kept else command, "rerun": command if kept else None,
              "required_ratios": [f"game_{k}_turns_after" for k in ("grpo", "gigpo") if game], "calculator": calc,
              "game": game, "figure": figure}
    result["paths"] = write_results(args.out, NAME, result, md)
    print(md)
    return result


if __name__ == "__main__":
    main()
