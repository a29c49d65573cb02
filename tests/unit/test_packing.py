"""Padding-free training (train.packing; rlhf/objectives/packing.py): packed forwards give the padded forward's
completion logprobs and gradients (tiny Llama and Qwen2, sdpa and eager, one row and first-fit rows, LoRA,
activation checkpointing), a whole policy-gradient update gives the padded update's gradient, and the
token-balanced partition keeps every row once in the same number of equal-size micro-batches."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlhf.config.registry import build_objective
from rlhf.config.schema import GRPOConfig
from rlhf.config.train import TrainConfig
from rlhf.objectives import packing
from rlhf.objectives.common import completion_logprobs
from rlhf.train import steps
from rlhf.train.backend import micro_size
from rlhf.train.settings import StepSettings
from rlhf.types import ExperienceBatch

P, C = 7, 11
PROMPT_LENS = [7, 2, 4, 1, 5, 3, 6, 2]
COMPLETION_LENS = [11, 1, 3, 7, 0, 4, 9, 2]  # row 4: an empty completion


def _model(kind: str = "llama", attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    size = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, attn_implementation=attn)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**size))
    return Qwen2ForCausalLM(Qwen2Config(**size))


def _batch(seed: int = 0) -> ExperienceBatch:
    """8 rows, prompts left-padded to P (1..7 real tokens), completions right-padded to C (0..11)."""
    g = torch.Generator().manual_seed(seed)
    B = len(PROMPT_LENS)
    ids = torch.randint(3, 61, (B, P + C), generator=g)
    mask = torch.zeros(B, P + C, dtype=torch.long)
    for b, (p, c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS)):
        mask[b, P - p : P + c] = 1
    ids = ids * mask  # pad id 0
    loss_mask = mask[:, P:].float()
    return ExperienceBatch(input_ids=ids, attention_mask=mask, loss_mask=loss_mask,
                           advantages=torch.randn(B, generator=g), prompt_len=P,
                           ref_logprobs=-torch.rand(B, C, generator=g) * loss_mask)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("one_row", [True, False])
def test_packed_logprobs_and_gradients_equal_the_padded_ones(kind, attn, one_row):
    exp = _batch()
    mask = exp.loss_mask.bool()  # (B, C)
    weights = torch.randn(exp.loss_mask.shape, generator=torch.Generator().manual_seed(5)) * exp.loss_mask
    padded_model, packed_model = _model(kind, attn), _model(kind, attn)
    padded = completion_logprobs(padded_model, exp.input_ids, exp.attention_mask, P, 0.9)  # (B, C)
    packed = packing.packed_completion_logprobs(packed_model, exp.input_ids, exp.attention_mask, P, 0.9,
                                                one_row=one_row)  # (B, C)
    assert packed.shape == padded.shape == (len(PROMPT_LENS), C)
    torch.testing.assert_close(packed[mask], padded[mask], rtol=0, atol=1e-5)
    assert (packed[~mask] == 0).all()
    (padded * weights).sum().backward()
    (packed * weights).sum().backward()
    want, got = _grads(padded_model), _grads(packed_model)
    assert want.keys() == got.keys() and len(want) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_positions_running_on_across_sequences_would_differ():
    """The control: the same packed tokens with positions counting on (no restart) are not block-diagonal, and the
    logprobs move -- so the equality above rests on transformers reading the packing from the position ids."""
    exp = _batch()
    model = _model().eval()
    packed = packing.pack_rows(exp.input_ids, exp.attention_mask, P)
    assert packed.shape == (1, int(exp.attention_mask.sum()))
    R, L = packed.shape
    with torch.no_grad():
        good = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits
        bad = model(input_ids=packed.input_ids, position_ids=torch.arange(L).expand(R, L), use_cache=False).logits
    second = slice(PROMPT_LENS[0] + COMPLETION_LENS[0], L)  # every sequence after the first
    assert (good[:, second] - bad[:, second]).abs().max() > 1e-2


def test_pack_rows_layout():
    exp = _batch()
    lengths = [p + c for p, c in zip(PROMPT_LENS, COMPLETION_LENS)]  # [18, 3, 7, 8, 5, 7, 15, 4]
    rows = packing.pack_rows(exp.input_ids, exp.attention_mask, P, row_tokens=0)  # rows of the longest, 18
    R, L = rows.shape
    assert L == max(lengths) and R == 4  # first-fit decreasing: [18] [15, 3] [8, 7] [7, 5, 4]
    real = rows.input_ids != 0
    assert int(real.sum()) == sum(lengths)
    assert sorted(exp.input_ids[exp.attention_mask.bool()].tolist()) == sorted(rows.input_ids[real].tolist())
    flat_ids, flat_pos = rows.input_ids.reshape(-1), rows.position_ids.reshape(-1)
    for b in range(len(lengths)):  # each completion token's predictor is the token before it, one position back
        for j in range(C):
            if rows.valid[b, j]:
                k = int(rows.predictor[b, j])
                assert int(flat_ids[k + 1]) == int(exp.input_ids[b, P + j])
                assert int(flat_pos[k + 1]) == int(flat_pos[k]) + 1
    assert rows.valid.sum() == sum(COMPLETION_LENS) and not rows.valid[4].any()
    starts = (rows.position_ids == 0).sum()  # every run and every tail starts at position 0
    assert int(starts) == len(lengths) + int((rows.input_ids[:, -1] == 0).sum())
    holed = exp.attention_mask.clone()
    holed[0, P + 3] = 0
    with pytest.raises(ValueError, match="padding between real tokens"):
        packing.pack_rows(exp.input_ids, holed, P)


def test_balanced_partition_keeps_every_row_once_in_equal_groups():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 200, (24,), generator=g)
    groups = packing.balanced_partition(tokens, 4)
    assert len(groups) == 4 and all(len(grp) == 6 for grp in groups)
    assert sorted(i for grp in groups for i in grp) == list(range(24))
    loads = [int(tokens[grp].sum()) for grp in groups]
    sorted_loads = [int(t.sum()) for t in tokens.sort().values.split(6)]  # length-grouped micro-batches
    assert max(loads) - min(loads) < max(sorted_loads) - min(sorted_loads)
    assert max(loads) - min(loads) <= int(tokens.max())
    with pytest.raises(ValueError, match="equal groups"):
        packing.balanced_partition(tokens, 5)


class _Recording:
    """A backend that accumulates gradients as DeepSpeed / the torch backend do, without an optimizer."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.module, self.rank, self.world_size, self._gas = model, 0, 1, 1
        self.micro_batches = 0

    def configure_batch(self, per_rank_batch: int, micro_batch_size: int) -> int:
        m = micro_size(per_rank_batch, micro_batch_size)
        self._gas = per_rank_batch // m
        return m

    def backward(self, loss: torch.Tensor) -> None:
        self.micro_batches += 1
        (loss / self._gas).backward()

    def step(self) -> float | None:
        return None


