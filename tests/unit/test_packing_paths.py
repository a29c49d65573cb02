"""Padding-free training beyond the policy-gradient update (train.packing): the PPO critic's values and value
update, offline (single- and multi-head policy) and online preference-pair forwards and updates, per-component gradient Grams and the worker's
logprob check each give, packed, the padded path's values / logps, losses and gradients (float32, tiny models,
left-padded prompts, mixed completion lengths ending in EOS, one empty completion)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from test_packing import C, P, _batch, _grads, _model, _Recording  # a sibling module: tiny models, batch, backend

from rlhf.data.preference import PreferenceBatch
from rlhf.models.value import ValueModel, completion_values, packed_completion_values
from rlhf.objectives.dpo import DPO
from rlhf.objectives.ppo import value_loss
from rlhf.runtime.preference import PairBatch
from rlhf.train import steps
from rlhf.train.settings import StepSettings
from rlhf.types import ExperienceBatch

EOS, S = 2, 3


def _eos_batch(seed: int) -> ExperienceBatch:
    """``_batch`` with every non-empty completion ending in EOS."""
    exp = _batch(seed)
    lengths = exp.attention_mask[:, P:].sum(1)  # (B,)
    for b, n in enumerate(lengths.tolist()):
        if n:
            exp.input_ids[b, P + n - 1] = EOS
    return exp


def _ctx(model: torch.nn.Module, micro: int, packing: bool, reference: torch.nn.Module | None = None,
         **settings) -> tuple[steps.StepContext, _Recording]:
    backend = _Recording(model)
    return steps.StepContext(backend, model, reference, torch.device("cpu"), 0, 1,
                             StepSettings(temperature=0.9, micro_batch_size=micro, max_new_tokens=C, packing=packing,
                                          balance_tokens=packing, **settings)), backend


def _assert_same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and len(want) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def _critic(kind: str = "llama") -> ValueModel:
    torch.manual_seed(3)
    return ValueModel(_model(kind).model, num_heads=S)


# --------------------------------------------------------------------------- (1) the PPO critic


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("one_row", [True, False])
def test_packed_values_and_gradients_equal_the_padded_ones(kind, one_row):
    exp = _eos_batch(0)
    mask = exp.loss_mask.bool()  # (B, C)
    weights = torch.randn(*mask.shape, S, generator=torch.Generator().manual_seed(5)) * mask.unsqueeze(-1)
    padded_model = _critic(kind)
    packed_model = copy.deepcopy(padded_model)
    padded = completion_values(padded_model, exp.input_ids, exp.attention_mask, P)  # (B, C, S)
    packed = packed_completion_values(packed_model, exp.input_ids, exp.attention_mask, P, one_row=one_row)
    assert packed.shape == padded.shape == (*mask.shape, S)
    torch.testing.assert_close(packed[mask], padded[mask], rtol=0, atol=1e-5)
    assert (packed[~mask] == 0).all()
    (padded * weights).sum().backward()
    (packed * weights).sum().backward()
    _assert_same_grads(_grads(packed_model), _grads(padded_model))


def test_packed_value_update_and_critic_values_match_the_padded_ones():
    exp = _eos_batch(1)
    g = torch.Generator().manual_seed(7)
    B = exp.batch_size
    exp.values = torch.randn(B, C, S, generator=g) * 0.1  # (B, C, S) rollout-time values
    exp.returns = torch.randn(B, C, S, generator=g)  # (B, C, S) GAE targets
    objective = SimpleNamespace(value_loss=lambda v, old, ret, m: value_loss(v, old, ret, m, clip=0.2))
    critic = _critic()
    results = {}
    for packing in (False, True):
        model = copy.deepcopy(critic)
        ctx, backend = _ctx(model, 2, packing, epochs=1, mini_batches=1)
        metrics = steps.value_update(ctx, copy.deepcopy(exp), objective)
        values = steps.critic_values(_ctx(copy.deepcopy(critic), 3, packing)[0], exp)  # (B, C, S)
        results[packing] = (_grads(model), metrics, backend.micro_batches, values)
    (g_pad, m_pad, n_pad, v_pad), (g_pack, m_pack, n_pack, v_pack) = results[False], results[True]
    assert n_pack == n_pad == 4  # the same length-grouped micro-batches: the per-micro-batch mean is unchanged
    _assert_same_grads(g_pack, g_pad)
    assert m_pack["loss/value"] == pytest.approx(m_pad["loss/value"], rel=1e-5, abs=1e-7)
    mask = exp.loss_mask.bool()
    torch.testing.assert_close(v_pack[mask], v_pad[mask], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- (2) preference pairs


def _preference_batch(seed: int) -> PreferenceBatch:
    """4 pairs, right-padded [bos] + prompt + completion + eos of mixed lengths; loss mask on completion + eos."""
    g = torch.Generator().manual_seed(seed)
    prompts, chosen, rejected = [3, 1, 6, 2], [5, 9, 1, 3], [2, 4, 7, 1]
    T = max(1 + p + c + 1 for lengths in (chosen, rejected) for p, c in zip(prompts, lengths)) + 2  # 2 pad columns

    def side(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(prompts), T, dtype=torch.long)  # (B, T) pad 0
        mask = torch.zeros_like(ids)  # (B, T)
        loss_mask = torch.zeros(len(prompts), T)  # (B, T)
        for b, (p, c) in enumerate(zip(prompts, lengths)):
            n = 1 + p + c + 1
            ids[b, :n] = torch.randint(3, 61, (n,), generator=g)
            ids[b, 0], ids[b, n - 1] = 1, EOS
            mask[b, :n] = 1
            loss_mask[b, 1 + p : n] = 1
        return ids, mask, loss_mask

    return PreferenceBatch(*side(chosen), *side(rejected))


def test_packed_pair_logps_and_pair_update_match_the_padded_ones():
    pairs = PairBatch(_preference_batch(0), ref_logps=-torch.rand(4, 2, generator=torch.Generator().manual_seed(1)))
    policy = _model("qwen2")
    with torch.no_grad():
        want = torch.stack(steps.pair_logps(policy, pairs.batch), 1)  # (B, 2)
        got = torch.stack(steps.pair_logps(policy, pairs.batch, packing=True), 1)  # (B, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    objective = DPO(beta=0.1, loss_type="ipo")
    results = []
    for packing in (False, True):
        model = copy.deepcopy(policy)
        ctx, backend = _ctx(model, 2, packing)
        metrics = steps.pair_update(ctx, pairs, objective)
        results.append((_grads(model), metrics, backend.micro_batches))
    (g_pad, m_pad, n_pad), (g_pack, m_pack, n_pack) = results
    assert n_pack == n_pad == 2
    _assert_same_grads(g_pack, g_pad)
    assert m_pack["loss/dpo"] == pytest.approx(m_pad["loss/dpo"], rel=1e-5)


def test_packed_pair_logps_of_the_lora_reference_behind_an_engine():
    """The LoRA reference (``AdapterDisabled``) wraps the DeepSpeed engine, whose own ``config`` is DeepSpeed's
    dict: packing reads the attention implementation and the output head of the HF model under both wrappers."""
    pytest.importorskip("peft")
    from rlhf.config.schema import LoraConfig
    from rlhf.models import lora

    class Engine(torch.nn.Module):  # forwards to .module, as DeepSpeedEngine does; its config is not the model's
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module, self.config = module, {"train_micro_batch_size_per_gpu": 2}

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    model = lora.wrap(_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter: disabling it must matter
        for _, p in lora.adapter_named_parameters(model):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    reference = lora.AdapterDisabled(Engine(model), model)
    batch = _preference_batch(1)
    with torch.no_grad():
        want = torch.stack(steps.pair_logps(reference, batch), 1)  # (B, 2)
        got = torch.stack(steps.pair_logps(reference, batch, packing=True), 1)  # (B, 2)
        adapted = torch.stack(steps.pair_logps(model, batch, packing=True), 1)  # (B, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert (adapted - want).abs().max() > 1e-3


@pytest.mark.parametrize("one_row", [True, False])
def test_packed_multi_head_pair_logps_and_gradients_equal_the_padded_ones(one_row):
    """MAH-DPO's multi-head policy: every head's summed logps from one packed trunk forward."""
    from rlhf.models.multihead import MultiHeadCausalLM
    from rlhf.objectives.mah_dpo import head_sequence_logps, packed_head_sequence_logps

    base = _model("llama")
    g = torch.Generator().manual_seed(4)
    heads = base.lm_head.weight.detach().unsqueeze(0) + 0.05 * torch.randn(3, *base.lm_head.weight.shape, generator=g)
    padded_model = MultiHeadCausalLM(base, ("a", "b", "c"), heads, (0.5, 0.25, 0.25))  # heads (3, V, H)
    packed_model = copy.deepcopy(padded_model)
    ids, mask, loss_mask = _preference_batch(2).stacked()  # (2B, T)
    weights = torch.randn(ids.shape[0], 3, generator=g)  # (2B, K)
    padded = head_sequence_logps(padded_model, ids, mask, loss_mask)  # (2B, K)
    packed = packed_head_sequence_logps(packed_model, ids, mask, loss_mask, one_row=one_row)  # (2B, K)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-4)
    (padded * weights).sum().backward()
    (packed * weights).sum().backward()
    _assert_same_grads(_grads(packed_model), _grads(padded_model))


def test_packed_online_pair_update_matches_the_padded_one():
    exp = _eos_batch(2)  # rows (2i, 2i + 1): chosen, rejected; reference logprobs computed by the update
    exp.ref_logprobs = None
    policy, reference = _model("llama"), _model("llama", seed=1).eval()
    results = []
    for packing in (False, True):
        model = copy.deepcopy(policy)
        ctx, backend = _ctx(model, 4, packing, reference=reference)
        metrics = steps.online_pair_update(ctx, copy.deepcopy(exp), DPO(beta=0.1))
        results.append((_grads(model), metrics, backend.micro_batches))
    (g_pad, m_pad, n_pad), (g_pack, m_pack, n_pack) = results
    assert n_pack == n_pad == 2
    _assert_same_grads(g_pack, g_pad)
    assert m_pack["loss/dpo"] == pytest.approx(m_pad["loss/dpo"], rel=1e-5)


# --------------------------------------------------------------------------- (3) per-component gradients


def test_packed_component_gram_matches_the_padded_one():
    exp = _eos_batch(3)
    advantages = torch.randn(exp.batch_size, 3, generator=torch.Generator().manual_seed(2))  # (B, K)
    model = _model("llama")
    grams = [steps.component_gram(_ctx(model, 2, packing)[0], exp, advantages, max_samples=6)
             for packing in (False, True)]  # (K, K) each
    assert grams[0].shape == (3, 3) and float(grams[0].diagonal().min()) > 0
    torch.testing.assert_close(grams[1], grams[0], rtol=1e-4, atol=1e-8)
    assert all(p.grad is None for p in model.parameters())  # a measurement: nothing accumulated


# --------------------------------------------------------------------------- (4) the worker's logprob check


def test_worker_policy_logprobs_packed_equal_padded():
    from rlhf.train.worker import TrainWorker

    exp = _eos_batch(4)
    mask = exp.loss_mask.bool()
    model = _model("qwen2")
    out = {}
    for packing in (False, True):
        worker = TrainWorker.__new__(TrainWorker)  # the shell only: no Ray, no backend build
        worker.backend, worker.hf_model, worker.reference = _Recording(model), model, None
        worker.device, worker.rank, worker.world_size = torch.device("cpu"), 0, 1
        worker.settings = SimpleNamespace(steps=StepSettings(temperature=1.0, micro_batch_size=2, packing=packing))
        out[packing] = worker.policy_logprobs(exp.input_ids, exp.attention_mask, P, 0.8)  # (B, C)
    torch.testing.assert_close(out[True][mask], out[False][mask], rtol=0, atol=1e-5)
    assert (out[True][~mask] == 0).all() and model.training
