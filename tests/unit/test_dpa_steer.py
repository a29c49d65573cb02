"""bench/dpa_steer.py's sampled evaluation (``sampled_scores``): n completions per held-out prompt at each eval
vector, every component's mean over all of them (the expected rate, every prompt counting n times) and the
Spearman of those means, checked on a hand-made policy against hand-computed values.

Run: python -m pytest tests/unit/test_dpa_steer.py -q
"""

import math
import re
from types import SimpleNamespace

import pytest
import torch

from bench.dpa_steer import sampled_scores
from rlhf.data.conditioning import PreferenceConditioner
from rlhf.types import RewardVector

NAMES = ["correct", "chatty", "terse"]
VECTORS = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
# the hand-made policy: per level prefix and prompt, the styles of its n = 4 samples (c: "19 ok", t: "19",
# x: "19 19 19" cut off, neither style); correct is 1 on the first sample of every prompt only
STYLES = {"<E A>": {"q0": "cccc", "q1": "ccxx"},    # chatty 6/8 = 0.75,  terse 0/8 = 0
          "<C C>": {"q0": "cctt", "q1": "cttx"},    # chatty 3/8 = 0.375, terse 4/8 = 0.5
          "<A E>": {"q0": "cttt", "q1": "cttx"}}    # chatty 2/8 = 0.25,  terse 5/8 = 0.625
TEXT = {"c": "19 ok", "t": "19", "x": "19 19 19"}


class Policy:
    """A rollout function over the table above; records the sampling settings it was asked for."""

    tokenizer = None

    def __init__(self):
        self.settings = []

    def __call__(self, rows, settings):
        self.settings.append(settings)
        prefix = rows[0]["prompt"].split(" ")[0] + " " + rows[0]["prompt"].split(" ")[1]
        completions, first, extras = [], [], {"preference": []}
        for row in rows:
            styles = STYLES[prefix][row["prompt"].rsplit(" ", 1)[1]]
            assert len(styles) == settings.n
            completions += [TEXT[s] for s in styles]
            first += [1.0] + [0.0] * (settings.n - 1)
            extras["preference"] += [row["preference"]] * settings.n
        lengths = torch.tensor([len(c.split()) for c in completions])
        return SimpleNamespace(completions=completions, first=first, extras=extras, completion_lengths=lengths)


def fake_score(rewards, rollout_fn, rollout):
    """The style recipe's components: chatty = a finished answer and a remark, terse = a bare integer."""
    values = [[f, float(bool(re.fullmatch(r"-?[0-9]+ [a-z]+", c))), float(bool(re.fullmatch(r"-?[0-9]+", c)))]
              for f, c in zip(rollout.first, rollout.completions)]
    return RewardVector(tuple(NAMES), ("reward",) * 3, torch.tensor(values)), {}


def test_sampled_means_and_spearman_by_hand(monkeypatch):
    from rlhf.runtime import collect

    monkeypatch.setattr(collect, "score_rollout", fake_score)
    conditioner = PreferenceConditioner(["chatty", "terse"], NAMES, distribution="fixed", vectors=VECTORS, levels=4,
                                        template="<{chatty} {terse}> {prompt}", eval_vectors=VECTORS)
    policy = Policy()
    rows = [{"prompt": "q0"}, {"prompt": "q1"}]
    out = sampled_scores(policy, None, rows, conditioner, 4, 0.7, 12, ("\n",), 3, NAMES)

    assert [(s.n, s.temperature, s.greedy, s.max_new_tokens, s.stop, s.seed) for s in policy.settings] == \
        [(4, 0.7, False, 12, ("\n",), 3)] * 3  # one sampled call per vector
    got = [p[name] for p in out["per_vector"] for name in NAMES]  # (correct, chatty, terse) per vector
    assert got == pytest.approx([0.25, 0.75, 0.0, 0.25, 0.375, 0.5, 0.25, 0.25, 0.625])
    # completion tokens: "19 ok" 2, "19" 1, "19 19 19" 3; at (1, 0): (2*4 + 2*2 + 3*2) / 8
    assert out["per_vector"][0]["completion_tokens_mean"] == pytest.approx(18 / 8)
    # chatty falls strictly as its weight falls: 1; terse 0 < 0.5 < 0.625 as its weight rises: 1
    assert out["spearman"] == pytest.approx({"chatty": 1.0, "terse": 1.0})
    assert out["range"] == pytest.approx({"chatty": 0.5, "terse": 0.625})
    assert (out["n"], out["temperature"]) == (4, 0.7)


def test_sampled_ties_lower_the_spearman(monkeypatch):
    """A tie at the terse end (the middle and last vectors equal): ranks (1, 2.5, 2.5) against (1, 2, 3),
    Spearman 1.5 / sqrt(2 * 1.5) = 0.866."""
    from rlhf.runtime import collect

    monkeypatch.setattr(collect, "score_rollout", fake_score)
    monkeypatch.setitem(STYLES, "<A E>", {"q0": "cctt", "q1": "cttx"})  # the same as "<C C>"
    conditioner = PreferenceConditioner(["chatty", "terse"], NAMES, distribution="fixed", vectors=VECTORS, levels=4,
                                        template="<{chatty} {terse}> {prompt}", eval_vectors=VECTORS)
    out = sampled_scores(Policy(), None, [{"prompt": "q0"}, {"prompt": "q1"}], conditioner, 4, 1.0, 12, (), 0,
                         NAMES)
    assert out["spearman"]["terse"] == pytest.approx(1.5 / math.sqrt(3))
    assert out["spearman"]["chatty"] == pytest.approx(1.5 / math.sqrt(3))  # (0.75, 0.375, 0.375) vs (1, 0.5, 0)
