"""Scaling: GRPO step time vs batch size, ZeRO stage and 1 vs 2 training ranks, as curves of ratios.

    python -m bench.scaling              # ~15-25 min on 2 shared cores: 11 runs of 1-2.5 min (start-up dominates)
    python -m bench.scaling --full-grid  # ~25-35 min: all 15 cells (5 configurations x 32/64/128 sequences)
    python -m bench.scaling --quick      # ~5-7 min: 5 runs at 8/16 sequences, smoke test

Each cell of the grid is one ``rlhf.runtime.controller.run`` of recipes/grpo_tiny_cpu.yaml (warm-up off, progress
off, no intermediate checkpoints, a small eval, its own temp output dir, one Ray shared by all runs) with

  - a training configuration: torch backend on 1 rank, DeepSpeed ZeRO-2 on 1 rank, DeepSpeed ZeRO-0/2/3 on
    2 ranks (``--configs`` picks others, e.g. ``z1r2``);
  - sequences per step = prompts_per_step x group_size (group_size 8): 32, 64, 128 (``--quick``: 8, 16); by
    default every configuration runs at 32 and 128 and the reference (ZeRO-2, 2 ranks, the demo's) also at 64.

Timed: ``time/step`` and its phases ``time/generate``, ``time/score``, ``time/train``, ``time/sync`` (and the
slowest rank's ``time/update``) from each run's metrics.jsonl, medians over the steps after step 1 (it warms
caches up). Run start-up (actors, model build, evals, final checkpoint) is not timed; it is most of the wall time.

Figures, all ratios of cells measured in the same run (cells of one batch size run back to back, so drift
between them is small):

  - the scaling curve: train seconds per sequence at batch B / at the smallest batch, per configuration
    (below 1: bigger batches amortise fixed per-step cost); the same for the whole step;
  - ZeRO-k / ZeRO-0 train time at the same batch on 2 ranks;
  - 2 ranks / 1 rank train time at the same batch: ZeRO-2 on both sides, and ZeRO-0 (2 ranks) / torch (1 rank).

On a shared machine the load moves between runs by more than these effects, so every cross-run ratio also comes
load-normalised (``_norm``): the ratio of each run's own train / generate (per step, median). Generation does the
same work in every configuration of one batch size while the trainers idle, so it is the run's yardstick; the
spread of generate time between cells of one batch (``generate_max_over_min_*``) shows how large the drift was.
``--render OLD.json`` re-analyses a finished run without running anything.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any, Sequence

from bench.common import (
    FORMER_DEFAULTS,
    header,
    machine_info,
    md_table,
    median,
    parse_args,
    print_result,
    ratio,
    ray_running,
    read_metrics,
    save_figure,
    setup_env,
    summary,
    timed,
    tiny_recipe,
    write_results,
)

NAME = "scaling"
PHASES = ("generate", "score", "train", "sync")
GROUP_SIZE = 8
# name -> (backend, zero_stage, num_ranks)
CONFIGS: dict[str, tuple[str, int, int]] = {
    "torch_r1": ("torch", 0, 1),
    "z0r1": ("deepspeed", 0, 1),
    "z2r1": ("deepspeed", 2, 1),
    "z3r1": ("deepspeed", 3, 1),
    "z0r2": ("deepspeed", 0, 2),
    "z1r2": ("deepspeed", 1, 2),
    "z2r2": ("deepspeed", 2, 2),
    "z3r2": ("deepspeed", 3, 2),
}
FULL_CONFIGS = ["torch_r1", "z2r1", "z0r2", "z2r2", "z3r2"]
FULL_BATCHES = [32, 64, 128]
QUICK_BATCHES = [8, 16]
REFERENCE = "z2r2"  # the demo recipe's configuration: the curve always reported


def label(cfg: str) -> str:
    backend, stage, ranks = CONFIGS[cfg]
    what = "torch" if backend == "torch" else f"ZeRO-{stage}"
    return f"{what}, {ranks} rank{'s' if ranks > 1 else ''}"


def grid(quick: bool, configs: list[str], batches: list[int], full: bool = False) -> list[tuple[int, str]]:
    """(batch, config) cells in run order: batch outer, so the configurations compared at one batch run back to
    back. Default: every configuration at the smallest and largest batch, the reference (ZeRO-2, 2 ranks) at every
    batch; --full-grid: every cell; --quick: the reference at both batches, the others at the larger one only."""
    small, big = batches[0], batches[-1]
    if quick:
        return [(small, REFERENCE)] + [(big, c) for c in [REFERENCE] + [c for c in configs if c != REFERENCE]]
    if not full:  # each configuration at the smallest and largest batch; the reference at every batch
        return [(b, c) for b in batches for c in configs if b in (small, big) or c == REFERENCE]
    return [(b, c) for b in batches for c in configs]


def run_cell(cfg: str, batch: int, steps: int, quick: bool, workdir: str) -> dict[str, Any]:
    from rlhf.runtime.controller import run

    backend, stage, ranks = CONFIGS[cfg]
    overrides = ["warmup.steps=0", f"run.steps={steps}", "run.progress=false", "run.save_every=0",
                 "eval.max_samples=8", f"rollout.group_size={GROUP_SIZE}",
                 f"rollout.prompts_per_step={batch // GROUP_SIZE}", f"train.backend={backend}",
                 f"train.num_ranks={ranks}", f"train.micro_batch_size={max(batch, 1)}"]
    if backend == "deepspeed":
        overrides.append(f"train.zero_stage={stage}")
    recipe = tiny_recipe([*FORMER_DEFAULTS, *overrides], workdir)  # measured before 2026-12-08
    wall, out = timed(lambda: run(recipe))
    records = read_metrics(out["metrics"])
    used = records[1:] if len(records) > 2 else records  # step 1 warms up
    cell: dict[str, Any] = {"config": cfg, "label": label(cfg), "backend": backend, "zero_stage": stage,
                            "num_ranks": ranks, "sequences": batch, "steps_used": len(used), "run_wall_s": wall}
    for key in ("step", *PHASES, "update", "ref_old_logprobs"):
        vals = [r[f"time/{key}"] for r in used if f"time/{key}" in r]
        cell[f"{key}_s"] = summary(vals)
    cell["train_per_seq_s"] = ratio(cell["train_s"]["median"], batch)
    cell["step_per_seq_s"] = ratio(cell["step_s"]["median"], batch)
    cell["per_step"] = [{k: v for k, v in r.items() if k.startswith("time") or k == "step"} for r in records]
    add_normalised(cell)
    return cell


def add_normalised(cell: dict[str, Any]) -> None:
    """train / generate of each step (median over the steps used): generate does the same work in every
    configuration at one batch size and runs while the trainers idle, so it is a yardstick of how loaded the
    machine was during that run; dividing by it takes most of the run-to-run drift out of cross-run ratios."""
    per = cell["per_step"]
    used = per[1:] if len(per) > 2 else per
    cell["train_over_generate"] = median([r["time/train"] / r["time/generate"] for r in used
                                          if r.get("time/generate")])


def med(cells: dict[tuple[int, str], dict], batch: int, cfg: str, key: str) -> float:
    c = cells.get((batch, cfg))
    if c is None:
        return math.nan
    return c[key] if isinstance(c[key], float) else c[key]["median"]


def compute_ratios(cells: dict[tuple[int, str], dict], batches: list[int], configs: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for cfg in configs:
        have = [b for b in batches if (b, cfg) in cells]
        if len(have) < 2:
            continue
        b0 = have[0]
        for b in have[1:]:
            out[f"train_per_seq_{b}_over_{b0}_{cfg}"] = ratio(med(cells, b, cfg, "train_per_seq_s"),
                                                              med(cells, b0, cfg, "train_per_seq_s"))
            out[f"step_per_seq_{b}_over_{b0}_{cfg}"] = ratio(med(cells, b, cfg, "step_per_seq_s"),
                                                             med(cells, b0, cfg, "step_per_seq_s"))
            out[f"train_over_generate_{b}_over_{b0}_{cfg}"] = ratio(cells[(b, cfg)]["train_over_generate"],
                                                                    cells[(b0, cfg)]["train_over_generate"])
    for b in batches:
        pairs = [(f"zero{k}_over_zero0_2ranks_{b}", f"z{k}r2", "z0r2") for k in (1, 2, 3)]
        pairs += [(f"ranks2_over_ranks1_zero{k}_{b}", f"z{k}r2", f"z{k}r1") for k in (0, 1, 2, 3)]
        pairs += [(f"ranks2_zero0_over_torch_{b}", "z0r2", "torch_r1")]
        for key, a, c in pairs:
            if (b, a) in cells and (b, c) in cells:
                out[key] = ratio(med(cells, b, a, "train_s"), med(cells, b, c, "train_s"))
                out[f"{key}_norm"] = ratio(cells[(b, a)]["train_over_generate"],
                                           cells[(b, c)]["train_over_generate"])
        gens = [cells[(b, c)]["generate_s"]["median"] for c in configs if (b, c) in cells]
        if len(gens) > 1:  # the same generate work in every cell of one batch: its spread is the machine's drift
            out[f"generate_max_over_min_{b}"] = ratio(max(gens), min(gens))
    # the always-present headline keys: at the largest batch where both sides ran
    ref = [b for b in batches if (b, REFERENCE) in cells]
    out["train_per_seq_largest_over_smallest_zero2_2ranks"] = ratio(
        med(cells, ref[-1], REFERENCE, "train_per_seq_s"), med(cells, ref[0], REFERENCE, "train_per_seq_s"))
    out["step_per_seq_largest_over_smallest_zero2_2ranks"] = ratio(
        med(cells, ref[-1], REFERENCE, "step_per_seq_s"), med(cells, ref[0], REFERENCE, "step_per_seq_s"))
    big = batches[-1]
    for suffix in ("", "_norm"):
        out[f"zero3_over_zero0_2ranks{suffix}"] = out.get(f"zero3_over_zero0_2ranks_{big}{suffix}", math.nan)
        out[f"zero2_over_zero0_2ranks{suffix}"] = out.get(f"zero2_over_zero0_2ranks_{big}{suffix}", math.nan)
        out[f"ranks2_over_ranks1_torch_or_zero0{suffix}"] = out.get(
            f"ranks2_zero0_over_torch_{big}{suffix}", out.get(f"ranks2_over_ranks1_zero0_{big}{suffix}", math.nan))
        out[f"ranks2_over_ranks1_zero2{suffix}"] = out.get(f"ranks2_over_ranks1_zero2_{big}{suffix}", math.nan)
    out["generate_max_over_min_largest"] = out.get(f"generate_max_over_min_{big}", math.nan)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--steps": {"type": int, "default": None, "help": "GRPO steps per run (default 5; --quick: 3); step 1 dropped"},
        "--configs": {"default": None, "help": f"comma-separated, from {sorted(CONFIGS)} (default "
                                               f"{','.join(FULL_CONFIGS)}; --quick: torch_r1 left out)"},
        "--full-grid": {"action": "store_true", "help": "every configuration at every batch (~25 min)"},
        "--render": {"default": None, "metavar": "JSON", "help": "re-analyse a scaling.json of an earlier run "
                                                                 "(no runs) and write the results to --out"},
        "--cells": {"default": None, "help": "explicit run order CONFIG@SEQ,... (e.g. z2r2@32,z2r2@128,z3r2@128); "
                                             "overrides --configs/--batches/--full-grid"},
        "--batches": {"default": None, "help": "comma-separated sequences per step, multiples of 8 "
                                               "(default 32,64,128; --quick: 8,16)"},
    })
    setup_env()
    if args.render:
        return rerender(args.render, args.out)
    quick = args.quick
    steps = args.steps or (3 if quick else 5)
    configs = args.configs.split(",") if args.configs else (
        ["z0r2", "z3r2", "z2r1"] if quick else list(FULL_CONFIGS))
    if REFERENCE not in configs:
        configs.insert(0, REFERENCE)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    batches = sorted(int(b) for b in args.batches.split(",")) if args.batches else (
        QUICK_BATCHES if quick else FULL_BATCHES)
    if len(batches) < 2 or any(b % GROUP_SIZE for b in batches):
        raise SystemExit(f"--batches needs two or more multiples of {GROUP_SIZE}")
    order = grid(quick, configs, batches, args.full_grid)
    if args.cells:
        order = [(int(c.split("@")[1]), c.split("@")[0]) for c in args.cells.split(",")]
        configs = list(dict.fromkeys(c for _, c in order))
        batches = sorted({b for b, _ in order})
        if any(c not in CONFIGS for c in configs) or any(b % GROUP_SIZE for b in batches):
            raise SystemExit(f"bad --cells {args.cells}")
    info = machine_info()
    cells: dict[tuple[int, str], dict] = {}
    with ray_running():
        for i, (b, cfg) in enumerate(order, 1):
            with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
                cells[(b, cfg)] = run_cell(cfg, b, steps, quick, tmp)
            c = cells[(b, cfg)]
            print(f"[scaling {i}/{len(order)}] {label(cfg)}, {b} seq: step {c['step_s']['median']:.2f} s, "
                  f"train {c['train_s']['median']:.2f} s (run {c['run_wall_s']:.0f} s)", flush=True)
            if i < len(order) and len({k for k in cells if k[1] == REFERENCE}) >= 2:
                # a partial result after every cell, so a run cut short still leaves its figures
                _result(quick, info, configs, batches, steps, order, cells, args.out, partial=True)
    return _result(quick, info, configs, batches, steps, order, cells, args.out)


def _result(quick, info, configs, batches, steps, order, cells, out_dir, partial=False) -> dict[str, Any]:
    done = [k for k in order if k in cells]
    result = {
        "bench": NAME, "quick": quick, "machine": info,
        "grid": {"configs": [c for c in configs if any(k[1] == c for k in done)],
                 "batches": [b for b in batches if any(k[0] == b for k in done)], "group_size": GROUP_SIZE,
                 "steps": steps, "order": [f"{c}@{b}" for b, c in done]},
        "cells": [cells[k] for k in done],
    }
    if partial:
        result["partial"] = f"{len(done)} of {len(order)} cells: {[f'{c}@{b}' for b, c in order]}"
    return finish(result, out_dir)


def rerender(path: str, out_dir: str) -> dict[str, Any]:
    import json

    with open(path) as f:
        result = json.load(f)
    for c in result["cells"]:
        add_normalised(c)
    return finish(result, out_dir)


def finish(result: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Ratios, required keys, JSON + markdown + PNG."""
    quick, configs, batches = result["quick"], result["grid"]["configs"], result["grid"]["batches"]
    result["ratios"] = compute_ratios(_cells(result), batches, configs)
    result.update({
        "required_ratios": ["train_per_seq_largest_over_smallest_zero2_2ranks", "zero3_over_zero0_2ranks",
                            "ranks2_over_ranks1_torch_or_zero0" if {"torch_r1", "z0r2"} <= set(configs)
                            else "ranks2_over_ranks1_zero2"],
    })
    if "torch_r1" not in configs and "z2r1" not in configs:
        result["required_ratios"].pop()
    if "z0r2" not in configs or "z3r2" not in configs:
        result["required_ratios"].remove("zero3_over_zero0_2ranks")
    result.pop("paths", None)
    result["paths"] = write_results(out_dir, NAME, result, render(result, quick))
    result["paths"]["plot"] = plot(result, out_dir)
    return result


