"""Built-in reward ``reward_model``: a reward model (a sequence-classification checkpoint) scores each completion.

Any local or hub ``AutoModelForSequenceClassification`` works; what ``objective.kind: rm`` trains is one. A
multi-objective RM (K heads, one per objective) gives K components of the reward vector from **one** forward
pass: name one component per head; components with the same ``model`` share one reward worker by default (see
``shared_worker``), load the model once there, and the first of them to see a batch scores every head of it
while the others read their column. The input is built as in RM training: ``[bos] + prompt + completion + [eos]``
with the prompt in the RM tokenizer's chat template (``chat_template: auto``, as ``data.chat_template``), so an
RM trained here scores what it was trained on. Recipe use::

    rewards:
      - {name: correct, plugin: reward_model, args: {model: runs/rm/checkpoints/step_000200/model, head: correct}}
      - {name: concise, plugin: reward_model, args: {model: runs/rm/checkpoints/step_000200/model, head: concise}}

Args: model, head (a head's name or index; default the first), batch_size, max_length (longer inputs lose the
completion's tail; a prompt that fills it alone scores NaN), dtype, chat_template (auto | none), squash (none: the raw score; sigmoid: in (0, 1)),
trust_remote_code, num_threads. torch and transformers are imported in ``setup()`` only.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from rewards.api import reward

SQUASH = ("none", "sigmoid")
_LOCK = threading.Lock()
_MODELS: dict[tuple, Any] = {}  # (model, dtype, trust_remote_code) -> (model, tokenizer), per worker process
_LAST: dict[tuple, tuple[tuple, list[list[float] | None]]] = {}  # key + inputs -> (batch, (B, K) scores or None)


@reward("reward_model")
class RewardModelScorer:
    """Scores from one head of a sequence-classification reward model, batched; the heads of one model share a
    forward pass. Args: model, head, batch_size, max_length, dtype, chat_template, squash, trust_remote_code,
    num_threads."""

    def __init__(self, model: str, head: str | int | None = None, batch_size: int = 16, max_length: int = 1024,
                 dtype: str = "float32", chat_template: str = "auto", squash: str = "none",
                 trust_remote_code: bool = False, num_threads: int | None = None) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a local directory or hub id of a reward model, got {model!r}")
        for key, value, low in (("batch_size", batch_size, 1), ("max_length", max_length, 4)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if chat_template not in ("auto", "none"):
            raise ValueError(f"chat_template must be auto or none, got {chat_template!r}")
        if squash not in SQUASH:
            raise ValueError(f"squash must be one of {SQUASH}, got {squash!r}")
        if head is not None and (isinstance(head, bool) or not isinstance(head, (str, int))):
            raise ValueError(f"head must be a head's name or index, got {head!r}")
        self.model_path, self.head, self.batch_size, self.max_length = model, head, batch_size, max_length
        self.dtype, self.chat_template, self.squash = dtype, chat_template, squash
        self.trust_remote_code, self.num_threads = trust_remote_code, num_threads
        self.key = (model, dtype, trust_remote_code)  # one loaded model per key
        self.inputs = (max_length, chat_template)  # what shapes the inputs: components share scores only when equal
        self.column = 0

    @classmethod
    def shared_worker(cls, args: dict[str, Any]) -> str:
        """Components reading heads of the same model share a reward worker (one load, one forward per batch)."""
        return f"reward_model:{args.get('model')}"

    def setup(self) -> None:
        import torch

        from rlhf.models.load import load_tokenizer
        from rlhf.models.reward import head_names, load_reward_model

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        with _LOCK:
            if self.key not in _MODELS:
                tokenizer = load_tokenizer(self.model_path, trust_remote_code=self.trust_remote_code)
                model = load_reward_model(self.model_path, None, self.dtype, self.trust_remote_code,
                                          tokenizer.pad_token_id)  # None: the saved model's own heads
                _MODELS[self.key] = (model.eval().requires_grad_(False), tokenizer)
            model, _ = _MODELS[self.key]
        heads = head_names(model.config)
        if self.head is None:
            self.column = 0
        elif isinstance(self.head, int):
            if not 0 <= self.head < len(heads):
                raise ValueError(f"head {self.head} is out of range: {self.model_path} has heads {list(heads)}")
            self.column = self.head
        elif self.head in heads:
            self.column = heads.index(self.head)
        else:
            raise ValueError(f"head {self.head!r} is not one of {self.model_path}'s heads {list(heads)}")

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float | None]:
        batch = (tuple(prompts), tuple(completions))
        with _LOCK:  # the heads of one model: the first caller scores every head, the others read their column
            last = _LAST.get(self.key + self.inputs)
            if last is None or last[0] != batch:
                model, tokenizer = _MODELS[self.key]
                last = (batch, score_all_heads(model, tokenizer, prompts, completions, self.batch_size,
                                                     self.max_length, self.chat_template))
                _LAST[self.key + self.inputs] = last
        values = [None if row is None else row[self.column] for row in last[1]]
        if self.squash == "sigmoid":
            values = [None if v is None else 1.0 / (1.0 + math.exp(-v)) for v in values]
        return values


def score_all_heads(model: Any, tokenizer: Any, prompts: list[str], completions: list[str], batch_size: int,
                    max_length: int, chat_template: str = "auto") -> list[list[float] | None]:
    """(B, K) scores of every head, ``batch_size`` sequences per forward; inputs built as RM training builds them
    (longer than max_length: the tail is cut). A sample whose prompt alone fills max_length has no completion token
    left to judge: None (not applicable), as training refuses such a pair."""
    import torch

    from rlhf.data.chat import format_prompt
    from rlhf.data.collate import completion_token_ids, prompt_token_ids
    from rlhf.objectives.rm import sequence_scores

    seqs: list[list[int] | None] = []
    for prompt, completion in zip(prompts, completions):
        ids = prompt_token_ids(tokenizer, format_prompt(tokenizer, prompt, chat_template))
        seqs.append(None if len(ids) >= max_length else (ids + completion_token_ids(tokenizer, completion))[:max_length])
    device = next(model.parameters()).device
    scored: list[list[float]] = []
    kept = [s for s in seqs if s is not None]
    with torch.no_grad():
        for start in range(0, len(kept), batch_size):
            chunk = kept[start : start + batch_size]
            T = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), T), int(tokenizer.pad_token_id), dtype=torch.long)  # (b, T)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)  # (b, T)
            for b, s in enumerate(chunk):
                ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[b, : len(s)] = 1
            scored.extend(sequence_scores(model, ids.to(device), mask.to(device)).cpu().tolist())  # (b, K)
    rows = iter(scored)
    return [None if s is None else next(rows) for s in seqs]
