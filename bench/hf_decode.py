"""Tokens/s of the hf engine's own decode loop (finished rows leave the batch) vs transformers' generate.

    python -m bench.hf_decode            # ~3 min on 2 cores: the demo's model and rollout batch, 3 conditions
    python -m bench.hf_decode --quick    # ~30 s: fewer repeats, a shorter warm-up; checks the bench works

Model: recipes/grpo_tiny_cpu.yaml's ``model.tiny`` (a Llama, hidden 128, 4 layers) with its tokenizer trained on
the demo's data as the controller trains it, then an SFT warm-up like the demo's (``warmup``: 400 steps x 64 rows
at lr 2e-3; AdamW, in this process), so the policy answers and stops as the demo's GRPO rollouts do: a few tokens
then EOS, with the trailing chatter of its SFT data on some rows and a few rows that run to the cap.

What is timed, in one process on one machine: ``HFEngine.generate`` (the call the rollout actor makes) of two
engines on the same weights, ``decode="generate"`` (transformers' generate: every row runs until the last row of
its call ends) and ``decode="loop"`` (rlhf/rollout/hf_decode.py: a row leaves the batch and the KV cache once it
has ended), on the recipe's rollout batch (32 prompts x 8 samples, batch_size 64 rows per generate call,
temperature 1). Each repeat draws 32 training prompts and runs both paths on them back to back, the order
alternating from repeat to repeat (interleaved: drift on a shared machine hits both), after one untimed call of
each. Three conditions:

- ``demo``: the recipe's settings, max_new_tokens 8, EOS on;
- ``cap32``: the same with max_new_tokens 32: mixed lengths with a longer tail (the rows that do not stop cost
  32 steps each, and in generate every row of their call pays for them);
- ``ignore_eos``: the control, max_new_tokens 8 and EOS ignored: every row runs to the cap, there is nothing to
  prune, so the ratio shows only the two loops' own overheads.

Tokens/s counts the completion tokens each call produced (``completion_mask``). The two paths sample with
different random draws, so their completions differ row by row; their mean lengths and finished shares (also
reported) agree up to sampling noise. Figure: loop tokens/s / generate tokens/s, the median of the per-repeat
ratios, with their min-max spread; the same ratio per CPU second of this process (``time.process_time``) is
reported beside it: with one torch thread (``--threads 1``) it counts the work done and not the time other
processes held the cores, so it moves much less on a shared machine.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from typing import Any, Sequence

from bench.common import REPO_ROOT, header, machine_info, md_table, parse_args, setup_env, summary, write_results

NAME = "hf_decode"
CONDITIONS = {"demo": dict(max_new_tokens=8), "cap32": dict(max_new_tokens=32),
              "ignore_eos": dict(max_new_tokens=8, ignore_eos=True)}


def build_policy(out_dir: str, sft_steps: int) -> tuple[str, Any, list[dict]]:
    """The demo's tiny model and tokenizer, SFT-warmed on the demo's data; returns (model dir, recipe, rows)."""
    import torch

    from rlhf.config import load_recipe
    from rlhf.data import load_rows
    from rlhf.data.collate import collate_sft
    from rlhf.models.load import load_causal_lm, load_tokenizer, resolve_model_dir
    from rlhf.objectives.common import position_ids_from_mask
    from rlhf.objectives.sft import sft_loss

    recipe = load_recipe(REPO_ROOT / "recipes" / "grpo_tiny_cpu.yaml", [f"run.output_dir={out_dir}"])
    seed = recipe.run.seed
    torch.manual_seed(seed)
    train, held_out = load_rows(recipe.data, seed)
    corpus = lambda: [" ".join(str(r.get(k, "")) for k in ("prompt", "completion")) for r in train + held_out]  # noqa: E731
    model_dir, _ = resolve_model_dir(recipe.model, corpus, out_dir, seed)
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, "float32", False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.warmup.lr)
    rng = random.Random(seed)
    for _ in range(sft_steps):
        batch = collate_sft(tok, rng.sample(train, recipe.warmup.batch_size), 64)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=position_ids_from_mask(batch.attention_mask)).logits  # (B, T, V)
        loss = sft_loss(logits, batch.input_ids, batch.loss_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir)
    return model_dir, recipe, train


def run_bench(model_dir: str, recipe: Any, rows: list[dict], repeats: int, threads: int) -> dict[str, Any]:
    from rlhf.rollout.hf import HFEngine
    from rlhf.types import SamplingSettings

    r = recipe.rollout
    common = dict(max_prompt_tokens=recipe.data.max_prompt_tokens, batch_size=r.batch_size,
                  chat_template=recipe.data.chat_template, num_threads=threads)
    engines = {"generate": HFEngine(model_dir, decode="generate", **common),
               "loop": HFEngine(model_dir, decode="loop", **common)}
    rng = random.Random(1)
    out: dict[str, Any] = {}
    for cond, kw in CONDITIONS.items():
        def settings(seed: int) -> Any:
            return SamplingSettings(n=r.group_size, temperature=r.temperature, seed=seed, **kw)

        def one(path: str, prompts: list[str], seed: int) -> tuple[float, float, Any]:
            t0, c0 = time.perf_counter(), time.process_time()
            batch = engines[path].generate(prompts, settings(seed))
            return time.perf_counter() - t0, time.process_time() - c0, batch

        warm = [row["prompt"] for row in rng.sample(rows, r.prompts_per_step)]
        one("generate", warm, 0), one("loop", warm, 0)  # first-call allocations
        rec: dict[str, dict[str, list[float]]] = {p: {"s": [], "cpu_s": [], "tokens": [], "mean_len": [],
                                                      "finished": [], "row_steps": []} for p in engines}
        ratios, cpu_ratios = [], []
        for i in range(repeats):
            prompts = [row["prompt"] for row in rng.sample(rows, r.prompts_per_step)]
            order = ("generate", "loop") if i % 2 == 0 else ("loop", "generate")
            for path in order:
                s, cpu_s, b = one(path, prompts, 100 + i)
                lengths = b.completion_mask.sum(1)  # (B,)
                rec[path]["s"].append(s)
                rec[path]["cpu_s"].append(cpu_s)
                rec[path]["tokens"].append(float(lengths.sum()))
                rec[path]["mean_len"].append(float(lengths.float().mean()))
                rec[path]["finished"].append(float(b.finished.float().mean()))
                rec[path]["row_steps"].append(float(_row_steps(lengths, r.batch_size, path)))
            tps = {p: rec[p]["tokens"][-1] / rec[p]["s"][-1] for p in engines}
            ratios.append(tps["loop"] / tps["generate"])
            cpu = {p: rec[p]["tokens"][-1] / rec[p]["cpu_s"][-1] for p in engines}
            cpu_ratios.append(cpu["loop"] / cpu["generate"])
            print(f"{cond} {i + 1}/{repeats}: loop/generate {ratios[-1]:.2f} (CPU time: {cpu_ratios[-1]:.2f})",
                  file=sys.stderr, flush=True)
        out[cond] = {
            "settings": {"n": r.group_size, "prompts": r.prompts_per_step, "temperature": r.temperature,
                         "batch_size": r.batch_size, **kw},
            "tokens_per_s": {p: summary([t / s for t, s in zip(rec[p]["tokens"], rec[p]["s"])]) for p in engines},
            "tokens_per_cpu_s": {p: summary([t / s for t, s in zip(rec[p]["tokens"], rec[p]["cpu_s"])])
                                 for p in engines},
            "s_per_call": {p: summary(rec[p]["s"]) for p in engines},
            "cpu_s_per_call": {p: summary(rec[p]["cpu_s"]) for p in engines},
            "mean_completion_len": {p: summary(rec[p]["mean_len"]) for p in engines},
            "finished_share": {p: summary(rec[p]["finished"]) for p in engines},
            "row_steps_per_token": {p: sum(rec[p]["row_steps"]) / sum(rec[p]["tokens"]) for p in engines},
            "ratio_loop_over_generate": summary(ratios),
            "ratios": ratios,
            "ratio_loop_over_generate_cpu": summary(cpu_ratios),
            "cpu_ratios": cpu_ratios,
        }
    out["engines"] = {p: e.info() for p, e in engines.items()}
    return out


def _row_steps(lengths: Any, batch_size: int, path: str) -> int:
    """Rows the model ran in the decode steps of one call (prefill not counted): generate runs every row of a
    generate() call for as many steps as its longest row; the loop runs each row for its own length."""
    if path == "loop":
        return int(lengths.sum())
    return sum(int(chunk.numel()) * int(chunk.max()) for chunk in lengths.split(batch_size))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    setup_env()
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--repeats": dict(type=int, default=None, help="timed pairs per condition (default 15, quick 3)"),
        "--threads": dict(type=int, default=None, help="torch threads (default: every core, as the demo's "
                          "synchronous engine gets)"),
        "--sft-steps": dict(type=int, default=None, help="warm-up steps (default the recipe's 400, quick 100)")})
    info = machine_info()
    repeats = args.repeats or (3 if args.quick else 15)
    threads = args.threads or os.cpu_count() or 1
    sft_steps = args.sft_steps if args.sft_steps is not None else (100 if args.quick else 400)
    command = f"python -m bench.{NAME}" + (" --quick" if args.quick else "") + "".join(
        f" --{flag.replace('_', '-')} {value}" for flag, value in (("repeats", args.repeats), ("threads", args.threads),
                                                                   ("sft_steps", args.sft_steps)) if value is not None)
    import torch

    torch.set_num_threads(threads)  # the warm-up too (the engines set it again)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir, recipe, rows = build_policy(tmp, sft_steps)
        warmup_s = time.perf_counter() - t0
        print(f"policy built and SFT-warmed in {warmup_s:.0f} s", file=sys.stderr, flush=True)
        from rlhf.models.load import load_causal_lm

        params = sum(p.numel() for p in load_causal_lm(model_dir, "float32", False).parameters())
        res = run_bench(model_dir, recipe, rows, repeats, threads)
    ratios = {f"loop_over_generate_{c}": res[c]["ratio_loop_over_generate"]["median"] for c in CONDITIONS}
    ratios.update({f"loop_over_generate_{c}_cpu": res[c]["ratio_loop_over_generate_cpu"]["median"]
                   for c in CONDITIONS})
    result = {"bench": NAME, "machine": info, "quick": args.quick, "model_params": params, "threads": threads,
              "sft_steps": sft_steps, "warmup_s": warmup_s, "repeats": repeats, **res, "ratios": ratios,
              "required_ratios": list(ratios)}
    md = header("hf engine: own decode loop vs transformers generate, tokens/s", command, info, args.quick)
    md += (f"\nModel: recipes/grpo_tiny_cpu.yaml's tiny Llama ({params / 1e6:.2f}M parameters, float32), SFT-warmed "
           f"{sft_steps} steps on the demo's data; {threads} torch threads. Batch: the recipe's rollout, 32 prompts "
           f"x 8 samples, 64 rows per generate call, temperature 1; {repeats} interleaved pairs per condition.\n\n")
    rows_md = []
    for c in CONDITIONS:
        x = res[c]
        rows_md.append([c, x["settings"]["max_new_tokens"], "off" if x["settings"].get("ignore_eos") else "on",
                        x["tokens_per_s"]["generate"]["median"], x["tokens_per_s"]["loop"]["median"],
                        x["ratio_loop_over_generate"]["median"],
                        f"{x['ratio_loop_over_generate']['min']:.2f}–{x['ratio_loop_over_generate']['max']:.2f}",
                        x["ratio_loop_over_generate_cpu"]["median"],
                        f"{x['ratio_loop_over_generate_cpu']['min']:.2f}–"
                        f"{x['ratio_loop_over_generate_cpu']['max']:.2f}",
                        f"{x['mean_completion_len']['generate']['median']:.2f} / "
                        f"{x['mean_completion_len']['loop']['median']:.2f}",
                        f"{x['row_steps_per_token']['generate']:.2f} / {x['row_steps_per_token']['loop']:.2f}"])
    md += md_table(["condition", "max_new_tokens", "EOS", "generate tok/s", "loop tok/s", "loop / generate",
                    "spread (min–max)", "same, CPU time", "spread", "mean length gen / loop",
                    "decode row-steps per token gen / loop"], rows_md)
    d, dc = res["demo"]["ratio_loop_over_generate"], res["demo"]["ratio_loop_over_generate_cpu"]
    md += (f"\n\n**loop / generate tokens/s on the demo's rollout: {d['median']:.2f}** (median of {repeats} "
           f"interleaved pairs; spread {d['min']:.2f}–{d['max']:.2f}); per CPU second of this process (robust to a "
           f"busy machine when it runs one thread): {dc['median']:.2f} ({dc['min']:.2f}–{dc['max']:.2f}). "
           "Row-steps per token: rows the model ran in decode steps per completion token produced (1.0 = no work "
           "on finished rows).\n")
    write_results(args.out, NAME, result, md)
    print(md)
    return result


if __name__ == "__main__":
    main()
