"""Multi-head policies (MAH-DPO): head mixing, the per-head DPO loss by hand, save / load keeping the heads,
`rlhf export --mix` as an ordinary HF model, the hf engine's mix, and the config / registry entries."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.models.multihead import (HEADS_JSON, is_multihead_dir, load_multihead, merged_head, parse_mix, read_heads)
from rlhf.objectives.mah_dpo import MAHDPO, head_sequence_logps


@pytest.fixture()
def base_dir(tmp_path):
    """A tiny Llama with tied embeddings (as the tiny recipes build them), saved as an HF directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    path = tmp_path / "base"
    LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


def _spread(model) -> None:
    """Make the heads differ (as after training)."""
    with torch.no_grad():
        for k, head in enumerate(model.heads):
            head.weight.add_(torch.randn_like(head.weight) * (k + 1) * 0.5)


def test_heads_start_as_the_base_model(base_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = load_multihead(base_dir, ("a", "b"))
    ids = torch.randint(0, 16, (2, 5))  # (B, T)
    want = base(input_ids=ids).logits  # (B, T, V)
    got = model(input_ids=ids, all_heads=True).logits  # (B, K, T, V)
    assert got.shape == (2, 2, 5, 16)
    assert torch.allclose(got[:, 0], want, atol=1e-6) and torch.allclose(got[:, 1], want, atol=1e-6)
    # the extra heads are untied from the embeddings; the base's own lm_head is frozen and not in the forward
    assert model.heads[0].weight.data_ptr() != model.base.get_input_embeddings().weight.data_ptr()
    assert not model.base.get_output_embeddings().weight.requires_grad
    assert all(h.weight.requires_grad for h in model.heads)


def test_mix_of_logits_equals_merged_head(base_dir):
    model = load_multihead(base_dir, ("a", "b"))
    _spread(model)
    ids = torch.randint(0, 16, (3, 6))  # (B, T)
    per_head = model(input_ids=ids, all_heads=True).logits  # (B, K, T, V)
    model.set_mix([0.7, 0.3])
    mixed = model(input_ids=ids).logits  # (B, T, V)
    assert torch.allclose(mixed, 0.7 * per_head[:, 0] + 0.3 * per_head[:, 1], atol=1e-6)
    # by hand on one position: logits = (0.7 W_a + 0.3 W_b) h, with h the trunk's last hidden state
    hidden = model.trunk(input_ids=ids).last_hidden_state  # (B, T, H)
    W = merged_head(model.head_weights(), [0.7, 0.3])  # (V, H)
    assert torch.allclose(W, 0.7 * model.heads[0].weight + 0.3 * model.heads[1].weight)
    assert torch.allclose(mixed[1, 2], W @ hidden[1, 2], atol=1e-6)


def test_save_load_keeps_heads_and_plain_load_is_the_default_mix(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_multihead(base_dir, ("correct", "concise"), mix=(0.25, 0.75))
    _spread(model)
    out = tmp_path / "saved"
    model.save_pretrained(str(out))
    assert is_multihead_dir(str(out))
    meta = json.loads((out / HEADS_JSON).read_text())
    assert meta["heads"] == ["correct", "concise"] and meta["mix"] == [0.25, 0.75]
    ids = torch.randint(0, 16, (2, 5))
    again = load_multihead(str(out), ("correct", "concise"))
    assert again.mix == (0.25, 0.75)
    assert torch.allclose(again(input_ids=ids, all_heads=True).logits, model(input_ids=ids, all_heads=True).logits,
                          atol=1e-6)
    plain = AutoModelForCausalLM.from_pretrained(str(out))  # an ordinary load: the default mix in its lm_head
    assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    with pytest.raises(Exception, match="heads"):
        load_multihead(str(out), ("concise", "correct"))


def test_export_mix_is_an_ordinary_model_with_the_mixed_logits(base_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from rlhf.cli import main
    from rlhf.export import ExportError, export

    model = load_multihead(base_dir, ("a", "b"))
    _spread(model)
    src = tmp_path / "ckpt_model"
    model.save_pretrained(str(src))
    tok = PreTrainedTokenizerFast(tokenizer_object=_tokenizer(), pad_token="<pad>", eos_token="</s>")
    tok.save_pretrained(str(src))
    assert main(["export", str(src), "--out", str(tmp_path / "mixed"), "--mix", "0.7,0.3"]) == 0
    assert "mixed (a 0.7, b 0.3)" in capsys.readouterr().out
    assert not is_multihead_dir(str(tmp_path / "mixed"))
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "mixed"))
    ids = torch.randint(0, 16, (2, 5))
    model.set_mix([0.7, 0.3])
    assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    # without --mix the heads are kept
    export(str(src), str(tmp_path / "copy"))
    assert read_heads(str(tmp_path / "copy"))[0] == ("a", "b")
    with pytest.raises(ExportError, match="2 finite weights"):
        export(str(src), str(tmp_path / "bad"), mix="1,0,0")
    with pytest.raises(ExportError, match="not a multi-head"):
        export(base_dir, str(tmp_path / "bad2"), mix="1,0")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, **{str(i): 3 + i for i in range(10)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_hf_engine_generates_with_a_mix(base_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from rlhf.rollout.hf import HFEngine

    model = load_multihead(base_dir, ("a", "b"))
    _spread(model)
    src = tmp_path / "m"
    model.save_pretrained(str(src))
    PreTrainedTokenizerFast(tokenizer_object=_tokenizer(), pad_token="<pad>", eos_token="</s>").save_pretrained(src)
    engine = HFEngine(str(src), chat_template="none")
    ids = torch.tensor([[2, 5, 6, 7]])  # (1, T)
    for mix in ([1.0, 0.0], [0.2, 0.8]):
        engine.set_head_mix(mix)
        model.set_mix(mix)
        assert torch.allclose(engine.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_parse_mix():
    assert parse_mix("0.7, 0.3", ("a", "b")) == (0.7, 0.3)
    with pytest.raises(ValueError, match="one per head"):
        parse_mix("x,1", ("a", "b"))


# --------------------------------------------------------------------------- the loss


def test_mah_dpo_loss_by_hand():
    beta = 0.5
    obj = MAHDPO(heads=("correct", "concise"), beta=beta)
    # 2 pairs x 2 heads; pair 0 is labelled for head 0 only (+1), pair 1 for head 1 only (-1: rejected preferred)
    pc = torch.tensor([[-1.0, -2.0], [-3.0, -1.5]], requires_grad=True)  # (B, K) policy chosen logps
    pr = torch.tensor([[-2.0, -1.0], [-2.0, -2.5]], requires_grad=True)  # (B, K) policy rejected logps
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])  # (B,) reference
    labels = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # (B, K)
    out = obj.loss(pc, pr, rc, rr, labels)
    # head 0, pair 0: h = (-1 + 1.5) - (-2 + 1.5) = 1; logit = 0.5 * 1 * 1 = 0.5
    # head 1, pair 1: h = (-1.5 + 2) - (-2.5 + 2) = 1; logit = 0.5 * (-1) * 1 = -0.5
    want = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-6)
    out.loss.backward()
    # only head k's labelled pairs get gradient: pair 0 -> head 0 only, pair 1 -> head 1 only
    assert pc.grad[0, 1] == 0 and pc.grad[1, 0] == 0 and pc.grad[0, 0] < 0 and pc.grad[1, 1] > 0
    s = 1 / (1 + math.exp(0.5))  # d/dlogit of -log sigmoid(logit) at 0.5 is -(1 - sigmoid(0.5))
    assert float(pc.grad[0, 0]) == pytest.approx(-s * beta / 2, rel=1e-6)
    m = out.metrics
    assert m["head/correct/pair_acc/correct"] == 1.0  # head 0 ranks pair 0 as labelled
    assert m["head/concise/pair_acc/concise"] == 0.0  # head 1 has h = 1 but the label says rejected
    # head 0 on pair 1 (labelled by concise, -1): h = (-3 + 2) - (-2 + 2) = -1 -> y h = 1 > 0
    assert m["head/correct/pair_acc/concise"] == 1.0
    # head 1 on pair 0 (labelled by correct, +1): h = (-2 + 1.5) - (-1 + 1.5) = -1 -> wrong
    assert m["head/concise/pair_acc/correct"] == 0.0
    assert m["rewards/accuracy"] == 0.5


def test_unlabelled_column_gives_nothing_and_heads_at_reference_give_log2():
    obj = MAHDPO(heads=("a", "b"), beta=0.1)
    lp = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])  # (B, K): every head equals the reference
    ref = torch.tensor([-1.0, -2.0])  # (B,)
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # 3 labelled cells of 4
    out = obj.loss(lp, lp.flip(0), ref, ref.flip(0), labels)
    assert float(out.loss) == pytest.approx(3 * math.log(2) / 2)  # sum over labelled cells / B
    with pytest.raises(ValueError, match="pair_info"):
        obj.pair_loss(lp, lp, ref, ref)


