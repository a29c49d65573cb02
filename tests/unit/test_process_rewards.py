"""Process rewards: segmentation, steps -> token positions under tricky tokenizers, transforms, step advantages.

Hand computations throughout; the Delta test shows the transform bounds a step-repeating completion's total reward
while the raw PRM sum grows with every repeat.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from rlhf.advantages.process import (
    Segmenter,
    StepLocator,
    dense_step_rewards,
    process_advantages,
    sequence_part,
    step_group_normalize,
    step_token_advantages,
    summarize_steps,
    transform_steps,
)
from rlhf.types import RewardVector

NAN = math.nan


# --------------------------------------------------------------------------- segmentation


def _texts(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[a:b] for a, b in spans]


def test_newline_segmenter_trims_and_skips_blank_lines():
    text = "  3+4=7 \n\n7-5=2\n   \n"
    spans = Segmenter("newline")(text)
    assert _texts(text, spans) == ["3+4=7", "7-5=2"]
    assert spans == [(2, 7), (10, 15)]


def test_delimiter_and_regex_segmenters():
    text = "Step 1: a\n\nStep 2: b\nstill b\n\nStep 3: c"
    assert _texts(text, Segmenter("delimiter", delimiter="\n\n")(text)) == ["Step 1: a", "Step 2: b\nstill b",
                                                                           "Step 3: c"]
    by_regex = Segmenter("regex", pattern=r"\n+(?=Step \d)")(text)
    assert _texts(text, by_regex) == ["Step 1: a", "Step 2: b\nstill b", "Step 3: c"]
    assert Segmenter("newline")("") == []
    assert _texts("no breaks", Segmenter("newline")("no breaks")) == ["no breaks"]


def test_function_segmenter_locates_pieces_in_order(monkeypatch):
    mod = types.ModuleType("_user_seg")
    mod.split = lambda text: [p for p in text.split(";")]
    mod.bad = lambda text: ["not there"]
    monkeypatch.setitem(sys.modules, "_user_seg", mod)
    text = "a=1; a=1; b=2"
    spans = Segmenter("function", function="_user_seg:split")(text)
    assert _texts(text, spans) == ["a=1", "a=1", "b=2"]
    assert spans[0] != spans[1]  # the repeated piece is found after the previous one
    with pytest.raises(ValueError, match="not a substring"):
        Segmenter("function", function="_user_seg:bad")(text)


def test_segmenter_config_errors_name_the_key():
    with pytest.raises(ValueError, match="process.delimiter"):
        Segmenter("delimiter")
    with pytest.raises(ValueError, match="not a valid regex"):
        Segmenter("regex", pattern="(")
    with pytest.raises(ValueError, match="process.function"):
        Segmenter("function")


# --------------------------------------------------------------------------- steps -> tokens


def _assert_ends_hold_last_char(tok, ids: list[int], char_ends: list[int], token_ends: list[int]) -> None:
    """Token e is the first whose decoded prefix reaches the step's end: it holds the step's last character."""
    for end, t in zip(char_ends, token_ends):
        assert len(tok.decode(ids[: t + 1], skip_special_tokens=True)) >= end
        assert t == 0 or len(tok.decode(ids[:t], skip_special_tokens=True)) < end


def _locate(tok, text: str, segmenter: Segmenter) -> tuple[list[int], list[int], list[int]]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text  # the engines' decoding reproduces the text
    char_ends = [b for _, b in segmenter(text)]
    padded = torch.tensor([ids + [0, 0]])
    mask = torch.tensor([[1] * len(ids) + [0, 0]])
    token_ends = StepLocator(tok, padded, mask)([char_ends])[0].tolist()
    return ids, char_ends, token_ends


def test_locator_with_the_tiny_metaspace_tokenizer():
    from rlhf.models.tiny import train_tokenizer

    tok = train_tokenizer(["3+4=7\n7-5=2 ok", "12+1=13\n13-6=7"] * 20, 40)
    text = "3+4=7\n7-5=2"
    ids, char_ends, token_ends = _locate(tok, text, Segmenter("newline"))
    assert char_ends == [5, 11]
    assert token_ends[-1] == len(ids) - 1
    _assert_ends_hold_last_char(tok, ids, char_ends, token_ends)


def _bpe_without_pretokenizer(corpus: list[str], vocab: int):
    """A BPE free to merge across spaces and newlines: tokens span step boundaries."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.decoder = decoders.Fuse()  # tokens are glued back together as they are
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<unk>"],
                                                         show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


