"""Tokens/s of the vllm engine vs the hf engine: same model, same prompts, same sampling, each in a rollout actor.

    python -m bench.rollout_engines            # ~3 min on 2 cores: a ~13M-parameter Llama, 32 prompts x 4 x 64 tokens
    python -m bench.rollout_engines --quick    # ~1 min: a tiny model, smoke test

What is timed, in one run on one machine: `RolloutActor.generate` (the call the controller makes) of each engine,
alternating hf / vllm `--repeats` times after one warm-up call each, on the same prompts and SamplingSettings.
Both actors live side by side but run one after the other, each with all the machine's cores (the hf engine with
torch's threads, vllm bound to every core). Both generate exactly `max_new_tokens` tokens per sample
(`SamplingSettings.ignore_eos`: the model is random and would otherwise stop at different points per engine),
so tokens/s compares equal work.

Figure: vllm tokens/s / hf tokens/s (median of the per-pair ratios). Without vllm installed it says so and stops.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

from bench.common import header, machine_info, md_table, parse_args, ray_running, setup_env, summary, \
    without_vllm, write_results

NAME = "rollout_engines"


def build_model(out_dir: str, quick: bool) -> str:
    """A tiny-config Llama, head_dim 64 (vLLM's CPU attention supports it)."""
    from rlhf.config.schema import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny

    size = dict(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2) if quick else \
        dict(hidden_size=512, intermediate_size=1024, num_layers=4, num_heads=8)
    corpus = [f"{a}+{b}={a + b}" for a in range(40) for b in range(40)]
    return materialize_tiny(TinyModelConfig(max_position_embeddings=256, **size), corpus,
                            os.path.join(out_dir, "model"), seed=0)


def _no_eos_settings(max_new_tokens: int, n: int, seed: int) -> Any:
    from rlhf.types import SamplingSettings

    return SamplingSettings(n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed, ignore_eos=True)


def run_bench(model_dir: str, prompts: list[str], n: int, max_new_tokens: int, repeats: int) -> dict[str, Any]:
    import time

    import ray

    from rlhf.rollout.group import RolloutActor

    common = dict(max_prompt_tokens=32, batch_size=len(prompts) * n, chat_template="none")
    cls = ray.remote(RolloutActor).options(num_cpus=0.01)
    hf = cls.remote("hf", model_dir, {**common, "num_threads": os.cpu_count() or 1})
    vl = cls.remote("vllm", model_dir, {**common, "vllm": {"max_model_len": 256}, "seed": 0})
    infos = ray.get([hf.info.remote(), vl.info.remote()])

    def one(actor: Any, seed: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        batch = ray.get(actor.generate.remote(prompts, _no_eos_settings(max_new_tokens, n, seed)))
        return time.perf_counter() - t0, int(batch.completion_mask.sum())

    one(hf, 0), one(vl, 0)  # warm-up: first-call allocations, vLLM's kernels
    times: dict[str, list[float]] = {"hf": [], "vllm": []}
    tokens: dict[str, list[int]] = {"hf": [], "vllm": []}
    ratios = []
    for i in range(repeats):
        for name, actor in (("hf", hf), ("vllm", vl)):
            s, t = one(actor, i + 1)
            times[name].append(s)
            tokens[name].append(t)
        ratios.append((tokens["vllm"][-1] / times["vllm"][-1]) / (tokens["hf"][-1] / times["hf"][-1]))
    ray.kill(hf)
    ray.kill(vl)
    tps = {k: [t / s for t, s in zip(tokens[k], times[k])] for k in times}
    return {"engines": infos, "generate_s": {k: summary(v) for k, v in times.items()},
            "tokens_per_call": {k: v[0] for k, v in tokens.items()},
            "tokens_per_s": {k: summary(v) for k, v in tps.items()}, "ratio_vllm_over_hf": summary(ratios),
            "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    setup_env()
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--repeats": dict(type=int, default=None, help="timed calls per engine (default 5, quick 2)")})
    from rlhf.rollout.vllm import vllm_available

    info = machine_info()
    command = f"python -m bench.{NAME}" + (" --quick" if args.quick else "")
    if not vllm_available():
        return without_vllm(NAME, "Rollout engines: vllm vs hf tokens/s", command, info, args.quick, args.out)
    repeats = args.repeats or (2 if args.quick else 5)
    n, max_new, n_prompts = (2, 16, 8) if args.quick else (4, 64, 32)
    prompts = [f"{a}+{b}=" for a, b in zip(range(n_prompts), range(3, 3 + n_prompts))]
    with tempfile.TemporaryDirectory() as tmp, ray_running():
        model_dir = build_model(tmp, args.quick)
        from rlhf.models.load import load_causal_lm

        params = sum(p.numel() for p in load_causal_lm(model_dir, "float32", False).parameters())
        res = run_bench(model_dir, prompts, n, max_new, repeats)
    r = res["ratio_vllm_over_hf"]["median"]
    result = {"bench": NAME, "machine": info, "quick": args.quick, "model_params": params, "prompts": n_prompts,
              "n": n, "max_new_tokens": max_new, "repeats": repeats, **res,
              "ratios": {"vllm_over_hf_tokens_per_s": r}, "required_ratios": ["vllm_over_hf_tokens_per_s"]}
    md = header("Rollout engines: vllm vs hf tokens/s", command, info, args.quick)
    md += f"\nModel: tiny Llama, {params / 1e6:.1f}M parameters, float32. Batch: {n_prompts} prompts x {n} samples x " \
          f"{max_new} new tokens (EOS disabled: equal work), temperature 1; {repeats} alternating calls each.\n\n"
    md += md_table(["engine", "tokens/s (median)", "min", "max", "s per call"], [
        [k, res["tokens_per_s"][k]["median"], res["tokens_per_s"][k]["min"], res["tokens_per_s"][k]["max"],
         res["generate_s"][k]["median"]] for k in ("hf", "vllm")])
    md += f"\n\n**vllm / hf tokens/s: {r:.2f}** (median of per-pair ratios; spread " \
          f"{res['ratio_vllm_over_hf']['min']:.2f}–{res['ratio_vllm_over_hf']['max']:.2f}).\n"
    write_results(args.out, NAME, result, md)
    print(md)
    return result


if __name__ == "__main__":
    main()