def _update(model, exp, objective, micro: int, **settings) -> tuple[dict, dict, int]:
    model = copy.deepcopy(model)
    backend = _Recording(model)
    ctx = steps.StepContext(backend, model, model, torch.device("cpu"), 0, 1,
                            StepSettings(temperature=0.9, micro_batch_size=micro, max_new_tokens=C, mini_batches=2,
                                         **settings))
    metrics = steps.policy_gradient_update(ctx, copy.deepcopy(exp), objective)
    return _grads(model), metrics, backend.micro_batches


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean", "dr_grpo"])
def test_packed_policy_gradient_update_matches_the_padded_one(loss_agg):
    model = _model("qwen2")
    objective = build_objective(GRPOConfig(kl_coef=0.05, loss_agg=loss_agg))
    exp = _batch(1)
    exp.ref_logprobs = None  # computed by the update (packed or padded), as are the old logprobs (2 mini-batches)
    padded, m_padded, n_padded = _update(model, exp, objective, 2, group_by_length=False)
    for balance in (False, True):
        packed, m_packed, n_packed = _update(model, exp, objective, 2, packing=True, balance_tokens=balance)
        assert n_packed == n_padded == 4  # 2 mini-batches x 2 micro-batches: the same forwards on every rank
        assert packed.keys() == padded.keys() and len(padded) > 10
        for name in padded:
            torch.testing.assert_close(packed[name], padded[name], rtol=1e-4, atol=1e-6, msg=name)
        assert m_packed["tokens"] == pytest.approx(m_padded["tokens"])
        if loss_agg != "seq_mean":  # the micro-batch losses sum to the mini-batch's loss however rows are split
            assert m_packed["loss/policy"] == pytest.approx(m_padded["loss/policy"], rel=1e-4, abs=1e-7)


def test_reference_logprobs_chunked_packed_equal_padded():
    model = _model("llama").eval()
    exp = _batch(2)
    with torch.no_grad():
        padded = steps.logprobs_chunked(model, exp, 0.9, 3)
        packed = steps.logprobs_chunked(model, exp, 0.9, 3, packing=True)
    m = exp.loss_mask.bool()
    torch.testing.assert_close(packed[m], padded[m], rtol=0, atol=1e-5)


