"""MAH-DPO's per-head NLL term (objective.nll_coef, RPO-style) by hand, its config key, and the demo's pairs
(data/make_mah_prefs.py: far-miss `correct` pairs, the `chatty` column, the warm-up target)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from rlhf.objectives.mah_dpo import MAHDPO

ROOT = Path(__file__).resolve().parents[2]


def _pairs():
    pc = torch.tensor([[-1.0, -2.0], [-3.0, -1.5]], requires_grad=True)  # (B, K) policy chosen logps
    pr = torch.tensor([[-2.0, -1.0], [-2.0, -2.5]], requires_grad=True)  # (B, K) policy rejected logps
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])  # (B,) reference
    labels = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # (B, K): pair 0 -> head 0 (+1), pair 1 -> head 1 (-1)
    lengths_c, lengths_r = torch.tensor([2.0, 4.0]), torch.tensor([3.0, 5.0])  # (B,) completion tokens
    return pc, pr, rc, rr, labels, lengths_c, lengths_r


def test_nll_term_by_hand():
    pc, pr, rc, rr, labels, lc, lr = _pairs()
    dpo = MAHDPO(heads=("a", "b"), beta=0.5).loss(pc, pr, rc, rr, labels)
    out = MAHDPO(heads=("a", "b"), beta=0.5, nll_coef=2.0).loss(pc, pr, rc, rr, labels, None, lc, lr)
    # head 0, pair 0 (+1): the chosen is preferred: -(-1) / 2 = 0.5; head 1, pair 1 (-1): the rejected: -(-2.5) / 5
    want = float(dpo.loss.detach()) + 2.0 * (0.5 + 0.5) / 2
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-6)
    assert out.metrics["loss/nll"] == pytest.approx(0.5)
    assert out.metrics[f"loss/{MAHDPO.name}"] == pytest.approx(dpo.metrics[f"loss/{MAHDPO.name}"])
    out.loss.backward()
    # the NLL term pulls up head 0's chosen on pair 0 and head 1's rejected on pair 1, nothing unlabelled
    s = 1 / (1 + math.exp(0.5))
    assert float(pc.grad[0, 0]) == pytest.approx((-s * 0.5 - 2.0 / 2) / 2, rel=1e-6)
    assert pc.grad[0, 1] == 0 and pr.grad[0, 1] == 0 and pc.grad[1, 0] == 0 and pr.grad[1, 0] == 0
    # head 1, pair 1: logit = 0.5 * (-1) * 1; d(-log sigmoid)/d rejected = -sigmoid(0.5) * 0.5, NLL: -2.0 / 5
    assert float(pr.grad[1, 1]) == pytest.approx((-(1 - s) * 0.5 - 2.0 / 5) / 2, rel=1e-6)


def test_nll_coef_zero_is_plain_mah_dpo_and_lengths_are_required():
    pc, pr, rc, rr, labels, lc, lr = _pairs()
    plain = MAHDPO(heads=("a", "b"), beta=0.5)
    assert float(plain.loss(pc, pr, rc, rr, labels, None, lc, lr).loss.detach()) == \
        float(plain.loss(pc, pr, rc, rr, labels).loss.detach())
    assert "loss/nll" not in plain.loss(pc, pr, rc, rr, labels).metrics
    with pytest.raises(ValueError, match="nll_coef"):
        MAHDPO(heads=("a", "b"), nll_coef=1.0).loss(pc, pr, rc, rr, labels)
    with pytest.raises(ValueError, match="nll_coef"):
        MAHDPO(heads=("a", "b"), nll_coef=-1.0)
    # the trainer's entry point passes the lengths through
    out = MAHDPO(heads=("a", "b"), beta=0.5, nll_coef=1.0).pair_loss(pc, pr, rc, rr, pair_info=labels,
                                                                     chosen_lengths=lc, rejected_lengths=lr)
    assert out.metrics["loss/nll"] == pytest.approx(0.5)


def test_config_key():
    from test_multihead import _recipe as recipe  # a sibling module: the MAH-DPO recipe of the multi-head tests

    from rlhf.config import RecipeError
    from rlhf.config.registry import build_objective

    assert build_objective(recipe().objective).nll_coef == 0.0  # default: plain MAH-DPO
    assert build_objective(recipe(nll_coef=0.5).objective).nll_coef == 0.5
    with pytest.raises(RecipeError, match="nll_coef"):
        recipe(nll_coef=-1)


def _generator():
    spec = importlib.util.spec_from_file_location("make_mah_prefs", ROOT / "data" / "make_mah_prefs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_pairs_are_far_misses_and_match_the_generator(tmp_path, monkeypatch):
    gen = _generator()
    for split in ("train", "eval"):
        rows = [json.loads(x) for x in (ROOT / f"data/arithmetic_mah_prefs_{split}.jsonl").read_text().splitlines()]
        source = [json.loads(x) for x in (ROOT / f"data/arithmetic_prefs_{split}.jsonl").read_text().splitlines()]
        assert len(rows) == len(source)
        for row, src in zip(rows, source):
            assert (row["prompt"], row["chosen"], row["answer"]) == (src["prompt"], src["chosen"], src["answer"])
            if row["kind"] == "far_miss":
                assert row["correct"] == 1 and row["chatty"] == 0 and row["completion"] == row["chosen"]
                gap = abs(int(row["rejected"]) - int(row["answer"]))
                assert gap >= gen.FAR_GAP and gen.ANSWER_LO <= int(row["rejected"]) <= gen.ANSWER_HI
            else:
                assert row["kind"] == "chatter" and row["chatty"] == -1 and row["correct"] == 0
                assert row["rejected"] == src["rejected"] and row["completion"] in (row["chosen"], row["rejected"])
    # deterministic: the generator rewrites the committed files byte for byte
    for split in ("train", "eval"):
        (tmp_path / f"arithmetic_prefs_{split}.jsonl").write_text(
            (ROOT / f"data/arithmetic_prefs_{split}.jsonl").read_text())
    monkeypatch.setattr(gen, "DATA", tmp_path)
    gen.main()
    for split in ("train", "eval"):
        assert (tmp_path / f"arithmetic_mah_prefs_{split}.jsonl").read_text() == \
            (ROOT / f"data/arithmetic_mah_prefs_{split}.jsonl").read_text()
