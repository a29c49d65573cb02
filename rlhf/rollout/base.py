"""The rollout-engine protocol every engine implements (hf, vllm), and helpers the rollout functions share.

An engine turns prompt strings into a `RolloutBatch` (token ids + per-token logprobs of the sampled tokens),
takes weight updates in place and reports a fingerprint of the weights it holds.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence

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


def row_columns(rows: list[dict], per_row: int, skip: Sequence[str], skip_private: bool = False
                ) -> dict[str, list[Any]]:
    """The rows' dataset columns (all but ``skip``, and ``_``-prefixed ones with ``skip_private``), each repeated
    for the ``per_row`` samples of its row (rows of a group are adjacent)."""
    keys = [k for k in rows[0] if k not in skip and not (skip_private and k.startswith("_"))]
    return {k: [row.get(k) for row in rows for _ in range(per_row)] for k in keys}
