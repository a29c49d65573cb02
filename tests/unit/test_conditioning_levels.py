"""Preference conditioning with ``conditioning.levels`` (rlhf/config/conditioning.py, rlhf/data/conditioning.py):
weights on the grid 1/levels written as one level word each -- the words, the grid rounding of drawn vectors, the
rendered prompt, the tokenizer corpus (every word is one token of the tiny tokenizer, distinct per level) and the
recipe errors that name their key.

Run: pytest tests/unit/test_conditioning_levels.py -q
"""

import math

import pytest

from rlhf.config.conditioning import ConditioningConfig, default_level_words
from rlhf.config.schema import Recipe
from rlhf.data.conditioning import PreferenceConditioner, build_conditioner, round_to_grid

NAMES = ("correct", "chatty", "terse")
GRID4 = [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]]


def conditioner(**kw):
    args = {"template": "<{chatty} {terse}> {prompt}", "seed": 3, "levels": 4, **kw}
    return PreferenceConditioner(("chatty", "terse"), NAMES, **args)


# --------------------------------------------------------------------------- words, grid and template


def test_default_words_are_capital_letters():
    assert default_level_words(4) == ["A", "B", "C", "D", "E"]
    assert default_level_words(10)[7] == "H" and len(default_level_words(25)) == 26
    with pytest.raises(ValueError, match="level_tokens"):
        default_level_words(26)
    assert ConditioningConfig(levels=2, level_tokens=["lo", "mid", "hi"]).level_words() == ["lo", "mid", "hi"]
    assert ConditioningConfig().level_words() == []  # decimals: no words


def test_round_to_grid_keeps_the_sum():
    assert round_to_grid([0.6, 0.4], 4) == [0.5, 0.5]  # remainders 0.4 vs 0.6: the larger takes the unit
    assert round_to_grid([0.3, 0.7], 4) == [0.25, 0.75]
    assert round_to_grid([1 / 3, 1 / 3, 1 / 3], 4) == [0.5, 0.25, 0.25]  # tie: the earlier entry
    assert round_to_grid([0.0, 1.0], 4) == [0.0, 1.0]


def test_prompt_shows_one_word_per_weight():
    c = conditioner()
    assert c.prompt("12+7=", [0.75, 0.25]) == "<D B> 12+7="
    assert c.prompt("12+7=", [1, 0]) == "<E A> 12+7="
    weights = conditioner(template="<pref {weights}> {prompt}", levels=10)
    assert weights.prompt("3+4=", [0.7, 0.3]) == "<pref H D> 3+4="  # the example: 0.7 is H at levels 10
    words = conditioner(level_tokens=["w0", "w1", "w2", "w3", "w4"])
    assert words.render([{"prompt": "1+1="}], [0.5, 0.5]) == [{"prompt": "<w2 w2> 1+1=", "preference": [0.5, 0.5]}]
    with pytest.raises(ValueError, match="not on the grid 0, 1/4"):
        c.prompt("1+1=", [0.7, 0.3])
    with pytest.raises(ValueError, match="levels 4 needs 5"):
        conditioner(level_tokens=["a", "b"])


def test_dirichlet_draws_land_on_the_grid():
    c = conditioner()
    drawn = c.draws_for(2, 0, 400)
    assert c.draws_for(2, 0, 400) == drawn  # reproducible, as with decimals
    for v in drawn:
        assert math.isclose(sum(v), 1.0) and all(x * 4 == int(x * 4) for x in v)
    assert {tuple(v) for v in drawn} == {tuple(v) for v in GRID4}  # every grid point is drawn
    rows = c.condition([{"prompt": "1+1="}] * 3, step=2)
    for row, v in zip(rows, c.draws_for(2, 0, 3)):
        assert row["prompt"] == f"<{'ABCDE'[round(v[0] * 4)]} {'ABCDE'[round(v[1] * 4)]}> 1+1="


def test_fixed_vectors_render_their_words():
    c = conditioner(distribution="fixed", vectors=GRID4)
    assert {r["prompt"] for r in c.condition([{"prompt": "5+5="}] * 60, step=1)} == {
        "<E A> 5+5=", "<D B> 5+5=", "<C C> 5+5=", "<B D> 5+5=", "<A E> 5+5="}


