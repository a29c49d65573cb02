"""Recipe section ``conditioning``: preference-conditioned training (Directional Preference Alignment, Wang et al.
2024, arXiv 2402.18571). Each prompt draws a weight vector v over some reward components, v is written into the
prompt by a template, and the prompt's samples are weighted by their own v (rlhf/data/conditioning.py draws and
renders, rlhf/weighting/static.py weights per sample; under ``objective.kind: rsf`` a sample's score v^T r picks
the samples fine-tuned on, DPA's own training step). One policy then follows the weights a user writes at
inference. With ``levels`` the weights live on a grid and each is written as one level word ("<D B>" for
(0.75, 0.25) at levels 4), which a tiny model reads far more easily than decimals. The recipe itself is in
rlhf/config/schema.py; ``check_conditioning`` is its cross-check.
"""

from __future__ import annotations

import string
from typing import Any, Literal, Optional, Union

from pydantic import Field

from rlhf.config.base import Strict

SIMPLEX_TOL = 1e-3  # a weight vector's sum may differ from 1 by this much


class ConditioningConfig(Strict):
    """Preference conditioning: per-prompt weight vectors on the simplex over `components`, drawn from a Dirichlet
    or a fixed set, rendered into the prompt by `template`; a sample's scalar reward is then sum_k w_k v_k r_k
    over the conditioned components (w_k: the weighting's weight) plus the other components at their usual
    weights (rlhf/data/conditioning.py)."""

    enabled: bool = Field(False, description="draw a weight vector per prompt, write it into the prompt and weight "
                          "the prompt's samples by it (objectives grpo, rloo, reinforce_pp, rsf; weighting.kind "
                          "static)")
    components: list[str] = Field(default_factory=list, description="the reward components the drawn vector "
                                  "weights, in the order of the vectors' entries (the others keep their weights)")
    distribution: Literal["dirichlet", "fixed"] = Field(
        "dirichlet", description="dirichlet: a fresh vector per prompt from Dirichlet(alpha); fixed: one of "
        "`vectors` per prompt, uniformly at random")
    alpha: Union[float, list[float]] = Field(
        1.0, description="distribution: dirichlet -- the concentration, one number for every component or one "
        "per component (> 0; 1 is uniform on the simplex)")
    vectors: list[list[float]] = Field(default_factory=list, description="distribution: fixed -- the weight "
                                       "vectors drawn from, each one entry per component, on the simplex")
    decimals: Optional[int] = Field(
        2, ge=0, le=6, description="drawn weights are rounded to this many decimals (the last entry takes the rest, "
        "so the vector still sums to 1): the prompt shows the weights the reward uses; None keeps them exact. "
        "Unused with `levels`")
    levels: Optional[int] = Field(
        None, ge=1, description="write each weight as ONE level token instead of a decimal string: weights live "
        "on the grid 0, 1/levels, ..., 1 (drawn vectors are rounded onto it by largest remainder, so they still "
        "sum to 1; `vectors` and the evaluation vectors must lie on it) and {NAME} / {weights} show the level's "
        "word from `level_tokens` (levels 10 with the default words: 0.7 is 'H'). A tiny model reads a few "
        "distinct tokens far more easily than digits it also sees in the prompt. None: decimals")
    level_tokens: list[str] = Field(
        default_factory=list, description="levels: the word for level 0, 1, ..., levels (levels + 1 distinct "
        "words, no spaces or braces); default: capital letters A, B, C, ... (at most 25 levels). A word that "
        "should be one token should be one character for the tiny tokenizer (it splits digits and, at small "
        "vocab sizes, merges nothing), or a token the model's tokenizer already has")
    template: str = Field(
        "<pref {weights}> {prompt}", description="how the prompt is written: {prompt} is the data's prompt, "
        "{NAME} a component's weight (format specs allowed: {correct:.2f}; not with `levels`), {weights} every "
        "weight, space-separated, with `decimals` decimals (with `levels`: their level words)")
    column: str = Field("preference", min_length=1, description="the row column that holds the drawn vector "
                        "(reward plugins may read it; it must not be a dataset column)")
    warmup: bool = Field(True, description="the SFT warm-up's prompts carry a drawn preference too (one per row, "
                         "seeded), so the policy starts used to the template; its targets are the data's")
    eval_vectors: list[list[float]] = Field(
        default_factory=list, description="the held-out evaluation renders each vector into the prompts and logs "
        "eval/cond/I/NAME per component; `rlhf sweep --conditioned` scores a model at them. Default: `vectors` "
        "(fixed), else each component alone and the uniform vector")

    def evaluation_vectors(self) -> list[list[float]]:
        """The vectors the evaluation scores at: eval_vectors, or the default its description names."""
        if self.eval_vectors:
            return [list(v) for v in self.eval_vectors]
        if self.distribution == "fixed":
            return [list(v) for v in self.vectors]
        k = len(self.components)
        return [[float(i == j) for j in range(k)] for i in range(k)] + [[1.0 / k] * k]

    def level_words(self) -> list[str]:
        """The word per level 0..levels: level_tokens, else capital letters A, B, ... (empty without levels)."""
        if self.levels is None:
            return []
        return list(self.level_tokens) or default_level_words(self.levels)


def default_level_words(levels: int) -> list[str]:
    """Capital letters for levels 0..levels: 'A' is weight 0, chr(ord('A') + levels) weight 1."""
    if levels > 25:
        raise ValueError(f"conditioning.levels: {levels} levels need {levels + 1} words; the default letters A-Z "
                         "cover at most 25 levels -- give conditioning.level_tokens")
    return [chr(ord("A") + i) for i in range(levels + 1)]