def test_locator_when_one_token_spans_a_step_boundary():
    tok = _bpe_without_pretokenizer(["x=1.\ny=2.\nx=1.\ny=2.\n"] * 50, 60)
    text = "x=1.\ny=2."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert any("\n" in p and len(p) > 1 for p in pieces), pieces  # the boundary is inside a token
    ids, char_ends, token_ends = _locate(tok, text, Segmenter("newline"))
    _assert_ends_hold_last_char(tok, ids, char_ends, token_ends)
    assert token_ends[0] < token_ends[1] == len(ids) - 1


def test_locator_with_multibyte_characters_split_over_tokens():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["plain ascii words only\n"] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>"],
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", clean_up_tokenization_spaces=False)
    text = "café ok\n😀 done\nnaïve"
    ids, char_ends, token_ends = _locate(tok, text, Segmenter("newline"))
    assert len(ids) > len(text.encode("utf-8")) // 2  # byte-level: the accented letters and emoji take several
    _assert_ends_hold_last_char(tok, ids, char_ends, token_ends)
    # the emoji step's first char is 4 bytes; the step "😀 done" must end exactly at its 'e'
    assert tok.decode(ids[: token_ends[1] + 1]).endswith("done")


def test_locator_rows_and_padding():
    class CharTok:  # one token per character: token index == character index
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    text_a, text_b = "ab\ncd", "x"
    ids = torch.tensor([[ord(c) for c in text_a], [ord("x"), 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 5, [1, 0, 0, 0, 0]])
    ends = StepLocator(CharTok(), ids, mask)([[2, 5], [1]])
    assert ends.tolist() == [[1, 4], [0, -1]]


# --------------------------------------------------------------------------- transforms


def test_clip_and_delta_by_hand():
    scores = torch.tensor([[0.9, 0.2, 0.7, NAN], [0.5, NAN, NAN, NAN]])
    clipped = transform_steps(scores, "clip", clip_threshold=0.5)
    assert torch.allclose(clipped[0, :3], torch.tensor([0.0, -0.3, 0.0]))
    assert clipped[1, 0] == 0.0 and torch.isnan(clipped[0, 3])
    delta = transform_steps(scores, "delta")
    assert torch.allclose(delta[0, :3], torch.tensor([0.7, -0.5, 0.7]))  # 0.9-0.2, 0.2-0.7, last kept
    assert delta[1, 0] == pytest.approx(0.5) and torch.isnan(delta[0, 3])
    assert torch.equal(transform_steps(scores, "none").nan_to_num(-1), scores.nan_to_num(-1))
    with pytest.raises(ValueError, match="unknown step transform"):
        transform_steps(scores, "sqrt")


def test_delta_bounds_a_completion_that_repeats_a_step():
    """A PRM gives a plausible step 0.8 however often it is repeated: the raw sum grows without bound, while under
    Delta the sum over the completion telescopes to the first step's score."""
    for repeats in (1, 5, 50):
        scores = torch.tensor([[0.8] * repeats + [0.3]])  # repeated filler, then a weak final step
        raw_total = float(scores.sum())
        delta_total = float(transform_steps(scores, "delta").sum())
        assert raw_total == pytest.approx(0.8 * repeats + 0.3)
        assert delta_total == pytest.approx(0.8)  # r_1 whatever the length
    clip_total = float(transform_steps(torch.tensor([[0.8] * 50]), "clip", clip_threshold=0.9).sum())
    assert clip_total <= 0  # clip: repeating can only cost


def test_summaries():
    assert summarize_steps([0.9, 0.2, 0.7], "min") == pytest.approx(0.2)
    assert summarize_steps([0.9, 0.2, 0.7], "last") == pytest.approx(0.7)
    assert summarize_steps([0.5, 0.5], "product") == pytest.approx(0.25)
    assert summarize_steps([1.0, 0.0], "mean") == pytest.approx(0.5)
    assert summarize_steps([1.0, 2.0], "sum") == pytest.approx(3.0)
    assert math.isnan(summarize_steps([], "min"))


# --------------------------------------------------------------------------- advantages


def test_step_group_normalisation_by_hand():
    # group 0: rows 0 and 1 with steps [1, 0] and [1]; group 1: row 2 with [0, 0, 1]
    steps = torch.tensor([[1.0, 0.0, NAN], [1.0, NAN, NAN], [0.0, 0.0, 1.0]])
    ends = torch.tensor([[2, 4, -1], [3, -1, -1], [1, 2, 5]])
    groups = torch.tensor([0, 0, 1])
    out = step_group_normalize(steps, ends, groups, scale_std=True, eps=0.0)
    # group 0 values [1, 0, 1]: mean 2/3, unbiased std sqrt(1/3)
    s0 = math.sqrt(1 / 3)
    assert out[0, 0] == pytest.approx((1 - 2 / 3) / s0, rel=1e-5)
    assert out[0, 1] == pytest.approx((0 - 2 / 3) / s0, rel=1e-5)
    assert out[1, 0] == pytest.approx((1 - 2 / 3) / s0, rel=1e-5)
    assert out[0, 2] == 0 and out[1, 1] == 0  # padding stays 0
    # group 1 values [0, 0, 1]: mean 1/3, std sqrt(1/3)
    assert out[2, 2] == pytest.approx((1 - 1 / 3) / s0, rel=1e-5)
    centred = step_group_normalize(steps, ends, groups, scale_std=False)
    assert centred[0, 1] == pytest.approx(-2 / 3)


def test_token_advantage_is_the_sum_of_the_steps_still_to_come():
    norm = torch.tensor([[0.5, -1.0, 2.0]])
    ends = torch.tensor([[1, 3, 4]])
    adv = step_token_advantages(norm, ends, width=7)
    # tokens 0-1 -> steps 1..3: 1.5; tokens 2-3 -> steps 2..3: 1.0; token 4 -> step 3: 2.0; after: 0
    assert adv[0].tolist() == pytest.approx([1.5, 1.5, 1.0, 1.0, 2.0, 0.0, 0.0])


def test_two_steps_ending_on_the_same_token_both_count():
    adv = step_token_advantages(torch.tensor([[1.0, 2.0]]), torch.tensor([[2, 2]]), width=4)
    assert adv[0].tolist() == pytest.approx([3.0, 3.0, 3.0, 0.0])


def test_process_advantages_weights_components_and_rejects_out_of_range_ends():
    steps = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (B=2, S=1, Kp=2)
    ends = torch.tensor([[1], [0]])
    groups = torch.tensor([0, 0])
    adv = process_advantages(steps, ends, groups, weights=[2.0, 0.0], width=3, scale_std=False)
    # component 0 centred within the group: +0.5, -0.5; weight 2
    assert torch.allclose(adv, torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="beyond the completion width"):
        process_advantages(steps, torch.tensor([[5], [0]]), groups, [1.0, 1.0], width=3)


def test_dense_rewards_sit_on_step_ends():
    steps = torch.tensor([[[1.0], [0.5]], [[NAN], [NAN]]])  # (B=2, S=2, Kp=1)
    ends = torch.tensor([[0, 2], [-1, -1]])
    r = dense_step_rewards(steps, ends, [2.0], width=4)
    assert r.tolist() == [[2.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def _vector() -> RewardVector:
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, NAN], [0.0, NAN]])  # (B=4, K=2): correct, steps
    steps = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]], [[NAN], [NAN]], [[NAN], [NAN]]])  # (4, 2, 1)
    ends = torch.tensor([[1, 3], [0, 2], [-1, -1], [-1, -1]])
    return RewardVector(("correct", "steps"), ("reward", "process"), values, steps, ends)


