"""Where bf16 pays on this CPU: one GRPO update and one hf-engine generation in bf16 vs float32, by model width.

    python -m bench.bf16_speed          # ~2 min on 2 cores: Llamas of hidden 128 (the demo's), 256, 384, 512
    python -m bench.bf16_speed --quick  # seconds: two tiny widths, smoke test

What is timed, per width, the two variants alternating so that load drifts hit both (median of the repeats):

- **update**: ``rlhf.train.steps.policy_gradient_update`` (reference logprobs + forward, backward, AdamW on the
  torch backend) on one ExperienceBatch of 64 rows (prompts 8-16 tokens, completions 4-48), micro-batches of 16,
  GRPO with k3 KL 0.04; bf16 = ``train.precision: bf16`` (autocast over float32 weights, the output head in
  float32: ``rlhf.train.precision.autocast_forward``), float32 = ``fp32``;
- **generate**: the hf engine's decode loop, 32 prompts x 2 samples x 24 new tokens (EOS ignored), engine weights in
  bfloat16 vs float32 (``rollout.dtype``, which ``train.precision`` bf16 implies).

Figure: float32 seconds / bf16 seconds (> 1: bf16 faster). ``train.precision: auto`` takes bf16 on a CPU with
AVX512-BF16 or AMX from ``BF16_MIN_HIDDEN`` on (rlhf/train/precision.py); this bench is the evidence for that
threshold on the machine it runs on. Without native bf16 the ratios fall far below 1 (emulation).
"""

from __future__ import annotations

import copy
import tempfile
import time
from typing import Any, Sequence

from bench.common import header, machine_info, md_table, parse_args, print_result, ratio, setup_env, summary, \
    write_results

NAME = "bf16_speed"
WIDTHS = {128: (384, 4, 4), 256: (768, 4, 4), 384: (1024, 6, 6), 512: (1376, 8, 8)}  # hidden: (mlp, layers, heads)
QUICK_WIDTHS = {64: (128, 2, 2), 128: (256, 2, 2)}


def _model_dir(hidden: int, mlp: int, layers: int, heads: int, vocab: int, corpus: list[str], out: str) -> str:
    """A random Llama of this shape with a tokenizer trained on `corpus`, saved where the hf engine loads it."""
    from rlhf.config.model import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny

    cfg = TinyModelConfig(arch="llama", hidden_size=hidden, intermediate_size=mlp, num_layers=layers,
                          num_heads=heads, max_position_embeddings=128, tokenizer_vocab_size=64, vocab_size=vocab)
    return materialize_tiny(cfg, corpus, out, seed=0)


def time_update(model, exp, precision: str, micro: int) -> float:
    import torch

    from rlhf.config.registry import build_objective
    from rlhf.config.schema import GRPOConfig
    from rlhf.train import steps
    from rlhf.train.precision import autocast_forward
    from rlhf.train.settings import StepSettings
    from rlhf.train.torch import TorchBackend

    device = torch.device("cpu")
    policy = copy.deepcopy(model).train()
    policy.config.use_cache = False
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    autocast_forward(policy, precision, device)
    autocast_forward(reference, precision, device)
    backend = TorchBackend(policy, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0,
                           precision=precision)
    settings = StepSettings(temperature=1.0, micro_batch_size=micro, max_new_tokens=48)
    ctx = steps.StepContext(backend, policy, reference, device, 0, 1, settings)
    t0 = time.perf_counter()
    steps.policy_gradient_update(ctx, copy.deepcopy(exp), build_objective(GRPOConfig(kl_coef=0.04)))
    return time.perf_counter() - t0