def test_lora_and_checkpointing_packed_equal_padded():
    pytest.importorskip("peft")
    from rlhf.config.schema import LoraConfig
    from rlhf.models import lora
    from rlhf.train.precision import enable_checkpointing

    exp = _batch(3)
    mask = exp.loss_mask.bool()
    results = []
    for pack in (False, True):
        base = _model("llama")
        enable_checkpointing(base)
        model = lora.wrap(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).train()
        with torch.no_grad():  # a non-zero adapter, the same in both
            g = torch.Generator().manual_seed(1)
            for _, p in lora.adapter_named_parameters(model):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        fn = packing.packed_completion_logprobs if pack else completion_logprobs
        lp = fn(model, exp.input_ids, exp.attention_mask, P, 1.0)  # (B, C)
        (lp * exp.loss_mask).sum().backward()
        results.append((lp.detach(), _grads(model)))
    (padded, g_padded), (packed, g_packed) = results
    torch.testing.assert_close(packed[mask], padded[mask], rtol=0, atol=1e-5)
    assert g_padded.keys() == g_packed.keys() and all("lora" in n for n in g_padded) and g_padded
    for name in g_padded:
        torch.testing.assert_close(g_packed[name], g_padded[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_packed_stays_near_float32():
    from rlhf.train.precision import autocast_forward

    exp = _batch(4)
    mask = exp.loss_mask.bool()
    model = _model("llama").eval()
    with torch.no_grad():
        want = completion_logprobs(model, exp.input_ids, exp.attention_mask, P)
        autocast_forward(model, "bf16", torch.device("cpu"))
        got = packing.packed_completion_logprobs(model, exp.input_ids, exp.attention_mask, P, one_row=False)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=0.05)


def test_packing_config_defaults_auto_is_strict_and_reaches_the_step_settings():
    from rlhf.config.schema import Recipe
    from rlhf.train.settings import worker_settings

    assert TrainConfig().packing.enabled == "auto" and TrainConfig().packing.balance is True
    with pytest.raises(Exception, match="balanced"):
        TrainConfig.model_validate({"packing": {"balanced": True}})

    def step_settings(packing: dict, remote: bool = False) -> StepSettings:
        return worker_settings(Recipe.model_validate({
            "model": {"path": "unused", "trust_remote_code": remote}, "train": {"packing": packing},
            "rewards": [{"name": "r", "plugin": "exact_match"}]})).steps

    on, unbalanced, off = step_settings({"enabled": True}), step_settings({"enabled": True, "balance": False}), \
        step_settings({"enabled": False})
    assert (on.packing, on.balance_tokens) == (True, True)
    assert (unbalanced.packing, unbalanced.balance_tokens) == (True, False)
    assert (off.packing, off.balance_tokens) == (False, False)
    # auto: on for transformers' own model classes, off for remote code (which may not read packed position ids)
    assert (step_settings({}).packing, step_settings({}).balance_tokens) == (True, True)
    assert (step_settings({}, remote=True).packing, step_settings({}, remote=True).balance_tokens) == (False, False)
    assert step_settings({"enabled": True}, remote=True).packing is True  # asked for: the user's call


DEEPSPEED_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from test_packing import _batch, _model
    import rlhf.objectives.packing as pk
    from rlhf.config.registry import build_objective
    from rlhf.config.schema import GRPOConfig
    from rlhf.train import steps
    from rlhf.train.deepspeed import DeepSpeedBackend
    from rlhf.train.settings import StepSettings

    def update(packing, one_row):
        backend = DeepSpeedBackend(_model("llama"), zero_stage=3, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0,
                                   grad_clip=0.0)
        start = torch.cat([p.detach().clone().reshape(-1) for p in backend.optimizer.fp32_partitioned_groups_flat])
        pk.varlen_attention = lambda model: one_row  # one row (logits_to_keep) or rows (the head hook)
        ctx = steps.StepContext(backend, backend.engine.module, None, torch.device("cpu"), 0, 1,
                                StepSettings(temperature=0.9, micro_batch_size=2, max_new_tokens=11, mini_batches=2,
                                             packing=packing, balance_tokens=packing))
        metrics = steps.policy_gradient_update(ctx, _batch(1), build_objective(GRPOConfig(kl_coef=0.0)))
        end = torch.cat([p.detach().reshape(-1) for p in backend.optimizer.fp32_partitioned_groups_flat])
        return start, end, metrics["loss/total"]

    start, padded, loss_padded = update(False, False)
    _, rows, loss_rows = update(True, False)
    _, one, loss_one = update(True, True)
    print(json.dumps({"moved": float((padded - start).abs().max()), "rows": float((rows - padded).abs().max()),
                      "one": float((one - padded).abs().max()), "loss": [loss_padded, loss_rows, loss_one]}))
""")


def test_deepspeed_zero3_packed_update_matches_padded():
    """Through a DeepSpeed ZeRO-3 engine (world size 1, gloo, a subprocess): kwargs reach the module, the head
    hook and logits_to_keep work under its parameter hooks, and the packed update lands where the padded one does."""
    pytest.importorskip("deepspeed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}
    out = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # AdamW's first steps are ~lr * sign(grad): float-level gradient noise on near-zero entries moves a few weights
    # by ~1e-3 of the step, a wrong gradient by the whole step
    assert result["moved"] > 1e-3 and max(result["rows"], result["one"]) < 1e-2 * result["moved"], result
    assert result["loss"][1] == pytest.approx(result["loss"][0], rel=1e-4)
    assert result["loss"][2] == pytest.approx(result["loss"][0], rel=1e-4)