def test_examples_hold_every_level_word():
    c = conditioner(distribution="fixed", vectors=[[0.5, 0.5]], levels=10)  # draws show only the word F
    shown = " ".join(r["prompt"] for r in c.examples([{"prompt": "2+2="}] * 3))
    assert all(w in shown for w in default_level_words(10))
    three = PreferenceConditioner(("a", "b", "c"), ("a", "b", "c"), levels=4, seed=0)
    assert [three._level_vector(i) for i in (0, 1, 4)] == [[0.0, 0.5, 0.5], [0.25, 0.5, 0.25], [1.0, 0.0, 0.0]]


def test_tiny_tokenizer_reads_each_level_as_one_distinct_token():
    from rlhf.data.synthetic import make_arithmetic
    from rlhf.config.schema import SyntheticArithmeticConfig
    from rlhf.models.tiny import train_tokenizer

    train, evals = make_arithmetic(SyntheticArithmeticConfig(max_operand=20, chatter=0.5), seed=0)
    c = conditioner(levels=10)
    corpus = [f"{r['prompt']} {r['completion']}" for r in train + evals + c.examples(evals)]  # as the controller
    tok = train_tokenizer(corpus, vocab_size=32)
    ids = []
    for level, word in enumerate(default_level_words(10)):
        v = [level / 10, 1 - level / 10]
        pieces = tok.convert_ids_to_tokens(tok(c.prompt("12+7=", v))["input_ids"])
        prefix = pieces[: pieces.index("1")]  # the tokens before the problem
        assert word in prefix and "<unk>" not in pieces, pieces
        ids.append(tok.convert_tokens_to_ids(word))
    assert len(set(ids)) == 11  # one token per level, no two levels alike
    decimal = tok.convert_ids_to_tokens(tok("<0.7 0.3> 12+7=")["input_ids"])
    assert decimal.count("7") == 2  # the decimal form shares its digit tokens with the problem


# --------------------------------------------------------------------------- the recipe section


def recipe(conditioning):
    return Recipe.model_validate({
        "model": {"tiny": {}},
        "rewards": [{"name": "correct", "plugin": "math_answer"},
                    {"name": "chatty", "plugin": "regex_format", "args": {"pattern": "-?[0-9]+ .+"}},
                    {"name": "terse", "plugin": "regex_format", "args": {"pattern": "-?[0-9]+"}}],
        "objective": {"kind": "rsf"},
        "weighting": {"kind": "static"},
        "conditioning": {"enabled": True, "components": ["chatty", "terse"], "levels": 4,
                         "template": "<{chatty} {terse}> {prompt}", **conditioning}})


def test_recipe_builds_a_level_conditioner():
    r = recipe({"distribution": "fixed", "vectors": GRID4, "level_tokens": ["z", "y", "x", "w", "v"]})
    c = build_conditioner(r.conditioning, [x.name for x in r.rewards], seed=0)
    assert c.levels == 4 and c.eval_vectors == GRID4 and c.prompt("1+1=", [0.25, 0.75]) == "<y w> 1+1="
    assert build_conditioner(recipe({}).conditioning, NAMES, 0).level_tokens == list("ABCDE")


@pytest.mark.parametrize("section, key", [
    ({"level_tokens": ["a", "b"]}, "conditioning.level_tokens: 2 words; levels 4 needs 5"),
    ({"level_tokens": ["a", "b", "c", "d", "d"]}, r"conditioning.level_tokens: \['d'\] listed more than once"),
    ({"level_tokens": ["a", "b c", "d", "e", "f"]}, "conditioning.level_tokens.1"),
    ({"levels": 30}, "conditioning.levels: 30 levels need 31 words"),
    ({"template": "<{chatty:.2f} {terse}> {prompt}"}, r"conditioning.template: \{chatty\} has a format spec"),
    ({"distribution": "fixed", "vectors": [[0.7, 0.3]]}, "conditioning.vectors.0: weight 0.7"),
    ({"eval_vectors": [[1, 0], [0.6, 0.4]]}, "conditioning.eval_vectors.1: weight 0.6"),
    ({"levels": 3}, "conditioning.eval_vectors.2: weight 0.5"),  # the default's uniform vector is off a grid of 3
])
def test_validation_errors_name_the_key(section, key):
    with pytest.raises(ValueError, match=key):
        recipe(section)
