"""Preference conditioning (Directional Preference Alignment, Wang et al. 2024): every prompt draws a weight vector v
on the simplex over some reward components, v is written into the prompt text, and the prompt's samples carry v as
their per-sample weights (``RewardVector.sample_weights``), so the weighting scores each sample by its prompt's own
preference (rlhf/weighting/static.py). The recipe section is ``conditioning`` (rlhf/config/conditioning.py).

    conditioner = build_conditioner(recipe.conditioning, [c.name for c in recipe.rewards], seed=recipe.run.seed)
    rows = conditioner.condition(rows, step, round_)   # a vector per row: the prompt rendered, v in column `column`
    rv = conditioner.attach(rv, rollout.extras)        # rv.sample_weights (B, K): v on conditioned components, else 1
    rows = conditioner.render(rows, [0.8, 0.2])        # every row at one vector (evaluation, sweep --conditioned)

Draws are a function of (run seed, step, sampling round) alone -- ``random.Random(f"{seed}:{step}:{round}")``, one
vector per row in row order -- so a resumed run draws exactly the vectors the uninterrupted run drew; there is no
state to checkpoint. Dirichlet(alpha) is sampled as normalised Gamma(alpha_k, 1) draws; ``fixed`` picks one of the
recipe's vectors uniformly. With ``decimals`` set, a drawn vector is rounded to that many decimals by largest
remainder (it still sums to 1 and no entry goes negative), so the prompt shows exactly the weights the reward uses.

With ``levels`` set, weights live on the grid 0, 1/levels, ..., 1 instead (drawn vectors rounded onto it the same
way) and the template shows each weight as its level's word, one token each (``level_tokens``; default capital
letters, so with levels 10 the vector (0.7, 0.3) renders "<H D>" where decimals render "<0.7 0.3>"): a tiny
model's tokenizer splits "0.7" into three tokens whose digits also spell the prompt's numbers, while a level
word is one token of its own. ``examples`` then renders a row at every level so that every word reaches the
tokenizer's corpus. A vector off the grid cannot be rendered (ValueError naming the grid).

The vector travels with its row: the rows' columns become the rollout's per-row ``extras`` (mapped generically by
``RolloutBatch.select`` / ``cat``), and ``attach`` reads them back after scoring.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import torch

from rlhf.config.conditioning import default_level_words
from rlhf.types import RewardVector


class NoConditioning:
    """The identity: rows and reward vectors pass unchanged (conditioning disabled)."""

    eval_vectors: list[list[float]] = []

    def condition(self, rows: list[dict], step: int, round_: int = 0) -> list[dict]:
        return rows

    def attach(self, rv: RewardVector, extras: dict[str, list[Any]]) -> RewardVector:
        return rv

    def condition_once(self, rows: list[dict]) -> list[dict]:
        return rows

    def examples(self, rows: list[dict]) -> list[dict]:
        return []


class PreferenceConditioner:
    """Draws, renders and attaches per-prompt preference vectors over ``components`` (module docstring)."""

    def __init__(self, components: Sequence[str], reward_names: Sequence[str], *, distribution: str = "dirichlet",
                 alpha: float | Sequence[float] = 1.0, vectors: Sequence[Sequence[float]] = (),
                 decimals: int | None = 2, template: str = "<pref {weights}> {prompt}", column: str = "preference",
                 warmup: bool = True, eval_vectors: Sequence[Sequence[float]] = (), seed: int = 0,
                 levels: int | None = None, level_tokens: Sequence[str] = ()) -> None:
        self.components = tuple(components)
        self.reward_names = tuple(reward_names)
        k = len(self.components)
        self.alpha = [float(a) for a in alpha] if isinstance(alpha, Sequence) else [float(alpha)] * k
        self.distribution, self.vectors = distribution, [list(map(float, v)) for v in vectors]
        self.decimals, self.template, self.column = decimals, template, column
        self.warmup, self.seed = warmup, seed
        self.eval_vectors = [list(map(float, v)) for v in eval_vectors]
        self.levels = levels
        self.level_tokens = list(level_tokens) or (default_level_words(levels) if levels is not None else [])
        if levels is not None and len(self.level_tokens) != levels + 1:
            raise ValueError(f"conditioning.level_tokens: {len(self.level_tokens)} words; levels {levels} needs "
                             f"{levels + 1}")
        if distribution not in ("dirichlet", "fixed"):
            raise ValueError(f"conditioning.distribution: {distribution!r}; expected dirichlet or fixed")
        if distribution == "fixed" and not self.vectors:
            raise ValueError("conditioning.vectors: distribution fixed needs at least one vector")

    # ------------------------------------------------------------------ draws

    def draw(self, n: int, rng: random.Random) -> list[list[float]]:
        """(n, K) weight vectors from the recipe's distribution."""
        out = []
        for _ in range(n):
            if self.distribution == "fixed":
                v = list(self.vectors[rng.randrange(len(self.vectors))])
            else:
                g = [rng.gammavariate(a, 1.0) for a in self.alpha]
                total = sum(g)
                v = [x / total for x in g] if total > 0 else [1.0 / len(g)] * len(g)
                if self.levels is not None:
                    v = round_to_grid(v, self.levels)
                elif self.decimals is not None:
                    v = round_on_simplex(v, self.decimals)
            out.append(v)
        return out

    def draws_for(self, step: int, round_: int, n: int) -> list[list[float]]:
        """The n vectors of a step's sampling round: the same in every run with this seed."""
        return self.draw(n, random.Random(f"{self.seed}:{step}:{round_}"))

    # ------------------------------------------------------------------ rows

    def render(self, rows: list[dict], vector: Sequence[float] | list[Sequence[float]]) -> list[dict]:
        """Copies of ``rows`` with the prompt rendered at ``vector`` (one for all) or at one vector per row, and the
        vector in ``column``."""
        vectors = vector if vector and isinstance(vector[0], Sequence) else [vector] * len(rows)
        out = []
        for row, v in zip(rows, vectors):
            if self.column in row:
                raise ValueError(f"conditioning.column: the rows already have a column {self.column!r}; pick another "
                                 "name")
            out.append({**row, "prompt": self.prompt(row["prompt"], v), self.column: [float(x) for x in v]})
        return out

    def prompt(self, prompt: str, vector: Sequence[float]) -> str:
        """The prompt with the preference written in by the template (weights as decimals, or level words)."""
        if self.levels is not None:
            words = [self.level_word(x) for x in vector]
            return self.template.format(prompt=prompt, weights=" ".join(words), **dict(zip(self.components, words)))
        shown = " ".join(f"{x:.{self.decimals}f}" if self.decimals is not None else f"{x:g}" for x in vector)
        return self.template.format(prompt=prompt, weights=shown, **dict(zip(self.components, vector)))

    def level_word(self, x: float) -> str:
        """The word of weight x's level (levels set; x a multiple of 1/levels, else ValueError)."""
        assert self.levels is not None
        level = round(x * self.levels)
        if abs(x * self.levels - level) > 1e-6 or not 0 <= level <= self.levels:
            raise ValueError(f"conditioning.levels: weight {x:g} is not on the grid 0, 1/{self.levels}, ..., 1; "
                             "a level-rendered prompt shows grid weights only")
        return self.level_tokens[level]

    def condition(self, rows: list[dict], step: int, round_: int = 0) -> list[dict]:
        """A training batch's rows, each at its own drawn vector (reproducible from the seed, step and round)."""
        return self.render(rows, self.draws_for(step, round_, len(rows)))

    def condition_once(self, rows: list[dict]) -> list[dict]:
        """Every row at one drawn vector (the SFT warm-up's rows when ``warmup``; unchanged otherwise)."""
        if not self.warmup:
            return rows
        return self.render(rows, self.draw(len(rows), random.Random(f"{self.seed}:warmup")))

    def examples(self, rows: list[dict]) -> list[dict]:
        """The rows at drawn vectors, whatever ``warmup`` says: text that shows the template (a tiny model's
        tokenizer is trained on it). With ``levels``, also the first row at each level (in the first component;
        the rest split evenly on the grid), so every level word is in the corpus, drawn or not."""
        out = self.render(rows, self.draw(len(rows), random.Random(f"{self.seed}:examples")))
        if self.levels is not None and rows:
            out += self.render(rows[:1] * (self.levels + 1), [self._level_vector(i) for i in range(self.levels + 1)])
        return out

    def _level_vector(self, level: int) -> list[float]:
        """A grid vector whose first weight is level/levels (the rest shared out on the grid)."""
        assert self.levels is not None
        k, rest = len(self.components), self.levels - level
        counts = [level] + [rest // (k - 1) + (j < rest % (k - 1)) for j in range(k - 1)] if k > 1 else [level]
        return [c / self.levels for c in counts]

    # ------------------------------------------------------------------ the reward vector

    def sample_weights(self, rv: RewardVector, extras: dict[str, list[Any]]) -> torch.Tensor:
        """(B, K) per-sample factors: the row's vector on the conditioned components, 1 on the others."""
        if self.column not in extras:
            raise ValueError(f"conditioning: the rollout has no {self.column!r} column; were its rows conditioned?")
        drawn = torch.tensor(extras[self.column], dtype=rv.values.dtype)  # (B, Kc)
        out = torch.ones_like(rv.values)  # (B, K)
        for j, name in enumerate(self.components):
            out[:, rv.index(name)] = drawn[:, j]
        return out

    def attach(self, rv: RewardVector, extras: dict[str, list[Any]]) -> RewardVector:
        """The reward vector with its per-sample weights (values, kinds, NaNs untouched)."""
        rv.sample_weights = self.sample_weights(rv, extras)  # (B, K)
        return rv


def round_on_simplex(v: Sequence[float], decimals: int) -> list[float]:
    """v rounded to ``decimals`` decimals, still summing to 1: floors in units of 10^-decimals, the units left go
    to the largest remainders (ties to the earlier entry)."""
    return round_to_grid(v, 10 ** decimals)


def round_to_grid(v: Sequence[float], unit: int) -> list[float]:
    """v rounded to multiples of 1/unit, still summing to 1 (largest remainder; ties to the earlier entry)."""
    scaled = [x * unit for x in v]
    counts = [math.floor(x) for x in scaled]
    order = sorted(range(len(v)), key=lambda i: (-(scaled[i] - counts[i]), i))
    for i in order[: unit - sum(counts)]:
        counts[i] += 1
    return [c / unit for c in counts]


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties); NaN when either is
    constant or shorter than 2."""
    if len(x) != len(y) or len(x) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def build_conditioner(cfg: Any, reward_names: Sequence[str], seed: int) -> NoConditioning | PreferenceConditioner:
    """The recipe's ``conditioning`` section as a component: ``NoConditioning`` when disabled."""
    if not cfg.enabled:
        return NoConditioning()
    return PreferenceConditioner(cfg.components, reward_names, distribution=cfg.distribution, alpha=cfg.alpha,
                                 vectors=cfg.vectors, decimals=cfg.decimals, template=cfg.template,
                                 column=cfg.column, warmup=cfg.warmup, eval_vectors=cfg.evaluation_vectors(),
                                 seed=seed, levels=cfg.levels, level_tokens=cfg.level_words())