def test_grpo_step_level_advantages_by_hand():
    from rlhf.objectives.grpo import GRPO
    from rlhf.weighting.static import StaticWeighting

    rv = _vector()
    groups = torch.tensor([0, 0, 1, 1])
    weighting = StaticWeighting(rv.names, rv.kinds, [1.0, 0.5], normalize="component_then_sum")
    adv, metrics = GRPO(scale_std=False).advantages(rv, groups, weighting, width=5)
    assert adv.shape == (4, 5)
    # outcome (correct) centred per group: [0.5, -0.5 | 0.5, -0.5]
    # steps of group 0: [1, 0, 1, 1], mean 0.75 -> row 0: [0.25, -0.75], row 1: [0.25, 0.25]; weight 0.5
    row0 = [0.5 + 0.5 * (0.25 - 0.75)] * 2 + [0.5 + 0.5 * -0.75] * 2 + [0.5]
    row1 = [-0.5 + 0.5 * 0.5] + [-0.5 + 0.5 * 0.25] * 2 + [-0.5] * 2
    assert adv[0].tolist() == pytest.approx(row0)
    assert adv[1].tolist() == pytest.approx(row1)
    assert adv[2].tolist() == pytest.approx([0.5] * 5)  # no steps: the outcome advantage only
    assert metrics["reward/steps/mean"] == pytest.approx(0.5)  # the outcome value is still logged
    with pytest.raises(ValueError, match="width"):
        GRPO().advantages(rv, groups, weighting)


