"""GRPO end to end, this platform vs TRL's GRPOTrainer: samples/s on CPU and the reward curves of both.

    python -m bench.grpo_vs_trl --fixed-length  # a 10.6M-parameter Llama, 8 prompts x 8 x exactly 64 tokens,
                                                # 10 steps per side: ~5 min on a quiet 2-core machine
    python -m bench.grpo_vs_trl            # the same, each side stopping at EOS (the figure then depends on how
                                           # long each policy's answers drift; see bench/README.md)
    python -m bench.grpo_vs_trl --fixed-length --model 20m   # a 21M Llama (512 x 8): ~2x the time
    python -m bench.grpo_vs_trl --quick    # ~1-2 min: a tiny model, 3 steps, smoke test

Both sides train the same model (one Llama + BPE tokenizer materialized once with ``materialize_tiny``: same
architecture, same initial weights, same tokenizer) on the same synthetic arithmetic prompts (the recipe's
``data.synthetic`` rows), with the same GRPO settings: group size, prompts per optimizer step, max new tokens,
temperature 1, clip 0.2, k3 KL with the same beta against the initial model, token-mean loss over the whole batch,
group-normalised advantages (unbiased std, eps 1e-4), AdamW (betas 0.9/0.999, no weight decay), constant
learning rate, no warm-up, grad clip 1.0, float32 weights, one optimizer step per generation batch (one epoch, one
mini-batch), seed 0, one reward: ``correct`` = ``rewards/verifiable/math_answer.py`` (math-verify) on the
``answer`` column. Generation: HF on both sides (our ``hf`` rollout engine; TRL's ``generate`` without vLLM).

Precision (``--precision``): ``defaults`` (the default) runs each side at its own defaults: ours ``train.precision``,
``train.packing`` and ``rollout.hf.decode`` auto; TRL ``GRPOConfig``'s ``bf16`` (True unless fp16). ``fp32`` / ``bf16``:
both sides in float32 (ours ``train.precision=fp32``, TRL ``bf16=False``) or in bf16 (``bf16``, ``bf16=True``).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any, Sequence

from bench.common import (
    header,
    machine_info,
    md_table,
    parse_args,
    print_result,
    probe_seconds,
    ratio,
    ray_running,
    read_metrics,
    save_figure,
    setup_env,
    summary,
    tiny_recipe,
    write_results,
)

NAME = "grpo_vs_trl"

QUICK = dict(model=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2),
             prompts=4, group=4, max_new=16, steps=3)
FULL = dict(model=dict(hidden_size=384, intermediate_size=1024, num_layers=6, num_heads=6),
            prompts=8, group=8, max_new=64, steps=10)
MODELS = {"10m": FULL["model"],  # --model: 10.6M (the default) or the issue's ~20M (21M: 512 wide x 8 layers)
          "20m": dict(hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8)}
LR = 3e-4
BETA = 0.01  # KL coefficient (both sides; the tiny recipe's objective.kl_coef)
ADV_EPS = 1e-4  # TRL adds 1e-4 to the group std; our objective.eps is set to the same
SEED = 0


# --------------------------------------------------------------------------- shared model and data


def base_recipe(workdir: str, s: dict[str, Any]):
    """The tiny recipe's data section (synthetic arithmetic), used to build the rows and the tokenizer corpus."""
    return tiny_recipe([f"run.seed={SEED}"], os.path.join(workdir, "unused"))


def build_shared(workdir: str, s: dict[str, Any]) -> tuple[str, list[dict], list[dict], int]:
    """Materialize the model both sides start from; return (model_dir, train_rows, eval_rows, n_params)."""
    from rlhf.config.schema import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny
    from rlhf.runtime.data import load_data

    recipe = base_recipe(workdir, s)
    train_rows, eval_rows = load_data(recipe, SEED)
    corpus = [" ".join(str(r.get(k, "")) for k in ("prompt", "completion")) for r in train_rows + eval_rows]
    cfg = TinyModelConfig(arch="llama", max_position_embeddings=max(64, 2 * (16 + s["max_new"])),
                          tokenizer_vocab_size=32, **s["model"])
    model_dir = materialize_tiny(cfg, corpus, os.path.join(workdir, "model"), seed=SEED)
    from safetensors import safe_open

    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return model_dir, train_rows, eval_rows, n_params


