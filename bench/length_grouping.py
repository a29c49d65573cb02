"""Train tokens/s of one policy-gradient update with length-grouped, trimmed micro-batches vs rows padded to the
batch's longest (``train.group_by_length`` true vs false), same batch, same process, interleaved repeats.

    python -m bench.length_grouping          # ~2 min on 2 cores: a 10.6M Llama, 64 rows, mixed lengths
    python -m bench.length_grouping --quick  # seconds: a tiny model, smoke test

What is timed: ``rlhf.train.steps.policy_gradient_update`` (reference logprobs + the update: forward, backward,
AdamW step on the torch backend) on one ExperienceBatch of 64 rows, micro-batches of 8, GRPO with k3 KL 0.04.
Prompts: real lengths 8-16 tokens, left-padded to 16. Completions: lengths drawn once (seed 0) from the
distribution an EOS-on GRPO batch has -- most rows short, a few near the cap (a geometric mix, 4-96 tokens), right-
padded to 96. Both variants compute the same loss (tests/unit/test_length_grouping.py); the figure is
tokens/s grouped / tokens/s padded, tokens = real (prompt + completion) tokens of the batch, median of the
repeats, the two variants alternating so that load drifts hit both.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Sequence

from bench.common import header, machine_info, md_table, parse_args, print_result, ratio, setup_env, summary, \
    write_results

NAME = "length_grouping"


def make_batch(rows: int, prompt_cap: int, completion_cap: int, vocab: int, seed: int = 0):
    import torch

    from rlhf.types import ExperienceBatch

    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(prompt_cap // 2, prompt_cap + 1, (rows,), generator=g)
    short = torch.distributions.Geometric(probs=torch.tensor(0.06)).sample((rows,)) + 4
    completion_lens = short.clamp(max=completion_cap).long()
    completion_lens[: rows // 16] = completion_cap  # a few rows hit the cap (truncated)
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.config.registry import build_objective
    from rlhf.config.schema import GRPOConfig
    from rlhf.train import steps
    from rlhf.train.settings import StepSettings
    from rlhf.train.torch import TorchBackend

    args = parse_args(argv, __doc__.splitlines()[0])
    setup_env()
    quick = args.quick
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2) if quick else \
        dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6)
    rows, micro, repeats = (16, 4, 2) if quick else (64, 8, 5)
    vocab = 512
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, max_position_embeddings=128, use_cache=False,
                                         tie_word_embeddings=True, **size))
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    exp, lengths = make_batch(rows, 16, 96, vocab)
    objective = build_objective(GRPOConfig(kl_coef=0.04))
    times: dict[str, list[float]] = {"grouped": [], "padded": []}
    info = machine_info()
    for i in range(repeats + 1):  # the first round warms up (allocator, kernels)
        for variant in ("padded", "grouped"):
            policy = copy.deepcopy(model)
            backend = TorchBackend(policy, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0)
            settings = StepSettings(temperature=1.0, micro_batch_size=micro, max_new_tokens=96,
                                    group_by_length=variant == "grouped")
            ctx = steps.StepContext(backend, policy, reference, torch.device("cpu"), 0, 1, settings)
            t0 = time.perf_counter()
            steps.policy_gradient_update(ctx, copy.deepcopy(exp), objective)
            if i:
                times[variant].append(time.perf_counter() - t0)
    tokens = lengths["real_tokens"]
    grouped, padded = summary(times["grouped"]), summary(times["padded"])
    result = {
        "bench": NAME, "quick": quick, "machine": info, "model": size, "rows": rows, "micro_batch_size": micro,
        "lengths": lengths, "seconds": {"grouped": grouped, "padded": padded},
        "tokens_per_s": {"grouped": tokens / grouped["median"], "padded": tokens / padded["median"]},
        "ratios": {"tokens_per_s_grouped_over_padded": ratio(padded["median"], grouped["median"])},
        "required_ratios": ["tokens_per_s_grouped_over_padded"],
        "padding_share": 1 - tokens / lengths["padded_tokens"],
    }
    result["paths"] = write_results(args.out, NAME, result, render(result, quick))
    print_result(result)
    return result


def render(r: dict[str, Any], quick: bool) -> str:
    s = r["seconds"]
    rows = [[v, f"{s[v]['median']:.2f} s", f"{s[v]['min']:.2f}-{s[v]['max']:.2f} s", f"{r['tokens_per_s'][v]:,.0f}"]
            for v in ("padded", "grouped")]
    return "\n\n".join([
        header("Length-grouped micro-batches vs padded", "python -m bench.length_grouping" + (" --quick" if quick
                                                                                              else ""),
               r["machine"], quick),
        f"{r['rows']} rows, micro-batches of {r['micro_batch_size']}, {r['padding_share']:.0%} of the padded "
        f"batch is padding; model {r['model']}.",
        md_table(["variant", "update (median)", "range", "real tokens/s"], rows),
        f"**tokens/s grouped / padded: {r['ratios']['tokens_per_s_grouped_over_padded']:.2f}x**",
    ])


if __name__ == "__main__":
    main()
