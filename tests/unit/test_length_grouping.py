"""Length-grouped, trimmed micro-batches (rlhf/train/steps.py ``length_grouped``, ``ExperienceBatch.trimmed``):
the same gradients and loss as one padded micro-batch, and trimming cuts exactly the all-padding columns."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf.config.schema import GRPOConfig
from rlhf.config.registry import build_objective
from rlhf.train import steps
from rlhf.train.backend import micro_size
from rlhf.train.settings import StepSettings
from rlhf.types import ExperienceBatch


def _batch(seed: int = 0) -> ExperienceBatch:
    """6 rows, prompts left-padded to P = 6 (real lengths 2..6), completions right-padded to C = 10 (1..10)."""
    g = torch.Generator().manual_seed(seed)
    P, C = 6, 10
    prompt_lens, completion_lens = [6, 2, 4, 3, 5, 2], [10, 1, 3, 7, 2, 4]
    ids = torch.randint(3, 61, (6, P + C), generator=g)
    mask = torch.zeros(6, P + C, dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        mask[b, P - p : P + c] = 1
    ids = ids * mask  # pad id 0
    loss_mask = mask[:, P:].float()
    return ExperienceBatch(input_ids=ids, attention_mask=mask, loss_mask=loss_mask,
                           advantages=torch.randn(6, generator=g), prompt_len=P,
                           ref_logprobs=-torch.rand(6, C, generator=g) * loss_mask)


class _Recording:
    """A backend that accumulates gradients as DeepSpeed / the torch backend do, without an optimizer."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.module, self.rank, self.world_size, self._gas = model, 0, 1, 1

    def configure_batch(self, per_rank_batch: int, micro_batch_size: int) -> int:
        m = micro_size(per_rank_batch, micro_batch_size)
        self._gas = per_rank_batch // m
        return m

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self._gas).backward()

    def step(self) -> float | None:
        return None


def _grads(model, exp, micro: int, objective) -> tuple[dict, dict]:
    model = copy.deepcopy(model)
    ctx = steps.StepContext(_Recording(model), model, None, torch.device("cpu"), 0, 1,
                            StepSettings(temperature=0.9, micro_batch_size=micro, max_new_tokens=10))
    metrics = steps.policy_gradient_update(ctx, exp, objective)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, metrics


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean", "dr_grpo"])
def test_grouped_micro_batches_give_the_gradient_of_one_padded_batch(loss_agg):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64, use_cache=False))
    objective = build_objective(GRPOConfig(kl_coef=0.05, loss_agg=loss_agg))
    exp = _batch()
    whole, m_whole = _grads(model, exp, 6, objective)  # one micro-batch: nothing to group or trim
    grouped, m_grouped = _grads(model, exp, 2, objective)  # 3 micro-batches of 2 rows, sorted and trimmed
    assert whole.keys() == grouped.keys() and len(whole) > 5
    for n in whole:
        torch.testing.assert_close(grouped[n], whole[n], rtol=1e-4, atol=1e-6, msg=n)
    if loss_agg == "token_mean":  # the mean of micro-batch losses is the batch loss
        assert m_grouped["loss/policy"] == pytest.approx(m_whole["loss/policy"], rel=1e-4)


def test_trimmed_cuts_exactly_the_all_padding_columns():
    exp = _batch()
    rows = exp.select(torch.tensor([1, 4]))  # prompts 2 and 5 long, completions 1 and 2 long
    t = rows.trimmed()
    assert t.prompt_len == 5 and t.input_ids.shape == (2, 5 + 2)
    assert t.loss_mask.shape == t.ref_logprobs.shape == (2, 2) and t.advantages.shape == (2,)
    assert torch.equal(t.input_ids, rows.input_ids[:, 1:8]) and torch.equal(t.ref_logprobs, rows.ref_logprobs[:, :2])
    assert exp.trimmed() is exp  # the longest rows span every column: nothing to cut
    token_level = ExperienceBatch(**{**rows.__dict__, "advantages": torch.ones(2, 10)}).trimmed()
    assert token_level.advantages.shape == (2, 2)


def test_logprobs_chunked_pads_trimmed_chunks_back_and_matches_one_pass():
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64, use_cache=False)).eval()
    exp = _batch(3)
    with torch.no_grad():
        one = steps.logprobs_chunked(model, exp, 0.9, 6)
        chunked = steps.logprobs_chunked(model, exp, 0.9, 2)
    assert chunked.shape == one.shape == (6, 10)
    m = exp.loss_mask.bool()
    torch.testing.assert_close(chunked[m], one[m], rtol=0, atol=1e-5)
    assert (chunked[2:4, 7:] == 0).all()  # rows 2-3 (completions 3 and 7 long) were trimmed to 7 columns


def test_logprob_micro_batch_size_sets_the_no_grad_chunks_only():
    """train.logprob_micro_batch_size: the reference pass runs in chunks of that many rows (here one forward for
    all 6 rows against 3 with the training micro-batch of 2); the update keeps micro_batch_size; same numbers."""
    from rlhf.config.schema import Recipe
    from rlhf.train.settings import worker_settings

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64, use_cache=False))
    reference = copy.deepcopy(model).eval()
    calls: list[int] = []
    reference.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[0]),
                                        with_kwargs=True)
    objective = build_objective(GRPOConfig(kl_coef=0.05))
    got = {}
    for chunk in (0, 6):
        exp = _batch()
        exp.ref_logprobs = None
        calls.clear()
        policy = copy.deepcopy(model)
        settings = StepSettings(temperature=0.9, micro_batch_size=2, max_new_tokens=10,
                                logprob_micro_batch_size=chunk)
        ctx = steps.StepContext(_Recording(policy), policy, reference, torch.device("cpu"), 0, 1, settings)
        got[chunk] = steps.policy_gradient_update(ctx, exp, objective)["loss/policy"]
        assert calls == ([2, 2, 2] if chunk == 0 else [6])
    assert got[6] == pytest.approx(got[0], rel=1e-5)
    recipe = {"model": {"path": "unused"}, "rewards": [{"name": "r", "plugin": "exact_match"}],
              "train": {"micro_batch_size": 8}}
    assert worker_settings(Recipe.model_validate(recipe)).steps.logprob_micro == 8
    recipe["train"]["logprob_micro_batch_size"] = 32
    assert worker_settings(Recipe.model_validate(recipe)).steps.logprob_micro == 32