def test_sequence_part_blanks_outcome_values_only_where_steps_exist():
    rv = _vector()
    rv.values[2, 1] = 0.7  # a row whose process plugin returned an outcome value and no steps
    seq = sequence_part(rv)
    assert math.isnan(float(seq.values[0, 1])) and math.isnan(float(seq.values[1, 1]))
    assert float(seq.values[2, 1]) == pytest.approx(0.7)
    assert torch.equal(seq.values[:, 0], rv.values[:, 0])


def test_reward_vector_cat_pads_steps_and_select_keeps_them():
    a = _vector()
    b = RewardVector(a.names, a.kinds, torch.zeros(1, 2), torch.tensor([[[1.0], [1.0], [0.0]]]),
                     torch.tensor([[0, 1, 2]]))
    cat = RewardVector.cat([a, b])
    assert cat.steps.shape == (5, 3, 1) and cat.step_ends.shape == (5, 3)
    assert cat.step_ends[0].tolist() == [1, 3, -1] and math.isnan(float(cat.steps[0, 2, 0]))
    sub = cat.select([4, 0])
    assert sub.step_ends.tolist() == [[0, 1, 2], [1, 3, -1]]
    assert a.process_names == ("steps",) and a.has_steps
    with pytest.raises(ValueError, match="step"):
        RewardVector.cat([a, RewardVector(a.names, a.kinds, torch.zeros(1, 2))])


# --------------------------------------------------------------------------- plugins and the reward group


def test_arithmetic_step_checker_by_hand():
    from rewards.verifiable.arithmetic_steps import arithmetic_steps, check_steps, parse_problem

    assert parse_problem("3+4-5=") == (3, [("+", 4), ("-", 5)])
    assert parse_problem("hello") is None
    assert check_steps("3+4-5=", ["3+4=7", "7-5=2"]) == [1.0, 1.0]
    assert check_steps("3+4-5=", ["3+4=8", "8-5=3"]) == [0.0, 0.0]  # a wrong step poisons the chain
    assert check_steps("3+4-5=", ["3+4=7", "7+5=12"]) == [1.0, 0.0]  # right arithmetic, wrong problem
    assert check_steps("3+4-5=", ["3+4=7", "7-5=2", "2+0=2"]) == [1.0, 1.0, 0.0]  # past the last operation
    assert check_steps("3-9-1=", ["3-9=-6", "-6-1=-7"]) == [1.0, 1.0]
    assert check_steps("3+4-5=", ["3+4=7"]) == [0.0]  # stopped one operation early: its last step is wrong
    out = arithmetic_steps(["3+4-5=", "3+4-5=", "hi"], ["3+4=7\n7-5=2", "", "x"],
                           steps=[["3+4=7", "7-5=2"], [], ["x"]])
    assert out == [[1.0, 1.0], 0.0, None]


def _component(name, plugin, kind=None, **kw):
    from rlhf.config.schema import RewardComponentConfig

    return RewardComponentConfig(name=name, plugin=plugin, kind=kind, **kw)