def test_head_sequence_logps_match_single_head_forward(base_dir):
    from transformers import AutoModelForCausalLM

    from rlhf.objectives.common import token_logprobs
    from rlhf.objectives.dpo import sequence_logps

    model = load_multihead(base_dir, ("a", "b"))
    with torch.no_grad():
        model.heads[1].weight.mul_(1.5)
    ids = torch.randint(3, 16, (2, 6))  # (B, T)
    mask = torch.ones_like(ids)
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)  # (B, T)
    got = head_sequence_logps(model, ids, mask, loss_mask)  # (B, K)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    want0 = sequence_logps(token_logprobs(base, ids, mask), loss_mask[:, 1:])  # (B,)
    assert torch.allclose(got[:, 0], want0, atol=1e-5)
    model.set_mix([0.0, 1.0])
    want1 = sequence_logps(token_logprobs(model, ids, mask), loss_mask[:, 1:])  # head b alone as a mix
    assert torch.allclose(got[:, 1], want1, atol=1e-5)


# --------------------------------------------------------------------------- config and registry


def _recipe(**objective):
    from rlhf.config.load import validate_dict

    return validate_dict({
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4}},
        "data": {"source": "jsonl", "train_path": "data/arithmetic_prefs_train.jsonl"},
        "objective": {"kind": "mah_dpo", "heads": ["correct", "concise"], "batch_size": 8, **objective},
        "train": {"backend": "torch", "num_ranks": 1},
    }, "test")


def test_config_and_capabilities():
    from rlhf.config import RecipeError
    from rlhf.config.registry import build_objective, capabilities

    r = _recipe(preference_columns={"correct": "correct"})
    caps = capabilities(r.objective)
    assert caps.stage == "preference" and caps.data == "head_pairs" and caps.needs_reference
    assert caps.policy_heads == ("correct", "concise") and caps.score_heads == ()
    assert r.objective.column_of("concise") == "concise"
    assert r.objective.resolved_eval_mixes() == [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    assert build_objective(r.objective).mix == (0.5, 0.5)
    with pytest.raises(RecipeError, match="mix"):
        _recipe(mix=[1.0])
    with pytest.raises(RecipeError, match="not heads"):
        _recipe(preference_columns={"other": "x"})
    with pytest.raises(RecipeError, match="zero_stage 3"):
        from rlhf.config.load import validate_dict

        d = _recipe().model_dump(mode="json")
        d["train"] = {"backend": "deepspeed", "zero_stage": 3, "num_ranks": 1}
        validate_dict(d, "test")