def time_generate(engine, prompts: list[str], new_tokens: int) -> float:
    from rlhf.types import SamplingSettings

    t0 = time.perf_counter()
    engine.generate(prompts, SamplingSettings(n=2, max_new_tokens=new_tokens, temperature=1.0, seed=0,
                                              ignore_eos=True))
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from bench.length_grouping import make_batch
    from rlhf.rollout.hf import HFEngine

    args = parse_args(argv, __doc__.splitlines()[0])
    setup_env()
    widths = QUICK_WIDTHS if args.quick else WIDTHS
    repeats, rows, micro, new_tokens = (1, 16, 8, 4) if args.quick else (5, 64, 16, 24)
    info = machine_info()
    cells: dict[int, dict[str, Any]] = {}
    prompts = [f"{a}+{b}=" for a, b in zip(range(32), range(7, 39))]
    with tempfile.TemporaryDirectory(prefix="bench_bf16_") as tmp:
        for hidden, (mlp, layers, heads) in widths.items():
            model_dir = _model_dir(hidden, mlp, layers, heads, 512, prompts, f"{tmp}/w{hidden}")
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            exp, _ = make_batch(rows, 16, 48, 512)
            engines = {p: HFEngine(model_dir, dtype=d, decode="loop") for p, d in (("fp32", "float32"),
                                                                                  ("bf16", "bfloat16"))}
            times: dict[str, list[float]] = {f"{k}_{p}": [] for k in ("update", "generate") for p in engines}
            for i in range(repeats + 1):  # round 0 warms up (allocator, kernels)
                for p in ("fp32", "bf16") if i % 2 else ("bf16", "fp32"):
                    u = time_update(model, exp, p, micro)
                    g = time_generate(engines[p], prompts, new_tokens)
                    if i:
                        times[f"update_{p}"].append(u)
                        times[f"generate_{p}"].append(g)
            s = {k: summary(v) for k, v in times.items()}
            paired = {k: [a / b for a, b in zip(times[f"{k}_fp32"], times[f"{k}_bf16"])]
                      for k in ("update", "generate")}
            cells[hidden] = {
                "params_m": sum(x.numel() for x in model.parameters()) / 1e6, "layers": layers, "seconds": s,
                "update_fp32_over_bf16": ratio(s["update_fp32"]["median"], s["update_bf16"]["median"]),
                "generate_fp32_over_bf16": ratio(s["generate_fp32"]["median"], s["generate_bf16"]["median"]),
                "paired": {k: summary(v) for k, v in paired.items()}}
            print(f"hidden {hidden}: update x{cells[hidden]['update_fp32_over_bf16']:.2f}, generate "
                  f"x{cells[hidden]['generate_fp32_over_bf16']:.2f}", flush=True)
    from rlhf.train.precision import BF16_MIN_HIDDEN, cpu_has_fast_bf16

    result = {"bench": NAME, "quick": args.quick, "machine": info, "native_bf16": cpu_has_fast_bf16(),
              "threshold_hidden": BF16_MIN_HIDDEN, "rows": rows, "micro_batch_size": micro, "repeats": repeats,
              "cells": {str(h): c for h, c in cells.items()},
              "ratios": {f"update_fp32_over_bf16_h{h}": c["update_fp32_over_bf16"] for h, c in cells.items()}}
    result["required_ratios"] = list(result["ratios"])
    result["paths"] = write_results(args.out, NAME, result, render(result, args.quick))
    print_result(result)
    return result


def render(r: dict[str, Any], quick: bool) -> str:
    rows = []
    for h, c in r["cells"].items():
        s = c["seconds"]
        rows.append([h, f"{c['params_m']:.1f}M", c["layers"],
                     f"{s['update_fp32']['median']:.2f} / {s['update_bf16']['median']:.2f} s",
                     f"**{c['update_fp32_over_bf16']:.2f}x** ({c['paired']['update']['min']:.2f}-"
                     f"{c['paired']['update']['max']:.2f})",
                     f"{s['generate_fp32']['median']:.2f} / {s['generate_bf16']['median']:.2f} s",
                     f"**{c['generate_fp32_over_bf16']:.2f}x** ({c['paired']['generate']['min']:.2f}-"
                     f"{c['paired']['generate']['max']:.2f})",
                     "bf16" if r["native_bf16"] and int(h) >= r["threshold_hidden"] else "fp32"])
    return "\n\n".join([
        header("bf16 vs float32 by model width (CPU)", "python -m bench.bf16_speed" + (" --quick" if quick else ""),
               r["machine"], quick),
        f"Native bf16 (AVX512-BF16 or AMX): {r['native_bf16']}. Update: {r['rows']} rows, micro-batches of "
        f"{r['micro_batch_size']}; generate: 32 prompts x 2 x 24 tokens; median of {r['repeats']} alternating "
        "repeats (in brackets: the range of the per-repeat ratios).",
        md_table(["hidden", "params", "layers", "update fp32 / bf16", "update speed-up", "generate fp32 / bf16",
                  "generate speed-up", "train.precision auto picks"], rows),
    ])


if __name__ == "__main__":
    main()