def _cells(result: dict[str, Any]) -> dict[tuple[int, str], dict]:
    return {(c["sequences"], c["config"]): c for c in result["cells"]}


def render(result: dict[str, Any], quick: bool) -> str:
    g, r = result["grid"], result["ratios"]
    cells = _cells(result)
    cmd = "python -m bench.scaling" + (" --quick" if quick else "")
    lines = [header("Scaling: step time vs batch size, ZeRO stage and ranks", cmd, result["machine"], quick)]
    if result.get("partial"):
        lines.append(f"**Partial result: {result['partial']} done.**\n")
    wall = sum(c["run_wall_s"] for c in result["cells"])
    lines.append(f"recipes/grpo_tiny_cpu.yaml, warm-up off, {g['steps']} steps per run (step 1 dropped), group size "
                 f"{g['group_size']}, one `run()` per cell in the order {', '.join(g['order'])}; "
                 f"{wall:.0f} s of runs in all (start-up, evals and the final checkpoint are most of it). "
                 "Medians in seconds; `train/seq` in ms.\n")
    rows = []
    for c in result["cells"]:
        rows.append([c["label"], c["sequences"], c["step_s"]["median"],
                     *[c[f"{p}_s"]["median"] for p in PHASES], c["update_s"]["median"],
                     c["train_per_seq_s"] * 1e3, c["train_over_generate"],
                     f"{c['step_s']['min']:.2f}–{c['step_s']['max']:.2f}"])
    lines.append(md_table(["config", "seq/step", "step", *PHASES, "update (slowest rank)", "train/seq ms",
                           "train/generate", "step min–max"], rows))
    lines.append("\n`train/generate`: per step, then the median. Generation does the same work in every configuration "
                 "of one batch size, so it measures how loaded the machine was in that run; the `_norm` ratios "
                 "below divide train/generate of two cells instead of their train seconds.")
    lines.append("\n## Scaling curve: train time per sequence / at the smallest batch\n")
    b0 = g["batches"][0]
    crow = []
    for cfg in g["configs"]:
        vals = [ratio(med(cells, b, cfg, "train_per_seq_s"), med(cells, b0, cfg, "train_per_seq_s"))
                if (b, cfg) in cells and (b0, cfg) in cells else math.nan for b in g["batches"]]
        crow.append([label(cfg), *vals])
    lines.append(md_table(["config", *[f"{b} seq" for b in g["batches"]]], crow))
    lines.append("\n## Ratios\n")
    lines.append(md_table(["ratio", "value"], [[k, v] for k, v in r.items()]))
    lines.append("\n## Verdict\n")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> str:
    g, r = result["grid"], result["ratios"]
    cells = _cells(result)
    ref = [b for b in g["batches"] if (b, REFERENCE) in cells]
    b0, b1 = ref[0], ref[-1]
    parts = []
    c0, c1 = cells[(b0, REFERENCE)], cells[(b1, REFERENCE)]
    shares0 = {p: ratio(c0[f"{p}_s"]["median"], c0["step_s"]["median"]) for p in PHASES}
    shares1 = {p: ratio(c1[f"{p}_s"]["median"], c1["step_s"]["median"]) for p in PHASES}
    curve = r["train_per_seq_largest_over_smallest_zero2_2ranks"]
    shape = ("fixed per-step cost amortised" if curve < 0.8 else
             "close to linear: little fixed cost to amortise" if curve < 1.2 else "worse than linear")
    tg = r.get(f"train_over_generate_{b1}_over_{b0}_{REFERENCE}", math.nan)
    parts.append(
        f"**Batch size ({label(REFERENCE)}):** going from {b0} to {b1} sequences per step ({b1 // b0}x) makes the "
        f"step {ratio(c1['step_s']['median'], c0['step_s']['median']):.2f}x as long and the train phase "
        f"{ratio(c1['train_s']['median'], c0['train_s']['median']):.2f}x; train time per sequence is {curve:.2f}x "
        f"the smallest batch's ({shape}). "
        "Share of the step at the smallest / largest batch: "
        + ", ".join(f"{p} {shares0[p]:.0%} / {shares1[p]:.0%}" for p in PHASES) + "."
        + (f" Train/generate at {b1} / at {b0} sequences is {tg:.2f} (load drift cancels in it): "
           + ("training grows more slowly with the batch than generation does." if tg < 0.9 else
              "training grows faster with the batch than generation does." if tg > 1.1 else
              "training and generation grow alike with the batch.") if math.isfinite(tg) else ""))
    drift = r.get("generate_max_over_min_largest", math.nan)
    if math.isfinite(drift):
        parts.append(f"**Machine drift:** generation, the same work in every cell of one batch size, took "
                     f"{drift:.2f}x as long in the slowest cell as in the fastest at {g['batches'][-1]} sequences. "
                     "Raw cross-run ratios carry that much noise; the `_norm` ratios (train/generate of each run) "
                     "take most of it out, and the conclusions below rest on them.")
    z3, z3n = r.get("zero3_over_zero0_2ranks", math.nan), r.get("zero3_over_zero0_2ranks_norm", math.nan)
    if math.isfinite(z3):
        z2n = r.get("zero2_over_zero0_2ranks_norm", math.nan)
        per_b = [r[f"zero3_over_zero0_2ranks_{b}_norm"] for b in g["batches"]
                 if f"zero3_over_zero0_2ranks_{b}_norm" in r]
        parts.append(
            f"**ZeRO stage (2 ranks, {g['batches'][-1]} seq):** ZeRO-3 train time is {z3n:.2f}x ZeRO-0's "
            f"load-normalised ({z3:.2f}x raw)"
            + (f"; ZeRO-2 {z2n:.2f}x" if math.isfinite(z2n) else "")
            + (f"; ZeRO-3/ZeRO-0 normalised across batches: {', '.join(f'{v:.2f}' for v in per_b)}"
               if len(per_b) > 1 else "")
            + (". ZeRO-3 gathers every layer's parameters before each forward and backward and reduce-scatters "
               "the gradients over gloo; on a model this small those collectives are pure added cost, and the "
               "memory ZeRO-3 frees does not matter at this size." if z3n > 1.1 else
               ". At this size ZeRO-3's parameter gathers cost little next to the compute."))
    rr = r.get("ranks2_over_ranks1_torch_or_zero0_norm", math.nan)
    rz2 = r.get("ranks2_over_ranks1_zero2_norm", math.nan)
    if math.isfinite(rr) or math.isfinite(rz2):
        text = f"**2 ranks vs 1 rank ({g['batches'][-1]} seq), train time, load-normalised (raw):** "
        bits = []
        if math.isfinite(rr):
            bits.append(f"ZeRO-0 on 2 ranks / torch on 1 rank = {rr:.2f} "
                        f"({r.get('ranks2_over_ranks1_torch_or_zero0', math.nan):.2f})")
        if math.isfinite(rz2):
            bits.append(f"ZeRO-2 on 2 ranks / on 1 rank = {rz2:.2f} "
                        f"({r.get('ranks2_over_ranks1_zero2', math.nan):.2f})")
        text += "; ".join(bits) + ". "
        best = min(v for v in (rr, rz2) if math.isfinite(v))
        if best > 0.8:
            text += ("Two ranks do not halve the train time here: both ranks share the same 2 cores (with the "
                     "rollout engine and reward actors alive beside them), one rank's torch already uses the cores "
                     "it can get, and the gradient all-reduce over gloo is added cost. Data parallelism pays "
                     "when each rank has cores (or a GPU) of its own.")
        else:
            text += ("Two ranks help even on 2 shared cores: one rank's torch does not keep both cores busy on "
                     "these small matrices, and two processes each working on half the batch do.")
        parts.append(text)
    if result["quick"]:
        parts.append("(--quick: figures from 2 steps per cell at tiny batches; they mean nothing.)")
    return "\n\n".join(parts)


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    """Train time per sequence vs batch size, one line per configuration (PNG next to the JSON)."""
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None
    cells = _cells(result)
    g = result["grid"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for cfg in g["configs"]:
        bs = [b for b in g["batches"] if (b, cfg) in cells]
        ax.plot(bs, [cells[(b, cfg)]["train_per_seq_s"] * 1e3 for b in bs], marker="o", label=label(cfg))
        ax2.plot(bs, [cells[(b, cfg)]["step_per_seq_s"] * 1e3 for b in bs], marker="o", label=label(cfg))
    for a, what in ((ax, "train"), (ax2, "whole step")):
        a.set_xscale("log", base=2)
        a.set_xticks(g["batches"])
        a.set_xticklabels([str(b) for b in g["batches"]])
        a.set_xlabel("sequences per step")
        a.set_ylabel(f"{what} ms per sequence (median)")
        a.set_title(f"{what} time per sequence")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, out_dir, NAME)


if __name__ == "__main__":
    print_result(main())
