"""Reward-model training and scoring: the Bradley-Terry loss by hand and against TRL's RewardTrainer on the same
model and tensors, per-head labels and margins, the saved model loading as a HF sequence-classification model, and
the `reward_model` plugin scoring K heads in one forward pass exactly as K separate forward passes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlhf.data.preference import check_rm_rows, collate_rm
from rlhf.objectives.rm import RewardModelObjective, bradley_terry_loss, sequence_scores

CORPUS = ["20+24=44", "13-0=13 is it", "3+4=7 ok", "9-2=7", "45 43 12 !"] * 10
ROWS = [
    {"prompt": "20+24=", "chosen": "44", "rejected": "45", "correct": 1, "concise": 0, "m": 0.5},
    {"prompt": "13-0=", "chosen": "13", "rejected": "13 is it", "correct": None, "concise": 1, "m": 0.0},
    {"prompt": "3+4=", "chosen": "7", "rejected": "7 ok", "correct": 0, "concise": 1, "m": 1.0},
    {"prompt": "9-2=", "chosen": "8", "rejected": "7", "correct": -1, "concise": 0, "m": 0.0},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rlhf.config.schema import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny

    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_position_embeddings=64,
                          tokenizer_vocab_size=40)
    return materialize_tiny(cfg, CORPUS, str(tmp_path_factory.mktemp("rm") / "model"), seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from rlhf.models.load import load_tokenizer

    return load_tokenizer(tiny_dir)


def _rm(tiny_dir, tokenizer, heads):
    from rlhf.models.reward import load_reward_model

    torch.manual_seed(0)
    return load_reward_model(tiny_dir, heads, pad_token_id=tokenizer.pad_token_id)


def test_bradley_terry_by_hand():
    chosen = torch.tensor([[1.0, 0.5], [0.0, 2.0]])  # (B=2, K=2)
    rejected = torch.tensor([[0.0, 1.5], [1.0, -1.0]])
    labels = torch.tensor([[1.0, -1.0], [0.0, 1.0]])  # cell (1, 0) has no preference
    margin = torch.tensor([0.5, 0.0])
    loss, m = bradley_terry_loss(chosen, rejected, labels, margin, center_coef=0.1, heads=("a", "b"))
    nll = lambda d: -math.log(1 / (1 + math.exp(-d)))  # noqa: E731
    leads = [1.0, 1.0, 3.0]  # y * (c - r): (0,0) 1-0, (0,1) -(0.5-1.5), (1,1) 2-(-1)
    want = (nll(1.0 - 0.5) + nll(1.0 - 0.5) + nll(3.0)) / 3 + 0.1 * (1.0 ** 2 + 2.0 ** 2 + 1.0 ** 2) / 3
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert m["rm/acc"] == 1.0 and m["rm/margin"] == pytest.approx(sum(leads) / 3)
    assert m["rm/a/pairs"] == 1 and m["rm/b/pairs"] == 2 and m["rm/b/margin"] == pytest.approx(2.0)
    wrong, m2 = bradley_terry_loss(rejected, chosen, labels)  # swapped: every labelled pair misordered
    assert m2["rm/acc"] == 0.0 and float(wrong) > float(loss)
    _, none = bradley_terry_loss(chosen, rejected, torch.zeros_like(labels), heads=("a", "b"))
    assert math.isnan(none["rm/acc"]) and math.isnan(none["rm/a/acc"])


def test_loss_matches_trl_reward_trainer_on_the_same_model(tiny_dir, tokenizer):
    """TRL 1.16's RewardTrainer.compute_loss (margin + centring) on the same model and pairs."""
    from trl.trainer.reward_trainer import RewardTrainer

    rows = ROWS[:3]
    model = _rm(tiny_dir, tokenizer, ("score",)).eval()
    batch = collate_rm(tokenizer, rows, 32, ("score",), {}, "m")
    ours = RewardModelObjective(("score",), center_coef=0.01).loss_sft(model, batch).loss

    ids, mask, _ = batch.pairs.stacked()
    same = lambda t: t  # noqa: E731  (one process: gathering is the identity)
    fake = SimpleNamespace(model=model, args=SimpleNamespace(center_rewards_coefficient=0.01),
                           accelerator=SimpleNamespace(gather_for_metrics=same, gather=same),
                           _metrics={"eval": _AnyList(), "train": _AnyList()}, _total_train_tokens=0, _tp_size=1)
    theirs = RewardTrainer.compute_loss(fake, model, {"input_ids": ids, "attention_mask": mask,
                                                      "margin": batch.margin})
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


class _AnyList(dict):
    def __missing__(self, key):
        self[key] = []
        return self[key]


def test_per_head_labels_margins_and_bad_rows(tokenizer):
    batch = collate_rm(tokenizer, ROWS, 32, ("correct", "concise", "any"), {"correct": "correct",
                                                                            "concise": "concise"}, "m")
    assert batch.labels.tolist() == [[1, 0, 1], [0, 1, 1], [0, 1, 1], [-1, 0, 1]]
    assert batch.margin.tolist() == [0.5, 0.0, 1.0, 0.0]
    half = batch.slice(1, 3)
    assert half.batch_size == 2 and half.labels.shape == (2, 3) and half.margin.tolist() == [0.0, 1.0]
    from rlhf.data import DataLoadError

    with pytest.raises(DataLoadError, match=r"prefs.jsonl: row 1 column 'correct' is 'yes'"):
        check_rm_rows([ROWS[0], {**ROWS[1], "correct": "yes"}], "prefs.jsonl", ("correct",),
                      {"correct": "correct"}, None)
    with pytest.raises(DataLoadError, match="row 0 has no preference column 'x'"):
        check_rm_rows(ROWS, "prefs.jsonl", ("a",), {"a": "x"}, None)
    with pytest.raises(DataLoadError, match="margin column 'm' is None"):
        check_rm_rows([{**ROWS[0], "m": None}], "prefs.jsonl", ("a",), {}, "m")
    with pytest.raises(DataLoadError, match="margin column 'm' is nan; it must be a finite number"):
        check_rm_rows([{**ROWS[0], "m": float("nan")}], "prefs.jsonl", ("a",), {}, "m")


