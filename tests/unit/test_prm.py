"""PRM data, loss and scorer: tag positions, labels, the step-tag loss by hand, and that the `prm` reward plugin
reads exactly the positions and probabilities training optimises."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.data.prm import check_row, collate_prm, encode_steps, make_step_labelled, single_token
from rlhf.objectives.prm import PRM, prm_logit_margin, prm_loss

CORPUS = ["3+4-5=3+4=7\n7-5=2", "12+1-6=12+1=13\n13-6=7", "9-2+2=9-2=7\n7+2=9"] * 10


@pytest.fixture(scope="module")
def tiny_prm_dir(tmp_path_factory):
    from rlhf.config.schema import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny

    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_position_embeddings=64,
                          tokenizer_vocab_size=40)
    return materialize_tiny(cfg, CORPUS, str(tmp_path_factory.mktemp("prm") / "model"), seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_prm_dir):
    from rlhf.models.load import load_tokenizer

    return load_tokenizer(tiny_prm_dir)


def test_encode_steps_puts_each_tag_after_its_step(tokenizer):
    ids, positions = encode_steps(tokenizer, "3+4-5=", ["3+4=7", "7-5=2"], "\n")
    tag = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(positions) == 2 and positions[-1] == len(ids) - 1
    for p in positions:
        assert ids[p - len(tag) + 1 : p + 1] == tag
    between = tokenizer.decode(ids[positions[0] + 1 : positions[1] + 1 - len(tag)])
    assert between == "7-5=2"
    with pytest.raises(ValueError, match="step tag"):
        encode_steps(tokenizer, "p", ["s"], "")


def test_collate_marks_tags_and_labels_and_cuts_long_rows(tokenizer):
    rows = [{"prompt": "3+4-5=", "steps": ["3+4=7", "7-5=2"], "labels": [1, 0]},
            {"prompt": "9-2=", "steps": ["9-2=7"], "labels": [True]}]
    batch = collate_prm(tokenizer, rows, "\n", "+", "-", max_len=64)
    assert batch.tag_mask.sum(1).tolist() == [2.0, 1.0]
    assert batch.labels[batch.tag_mask.bool()].tolist() == [1.0, 0.0, 1.0]
    assert batch.candidates.tolist() == [single_token(tokenizer, "+", "g"), single_token(tokenizer, "-", "b")]
    _, positions = encode_steps(tokenizer, rows[0]["prompt"], rows[0]["steps"], "\n")
    cut = collate_prm(tokenizer, rows[:1], "\n", "+", "-", max_len=positions[0] + 1)
    assert cut.tag_mask.sum().item() == 1.0  # the second step's tag fell past max_len
    assert batch.slice(1, 2).batch_size == 1


def test_bad_rows_and_tokens_are_named(tokenizer):
    with pytest.raises(ValueError, match="row 3.*one label per step"):
        check_row({"prompt": "p", "steps": ["a", "b"], "labels": [1]}, 3)
    with pytest.raises(ValueError, match="row 0.*list of strings"):
        check_row({"prompt": "p", "steps": "a"}, 0)
    with pytest.raises(ValueError, match="good token '\\+\\+ok' must be a single token"):
        single_token(tokenizer, "++ok", "the PRM's good token")


def test_synthetic_labels_follow_the_first_error():
    rows = [{"prompt": "3+4-5=", "completion": "3+4=7\n7-5=2", "answer": "2"}] * 200
    labelled = make_step_labelled(rows, seed=0, error_rate=0.5)
    bad = [r for r in labelled if 0 in r["labels"]]
    assert 60 < len(bad) < 140
    from rewards.verifiable.arithmetic_steps import check_steps

    for r in labelled:
        first = r["labels"].index(0) if 0 in r["labels"] else len(r["labels"])
        assert r["labels"] == [1] * first + [0] * (len(r["labels"]) - first)
        checked = check_steps(r["prompt"], r["steps"])  # the rule checker agrees with the labels
        assert checked == [float(x) for x in r["labels"]]


def test_prm_loss_by_hand():
    margin = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    tags = torch.tensor([[1.0, 0.0, 1.0]])
    loss, metrics = prm_loss(margin, labels, tags)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2  # -log sig(2), -log(1 - sig(-1))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert metrics["prm/step_acc"] == 1.0 and metrics["prm/steps"] == 2.0 and metrics["prm/good_rate"] == 0.5
    logits = torch.zeros(1, 1, 5)
    logits[0, 0, 3], logits[0, 0, 1] = 1.5, -0.5
    assert prm_logit_margin(logits, torch.tensor([3, 1])).item() == pytest.approx(2.0)


def test_prm_objective_trains_and_the_scorer_reads_the_same_probabilities(tiny_prm_dir, tokenizer):
    from rewards.models.prm import PRMScorer
    from rlhf.models.load import load_causal_lm

    rows = [{"prompt": "3+4-5=", "steps": ["3+4=7", "7-5=2"], "labels": [1, 1]},
            {"prompt": "12+1-6=", "steps": ["12+1=14", "14-6=8"], "labels": [0, 0]}]
    model = load_causal_lm(tiny_prm_dir, "float32")
    batch = collate_prm(tokenizer, rows, "\n", "+", "-", max_len=64)
    out = PRM().loss_sft(model, batch)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    scorer = PRMScorer(model=tiny_prm_dir, step_tag="\n", batch_size=1)
    scorer.setup()
    scores = scorer([r["prompt"] for r in rows] + ["x"], ["", "", ""],
                    steps=[r["steps"] for r in rows] + [[]])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        p = torch.sigmoid(prm_logit_margin(logits, batch.candidates))  # (B, T)
    for b in range(2):
        assert scores[b] == pytest.approx(p[b][batch.tag_mask[b].bool()].tolist(), abs=1e-5)
    assert scores[2] == 0.0  # no steps: an outcome value


def test_token_classification_prm(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForTokenClassification

    from rewards.models.prm import PRMScorer

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_labels=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForTokenClassification(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scorer = PRMScorer(model=str(tmp_path), mode="token_classification", good_label=1)
    scorer.setup()
    scores = scorer(["3+4-5="], [""], steps=[["3+4=7", "7-5=2"]])
    assert len(scores[0]) == 2 and all(0 < s < 1 for s in scores[0])
    with pytest.raises(ValueError, match="good_label 5"):
        PRMScorer(model=str(tmp_path), mode="token_classification", good_label=5).setup()
    with pytest.raises(ValueError, match="mode 'x'"):
        PRMScorer(model=str(tmp_path), mode="x")
