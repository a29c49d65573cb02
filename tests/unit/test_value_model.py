"""The PPO critic (rlhf.models.value) on the session's tiny Llama: shapes, init, save/load, value alignment.

Run: pytest tests/unit/test_value_model.py -q
"""

import json
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.models.value import ValueModel, completion_values, load_value_model, save_value_model


@pytest.fixture(scope="module")
def critic(arithmetic_model_dir):
    torch.manual_seed(0)
    return load_value_model(arithmetic_model_dir, num_heads=3).eval()


def _batch():
    # two rows, prompt P = 4 left-padded (row 1 has 2 real prompt tokens), completion C = 3 right-padded
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [0, 0, 7, 8, 12, 13, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0]])
    return input_ids, attention_mask, 4


def test_forward_shapes_config_and_init(critic, arithmetic_model_dir):
    input_ids, attention_mask, _ = _batch()
    with torch.no_grad():
        out = critic(input_ids, attention_mask)
    assert out.shape == (2, 7, 3) and out.dtype == torch.float32
    assert critic.config is critic.backbone.config and critic.config.hidden_size == 64
    assert isinstance(critic.head, torch.nn.Linear) and critic.num_heads == 3
    assert torch.all(critic.head.bias == 0)
    std = float(critic.head.weight.detach().std())
    assert 0.5 / math.sqrt(65) < std < 1.5 / math.sqrt(65)
    # the backbone is the causal LM's base model, weights included
    lm = AutoModelForCausalLM.from_pretrained(arithmetic_model_dir)
    torch.testing.assert_close(critic.backbone.embed_tokens.weight, lm.model.embed_tokens.weight)
    torch.testing.assert_close(
        critic.backbone.layers[1].mlp.down_proj.weight, lm.model.layers[1].mlp.down_proj.weight
    )
    # the head is drawn from the caller's RNG
    torch.manual_seed(0)
    again = load_value_model(arithmetic_model_dir, num_heads=3)
    torch.testing.assert_close(again.head.weight, critic.head.weight)
    torch.manual_seed(1)
    assert not torch.equal(load_value_model(arithmetic_model_dir, num_heads=3).head.weight, critic.head.weight)


def test_completion_values_alignment(critic):
    input_ids, attention_mask, P = _batch()
    with torch.no_grad():
        values = completion_values(critic, input_ids, attention_mask, P)  # (2, 3, 3)
        assert values.shape == (2, 3, 3)
        full = critic(input_ids, attention_mask, (attention_mask.cumsum(-1) - 1).clamp(min=0))  # (2, 7, 3)
        for j in range(3):
            torch.testing.assert_close(values[:, j], full[:, P + j - 1])
        # row 1 run alone without padding: prompt [7, 8], completion [12, 13]; V(s_j) sits at position 2 + j - 1
        alone = critic(torch.tensor([[7, 8, 12, 13]]), torch.ones(1, 4, dtype=torch.long))  # (1, 4, 3)
        torch.testing.assert_close(values[1, :2], alone[0, 1:3], atol=1e-5, rtol=1e-5)
        # ... which is not the value at the completion token's own position (an off-by-one would fail here)
        assert not torch.allclose(values[1, :2], alone[0, 2:4], atol=1e-3)


def test_gradients_reach_backbone_and_head(arithmetic_model_dir):
    torch.manual_seed(0)
    model = load_value_model(arithmetic_model_dir, num_heads=2)
    input_ids, attention_mask, P = _batch()
    completion_values(model, input_ids, attention_mask, P).sum().backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert model.backbone.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_save_load_round_trip(critic, tmp_path):
    with torch.no_grad():
        critic.head.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))  # not what a fresh head would hold
    out_dir = str(tmp_path / "critic")
    save_value_model(critic, out_dir)
    assert json.load(open(os.path.join(out_dir, "value_head.json"))) == {"num_heads": 3}
    assert os.path.isfile(os.path.join(out_dir, "value_head.safetensors"))
    assert os.path.isfile(os.path.join(out_dir, "model.safetensors"))
    torch.manual_seed(123)  # a fresh head would differ
    loaded = load_value_model(out_dir, num_heads=3).eval()
    input_ids, attention_mask, P = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            completion_values(loaded, input_ids, attention_mask, P),
            completion_values(critic, input_ids, attention_mask, P),
            atol=0,
            rtol=0,
        )


def test_save_from_gathered_state_dict(critic, tmp_path):
    state = {name: p.detach().clone() for name, p in critic.named_parameters()}
    assert "head.weight" in state and any(n.startswith("backbone.layers.0.") for n in state)
    state["head.bias"] = torch.tensor([7.0, 8.0, 9.0])
    state["backbone.norm.weight"] = state["backbone.norm.weight"] * 2
    out_dir = str(tmp_path / "from_state")
    save_value_model(critic, out_dir, state_dict=state)
    loaded = load_value_model(out_dir, num_heads=3)
    torch.testing.assert_close(loaded.head.bias, torch.tensor([7.0, 8.0, 9.0]))
    torch.testing.assert_close(loaded.backbone.norm.weight, critic.backbone.norm.weight * 2)
    assert not torch.equal(critic.head.bias, loaded.head.bias)  # the module's own tensors were not written
    with pytest.raises(ValueError, match="unexpected parameter"):
        save_value_model(critic, str(tmp_path / "bad"), state_dict={"lm_head.weight": torch.zeros(1)})


def test_num_heads_mismatch_is_a_clear_error(critic, tmp_path):
    out_dir = str(tmp_path / "critic3")
    save_value_model(critic, out_dir)
    with pytest.raises(ValueError, match=r"value head of 3 output\(s\).*num_heads=2"):
        load_value_model(out_dir, num_heads=2)


def test_value_model_rejects_zero_heads(critic):
    with pytest.raises(ValueError, match="num_heads"):
        ValueModel(critic.backbone, 0)


def test_completion_values_passes_position_ids_from_the_mask():
    # RoPE is shift-invariant, so the tiny Llama cannot tell; a recording stand-in checks the positions directly
    seen = {}

    def fake_critic(input_ids, attention_mask, position_ids=None):
        seen["position_ids"] = position_ids
        return torch.arange(input_ids.shape[1], dtype=torch.float32).view(1, -1, 1).expand(2, -1, 2)

    input_ids, attention_mask, P = _batch()
    values = completion_values(fake_critic, input_ids, attention_mask, P)
    assert seen["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3, 3]]
    assert values[0, :, 0].tolist() == [3.0, 4.0, 5.0]  # positions P - 1 .. P + C - 2
