"""The memory planner (`rlhf plan`, rlhf/plan/): parameter counts exact against models transformers builds, the
built-in table against the published totals, model states against DeepSpeed's own estimators, the activation
formula against the tensors a tiny model really saves and its peak of live tensors (forward + backward on CPU),
one case computed by hand, and the CLI (fits / does not fit / unknown model / `rlhf validate` warnings).

Run: pytest tests/unit/test_plan.py -q
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from rlhf.cli import main
from rlhf.config import load_recipe
from rlhf.config.model import TinyModelConfig
from rlhf.plan import KNOWN, PlanError, plan_recipe, plan_warnings, resolve_architecture
from rlhf.plan import memory as mem
from rlhf.plan.architectures import from_config, tiny_architecture

RECIPE = "recipes/grpo_tiny_cpu.yaml"
QWEN7B = ["model.tiny=null", "model.path=Qwen/Qwen2.5-7B-Instruct", "rollout.engine=vllm"]
GIB = 2**30

# ---------------------------------------------------------------------------------------------- parameter counts

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
             max_position_embeddings=128)


@pytest.mark.parametrize("cls,model_cls,extra", [
    (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=8, tie_word_embeddings=True)),
    (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=2, tie_word_embeddings=False)),
    (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=4, attention_bias=True, mlp_bias=True, head_dim=16)),
    (Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    (Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=8, tie_word_embeddings=False)),
    (Qwen3Config, Qwen3ForCausalLM, dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)),
])
def test_param_count_is_exact(cls, model_cls, extra):
    config = cls(**SMALL, **extra)
    model = model_cls(config)
    arch = from_config(json.loads(config.to_json_string()), "x")
    assert arch.num_params == sum(p.numel() for p in model.parameters())  # a tied head is one tensor
    assert arch.backbone_params == sum(p.numel() for p in model.model.parameters())
    assert arch.largest_module_params == max(sum(p.numel() for p in m.parameters(recurse=False))
                                             for m in model.modules())


def test_tiny_model_count_and_lora_adapter_count_are_exact():
    from peft import LoraConfig, get_peft_model

    from rlhf.models.tiny import build_tiny_model, train_tokenizer

    cfg = TinyModelConfig(arch="qwen2", hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                          num_kv_heads=2, tokenizer_vocab_size=64)
    tok = train_tokenizer(["12+7=19 a quick brown fox jumps over the lazy dog"] * 4, cfg.tokenizer_vocab_size)
    model = build_tiny_model(cfg, tok, seed=0)
    arch = tiny_architecture(cfg)
    assert arch.vocab_size >= len(tok)  # the planner's vocabulary is tokenizer_vocab_size, an upper bound
    exact = type(arch)(**{**arch.__dict__, "vocab_size": len(tok)})
    assert exact.num_params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert exact.lora_params(4, ["q_proj", "v_proj", "down_proj"]) == trainable


def test_builtin_table_gives_the_published_parameter_totals():
    published = {  # the models' safetensors totals (a tied head counted once)
        "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768, "Qwen/Qwen2.5-1.5B": 1_543_714_304,
        "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512, "Qwen/Qwen2.5-14B": 14_770_033_664,
        "Qwen/Qwen3-8B": 8_190_735_360, "meta-llama/Llama-3.2-1B": 1_235_814_400,
        "meta-llama/Llama-3.2-3B-Instruct": 3_212_749_824, "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
    }
    for name, total in published.items():
        assert KNOWN[name].num_params == total, name
    assert KNOWN["Qwen/Qwen2.5-7B-Instruct"].kv_bytes_per_token(2) == 2 * 28 * 4 * 128 * 2


def test_unknown_hub_id_is_an_error_naming_model_path(tmp_path):
    recipe = load_recipe(RECIPE, ["model.tiny=null", "model.path=SomeOrg/NotInTheTable"])
    with pytest.raises(PlanError, match=r"model\.path: 'SomeOrg/NotInTheTable'.*local directory with config\.json"):
        resolve_architecture(recipe.model)
    (tmp_path / "config.json").write_text(json.dumps({**SMALL, "model_type": "llama"}))
    local = load_recipe(RECIPE, ["model.tiny=null", f"model.path={tmp_path}"])
    assert resolve_architecture(local.model).hidden_size == 64


# ---------------------------------------------------------------------------------------------- model states


def test_model_states_match_deepspeed_estimators(capsys):
    from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,
                                               estimate_zero3_model_states_mem_needs_all_cold)
    from deepspeed.runtime.zero.stage_1_and_2 import (estimate_zero2_model_states_mem_needs,
                                                      estimate_zero2_model_states_mem_needs_all_cold)

    arch = KNOWN["Qwen/Qwen2.5-7B-Instruct"]
    psi, largest = arch.num_params, arch.largest_module_params
    for gpus in (1, 2, 8):  # DeepSpeed assumes 16-bit weights + fp32 master + Adam, no offload
        ours = mem.model_states(psi, 0, 2, gpus, 2, "deepspeed")
        theirs = estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=gpus, cpu_offload=False)[1]
        total = ours.params + ours.grads + ours.optimizer + ours.step  # 2 psi + 18 psi / N
        assert total == pytest.approx(theirs, rel=0.01)
        ours3 = mem.model_states(psi, 0, 2, gpus, 3, "deepspeed", largest)
        theirs3 = estimate_zero3_model_states_mem_needs(psi, largest, num_gpus_per_node=gpus, cpu_offload=False,
                                                        cpu_offload_params=False)[1]
        total3 = ours3.total + ours3.step
        # DeepSpeed's ZeRO-3 figure, 4 x largest layer + 18 psi / N, leaves out the 16-bit parameter partition
        # (2 psi / N) that its "18 = 2 grads16 + 4 grads32 + 4 params32 + 8 optimizer" does not list; we count it
        assert total3 - 2 * psi / gpus == pytest.approx(theirs3, rel=0.01)
    estimate_zero2_model_states_mem_needs_all_cold(psi, num_gpus_per_node=8)  # the printed tables agree too
    estimate_zero3_model_states_mem_needs_all_cold(psi, largest, num_gpus_per_node=8)
    out = capsys.readouterr().out
    z2, z3 = [float(m) for m in re.findall(r"([\d.]+)GB \| offload_(?:optimizer=none|param=none, offload_"
                                             r"optimizer=none, zero_init=1)", out)][:2]
    ours2 = mem.model_states(psi, 0, 2, 8, 2, "deepspeed")
    assert (ours2.params + ours2.grads + ours2.optimizer + ours2.step) / GIB == pytest.approx(z2, abs=0.01)
    assert z3 > 0
    # fp32 weights: DeepSpeed keeps an fp32 master partition at ZeRO-1/2, none at 0 or (shared) at 3
    fp32 = mem.model_states(psi, 0, 4, 4, 1, "deepspeed")
    assert (fp32.params, fp32.grads, fp32.optimizer, fp32.step) == (4 * psi, 4 * psi, 12 * psi / 4, 0)
    fp32_z3 = mem.model_states(psi, 0, 4, 4, 3, "deepspeed")
    assert (fp32_z3.params, fp32_z3.optimizer) == (4 * psi / 4, 8 * psi / 4)
    assert mem.model_states(psi, 0, 4, 4, 0, "deepspeed").optimizer == 8 * psi
    torch_backend = mem.model_states(psi, 0, 2, 1, 2, "torch")  # plain AdamW: moments in the weights' dtype
    assert torch_backend.total == 2 * psi + 2 * psi + 4 * psi
    lora = mem.model_states(1000, psi, 2, 2, 2, "deepspeed")  # the frozen base: weights only
    assert lora.params == 2 * (psi + 1000) and lora.grads == 2 * 1000 / 2


# ---------------------------------------------------------------------------------------------- activations


class _LiveTensors(TorchDispatchMode):
    """The peak bytes of live tensors created under it (storages, each once), leaving out the parameters and
    anything shaped like a parameter (gradients in flight, e.g. a tied head's before it is accumulated)."""

    def __init__(self, params):
        super().__init__()
        self.live, self.peak = {}, 0
        self.params = {p.untyped_storage().data_ptr() for p in params}
        self.shapes = {(tuple(p.shape), p.dtype) for p in params} | {
            (tuple(p.shape[::-1]), p.dtype) for p in params if p.dim() == 2}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (tuple(t.shape), t.dtype) not in self.shapes:
                s = t.untyped_storage()
                if s.data_ptr() and s.data_ptr() not in self.params:
                    self.live.setdefault(s.data_ptr(), (StorageWeakRef(s), s.nbytes()))
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def _measure(w: int, precision: str, checkpointing: bool, B=4, P=24, C=40):
    """(saved bytes, peak bytes) of a tiny Llama's policy-gradient forward + backward, as the runtime runs it:
    completion_logprobs over padded batches, autocast with an fp32 head, transformers' checkpointing."""
    from rlhf.objectives.common import completion_logprobs
    from rlhf.train.precision import autocast_forward, enable_checkpointing

    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True, use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32 if w == 4 else torch.bfloat16)
    autocast_forward(model, precision, torch.device("cpu"))
    if checkpointing:
        enable_checkpointing(model)
    model.train()
    ids = torch.randint(4, 4096, (B, P + C))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded prompt: the runtime's batches carry a padding mask
    params = list(model.parameters())
    own = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    live = _LiveTensors(params)
    with live, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        completion_logprobs(model, ids, mask, P).mean().backward()
    arch = from_config(json.loads(config.to_json_string()), "x")
    p = mem.compute_bytes(w, precision)
    estimate_saved, estimate = mem.activation_parts(arch, w, p, B, P + C, C, checkpointing)
    return sum(saved.values()), live.peak, estimate_saved, estimate


