"""Issue 20's phase table, before -> after: one GRPO step's generate / reference / update / sync seconds with the
defaults before 2026-12-08 (padded micro-batches, transformers' `generate`, float32) and with today's (packing, the
hf decode loop, `train.precision: auto`), same model, same work, runs interleaved.

    python -m bench.phases_before_after          # ~6-8 min on 2 cores: a 21M Llama (512 x 8), 2 repeats per side
    python -m bench.phases_before_after --quick  # ~1 min: a tiny model, 3 steps, smoke test

The work is the issue's measurement: GRPO, 16 prompts x 4 samples x exactly 64 new tokens (``rollout.ignore_eos``:
the random model would end most samples after 2-3 tokens, and equal work keeps the sides comparable), k3 KL 0.04
against a reference model, lr 1e-5, torch backend, one rank, from the random model (recipes/grpo_tiny_cpu.yaml's
data and rewards on the bench task). Each run logs ``time/generate``, ``time/ref_old_logprobs`` (the worker's
reference pass), ``time/update``, ``time/sync`` and ``time/step`` per step (step 1 dropped); the table gives the
medians over both repeats, the figure is before / after seconds per step. "after" resolves precision auto on the
machine it runs on (bf16 where the CPU has AVX512-BF16 or AMX: this model is wide enough).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

from bench.common import FORMER_DEFAULTS, header, machine_info, md_table, parse_args, print_result, ratio, \
    ray_running, read_metrics, setup_env, summary, tiny_recipe, write_results

NAME = "phases_before_after"
PHASES = ("generate", "ref_old_logprobs", "update", "sync", "step")
FULL = dict(hidden=512, mlp=1376, layers=8, heads=8, steps=8, repeats=2)
QUICK = dict(hidden=64, mlp=128, layers=2, heads=2, steps=3, repeats=1)


def run_side(workdir: str, s: dict[str, Any], former: bool, tag: str) -> list[dict[str, Any]]:
    from rlhf.runtime.controller import run

    out = os.path.join(workdir, tag)
    overrides = [*(FORMER_DEFAULTS if former else ()),
                 "warmup.steps=0", f"run.steps={s['steps']}", "run.progress=false", "run.save_every=0",
                 f"model.tiny.hidden_size={s['hidden']}", f"model.tiny.intermediate_size={s['mlp']}",
                 f"model.tiny.num_layers={s['layers']}", f"model.tiny.num_heads={s['heads']}",
                 "model.tiny.max_position_embeddings=128",
                 "rollout.prompts_per_step=16", "rollout.group_size=4", "rollout.max_new_tokens=64",
                 "rollout.ignore_eos=true",
                 "objective.kl_coef=0.04", "train.lr=1e-5", "train.backend=torch", "train.num_ranks=1",
                 "train.micro_batch_size=64", "eval.every=0", "eval.max_samples=8"]
    run(tiny_recipe(overrides, out))
    return read_metrics(os.path.join(out, "metrics.jsonl"))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0])
    setup_env()
    s = dict(QUICK if args.quick else FULL)
    info = machine_info()
    steps: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="bench_phases_") as tmp, ray_running():
        for rep in range(s["repeats"]):
            for side in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                records = run_side(tmp, s, side == "before", f"{side}_{rep}")
                steps[side] += records[1:] if len(records) > 1 else records  # step 1 warms caches up
    table = {side: {p: summary([r[f"time/{p}"] for r in recs if f"time/{p}" in r]) for p in PHASES}
             for side, recs in steps.items()}
    tokens = {side: summary([r["rollout/completion_tokens_mean"] for r in recs]) for side, recs in steps.items()}
    result = {"bench": NAME, "quick": args.quick, "machine": info, "settings": s, "phases": table,
              "completion_tokens_mean": tokens, "former_defaults": list(FORMER_DEFAULTS),
              "ratios": {f"{p}_before_over_after": ratio(table["before"][p]["median"], table["after"][p]["median"])
                         for p in PHASES}}
    result["required_ratios"] = ["step_before_over_after"]
    result["paths"] = write_results(args.out, NAME, result, render(result))
    print_result(result)
    return result


def render(r: dict[str, Any]) -> str:
    t, s = r["phases"], r["settings"]
    rows = [[p, f"{t['before'][p]['median']:.2f} ({t['before'][p]['min']:.2f}-{t['before'][p]['max']:.2f})",
             f"{t['after'][p]['median']:.2f} ({t['after'][p]['min']:.2f}-{t['after'][p]['max']:.2f})",
             f"**{r['ratios'][f'{p}_before_over_after']:.2f}x**"] for p in PHASES]
    return "\n\n".join([
        header("GRPO step phases, former defaults -> today's", "python -m bench.phases_before_after"
               + (" --quick" if r["quick"] else ""), r["machine"], r["quick"]),
        f"Llama {s['hidden']} x {s['layers']} from random init; 16 prompts x 4 x exactly 64 tokens (EOS ignored), "
        f"KL 0.04 with a reference, torch backend, 1 rank; {s['steps']} steps per run (step 1 dropped), {s['repeats']} "
        f"runs per side interleaved. Before: `{' '.join(r['former_defaults'])}`; after: the defaults. Mean "
        f"completion tokens per step, median: before {r['completion_tokens_mean']['before']['median']:.1f}, after "
        f"{r['completion_tokens_mean']['after']['median']:.1f} (each side samples its own tokens).",
        md_table(["phase", "before s (median, range)", "after s", "before / after"], rows),
    ])


if __name__ == "__main__":
    main()
