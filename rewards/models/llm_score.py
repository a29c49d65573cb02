"""Built-in reward ``llm_score``: a generative reward model -- a language model's verdict read as a number.

The judge model (served by a rollout engine, as ``llm_judge``) is prompted with a template holding the prompt and
the completion, and its answer becomes the reward in one of two ways:

- ``verdict: logprob`` (default): r = P(yes) / (P(yes) + P(no)) of the answer words as continuations of the judge
  prompt, in [0, 1]: one batched forward pass, always defined (``llm_judge``'s soft verdict, not thresholded).
- ``verdict: generate``: greedy generation of ``max_new_tokens`` tokens; the first match of ``score_pattern``
  (its first group, a number) divided by ``max_score`` (e.g. "Score: 7" out of 10 -> 0.7). No match ->
  ``on_unparseable``: ``nan`` (not applicable, the default) or ``zero``.

Recipe use::

    rewards:
      - name: helpful
        plugin: llm_score
        args:
          model: /models/judge-1b
          template: "Question: {prompt}\\nAnswer: {completion}\\nRate the answer from 0 to 10. Score:"
          verdict: generate
          max_score: 10

Everything about the engine (``engine``, ``dtype``, ``batch_size``, ``chat_template``, ``max_prompt_tokens``,
``vllm``) is as for ``llm_judge``, whose machinery this uses. Imports only the standard library at import time.
"""

from __future__ import annotations

import re
from typing import Any

from rewards.api import reward
from rewards.models.llm_judge import LLMJudge

ON_UNPARSEABLE = ("nan", "zero")


@reward("llm_score")
class LLMScore:
    """A judge model's verdict as a reward: P(yes) / (P(yes) + P(no)) (logprob) or a parsed number / max_score
    (generate). Args: model, template, verdict, yes, no, score_pattern, max_score, on_unparseable, max_new_tokens,
    engine, batch_size, dtype, max_prompt_tokens, chat_template, trust_remote_code, vllm."""

    def __init__(self, model: str, template: str, verdict: str = "logprob", score_pattern: str = r"(-?\d+(?:\.\d+)?)",
                 max_score: float = 1.0, on_unparseable: str = "nan", **judge_args: Any) -> None:
        if on_unparseable not in ON_UNPARSEABLE:
            raise ValueError(f"llm_score: on_unparseable must be one of {ON_UNPARSEABLE}, got {on_unparseable!r}")
        if isinstance(max_score, bool) or not isinstance(max_score, (int, float)) or max_score <= 0:
            raise ValueError(f"llm_score: max_score must be a number > 0, got {max_score!r}")
        try:
            self.score_re = re.compile(score_pattern)
        except re.error as exc:
            raise ValueError(f"llm_score: invalid score_pattern: {exc}") from exc
        if self.score_re.groups < 1:
            raise ValueError(f"llm_score: score_pattern {score_pattern!r} needs a group around the number")
        self.judge = LLMJudge(model, template, verdict=verdict, **judge_args)  # checks the shared args
        self.verdict, self.max_score, self.on_unparseable = verdict, float(max_score), on_unparseable

    def setup(self) -> None:
        self.judge.setup()

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float | None]:
        from rlhf.types import SamplingSettings

        j = self.judge
        if j.engine is None:
            raise RuntimeError("llm_score: setup() was not called (the reward workers call it once per worker)")
        texts = [j.render(i, p, c) for i, (p, c) in enumerate(zip(prompts, completions))]
        out: list[float | None] = []
        settings = SamplingSettings(n=1, max_new_tokens=j.max_new_tokens, greedy=True)
        for start in range(0, len(texts), j.batch_size):
            chunk = texts[start : start + j.batch_size]
            if self.verdict == "logprob":
                out.extend(j.satisfied_probability(chunk))
            else:
                out.extend(self.parse(text) for text in j.engine.generate(chunk, settings).completions)
        return out

    def parse(self, text: str) -> float | None:
        """The first number the pattern finds, over max_score; unparseable -> None (nan) or 0.0 (zero)."""
        m = self.score_re.search(text)
        if m is None:
            return None if self.on_unparseable == "nan" else 0.0
        try:
            return float(m.group(1)) / self.max_score
        except ValueError:
            return None if self.on_unparseable == "nan" else 0.0


__all__ = ["LLMScore"]
