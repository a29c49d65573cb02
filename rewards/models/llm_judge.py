"""Built-in judge ``llm_judge``: a language model, served by a rollout engine, says whether a completion is OK.

CGPO's model-based judges (Xu et al. 2024, sec. 3.2, "LLM-based judges"): the judge model is prompted with a
template holding the prompt and the completion, and its verdict is read in one of two ways:

- ``verdict: logprob`` (default): one batched forward pass over every (judge prompt, answer word) row; the
  satisfied word (``yes``) and the violated word (``no``) are scored as continuations of the judge prompt and
  p = P(yes) / (P(yes) + P(no)) is compared with ``threshold``. Always parseable. With one-token words this is
  exactly the next-token probability of each word.
- ``verdict: generate``: greedy generation of ``max_new_tokens`` tokens, parsed with ``satisfied_pattern`` /
  ``violated_pattern`` (re.search; when both match, the earlier match wins). No match -> ``on_unparseable``:
  ``violated`` (default: a judge that cannot say yes is not satisfied), ``satisfied``, or ``nan`` (not applicable).

Recipe use::

    rewards:
      - name: polite
        plugin: llm_judge
        args:
          model: /models/judge-1b            # local directory or hub id of a causal LM
          template: "Prompt: {prompt}\\nAnswer: {completion}\\nIs the answer polite? Reply yes or no:"
          engine: hf                         # hf | vllm: the platform's rollout engines (rlhf.rollout)
          verdict: logprob
          yes: " yes"
          no: " no"
          batch_size: 16

The engine is built in ``setup()`` (once per reward worker); this module imports only the standard library at
import time. Generation and scoring go through the engine's ``generate`` / ``completion_logprobs``.
"""

from __future__ import annotations

import re
from typing import Any

from rewards.api import judge

VERDICTS = ("logprob", "generate")
ENGINES = ("hf", "vllm")
ON_UNPARSEABLE = ("violated", "satisfied", "nan")