@pytest.mark.parametrize("w,precision,checkpointing,saved_tol", [
    (4, "fp32", False, 0.03), (2, "fp32", False, 0.03), (4, "bf16", False, 0.03), (4, "fp32", True, 0.05)])
def test_activation_estimate_against_measured_cpu(w, precision, checkpointing, saved_tol):
    saved, peak, est_saved, est_peak = _measure(w, precision, checkpointing)
    assert est_saved == pytest.approx(saved, rel=saved_tol)  # what autograd keeps for the backward
    assert est_peak == pytest.approx(peak, rel=0.15)  # the peak of live tensors (log-softmax backward)


def test_checkpointing_saves_what_the_estimate_says():
    saved_off, peak_off, _, est_off = _measure(4, "fp32", False, B=8, P=28, C=100)
    saved_on, peak_on, _, est_on = _measure(4, "fp32", True, B=8, P=28, C=100)
    assert saved_on < 0.35 * saved_off and peak_on < 0.65 * peak_off
    assert (est_off - est_on) == pytest.approx(peak_off - peak_on, rel=0.15)


def test_hand_computed_grpo_tiny_cpu():
    """recipes/grpo_tiny_cpu.yaml: llama h 128, I 384, 4 layers, 4 heads, vocab 32 (tied), fp32, ZeRO-2 over 2
    ranks, 32 x 8 = 256 rows -> 128 per rank = one micro-batch of 128 sequences of 16 + 8 tokens."""
    arch = tiny_architecture(load_recipe(RECIPE).model.tiny)
    layer = 4 * 128 * 128 + 3 * 128 * 384 + 2 * 128  # q k v o + gate up down + 2 norms
    assert arch.num_params == 32 * 128 + 4 * layer + 128 == 857_216
    tokens = 128 * 24
    per_token = (12 + 12) * 128 + 4 * 128 * 4 + 4 * 384 * 4 + 4 * 4  # norms, q k v out, SwiGLU, lse: 11280
    layers = 4 * (tokens * per_token + 128 * 24 * 24 * 4)  # + the padding mask as SDPA's float bias
    final, logits = tokens * 128 * 12, 128 * 8 * 32 * 2 * 4  # logits and their gradient, fp32
    assert mem.activation_bytes(arch, 4, 4, 128, 24, 8, False) == layers + final + logits == 144_769_024
    ckpt = 4 * tokens * 128 * 4 + final + 128 * 24 * 24 + max(logits, layers // 4)
    assert mem.activation_bytes(arch, 4, 4, 128, 24, 8, True) == ckpt
    plan = plan_recipe(load_recipe(RECIPE))
    train = {what: value for what, value, _ in plan.tables[0].rows}
    assert train["parameters"] == 4 * 857_216 and train["gradients"] == 4 * 857_216 / 2
    assert train["optimizer state"] == 12 * 857_216 / 2 and train["activations"] == 144_769_024  # + fp32 master
    assert train["reference model"] == 4 * 857_216  # GRPO with kl_coef > 0: a full copy on every rank
    assert plan.fits and plan.gpus_per_node == 3  # 2 ranks + 1 hf engine


def test_vllm_engine_kv_cache_by_hand():
    arch = KNOWN["Qwen/Qwen2.5-7B-Instruct"]
    e = mem.vllm_engine(arch, 2, 1, 0.9, 80 * GIB, 64, 1536, 32768, True)
    weights = arch.num_params * 2
    profile = 8192 * 3 * 18944 * 2 + 64 * 152064 * 4
    kv = 0.9 * 80 * GIB - weights - profile - 1.5 * GIB
    assert e.kv_cache == pytest.approx(kv) and e.kv_per_token == 57_344
    assert e.sequences == int(kv // (57_344 * 1536)) and e.model_len_fits
    tp2 = mem.vllm_engine(arch, 2, 2, 0.9, 80 * GIB, 64, 1536, 32768, True)
    assert tp2.weights == weights / 2 and tp2.kv_per_token == 57_344 // 2


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_plan_tiny_recipe_fits(capsys):
    assert main(["plan", RECIPE]) == 0
    out = capsys.readouterr().out
    assert "training GPU x2" in out and "engine GPU (hf) x1" in out and "857,216" in out
    assert "verdict: fits" in out


def test_cli_plan_7b_does_not_fit_and_names_the_key(capsys):
    assert main(["plan", RECIPE, *QWEN7B]) == 1
    out = capsys.readouterr().out
    assert "7,615,616,512" in out and "engine GPU (vllm)" in out and "KV cache" in out
    params = re.search(r"^  parameters +([\d.]+)", out, re.M).group(1)
    assert float(params) == pytest.approx(7_615_616_512 * 4 / GIB, abs=0.01)  # fp32 weights, ZeRO-2
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("verdict: does not fit: training GPU needs") and "First change: model.lora" in verdict
    # with bf16 weights, checkpointing and ZeRO-3 over 4 ranks it fits on the 5 default GPUs
    more = [*QWEN7B, "model.dtype=bfloat16", "train.gradient_checkpointing=true", "train.zero_stage=3",
            "train.num_ranks=4"]
    assert main(["plan", RECIPE, *more, "--gpu-memory", "80"]) == 0, capsys.readouterr().out


def test_cli_plan_too_few_gpus_and_small_gpus(capsys):
    assert main(["plan", RECIPE, "--gpus-per-node", "2"]) == 1
    assert "needs 3 GPUs, 1 x 2 given" in capsys.readouterr().out
    assert main(["plan", RECIPE, *QWEN7B, "model.dtype=bfloat16", "--gpu-memory", "24"]) == 1
    assert "First change: " in capsys.readouterr().out


def test_cli_plan_unknown_hub_id_is_one_line_error(capsys):
    assert main(["plan", RECIPE, "model.tiny=null", "model.path=SomeOrg/NotInTheTable"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.path" in err and "config.json" in err


def test_plan_warnings_and_validate(capsys):
    assert plan_warnings(load_recipe(RECIPE)) == []  # model.tiny: a CPU recipe
    warnings = plan_warnings(load_recipe(RECIPE, QWEN7B))
    assert warnings and "does not fit" in warnings[0] and "GiB" in warnings[1]
    unknown = plan_warnings(load_recipe(RECIPE, ["model.tiny=null", "model.path=SomeOrg/NotInTheTable"]))
    assert len(unknown) == 1 and "not available" in unknown[0] and "model.path" in unknown[0]
    assert main(["validate", RECIPE, *QWEN7B]) == 0  # still a valid recipe
    captured = capsys.readouterr()
    assert "model:" in captured.out and captured.err.startswith("warning: memory plan")


def test_readme_example_is_current(capsys):
    """README's "Will it fit?" block: the command run as written prints the figures shown."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```text\n(.*?)```", readme, flags=re.S) if b.startswith("$ rlhf plan"))
    command, _, shown = block.partition("\nmodel:")
    argv = command.replace("\\\n", " ").split()[2:]  # after "$ rlhf"
    assert main(argv) == 1
    out = capsys.readouterr().out
    figures = re.findall(r"^  (\w[^\n]*?) +(\d+\.\d\d)  ", shown, flags=re.M)
    assert len(figures) >= 12
    for what, value in figures:
        assert re.search(rf"^  {re.escape(what)} +{re.escape(value)}  ", out, flags=re.M), (what, value)
    assert "First change: train.gradient_checkpointing=true" in out


def test_rehearsal_recipe_has_qwen25_05b_shape_but_half_its_layers():
    """recipes/rehearsal_qwen2.5-0.5b_cpu.yaml builds a real architecture at real width (bench/README.md)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / "rehearsal_qwen2.5-0.5b_cpu.yaml"
    ours, real = resolve_architecture(load_recipe(str(path)).model), KNOWN["Qwen/Qwen2.5-0.5B"]
    same = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "tie_word_embeddings", "qkv_bias")
    assert {k: getattr(ours, k) for k in same} == {k: getattr(real, k) for k in same}
    assert ours.num_hidden_layers * 2 == real.num_hidden_layers and ours.num_params == 315_084_160