def off_grid(vector: list[float], levels: int) -> Optional[float]:
    """The first weight of ``vector`` not on the grid of 1/levels (None when all are)."""
    for x in vector:
        if abs(x * levels - round(x * levels)) > 1e-6:
            return x
    return None


def template_fields(template: str) -> list[str]:
    """The placeholder names of a format template ('{a:.2f} {b}' -> ['a', 'b'])."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def template_specs(template: str) -> list[str]:
    """The placeholders that carry a format spec or conversion ('{a:.2f} {b!r} {c}' -> ['a', 'b'])."""
    return [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None and (spec or conv)]


def check_vectors(vectors: list[list[float]], n: int, where: str) -> None:
    """Each vector has n entries, none negative, summing to 1 (raise ValueError naming ``where``.I)."""
    for i, v in enumerate(vectors):
        if len(v) != n:
            raise ValueError(f"{where}.{i}: {len(v)} weights; conditioning.components has {n} (one weight each)")
        if any(x < 0 for x in v):
            raise ValueError(f"{where}.{i}: negative weight in {v}; a preference is a point on the simplex")
        if abs(sum(v) - 1.0) > SIMPLEX_TOL:
            raise ValueError(f"{where}.{i}: weights {v} sum to {sum(v):.6g}; a preference sums to 1")


def check_conditioning(recipe: Any) -> None:
    """conditioning against the rest of the recipe; every error names its key."""
    from rlhf.config.registry import capabilities, kinds_where

    c = recipe.conditioning
    if not c.enabled:
        return
    names = [r.name for r in recipe.rewards]
    if not capabilities(recipe.objective).conditioning:
        raise ValueError(f"conditioning.enabled: works with objectives {', '.join(kinds_where('conditioning'))}, "
                         f"not {recipe.objective.kind}")
    if recipe.weighting.kind != "static":
        raise ValueError(f"conditioning.enabled: the prompt's preference is the weighting; weighting.kind "
                         f"{recipe.weighting.kind} would move the weights too (use weighting.kind: static)")
    if not c.components:
        raise ValueError(f"conditioning.components: name the reward components the preference weights (of {names})")
    for i, name in enumerate(c.components):
        if name not in names:
            raise ValueError(f"conditioning.components.{i}: {name!r} is not a reward component; components are "
                             f"{names}")
    dup = sorted({n for n in c.components if c.components.count(n) > 1})
    if dup:
        raise ValueError(f"conditioning.components: {dup} listed more than once")
    k = len(c.components)
    alphas = c.alpha if isinstance(c.alpha, list) else [c.alpha]
    if isinstance(c.alpha, list) and len(c.alpha) != k:
        raise ValueError(f"conditioning.alpha: {len(c.alpha)} values; conditioning.components has {k}")
    if any(a <= 0 for a in alphas):
        raise ValueError(f"conditioning.alpha: {c.alpha} -- the Dirichlet concentration must be > 0")
    if c.distribution == "fixed" and not c.vectors:
        raise ValueError("conditioning.vectors: distribution fixed draws from these; give at least one vector")
    check_vectors(c.vectors, k, "conditioning.vectors")
    check_vectors(c.eval_vectors, k, "conditioning.eval_vectors")
    try:
        fields = template_fields(c.template)
    except ValueError as e:
        raise ValueError(f"conditioning.template: {c.template!r} is not a format template ({e})") from None
    if "prompt" not in fields:
        raise ValueError(f"conditioning.template: {c.template!r} has no {{prompt}} placeholder")
    missing = [n for n in c.components if n not in fields] if "weights" not in fields else []
    if missing:
        raise ValueError(f"conditioning.template: {c.template!r} shows no weight of {missing}; add {{{missing[0]}}} "
                         "(or {weights} for all)")
    unknown = [f for f in fields if f not in ("prompt", "weights", *c.components)]
    if unknown:
        raise ValueError(f"conditioning.template: unknown placeholder {{{unknown[0]}}}; placeholders are {{prompt}}, "
                         "{weights} and the conditioned components' names")
    if c.levels is not None:
        check_levels(c)


def check_levels(c: ConditioningConfig) -> None:
    """``levels``: the words, the template's plain placeholders and every fixed / evaluation vector on the grid."""
    n = c.levels + 1
    if c.level_tokens and len(c.level_tokens) != n:
        raise ValueError(f"conditioning.level_tokens: {len(c.level_tokens)} words; levels {c.levels} needs {n} "
                         "(one for each of 0, 1/levels, ..., 1)")
    words = c.level_words()
    for i, w in enumerate(words):
        if not w or any(ch.isspace() or ch in "{}" for ch in w):
            raise ValueError(f"conditioning.level_tokens.{i}: {w!r}; a level word is non-empty, without spaces or "
                             "braces")
    dup = sorted({w for w in words if words.count(w) > 1})
    if dup:
        raise ValueError(f"conditioning.level_tokens: {dup} listed more than once; each level needs its own word")
    specs = [f for f in template_specs(c.template) if f != "prompt"]
    if specs:
        raise ValueError(f"conditioning.template: {{{specs[0]}}} has a format spec; with conditioning.levels a "
                         "weight is shown as its level word (write {" + specs[0] + "})")
    for where, vectors in (("conditioning.vectors", c.vectors), ("conditioning.eval_vectors",
                                                                  c.evaluation_vectors())):
        for i, v in enumerate(vectors):
            x = off_grid(v, c.levels)
            if x is not None:
                raise ValueError(f"{where}.{i}: weight {x:g} of {v} is not on the grid of conditioning.levels "
                                 f"{c.levels} (multiples of 1/{c.levels}); pick grid vectors or other levels")