@judge("llm_judge")
class LLMJudge:
    """Asks a judge model whether each completion satisfies a constraint; True = satisfied, False = violated.

    Args: model, template ({prompt} and {completion}), engine (hf | vllm), verdict (logprob | generate), yes / no
    (the answer words, logprob mode), threshold (logprob mode: P(yes) / (P(yes) + P(no)) >= threshold is
    satisfied), max_new_tokens, satisfied_pattern, violated_pattern, on_unparseable (generate mode), batch_size,
    dtype, max_prompt_tokens, chat_template (none | auto), trust_remote_code, vllm (VLLMConfig keys).
    """

    def __init__(
        self,
        model: str,
        template: str,
        engine: str = "hf",
        verdict: str = "logprob",
        yes: str = " yes",
        no: str = " no",
        threshold: float = 0.5,
        max_new_tokens: int = 8,
        satisfied_pattern: str = r"(?i)\byes\b",
        violated_pattern: str = r"(?i)\bno\b",
        on_unparseable: str = "violated",
        batch_size: int = 16,
        dtype: str = "float32",
        max_prompt_tokens: int = 512,
        chat_template: str = "none",
        trust_remote_code: bool = False,
        vllm: dict[str, Any] | None = None,
    ) -> None:
        who = "llm_judge"
        if not isinstance(model, str) or not model:
            raise ValueError(f"{who}: model must be a local directory or hub id, got {model!r}")
        if not isinstance(template, str) or "{completion}" not in template:
            raise ValueError(f"{who}: template must be a string containing {{completion}} (and usually {{prompt}}), "
                             f"got {template!r}")
        if engine not in ENGINES:
            raise ValueError(f"{who}: engine must be one of {ENGINES}, got {engine!r}")
        if verdict not in VERDICTS:
            raise ValueError(f"{who}: verdict must be one of {VERDICTS}, got {verdict!r}")
        if on_unparseable not in ON_UNPARSEABLE:
            raise ValueError(f"{who}: on_unparseable must be one of {ON_UNPARSEABLE}, got {on_unparseable!r}")
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"{who}: threshold must lie in (0, 1), got {threshold!r}")
        if verdict == "logprob" and (not yes or not no or yes == no):
            raise ValueError(f"{who}: yes and no must be two different non-empty words, got {yes!r} and {no!r}")
        for key, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens),
                           ("max_prompt_tokens", max_prompt_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{who}: {key} must be an integer >= 1, got {value!r}")
        try:
            self.satisfied_re = re.compile(satisfied_pattern)
            self.violated_re = re.compile(violated_pattern)
        except re.error as exc:
            raise ValueError(f"{who}: invalid satisfied_pattern/violated_pattern: {exc}") from exc
        self.model, self.template, self.engine_kind, self.verdict = model, template, engine, verdict
        self.yes, self.no, self.threshold = yes, no, float(threshold)
        self.max_new_tokens, self.on_unparseable, self.batch_size = max_new_tokens, on_unparseable, batch_size
        self.dtype, self.max_prompt_tokens, self.chat_template = dtype, max_prompt_tokens, chat_template
        self.trust_remote_code, self.vllm = trust_remote_code, dict(vllm or {})
        self.engine: Any = None
        self._word_ids: tuple[list[int], list[int]] | None = None

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Load the judge model into a rollout engine (rlhf.rollout.hf.HFEngine or rlhf.rollout.vllm.VLLMEngine)."""
        common = dict(dtype=self.dtype, trust_remote_code=self.trust_remote_code, chat_template=self.chat_template,
                      max_prompt_tokens=self.max_prompt_tokens, batch_size=self.batch_size)
        if self.engine_kind == "hf":
            from rlhf.rollout.hf import HFEngine

            self.engine = HFEngine(self.model, **common)
        else:
            from rlhf.rollout.vllm import VLLMEngine

            self.engine = VLLMEngine(self.model, vllm=self.vllm, **common)
        if self.verdict == "logprob":
            self._word_ids = (self._word_token_ids("yes", self.yes), self._word_token_ids("no", self.no))

    def _word_token_ids(self, key: str, word: str) -> list[int]:
        ids = list(self.engine.tokenizer(word, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"llm_judge: {key}={word!r} encodes to no tokens with the judge's tokenizer")
        unk = getattr(self.engine.tokenizer, "unk_token_id", None)
        if unk is not None and unk in ids:
            raise ValueError(f"llm_judge: {key}={word!r} contains characters the judge's tokenizer does not know "
                             f"(token ids {ids})")
        return ids

    # ------------------------------------------------------------------ scoring

    def __call__(self, prompts: list[str], completions: list[str]) -> list[bool | None]:
        if self.engine is None:
            raise RuntimeError("llm_judge: setup() was not called (the reward workers call it once per worker)")
        texts = [self.render(i, p, c) for i, (p, c) in enumerate(zip(prompts, completions))]
        out: list[bool | None] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            if self.verdict == "logprob":
                out.extend(p >= self.threshold for p in self.satisfied_probability(chunk))
            else:
                out.extend(self._parse_all(chunk, start))
        return out

    def render(self, i: int, prompt: str, completion: str) -> str:
        """The judge prompt of sample i (the template filled with its prompt and completion)."""
        try:
            return self.template.format(prompt=prompt, completion=completion)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"llm_judge: template could not be filled for sample {i} ({type(exc).__name__}: {exc}); "
                             "it may only name {prompt} and {completion} (write literal braces as {{ and }})") from exc

    def satisfied_probability(self, judge_prompts: list[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) per judge prompt: one batched forward pass over 2 rows per prompt."""
        import torch

        from rlhf.data import encode_prompts, format_prompts

        assert self._word_ids is not None
        tok = self.engine.tokenizer
        texts = format_prompts(tok, judge_prompts, self.chat_template)
        ids, mask = encode_prompts(tok, texts, self.max_prompt_tokens)  # (n, P) left-padded
        n, P = ids.shape
        words = [self._word_ids[0], self._word_ids[1]]
        C = max(len(w) for w in words)
        pad = int(tok.pad_token_id)
        completion = torch.full((2, C), pad, dtype=torch.long)  # (2, C): yes, no; right-padded
        completion_mask = torch.zeros((2, C), dtype=torch.long)  # (2, C)
        for j, w in enumerate(words):
            completion[j, : len(w)] = torch.tensor(w)
            completion_mask[j, : len(w)] = 1
        input_ids = torch.cat([ids.repeat_interleave(2, 0), completion.repeat(n, 1)], dim=1)  # (2n, P + C)
        attention = torch.cat([mask.repeat_interleave(2, 0), completion_mask.repeat(n, 1)], dim=1)  # (2n, P + C)
        logprobs = self.engine.completion_logprobs(input_ids, attention, P, 1.0)  # (2n, C)
        seq = (logprobs.float() * completion_mask.repeat(n, 1)).sum(dim=1).view(n, 2)  # (n, 2): log P(yes), log P(no)
        p_yes = torch.softmax(seq, dim=1)[:, 0]  # (n,) P(yes) / (P(yes) + P(no))
        return [float(p) for p in p_yes]

    def _parse_all(self, judge_prompts: list[str], offset: int) -> list[bool | None]:
        from rlhf.types import SamplingSettings

        settings = SamplingSettings(n=1, max_new_tokens=self.max_new_tokens, greedy=True)
        batch = self.engine.generate(judge_prompts, settings)
        return [self.parse(text, offset + i) for i, text in enumerate(batch.completions)]

    def parse(self, text: str, sample: int = 0) -> bool | None:
        """True / False from the judge's text; an unparseable answer follows ``on_unparseable``."""
        sat, vio = self.satisfied_re.search(text), self.violated_re.search(text)
        if sat and vio:
            return sat.start() <= vio.start()
        if sat or vio:
            return bool(sat)
        if self.on_unparseable == "nan":
            return None
        return self.on_unparseable == "satisfied"


__all__ = ["LLMJudge"]