def test_unlabelled_cells_and_nan_scores_leak_nothing():
    """A NaN score in a cell without a label neither reaches the loss nor its gradient; a batch without any
    labelled cell logs NaN (left out of the means), not a loss of 0."""
    chosen = torch.tensor([[1.0, float("nan")]], requires_grad=True)  # (1, 2)
    rejected = torch.tensor([[0.0, 0.0]])
    loss, m = bradley_terry_loss(chosen, rejected, torch.tensor([[1.0, 0.0]]), center_coef=0.1)
    loss.backward()
    assert math.isfinite(float(loss)) and torch.isfinite(chosen.grad).all()
    _, empty = bradley_terry_loss(chosen.detach(), rejected, torch.zeros(1, 2))
    assert math.isnan(empty["loss/rm"]) and math.isnan(empty["rm/acc"])
    from rlhf.train.group import _mean_metrics

    assert _mean_metrics([{"rm/a/acc": float("nan"), "x": 1.0}, {"rm/a/acc": 0.5, "x": 3.0}]) == {"rm/a/acc": 0.5,
                                                                                                "x": 2.0}


def test_training_step_and_saved_model_loads_in_transformers(tiny_dir, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhf.models.load import ModelLoadError
    from rlhf.models.reward import head_names, load_reward_model

    heads = ("correct", "concise")
    model = _rm(tiny_dir, tokenizer, heads)
    batch = collate_rm(tokenizer, ROWS, 32, heads, {"correct": "correct", "concise": "concise"}, None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    objective = RewardModelObjective(heads)
    first = objective.loss_sft(model, batch)
    for _ in range(30):
        out = objective.loss_sft(model, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.loss) < float(first.loss) and out.metrics["rm/acc"] == 1.0
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert head_names(loaded.config) == heads
    ids, mask, _ = batch.pairs.stacked()
    with torch.no_grad():
        assert torch.allclose(sequence_scores(loaded, ids, mask), sequence_scores(model.eval(), ids, mask), atol=1e-6)
    with pytest.raises(ModelLoadError, match=r"has heads \['correct', 'concise'\], the recipe asks for \['score'\]"):
        load_reward_model(str(tmp_path), ("score",))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="is a LoRA adapter.*rlhf export"):
        load_reward_model(str(adapter), heads)


def test_plugin_scores_k_heads_in_one_forward_like_k_separate_passes(tiny_dir, tokenizer, tmp_path):
    from rewards.models import reward_model as plugin

    heads = ("correct", "concise", "polite")
    model = _rm(tiny_dir, tokenizer, heads).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts, completions = [r["prompt"] for r in ROWS], [r["chosen"] for r in ROWS]

    calls = []
    scorers = [plugin.RewardModelScorer(model=str(tmp_path), head=h, batch_size=3) for h in heads]
    for s in scorers:
        s.setup()
    shared, _ = plugin._MODELS[scorers[0].key]
    hook = shared.register_forward_hook(lambda *a: calls.append(1))
    values = [s(prompts, completions) for s in scorers]
    hook.remove()
    assert len(calls) == 2  # one pass over the 4 samples (batch_size 3 -> 2 forwards), not one per head

    # K separate passes: each head alone, one sample at a time, through the training collation
    batch = collate_rm(tokenizer, [{**r, "rejected": r["chosen"] + " x"} for r in ROWS], 32, heads, {}, None)
    with torch.no_grad():
        for b in range(len(ROWS)):
            ids = batch.pairs.chosen_ids[b : b + 1, : int(batch.pairs.chosen_mask[b].sum())]
            alone = sequence_scores(model, ids, torch.ones_like(ids))[0]  # (K,)
            for k in range(len(heads)):
                assert values[k][b] == pytest.approx(float(alone[k]), abs=1e-5)
    by_index = plugin.RewardModelScorer(model=str(tmp_path), head=2, squash="sigmoid")
    by_index.setup()
    assert by_index(prompts, completions) == pytest.approx([1 / (1 + math.exp(-v)) for v in values[2]])
    assert plugin.RewardModelScorer.shared_worker({"model": "m"}) == "reward_model:m"
    # components of one model with other input settings never read each other's cached scores
    short = plugin.RewardModelScorer(model=str(tmp_path), head=0, max_length=4)
    short.setup()
    long_prompt = ["1+2+3+4+5+6+7+8="]
    assert short(long_prompt, ["36"]) == [None]  # the prompt alone fills max_length: nothing to judge
    assert short(prompts, completions) != values[0][:1] * len(prompts)
    assert scorers[0](prompts, completions) == values[0]
    with pytest.raises(ValueError, match=r"head 'nope' is not one of .*\['correct', 'concise', 'polite'\]"):
        plugin.RewardModelScorer(model=str(tmp_path), head="nope").setup()