def shared_sft(model_dir: str, train_rows: list[dict], steps: int, out_dir: str, batch: int = 64,
               lr: float = 1e-3) -> tuple[str, dict[str, Any]]:
    """Optional common start: a short SFT of the random model on the task's completions (plain torch, this
    process), saved as a new model dir both sides then load. Not timed as part of either side."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.data import collate_sft

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(SEED + 1)
    t0, losses = time.perf_counter(), []
    for _ in range(steps):
        b = collate_sft(tok, rng.sample(train_rows, batch), 64)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]  # (B, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b.input_ids[:, 1:], reduction="none")
        mask = b.loss_mask[:, 1:]
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir, {"steps": steps, "batch": batch, "lr": lr, "seconds": time.perf_counter() - t0,
                     "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


# --------------------------------------------------------------------------- ours


def run_ours(workdir: str, model_dir: str, s: dict[str, Any], zero2: bool = False,
             fixed_length: bool = False, precision: str = "defaults") -> dict[str, Any]:
    from rlhf.runtime.controller import run

    n = s["prompts"] * s["group"]

    def edit(d: dict) -> None:
        d["model"] = {"path": model_dir, "dtype": "float32"}
        d["rewards"] = [{"name": "correct", "plugin": "math_answer", "weight": 1.0}]
        d["weighting"] = {"kind": "static", "normalize": "sum_then_normalize"}

    tag = "zero2" if zero2 else "torch"
    overrides = [
        f"run.seed={SEED}", f"run.steps={s['steps']}", "run.save_every=0", "run.progress=false",
        # the base recipe's tiny model is replaced by model.path in `edit`; its context only has to pass validation
        f"model.tiny.max_position_embeddings={max(64, 2 * (16 + s['max_new']))}",
        "warmup.steps=0",
        f"rollout.prompts_per_step={s['prompts']}", f"rollout.group_size={s['group']}",
        f"rollout.max_new_tokens={s['max_new']}", "rollout.temperature=1.0", "rollout.engine=hf",
        f"rollout.batch_size={n}",
        "objective.clip_eps=0.2", f"objective.kl_coef={BETA}", "objective.loss_agg=token_mean",
        f"objective.eps={ADV_EPS}", "objective.epochs=1", "objective.mini_batches=1",
        f"train.lr={LR}", "train.lr_schedule=constant", "train.lr_warmup_steps=0", "train.weight_decay=0.0",
        "train.grad_clip=1.0",
        "eval.max_samples=16", "eval.every=0", f"rollout.ignore_eos={str(fixed_length).lower()}",
    ]
    if precision != "defaults":
        overrides.append(f"train.precision={precision}")
    if zero2:
        overrides += ["train.backend=deepspeed", "train.zero_stage=2", "train.num_ranks=2",
                      f"train.micro_batch_size={n // 2}"]
    else:
        overrides += ["train.backend=torch", "train.num_ranks=1", f"train.micro_batch_size={n}"]
    recipe = tiny_recipe(overrides, os.path.join(workdir, f"ours_{tag}"), edit=edit)
    t0 = time.perf_counter()
    out = run(recipe)
    wall = time.perf_counter() - t0
    records = read_metrics(out["metrics"])
    steps = [{"step": r["step"], "step_s": r["time/step"], "samples": n,
              "samples_per_s": n / r["time/step"],
              "completion_tokens": r["rollout/completion_tokens_mean"] * n,
              "finished_rate": r.get("rollout/finished_rate"),
              "reward": r.get("reward/correct/mean"),
              "generate_s": r.get("time/generate"), "train_s": r.get("time/train")} for r in records]
    return {"wall_s": wall, "steps": steps, "how": "metrics.jsonl time/step"}


# --------------------------------------------------------------------------- TRL


def run_trl(workdir: str, model_dir: str, train_rows: list[dict], s: dict[str, Any],
            fixed_length: bool = False, precision: str = "defaults") -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.verifiable.math_answer import math_answer

    n = s["prompts"] * s["group"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # our collate prepends bos to every prompt; this tokenizer adds none by itself, so write it into the text
    bos = tok.bos_token or ""
    ds = Dataset.from_list([{"prompt": bos + r["prompt"], "answer": r["answer"]} for r in train_rows])

    def correct(prompts, completions, answer, **kwargs):
        return math_answer(prompts, completions, answer=answer)

    cfg = GRPOConfig(
        output_dir=os.path.join(workdir, "trl"), report_to="none", use_cpu=True,
        **({} if precision == "defaults" else {"bf16": precision == "bf16", "fp16": False}),
        seed=SEED, data_seed=SEED, max_steps=s["steps"], logging_steps=1, save_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=n, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=s["group"], max_completion_length=s["max_new"], temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        beta=BETA, epsilon=0.2, loss_type="dapo", scale_rewards="group", use_bias_correction_kl=False,
        num_iterations=1, use_vllm=False, dataloader_num_workers=0, log_completions=False,
        # --fixed-length: EOS suppressed until max_completion_length, as our rollout.ignore_eos
        generation_kwargs={"min_new_tokens": s["max_new"]} if fixed_length else None,
    )
    bf16 = bool(cfg.bf16)
    times: list[float] = []
    logs: list[dict[str, Any]] = []

    gen_s = [0.0]  # generation time inside the current step (TRL calls the training model's generate)
    gen_times: list[float] = []
    plain_generate = model.generate

    def timed_generate(*a, **kw):
        t = time.perf_counter()
        try:
            return plain_generate(*a, **kw)
        finally:
            gen_s[0] += time.perf_counter() - t

    model.generate = timed_generate

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            gen_s[0] = 0.0
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            gen_times.append(gen_s[0])

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "rewards/correct/mean" in logs:
                logs_ = dict(logs)
                logs_["step"] = state.global_step
                logs_list.append(logs_)

    logs_list = logs
    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=[correct], args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    wall = time.perf_counter() - t0
    by_step = {int(l["step"]): l for l in logs}
    steps = []
    for i, t in enumerate(times, start=1):
        l = by_step.get(i, {})
        clen = l.get("completions/mean_length")
        g = gen_times[i - 1] if i - 1 < len(gen_times) and gen_times[i - 1] > 0 else None
        steps.append({"step": i, "step_s": t, "samples": n, "samples_per_s": n / t,
                      "generate_s": g,
                      "completion_tokens": clen * n if clen is not None else None,
                      "reward": l.get("rewards/correct/mean"), "kl": l.get("kl"),
                      "finished_rate": 1 - l["completions/clipped_ratio"] if "completions/clipped_ratio" in l else None})
    return {"wall_s": wall, "steps": steps, "how": "callback on_step_begin -> on_step_end",
            "trl_version": __import__("trl").__version__, "precision": "bf16" if bf16 else "fp32"}


# --------------------------------------------------------------------------- analysis


def ours_precision(requested: str, hidden: int) -> str:
    """What our side computes in: the request, or what train.precision auto picks here for this width."""
    from rlhf.train.precision import auto_precision

    return auto_precision("cpu", hidden) if requested == "defaults" else requested


def analyse(side: dict[str, Any]) -> dict[str, Any]:
    st = side["steps"]
    used = st[1:] if len(st) > 1 else st  # step 1 warms caches up
    sps = [r["samples_per_s"] for r in used]
    toks = [r["completion_tokens"] / r["step_s"] for r in used if r.get("completion_tokens") is not None]
    lens = [r["completion_tokens"] / r["samples"] for r in used if r.get("completion_tokens") is not None]
    rewards = [r["reward"] for r in st if r.get("reward") is not None]
    gen = [r["generate_s"] for r in used if r.get("generate_s") is not None]
    rest = [r["step_s"] - r["generate_s"] for r in used if r.get("generate_s") is not None]
    return {"steps_used": len(used), "samples_per_s": summary(sps), "step_s": summary([r["step_s"] for r in used]),
            "generate_s": summary(gen), "rest_s": summary(rest),
            "completion_tokens_per_s": summary(toks), "completion_len": summary(lens),
            "reward_mean": sum(rewards) / len(rewards) if rewards else float("nan")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0], **{
        "--steps": {"type": int, "default": None, "help": "GRPO steps per side (default 10; --quick: 3)"},
        "--zero2": {"action": "store_true", "help": "also run ours on DeepSpeed ZeRO-2, 2 ranks"},
        "--sft-steps": {"type": int, "default": 0,
                        "help": "start both sides from the random model after this many shared SFT steps (default 0)"},
        "--precision": {"choices": ["defaults", "fp32", "bf16"], "default": "defaults",
                        "help": "defaults: each side at its own (ours train.precision auto, TRL bf16=True); fp32 / "
                                "bf16: both sides so"},
        "--model": {"choices": sorted(MODELS), "default": "10m", "help": "10m (default): 10.6M Llama, 384 x 6; "
                                                                        "20m: 21M, 512 x 8"},
        "--fixed-length": {"action": "store_true",
                           "help": "both sides decode exactly max new tokens per sample (EOS ignored): equal work "
                                   "per step, so samples/s no longer depends on how long each policy answers"},
    })
    setup_env()
    s = dict(QUICK if args.quick else dict(FULL, model=MODELS[args.model]))
    if args.steps:
        s["steps"] = args.steps
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench_grpo_vs_trl_") as tmp:
        model_dir, train_rows, _eval_rows, n_params = build_shared(tmp, s)
        sft = None
        if args.sft_steps:
            model_dir, sft = shared_sft(model_dir, train_rows, args.sft_steps, os.path.join(tmp, "sft"))
        load: dict[str, float] = {"ours_before": os.getloadavg()[0]}
        probe: dict[str, float] = {"ours_before": probe_seconds()}
        with ray_running():
            ours = run_ours(tmp, model_dir, s, fixed_length=args.fixed_length, precision=args.precision)
            load["ours_after"] = os.getloadavg()[0]
            zero2 = run_ours(tmp, model_dir, s, zero2=True, fixed_length=args.fixed_length,
                             precision=args.precision) if args.zero2 else None
        probe["ours_after"] = probe_seconds()  # with our Ray down: its idle actors are not outside load
        load["trl_before"] = os.getloadavg()[0]
        probe["trl_before"] = probe_seconds()
        trl = run_trl(tmp, model_dir, train_rows, s, fixed_length=args.fixed_length, precision=args.precision)
        load["trl_after"] = os.getloadavg()[0]
        probe["trl_after"] = probe_seconds()
    a_ours, a_trl = analyse(ours), analyse(trl)
    ratios = {"ours_over_trl_samples_per_s": ratio(a_ours["samples_per_s"]["median"], a_trl["samples_per_s"]["median"]),
              "ours_over_trl_completion_tokens_per_s": ratio(a_ours["completion_tokens_per_s"]["median"],
                                                             a_trl["completion_tokens_per_s"]["median"])}
    # a side that ran while the machine was slower (longer probe) is credited in proportion
    speed = ratio(probe["ours_before"] + probe["ours_after"], probe["trl_before"] + probe["trl_after"])
    ratios["ours_over_trl_samples_per_s_probe_normalised"] = ratios["ours_over_trl_samples_per_s"] * speed
    result: dict[str, Any] = {
        "bench": NAME, "quick": args.quick, "machine": info,
        "settings": {"model_params": n_params, **s, "shared_sft": sft, "lr": LR, "beta": BETA, "adv_eps": ADV_EPS, "seed": SEED,
                     "samples_per_step": s["prompts"] * s["group"]},
        "ours": {**ours, "analysis": a_ours}, "trl": {**trl, "analysis": a_trl},
        "ratios": ratios, "required_ratios": ["ours_over_trl_samples_per_s"], "load_avg": load,
        "probe_s": probe, "fixed_length": args.fixed_length, "precision": args.precision,
        "ours_precision": ours_precision(args.precision, s["model"]["hidden_size"]),
    }
    if zero2 is not None:
        a_z = analyse(zero2)
        result["ours_zero2"] = {**zero2, "analysis": a_z}
        ratios["ours_zero2_over_trl_samples_per_s"] = ratio(a_z["samples_per_s"]["median"],
                                                            a_trl["samples_per_s"]["median"])
    result["paths"] = write_results(args.out, NAME, result, render(result, args))
    result["paths"]["plot"] = plot(result, args.out)
    return result


def render(result: dict[str, Any], args) -> str:
    s, ours, trl = result["settings"], result["ours"], result["trl"]
    cmd = f"python -m bench.{NAME}" + (" --quick" if args.quick else "") + (" --zero2" if args.zero2 else "") \
        + (f" --sft-steps {args.sft_steps}" if args.sft_steps else "") \
        + (" --fixed-length" if args.fixed_length else "") \
        + (f" --precision {args.precision}" if args.precision != "defaults" else "")
    m = s["model"]
    lines = [header("GRPO end to end: this platform vs TRL GRPOTrainer (CPU)", cmd, result["machine"], args.quick)]
    lines.append(f"Model: Llama, {s['model_params'] / 1e6:.2f}M parameters (hidden {m['hidden_size']}, "
                 f"{m['num_layers']} layers, {m['num_heads']} heads, MLP {m['intermediate_size']}, tied embeddings), "
                 f"float32 weights, random init (seed {s['seed']}), one directory loaded by both sides; BPE tokenizer "
                 f"(vocab 32) trained on the task's text. TRL {trl.get('trl_version')}.\n")
    sft = s.get("shared_sft")
    lines.append(f"Start: the random model after a shared SFT of {sft['steps']} steps (batch {sft['batch']}, lr "
                 f"{sft['lr']:g}, loss {sft['loss_first']:.2f} -> {sft['loss_last']:.2f}, {sft['seconds']:.0f} s, "
                 "not timed), loaded by both sides.\n" if sft else
                 "Start: the random model itself (no SFT): completions are noise, `correct` is rarely 1, so the "
                 "reward curves stay near 0 and the advantages are mostly 0; the throughput figure is the point.\n")
    lines.append("## Settings (matched)\n")
    lines.append(md_table(["setting", "ours (`rlhf`)", "TRL `GRPOTrainer`"], [
        ["prompts per optimizer step x group size", f"rollout.prompts_per_step={s['prompts']} x group_size={s['group']}",
         f"per_device_train_batch_size={s['samples_per_step']}, num_generations={s['group']}, "
         "gradient_accumulation_steps=1, steps_per_generation=1"],
        ["max new tokens / sampling",
         f"max_new_tokens={s['max_new']}, temperature 1, top_p 1, top_k 0, "
         + ("rollout.ignore_eos=true (always max_new_tokens)" if args.fixed_length else "(stop at eos)"),
         f"max_completion_length={s['max_new']}, temperature 1, top_p 1, top_k 0, "
         + (f"generation_kwargs min_new_tokens={s['max_new']}" if args.fixed_length else "(stop at eos)")],
        ["generation", "rollout.engine=hf (HF generate in a Ray actor)", "HF generate in-process, use_vllm=False"],
        ["loss", "clip 0.2, k3 KL beta %g, loss_agg=token_mean" % s["beta"],
         "epsilon 0.2, beta %g, use_bias_correction_kl=False, loss_type=dapo (= bnpo here: one accumulation "
         "window)" % s["beta"]],
        ["advantages", f"group mean / unbiased std + {s['adv_eps']:g}", "scale_rewards=group (unbiased std + 1e-4)"],
        ["optimizer", f"AdamW lr {s['lr']:g}, betas 0.9/0.999, wd 0, constant, grad clip 1",
         f"adamw_torch lr {s['lr']:g}, betas 0.9/0.999, wd 0, constant, max_grad_norm 1"],
        ["updates per batch", "epochs 1, mini_batches 1", "num_iterations 1"],
        ["reward", "`correct` = math_answer (math-verify) on `answer`", "same function, called on `answer`"],
        ["processes", "train.backend=torch, 1 rank (+ rollout and reward actors)", "one process, use_cpu=True"],
        ["compute precision" + (" (each side's default)" if result["precision"] == "defaults" else ""),
         f"{result['ours_precision']} (train.precision "
         f"{'auto' if result['precision'] == 'defaults' else result['precision']}; engine weights in that dtype)",
         f"{trl.get('precision')} (bf16={trl.get('precision') == 'bf16'})"],
        ["steps (first dropped)", s["steps"], s["steps"]],
    ]))
    lines.append("\nNot matched: the order in which prompts are drawn (each side's own seeded sampler over the "
                 "same rows), and therefore the random streams of sampling; ours computes the old-policy "
                 "logprobs in an extra forward pass where TRL (one update per batch) reuses the detached current "
                 "ones; ours also re-syncs weights to its rollout actor each step, TRL generates with the "
                 "training model.\n")
    lines.append("## Throughput\n")
    rows = []
    for label, side in (("ours (torch, 1 rank)", ours), ("ours (DeepSpeed ZeRO-2, 2 ranks)", result.get("ours_zero2")),
                        ("TRL GRPOTrainer", trl)):
        if side is None:
            continue
        a = side["analysis"]
        rows.append([label, a["samples_per_s"]["median"], a["samples_per_s"]["min"], a["samples_per_s"]["max"],
                     a["step_s"]["median"], a["generate_s"]["median"], a["rest_s"]["median"],
                     a["completion_len"]["median"], a["completion_tokens_per_s"]["median"],
                     side["wall_s"], side["how"]])
    lines.append(md_table(["run", "samples/s (median)", "min", "max", "s/step", "generate s/step",
                           "rest of the step s (score, ref, update)", "completion tokens/sample",
                           "completion tokens/s", "whole run s", "timed by"], rows))
    r = result["ratios"]
    lines.append(f"\n**ours / TRL samples/s: {r['ours_over_trl_samples_per_s']:.2f}** "
                 f"(completion tokens/s: {r['ours_over_trl_completion_tokens_per_s']:.2f}; normalised by the load "
                 f"probe: {r['ours_over_trl_samples_per_s_probe_normalised']:.2f})"
                 + (f"; ZeRO-2 2 ranks / TRL: {r['ours_zero2_over_trl_samples_per_s']:.2f}"
                    if "ours_zero2_over_trl_samples_per_s" in r else "") + ".\n")
    lines.append("## Reward\n")
    lines.append(f"Mean `correct` over all steps: ours {ours['analysis']['reward_mean']:.3f}, TRL "
                 f"{trl['analysis']['reward_mean']:.3f} (plot: {NAME}.png).\n")
    lines.append("## Verdict\n")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> str:
    r = result["ratios"]["ours_over_trl_samples_per_s"]
    ours, trl = result["ours"]["analysis"], result["trl"]["analysis"]
    if r != r:
        return "No figure: a side produced no timed steps."
    word = "faster than" if r > 1.05 else "slower than" if r < 0.95 else "about as fast as"
    text = (f"On this machine our GRPO step is {word} TRL's ({r:.2f}x the samples/s; "
            f"{ours['step_s']['median']:.2f} s vs {trl['step_s']['median']:.2f} s per step of "
            f"{result['settings']['samples_per_step']} samples). ")
    og, tg = ours["generate_s"]["median"], trl["generate_s"]["median"]
    if og == og and tg == tg:
        text += (f"Generation takes {og:.2f} s per step here vs {tg:.2f} s in TRL ({og / tg:.2f}x); the rest of the "
                 f"step (scoring, reference pass, update, weight sync) {ours['rest_s']['median']:.2f} s vs "
                 f"{trl['rest_s']['median']:.2f} s ({ours['rest_s']['median'] / trl['rest_s']['median']:.2f}x). ")
    lo, to = ours["completion_len"]["median"], trl["completion_len"]["median"]
    if lo == lo and to == to and abs(lo - to) > 0.15 * max(lo, to):
        text += (f"The completions differ in mean length (ours {lo:.1f}, TRL {to:.1f} tokens on the median step): "
                 "the policies drift apart after step 1. Both sides generate each step's samples as one padded "
                 "batch that decodes until its longest sample stops, and train on the padded batch, so the work "
                 "per step depends on the longest sample more than on the mean; the completion-tokens/s ratio "
                 f"({result['ratios']['ours_over_trl_completion_tokens_per_s']:.2f}) credits the side whose "
                 "samples ran longer and is not the figure. ")
    pr = result.get("probe_s")
    if pr:
        text += (f"A fixed CPU probe (`probe_seconds`) took {pr['ours_before']:.3f} -> {pr['ours_after']:.3f} s around "
                 f"ours and {pr['trl_before']:.3f} -> {pr['trl_after']:.3f} s around TRL; scaling each side by the "
                 "machine speed it saw gives "
                 f"{result['ratios']['ours_over_trl_samples_per_s_probe_normalised']:.2f} (an estimate: the probe "
                 "samples the load at four instants only). ")
    la = result.get("load_avg")
    if la:
        text += (f"Machine load (1-min average) around ours: {la['ours_before']:.1f} -> {la['ours_after']:.1f}; "
                 f"around TRL: {la['trl_before']:.1f} -> {la['trl_after']:.1f} on {result['machine']['cores_usable']} "
                 "cores: on a shared machine a load difference between the two runs moves the ratio as much as "
                 "the code does. ")
    text += ("The reward curves are comparable (same algorithm, same start) but each side samples its own "
             "prompts and tokens, so they agree in trend, not step by step.")
    if result["quick"]:
        text += " This is a --quick run: the figures mean nothing."
    return text


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, key in (("ours (torch, 1 rank)", "ours"), ("ours (ZeRO-2, 2 ranks)", "ours_zero2"),
                       ("TRL GRPOTrainer", "trl")):
        side = result.get(key)
        if not side:
            continue
        pts = [(r["step"], r["reward"]) for r in side["steps"] if r.get("reward") is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean `correct` reward")
    ax.set_title("GRPO, same model and settings: ours vs TRL")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, out_dir, NAME)


if __name__ == "__main__":
    print_result(main())
