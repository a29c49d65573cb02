"""SFT loss (rlhf.objectives.sft): hand-computed cross entropy, token-mean over a ragged mask, and HF's own
causal-LM loss (labels = -100 off target) as an oracle on a tiny random Llama.

Run: pytest tests/unit/test_sft_loss.py -q
"""

import math

import pytest
import torch

from rlhf.config.registry import build_objective
from rlhf.config.schema import SFTObjectiveConfig
from rlhf.objectives import SFT, SupervisedObjective, sft_loss
from rlhf.types import SFTBatch

LN2, LN3 = math.log(2), math.log(3)


def _logits():
    # vocab 3, T = 3. Position 0 predicts token 1 from uniform logits -> CE = ln 3.
    # Position 1 predicts token 2 with probabilities [0.25, 0.5, 0.25]; row 0's token 2 is id 1 -> CE = ln 2,
    # row 1's token 2 is id 0 -> CE = ln 4. Position 2 predicts nothing.
    logits = torch.zeros(2, 3, 3)
    logits[:, 1] = torch.log(torch.tensor([1.0, 2.0, 1.0]))
    input_ids = torch.tensor([[2, 0, 1], [1, 2, 0]])
    return logits, input_ids


def test_single_target_by_hand():
    logits, ids = _logits()
    loss = sft_loss(logits[:1], ids[:1], torch.tensor([[0.0, 0.0, 1.0]]))
    assert float(loss) == pytest.approx(LN2, abs=1e-6)
    loss = sft_loss(logits[:1], ids[:1], torch.tensor([[0.0, 1.0, 1.0]]))
    assert float(loss) == pytest.approx((LN3 + LN2) / 2, abs=1e-6)


def test_token_mean_over_ragged_mask():
    logits, ids = _logits()
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    # targets: row 0 -> [ln3, ln2], row 1 -> [ln3]; token mean = (2 ln3 + ln2) / 3 = 0.963457
    # (a per-sequence mean would give ((ln3 + ln2) / 2 + ln3) / 2 = 0.997246)
    assert float(sft_loss(logits, ids, mask)) == pytest.approx((2 * LN3 + LN2) / 3, abs=1e-6)


def test_mask_at_position_zero_is_ignored_and_empty_mask_is_zero():
    logits, ids = _logits()
    a = sft_loss(logits, ids, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))
    b = sft_loss(logits, ids, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    assert float(a) == pytest.approx((LN3 + LN2 + math.log(4)) / 3, abs=1e-6)
    assert float(a) == pytest.approx(float(b))
    assert float(sft_loss(logits, ids, torch.zeros(2, 3))) == 0.0


def test_gradient_is_softmax_minus_onehot_over_tokens():
    logits, ids = _logits()
    logits.requires_grad_(True)
    sft_loss(logits, ids, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])).backward()
    # one target (row 0, position 1, token id 1): grad = softmax - onehot = [0.25, -0.5, 0.25]
    expected = torch.zeros(2, 3, 3)
    expected[0, 1] = torch.tensor([0.25, -0.5, 0.25])
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=0)


def test_build_from_config():
    # SFT is the warm-up's loss, built directly; it is not a kind of the objective registry
    for obj in (SFT(), SFT.from_config(None), SFT.from_config(SFTObjectiveConfig())):
        assert isinstance(obj, SFT) and isinstance(obj, SupervisedObjective)
        assert obj.name == "sft"
    with pytest.raises(ValueError, match="sft"):
        build_objective(SFTObjectiveConfig())


def test_loss_sft_matches_hf_causal_lm_loss():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(cfg)
    input_ids = torch.randint(3, 50, (3, 7))
    attention_mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 4 + [0] * 3])
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)  # right padding
    loss_mask = torch.tensor(
        [[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0]], dtype=torch.float32
    )
    out = SFT().loss_sft(model, SFTBatch(input_ids, attention_mask, loss_mask))
    labels = input_ids.masked_fill(loss_mask == 0, -100)
    hf_loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    torch.testing.assert_close(out.loss, hf_loss, atol=1e-5, rtol=1e-5)
    assert out.metrics["sft/tokens"] == 10.0
    assert out.metrics["loss/sft"] == pytest.approx(hf_loss.item(), abs=1e-5)
    out.loss.backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()
