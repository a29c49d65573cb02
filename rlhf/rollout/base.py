"""The rollout-engine protocol every engine implements (hf now; vllm behind the same methods).

An engine turns prompt strings into a `RolloutBatch` (token ids + per-token logprobs of the sampled tokens),
takes weight updates in place and reports a fingerprint of the weights it holds.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import torch

from rlhf.types import RolloutBatch, SamplingSettings


class RolloutEngine(Protocol):
    weight_version: int

    def generate(self, prompts: list[str], settings: SamplingSettings) -> RolloutBatch:
        """Sample `settings.n` completions per prompt; rows grouped by prompt (group_ids 0..len(prompts)-1)."""

    def generate_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        """Continue token-id prefixes (no templating, no truncation); completions hold only the new text."""

    def completion_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                            temperature: float = 1.0) -> torch.Tensor:
        """(B, C) logprobs of the given completions under the engine's current weights (for parity checks)."""

    def load_weights(self, buckets: Iterable[bytes], version: int) -> tuple[int, str]:
        """Apply safetensors buckets in place; return (version, fingerprint of the weights now held)."""

    def fingerprint(self) -> str: ...

    def info(self) -> dict[str, Any]: ...


def eos_ids(tokenizer: Any, generation_eos: int | list[int] | None) -> set[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's generation_config EOS id(s)."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    if generation_eos is not None:
        ids |= {int(i) for i in (generation_eos if isinstance(generation_eos, (list, tuple)) else [generation_eos])}
    if not ids:
        raise ValueError("the tokenizer and the model define no EOS token; completions could never finish")
    return ids


def pad_to(t: torch.Tensor, length: int, value: int | float, left: bool) -> torch.Tensor:
    """Pad the last dim of (B, L) to `length`."""
    extra = length - t.shape[1]
    if extra <= 0:
        return t
    pad = torch.full((t.shape[0], extra), value, dtype=t.dtype)
    return torch.cat([pad, t], dim=1) if left else torch.cat([t, pad], dim=1)


def cat_rollouts(parts: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Concatenate engine shards; re-pads prompts (left) and completions (right); offsets group ids."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    C = max(p.completion_ids.shape[1] for p in parts)
    offset, group_ids = 0, []
    for p in parts:
        group_ids.append(p.group_ids + offset)
        offset += int(p.group_ids.max()) + 1 if p.batch_size else 0
    extras: dict[str, list[Any]] = {k: [] for k in parts[0].extras}
    for p in parts:
        for k in extras:
            extras[k].extend(p.extras[k])
    return RolloutBatch(
        prompts=[s for p in parts for s in p.prompts],
        completions=[s for p in parts for s in p.completions],
        prompt_ids=torch.cat([pad_to(p.prompt_ids, P, pad_token_id, left=True) for p in parts]),
        prompt_mask=torch.cat([pad_to(p.prompt_mask, P, 0, left=True) for p in parts]),
        completion_ids=torch.cat([pad_to(p.completion_ids, C, pad_token_id, left=False) for p in parts]),
        completion_mask=torch.cat([pad_to(p.completion_mask, C, 0, left=False) for p in parts]),
        logprobs=torch.cat([pad_to(p.logprobs, C, 0.0, left=False) for p in parts]),
        group_ids=torch.cat(group_ids),
        finished=torch.cat([p.finished for p in parts]),
        extras=extras,
        weight_version=parts[0].weight_version,
    )


def select_groups(batch: RolloutBatch, groups: list[int]) -> RolloutBatch:
    """The rows of the given groups (in that order), with group ids renumbered 0..len(groups)-1."""
    rows = [i for g in groups for i in (batch.group_ids == g).nonzero().flatten().tolist()]
    idx = torch.tensor(rows, dtype=torch.long)
    new_ids = {g: k for k, g in enumerate(groups)}
    return RolloutBatch(
        prompts=[batch.prompts[i] for i in rows],
        completions=[batch.completions[i] for i in rows],
        prompt_ids=batch.prompt_ids[idx],
        prompt_mask=batch.prompt_mask[idx],
        completion_ids=batch.completion_ids[idx],
        completion_mask=batch.completion_mask[idx],
        logprobs=batch.logprobs[idx],
        group_ids=torch.tensor([new_ids[int(batch.group_ids[i])] for i in rows], dtype=torch.long),
        finished=batch.finished[idx],
        extras={k: [v[i] for i in rows] for k, v in batch.extras.items()},
        weight_version=batch.weight_version,
    )