def test_reward_group_builds_steps_outcomes_and_token_positions():
    from rlhf.scoring.group import RewardGroup

    class CharTok:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    prompts = ["3+4-5=", "3+4-5=", "1+1+1="]
    completions = ["3+4=7\n7-5=2", "3+4=8\n8-5=3", "1+1=2"]
    group = RewardGroup([_component("steps", "arithmetic_steps", "process", outcome="mean", transform="delta"),
                         _component("correct", "exact_match")], use_ray=False)
    try:
        width = max(len(c) for c in completions)
        ids = torch.tensor([[ord(ch) for ch in c] + [0] * (width - len(c)) for c in completions])
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])
        rv, metrics = group.score(prompts, completions, {"answer": ["2", "2", "3"]},
                                  locate=StepLocator(CharTok(), ids, mask))
    finally:
        group.shutdown()
    assert rv.steps.shape == (3, 2, 1)
    assert rv.step_ends.tolist() == [[4, 10], [4, 10], [4, -1]]  # char == token here
    assert rv.values[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.0])  # outcome: mean of the RAW step scores
    assert rv.steps[0, :, 0].tolist() == pytest.approx([0.0, 1.0])  # delta: 1-1, last kept
    assert metrics["process/steps/good_step_rate"] == pytest.approx(2 / 5)
    assert metrics["process/steps/steps_per_sample"] == pytest.approx(5 / 3)


def test_process_plugin_output_errors_name_the_sample():
    from rewards.api import convert_process_outputs

    values, steps, errors = convert_process_outputs(
        "prm", "p", [[0.5, 0.1], [0.3], 0.7, None, [0.1, None]], 5, ["a", "b", "c", "d", "e"], [2, 2, 1, 1, 2])
    assert steps[0] == [0.5, 0.1] and steps[1] is None and steps[2] is None
    assert values[2] == pytest.approx(0.7) and math.isnan(values[3])
    assert [e.sample_index for e in errors] == [1, 4]
    assert "1 step scores for 2 steps" in str(errors[0])
    assert "sample 4" in str(errors[1])


def test_step_options_on_a_non_process_component_are_refused():
    from rewards.api import RewardPluginError
    from rlhf.scoring.group import RewardGroup

    with pytest.raises(RewardPluginError, match="'correct'.*transform='delta'.*process"):
        RewardGroup([_component("correct", "exact_match", transform="delta")], use_ray=False)


# --------------------------------------------------------------------------- MRT progress


def test_progress_bonus_by_hand():
    from rlhf.runtime.progress import progress_bonus

    # row 0: mu_0 = 0.25 (its group), after step 1: 0.5, after step 2 (its own outcome): 1.0
    # row 1: one step, failed: mu = [0.25, 0.0]
    mu = torch.tensor([[0.25, 0.5, 1.0], [0.25, 0.0, NAN]])
    bonus = progress_bonus(mu, torch.tensor([2, 1]), weight=2.0)
    assert torch.allclose(bonus, torch.tensor([[0.5, 1.0], [-0.5, 0.0]]))
    assert float(bonus[0].sum()) == pytest.approx(2.0 * (1.0 - 0.25))  # telescopes: weight * (mu_n - mu_0)


def test_grpo_adds_the_bonus_to_the_tokens_before_it():
    from rlhf.objectives.grpo import GRPO
    from rlhf.weighting.static import StaticWeighting

    rv = RewardVector(("correct",), ("reward",), torch.tensor([[1.0], [0.0]]), torch.zeros(2, 2, 0),
                      torch.tensor([[1, 3], [2, -1]]), torch.tensor([[0.5, -0.25], [0.1, 0.0]]))
    assert rv.has_steps
    weighting = StaticWeighting(rv.names, rv.kinds, [1.0])
    adv, _ = GRPO(scale_std=False).advantages(rv, torch.tensor([0, 0]), weighting, width=4)
    assert adv[0].tolist() == pytest.approx([0.75, 0.75, 0.25, 0.25])  # outcome +0.5, bonus 0.25 then -0.25
    assert adv[1].tolist() == pytest.approx([-0.4, -0.4, -0.4, -0.5])
