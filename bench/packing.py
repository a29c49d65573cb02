"""Train tokens/s of one policy-gradient update with packed, padding-free micro-batches (``train.packing``) vs
rows padded to the batch's longest vs length-grouped, trimmed micro-batches (today's default), same batch, same
process, interleaved repeats.

    python -m bench.packing          # ~5 min on 2 quiet cores: a ~20M Llama, 64 rows, EOS-on lengths
    python -m bench.packing --quick  # seconds: a tiny model, smoke test

What is timed: ``rlhf.train.steps.policy_gradient_update`` on the torch backend -- forward, backward and AdamW
step of the GRPO surrogate (k3 KL 0.04, reference logprobs given, one mini-batch, so no extra logprob pass) on one
ExperienceBatch of 64 rows, micro-batches of 8 -- and, separately, the no-grad reference pass
(``logprobs_chunked``) over the same rows. Prompts: 8-32 real tokens, left-padded to 32. Completions: lengths drawn
once (seed 0) as an EOS-on batch has them: geometric with mean ~16, clipped to 1..64, 1 row in 16 truncated at 64;
right-padded to 64. Variants:

- padded: rows in rollout order, each micro-batch padded to the batch's longest (group_by_length false);
- grouped: rows sorted by completion length, each micro-batch trimmed to its longest (the default);
- packed: ``train.packing`` (micro-batches balanced by real tokens, each packed padding-free);
- packed_grouped: length-grouped micro-batches, each packed (packing.balance false).

Online DPO pairs, timed in the same repeats: ``rlhf.train.steps.online_pair_update`` (DPO sigmoid, beta 0.1) on the
same 64 rows read as 32 (chosen, rejected) pairs (rows 2i, 2i + 1), micro-batches of 4 pairs -- the reference pass
over all rows (no grad) plus forward, backward and AdamW step of the pair loss:

- pairs_trimmed: today's path without packing (micro-batches in pair order, each trimmed to its longest);
- pairs_packed: ``train.packing`` (the reference pass and every micro-batch packed padding-free).

Every variant computes the same loss (tests/unit/test_packing.py; the table's last column re-checks it). Tokens
= real (prompt + completion) tokens of the batch. Figures: per variant the mean, median and range of the repeats;
ratios are of mean times, and the paired ratio of each repeat (the variants alternate inside a repeat, so load drift
hits all of them) is reported with its range.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Sequence

from bench.common import header, machine_info, md_table, parse_args, print_result, ratio, setup_env, summary, \
    write_results

NAME = "packing"
VARIANTS = ("padded", "grouped", "packed", "packed_grouped")
PAIR_VARIANTS = ("pairs_trimmed", "pairs_packed")


def make_batch(rows: int, prompt_cap: int, completion_cap: int, vocab: int, seed: int = 0):
    """(ExperienceBatch, lengths): prompts of prompt_cap/4..prompt_cap tokens, EOS-on completion lengths."""
    import torch

    from rlhf.types import ExperienceBatch

    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(prompt_cap // 4, prompt_cap + 1, (rows,), generator=g)
    u = torch.rand(rows, generator=g).clamp(min=1e-6)
    completion_lens = (torch.log(u) / torch.log(torch.tensor(1 - 1 / 16))).ceil().long()  # geometric, mean 16
    completion_lens = completion_lens.clamp(1, completion_cap)
    completion_lens[:: 16] = completion_cap  # 1 row in 16 hits the cap (truncated)
    T = prompt_cap + completion_cap
    mask = torch.zeros(rows, T, dtype=torch.long)
    for b in range(rows):
        mask[b, prompt_cap - int(prompt_lens[b]) : prompt_cap + int(completion_lens[b])] = 1
    ids = torch.randint(3, vocab, (rows, T), generator=g) * mask
    loss_mask = mask[:, prompt_cap:].float()
    exp = ExperienceBatch(input_ids=ids, attention_mask=mask, loss_mask=loss_mask,
                          advantages=torch.randn(rows, generator=g), prompt_len=prompt_cap)
    return exp, {"prompt_lens": prompt_lens.tolist(), "completion_lens": completion_lens.tolist(),
                 "real_tokens": int(mask.sum()), "padded_tokens": rows * T}


def settings_of(variant: str, micro: int, completion_cap: int):
    from rlhf.train.settings import StepSettings

    packing = variant.startswith("packed")
    return StepSettings(temperature=1.0, micro_batch_size=micro, max_new_tokens=completion_cap,
                        group_by_length=variant != "padded", packing=packing, balance_tokens=variant == "packed")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.config.registry import build_objective
    from rlhf.config.schema import GRPOConfig
    from rlhf.objectives.dpo import DPO
    from rlhf.train import steps
    from rlhf.train.settings import StepSettings
    from rlhf.train.torch import TorchBackend

    args = parse_args(argv, __doc__.splitlines()[0])
    setup_env()
    quick = args.quick
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2) if quick else \
        dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8)
    rows, micro, repeats = (16, 4, 2) if quick else (64, 8, 5)
    prompt_cap, completion_cap, vocab = 32, 64, 6000
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, max_position_embeddings=128, use_cache=False,
                                         tie_word_embeddings=True, attn_implementation="sdpa", **size))
    params = sum(p.numel() for p in model.parameters())
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    exp, lengths = make_batch(rows, prompt_cap, completion_cap, vocab)
    with torch.no_grad():
        exp.ref_logprobs = steps.logprobs_chunked(reference, exp, 1.0, micro)  # (B, C): the update needs no pass
    objective = build_objective(GRPOConfig(kl_coef=0.04))
    update: dict[str, list[float]] = {v: [] for v in (*VARIANTS, *PAIR_VARIANTS)}
    ref: dict[str, list[float]] = {v: [] for v in VARIANTS}
    loss: dict[str, float] = {}
    info = machine_info()
    for i in range(repeats + 1):  # the first round warms up (allocator, kernels)
        for variant in VARIANTS:
            s = settings_of(variant, micro, completion_cap)
            policy = copy.deepcopy(model)
            backend = TorchBackend(policy, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0)
            ctx = steps.StepContext(backend, policy, reference, torch.device("cpu"), 0, 1, s)
            batch = copy.deepcopy(exp)
            t0 = time.perf_counter()
            metrics = steps.policy_gradient_update(ctx, batch, objective)
            t1 = time.perf_counter()
            with torch.no_grad():
                steps.logprobs_chunked(reference, exp, 1.0, micro, s.packing)
            t2 = time.perf_counter()
            loss[variant] = metrics["loss/total"]
            if i:
                update[variant].append(t1 - t0)
                ref[variant].append(t2 - t1)
        for variant in PAIR_VARIANTS:  # online DPO: rows (2i, 2i + 1) are a pair; reference logps on the fly
            s = StepSettings(temperature=1.0, micro_batch_size=micro, max_new_tokens=completion_cap,
                             packing=variant == "pairs_packed")
            policy = copy.deepcopy(model)
            backend = TorchBackend(policy, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0)
            ctx = steps.StepContext(backend, policy, reference, torch.device("cpu"), 0, 1, s)
            batch = copy.deepcopy(exp)
            batch.ref_logprobs = None
            t0 = time.perf_counter()
            metrics = steps.online_pair_update(ctx, batch, DPO(beta=0.1))
            t1 = time.perf_counter()
            loss[variant] = metrics["loss/dpo"]
            if i:
                update[variant].append(t1 - t0)
    tokens = lengths["real_tokens"]
    seconds = {v: {**summary(update[v]), "mean": statistics.fmean(update[v])} for v in (*VARIANTS, *PAIR_VARIANTS)}
    ref_seconds = {v: {**summary(ref[v]), "mean": statistics.fmean(ref[v])} for v in VARIANTS}

    def paired(a: str, b: str, times: dict[str, list[float]]) -> dict[str, float]:
        """tokens/s b / tokens/s a per repeat (= time a / time b): mean, min, max."""
        r = [x / y for x, y in zip(times[a], times[b])]
        return {"mean": statistics.fmean(r), "min": min(r), "max": max(r)}

    result = {
        "bench": NAME, "quick": quick, "machine": info, "model": {**size, "vocab_size": vocab, "parameters": params},
        "rows": rows, "micro_batch_size": micro, "lengths": lengths,
        "padding_share": 1 - tokens / lengths["padded_tokens"],
        "seconds": seconds, "reference_seconds": ref_seconds,
        "tokens_per_s": {v: tokens / seconds[v]["mean"] for v in (*VARIANTS, *PAIR_VARIANTS)},
        "loss": loss,
        "paired": {"packed_over_padded": paired("padded", "packed", update),
                   "packed_over_grouped": paired("grouped", "packed", update),
                   "packed_grouped_over_grouped": paired("grouped", "packed_grouped", update),
                   "reference_packed_over_grouped": paired("grouped", "packed", ref),
                   "pairs_packed_over_trimmed": paired("pairs_trimmed", "pairs_packed", update)},
        "ratios": {
            "tokens_per_s_packed_over_padded": ratio(seconds["padded"]["mean"], seconds["packed"]["mean"]),
            "tokens_per_s_packed_over_grouped": ratio(seconds["grouped"]["mean"], seconds["packed"]["mean"]),
            "tokens_per_s_packed_grouped_over_grouped": ratio(seconds["grouped"]["mean"],
                                                              seconds["packed_grouped"]["mean"]),
            "reference_tokens_per_s_packed_over_grouped": ratio(ref_seconds["grouped"]["mean"],
                                                                ref_seconds["packed"]["mean"]),
            "pairs_tokens_per_s_packed_over_trimmed": ratio(seconds["pairs_trimmed"]["mean"],
                                                            seconds["pairs_packed"]["mean"]),
        },
        "required_ratios": ["tokens_per_s_packed_over_padded", "tokens_per_s_packed_over_grouped",
                            "pairs_tokens_per_s_packed_over_trimmed"],
    }
    result["paths"] = write_results(args.out, NAME, result, render(result, quick))
    print_result(result)
    return result


def render(r: dict[str, Any], quick: bool) -> str:
    s, rs = r["seconds"], r["reference_seconds"]
    rows = [[v, f"{s[v]['mean']:.2f} s", f"{s[v]['min']:.2f}-{s[v]['max']:.2f} s", f"{r['tokens_per_s'][v]:,.0f}",
             f"{rs[v]['mean']:.2f} s ({rs[v]['min']:.2f}-{rs[v]['max']:.2f})", f"{r['loss'][v]:.6f}"]
            for v in VARIANTS]
    pair_rows = [[v, f"{s[v]['mean']:.2f} s", f"{s[v]['min']:.2f}-{s[v]['max']:.2f} s",
                  f"{r['tokens_per_s'][v]:,.0f}", f"{r['loss'][v]:.6f}"] for v in PAIR_VARIANTS]
    p = r["paired"]

    def line(key: str, label: str) -> str:
        return f"- {label}: **{p[key]['mean']:.2f}x** (per-repeat range {p[key]['min']:.2f}-{p[key]['max']:.2f})"

    m = r["model"]
    return "\n\n".join([
        header("Packed (padding-free) micro-batches vs padded vs length-grouped",
               "python -m bench.packing" + (" --quick" if quick else ""), r["machine"], quick),
        f"{r['rows']} rows, micro-batches of {r['micro_batch_size']}, {r['padding_share']:.0%} of the padded batch "
        f"is padding; Llama {m['parameters'] / 1e6:.1f}M ({m['hidden_size']} x {m['num_hidden_layers']} layers, "
        f"vocab {m['vocab_size']}), sdpa, float32, torch backend.",
        md_table(["variant", "update (mean)", "range", "real tokens/s", "reference pass (mean, range)",
                  "loss (same)"], rows),
        "Train tokens/s, paired per repeat:\n\n" + "\n".join([
            line("packed_over_padded", "packed / padded"), line("packed_over_grouped", "packed / grouped (default)"),
            line("packed_grouped_over_grouped", "packed, length-grouped / grouped"),
            line("reference_packed_over_grouped", "reference pass, packed / grouped")]),
        f"Online DPO pairs (the same rows as {r['rows'] // 2} pairs; reference pass + pair update):",
        md_table(["variant", "step (mean)", "range", "real tokens/s", "loss (same)"], pair_rows),
        line("pairs_packed_over_trimmed", "pairs, packed / trimmed (today's default)"),
    ])


if __name__ == "__main__":
    main()
