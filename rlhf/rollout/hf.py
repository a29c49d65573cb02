"""The `hf` rollout engine: Hugging Face `generate` on CPU (or one GPU), the default engine for tiny runs.

    engine = HFEngine(model_dir, dtype="float32")
    batch = engine.generate(["12+7="], SamplingSettings(n=4, max_new_tokens=8))

Returns token ids and the logprob of every sampled token under the sampling temperature, recomputed with one
forward pass over the finished sequences (the same computation the trainer does, so the two agree exactly on
identical weights).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from rlhf.rollout.base import cat_rollouts
from rlhf.runtime.weight_sync import fingerprint_module, load_buckets_into
from rlhf.types import RolloutBatch, SamplingSettings


class HFEngine:
    def __init__(
        self,
        model_dir: str,
        *,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        chat_template: str = "auto",
        max_prompt_tokens: int = 128,
        batch_size: int = 64,
        num_threads: int | None = None,
    ) -> None:
        from rlhf.models.load import load_causal_lm, load_tokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(model_dir, dtype, trust_remote_code).eval().requires_grad_(False)
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size
        self.weight_version = 0

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[str], settings: SamplingSettings) -> RolloutBatch:
        from rlhf.data import encode_prompts, format_prompts

        if not prompts:
            raise ValueError("generate: no prompts")
        texts = format_prompts(self.tokenizer, prompts, self.chat_template)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        per_call = max(1, self.batch_size // max(1, settings.n))
        parts = []
        for start in range(0, len(texts), per_call):
            ids, mask = encode_prompts(self.tokenizer, texts[start : start + per_call], self.max_prompt_tokens)
            part = self._generate_chunk(ids, mask, settings)
            part.prompts = [p for p in prompts[start : start + per_call] for _ in range(settings.n)]
            parts.append(part)
        batch = cat_rollouts(parts, self.tokenizer.pad_token_id)
        batch.weight_version = self.weight_version
        return batch

    @torch.no_grad()
    def _generate_chunk(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, s: SamplingSettings) -> RolloutBatch:
        tok = self.tokenizer
        n = 1 if s.greedy else s.n
        kwargs: dict[str, Any] = dict(
            max_new_tokens=s.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            num_return_sequences=n,
            use_cache=True,
        )
        if s.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=tok)
        out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)  # (B*n, P + C')
        P = prompt_ids.shape[1]
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0)  # (B*n, P)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)  # (B*n, P)
        completion_ids = out[:, P:]  # (B*n, C)
        completion_mask, finished = _completion_mask(completion_ids, tok.eos_token_id)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
        temperature = 1.0 if s.greedy else s.temperature
        logprobs = self.completion_logprobs(
            torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), P, temperature
        ) * completion_mask  # (B*n, C)
        texts = tok.batch_decode(
            [ids[: int(m.sum())] for ids, m in zip(completion_ids, completion_mask)], skip_special_tokens=True
        )
        B = prompt_ids.shape[0] // n
        return RolloutBatch(
            prompts=[],
            completions=texts,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            logprobs=logprobs.float(),
            group_ids=torch.arange(B).repeat_interleave(n),
            finished=finished,
        )

    @torch.no_grad()
    def completion_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, temperature: float = 1.0
    ) -> torch.Tensor:
        from rlhf.objectives.common import completion_logprobs

        return completion_logprobs(self.model, input_ids, attention_mask, prompt_len, temperature)  # (B, C)

    # ------------------------------------------------------------------ weights

    def load_weights(self, buckets: Iterable[bytes], version: int) -> tuple[int, str]:
        fp, _ = load_buckets_into(self.model, buckets)
        self.weight_version = version
        return version, fp

    def fingerprint(self) -> str:
        return fingerprint_module(self.model)

    def info(self) -> dict[str, Any]:
        return {
            "engine": "hf",
            "params": sum(p.numel() for p in self.model.parameters()),
            "version": self.weight_version,
            "threads": torch.get_num_threads(),
        }


def _completion_mask(completion_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) mask up to and including the first EOS, and (B,) whether an EOS was produced."""
    is_eos = completion_ids == eos_id  # (B, C)
    finished = is_eos.any(dim=1)  # (B,)
    C = completion_ids.shape[1]
    first = torch.where(finished, is_eos.float().argmax(dim=1), torch.full_like(finished, C, dtype=torch.long))
    positions = torch.arange(C).unsqueeze(0)  # (1, C)
    mask = (positions <= first.unsqueeze(1)).long()  # (B, C)
    return mask, finished
