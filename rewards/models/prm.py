"""Built-in process reward ``prm``: a process reward model (a Hugging Face model) scoring every step, batched.

Two kinds of PRM:

- ``mode: step_tag`` (Math-Shepherd style; what ``objective.kind: prm`` trains): a causal LM reads
  ``prompt step_1 TAG step_2 TAG ...``; at the last token of each tag, P(good) = softmax over the logits of the
  ``good`` and ``bad`` tokens, taken at index 0.
- ``mode: token_classification``: an ``AutoModelForTokenClassification`` over the same input; the step's score
  is the softmax probability of label ``good_label`` at the tag's last token.

The input is built by ``rlhf.data.prm.encode_steps``, the same function PRM training uses. Recipe use::

    process: {segment: newline}
    rewards:
      - name: prm
        plugin: prm
        kind: process
        outcome: min
        args: {model: runs/prm_tiny_cpu/checkpoints/step_000200/model, step_tag: "\\n", good: "+", bad: "-"}
"""

from __future__ import annotations

from typing import Any

from rewards.api import process_reward

MODES = ("step_tag", "token_classification")


@process_reward("prm")
class PRMScorer:
    """Per-step scores in [0, 1] from a process reward model (step-tag probability or token-classification head),
    batched; args: model (path or hub id), mode, step_tag, good, bad, good_label, batch_size, max_length, dtype."""

    def __init__(self, model: str, mode: str = "step_tag", step_tag: str = "\n", good: str = "+", bad: str = "-",
                 good_label: int = 1, batch_size: int = 16, max_length: int = 1024, dtype: str = "float32",
                 trust_remote_code: bool = False, num_threads: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        if batch_size < 1 or max_length < 2:
            raise ValueError("batch_size must be >= 1 and max_length >= 2")
        self.model_path, self.mode, self.step_tag = model, mode, step_tag
        self.good, self.bad, self.good_label = good, bad, good_label
        self.batch_size, self.max_length, self.dtype = batch_size, max_length, dtype
        self.trust_remote_code, self.num_threads = trust_remote_code, num_threads
        self.model: Any = None

    def setup(self) -> None:
        import torch

        from rlhf.data.prm import single_token
        from rlhf.models.load import DTYPES, load_causal_lm, load_tokenizer

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        self.tokenizer = load_tokenizer(self.model_path, trust_remote_code=self.trust_remote_code)
        if self.mode == "step_tag":
            self.model = load_causal_lm(self.model_path, self.dtype, self.trust_remote_code)
            self.candidates = [single_token(self.tokenizer, self.good, "arg good"),
                               single_token(self.tokenizer, self.bad, "arg bad")]
        else:
            from transformers import AutoModelForTokenClassification

            self.model = AutoModelForTokenClassification.from_pretrained(
                self.model_path, dtype=DTYPES[self.dtype], trust_remote_code=self.trust_remote_code)
            if not 0 <= self.good_label < self.model.config.num_labels:
                raise ValueError(f"good_label {self.good_label} is not a label of the model "
                                 f"({self.model.config.num_labels} labels)")
        self.model.eval().requires_grad_(False)

    def __call__(self, prompts: list[str], completions: list[str], *, steps: list[list[str]],
                 **_: Any) -> list[list[float] | float | None]:
        if self.model is None:
            self.setup()
        out: list[list[float] | float | None] = [None] * len(prompts)
        order = [i for i in range(len(prompts)) if steps[i]]
        for i in range(len(prompts)):
            if not steps[i]:
                out[i] = 0.0  # no step at all: nothing right was done (an outcome value, no steps)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            for i, scores in zip(rows, self._score([prompts[i] for i in rows], [steps[i] for i in rows])):
                out[i] = scores
        return out

    def _score(self, prompts: list[str], steps: list[list[str]]) -> list[list[float]]:
        """One padded forward for a batch. Inputs over max_length keep their end; a step whose tag was cut off the
        front gets the verdict read at the first kept token."""
        import torch

        from rlhf.data.prm import encode_steps
        from rlhf.objectives.common import position_ids_from_mask

        encoded = [encode_steps(self.tokenizer, p, s, self.step_tag) for p, s in zip(prompts, steps)]
        width = min(self.max_length, max(len(ids) for ids, _ in encoded))
        pad = int(self.tokenizer.pad_token_id)
        ids_t = torch.full((len(encoded), width), pad, dtype=torch.long)  # (b, T)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)  # (b, T)
        for b, (ids, _) in enumerate(encoded):
            ids = ids[-width:] if len(ids) > width else ids  # keep the end: the last steps matter most
            ids_t[b, : len(ids)] = torch.tensor(ids)
            mask[b, : len(ids)] = 1
        device = next(self.model.parameters()).device
        with torch.no_grad():
            kwargs = {"position_ids": position_ids_from_mask(mask)} if self.mode == "step_tag" else {}
            logits = self.model(input_ids=ids_t.to(device), attention_mask=mask.to(device), **kwargs).logits.float()
        if self.mode == "step_tag":
            probs = logits[..., self.candidates].softmax(-1)[..., 0]  # (b, T) P(good)
        else:
            probs = logits.softmax(-1)[..., self.good_label]  # (b, T)
        results = []
        for b, (ids, positions) in enumerate(encoded):
            shift = max(0, len(ids) - width)  # tokens cut from the front
            row = probs[b].cpu()
            results.append([float(row[max(0, p - shift)]) for p in positions])
        return results
