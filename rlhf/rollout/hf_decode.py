"""The hf engine's own decode loop: sampling that stops spending work on finished rows.

    tokens, logprobs, versions = decode(model, prompt_ids, prompt_mask, settings, eos_ids={2}, pad_id=0)
    # tokens (B*n, C): each row's sampled ids, pad after its end; logprobs (B*n, C): 0 after its end;
    # versions (C,): the weight version that sampled step t's tokens (``between_steps``)

transformers' ``generate`` keeps every row of the batch in every forward until the last row is done, so with EOS
on and mixed lengths (short answers beside a few rows that run to max_new_tokens) most decode steps spend their
work on rows that already ended. This loop:

- prefills the left-padded prompts once, one row per prompt, then repeats each row's KV cache and last logits
  ``n`` times (rows of a prompt are adjacent, as ``generate``'s num_return_sequences lays them out);
- at each step runs the model only on the rows still active: a row that sampled EOS (or completed a stop string)
  is dropped from the batch, from the attention mask, from its position ids and from the KV cache
  (``DynamicCache.batch_select_indices``), so a step costs what its live rows cost;
- samples as the engine's ``generate`` path does: the logprob of the sampled token is read from
  log_softmax(logits / T) of the raw logits (the trainer's formula, rlhf.objectives.common.completion_logprobs),
  then ignore_eos sets the EOS logits to -inf, then temperature, top-k, top-p, and a multinomial draw from the
  torch RNG (or the argmax when greedy). Positions count real tokens only (left padding has none), as the
  trainer's full forward counts them;
- before the prefill and before each decode forward calls ``between_steps`` (when given): the engine applies a
  weight update asked for meanwhile there (``pipeline.weight_update: keep``, rlhf/rollout/keep.py) and returns
  the version the next forward runs with. The KV cache of the tokens so far stays that of the older weights.

The random draws are not generate's (one draw per live row per step), so a seed gives other samples than
``generate`` with that seed, but always the same ones; greedy decoding gives generate's tokens.
Models whose cache is not a transformers ``DynamicCache`` of per-layer key/value tensors (remote code, linear
attention layers) cannot be pruned row by row: ``loop_unsupported`` says why, and the engine uses ``generate``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from rlhf.types import SamplingSettings

# active-row ids (A, t) so far -> (A,) bool: the row completed a stop string at this step
StopCheck = Callable[[Tensor], Tensor]


def loop_unsupported(model: Any) -> str | None:
    """Why ``decode`` cannot run ``model`` (None when it can): it needs a transformers model (possibly wrapped by
    peft) whose DynamicCache layers can select and repeat batch rows."""
    from transformers import DynamicCache, PreTrainedModel

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model
    if not isinstance(inner, PreTrainedModel) or not type(inner).__module__.startswith("transformers."):
        return f"{type(inner).__name__} is not a transformers model class (remote code?)"
    if getattr(inner.config, "is_encoder_decoder", False):
        return f"{type(inner).__name__} is an encoder-decoder model"
    try:
        cache = DynamicCache(config=inner.config)
    except Exception as e:  # noqa: BLE001 - any failure means: not this loop
        return f"no DynamicCache for {type(inner).__name__}: {e}"
    for layer in cache.layers:
        if not (hasattr(layer, "batch_select_indices") and hasattr(layer, "batch_repeat_interleave")):
            return f"its cache layer {type(layer).__name__} cannot select batch rows"
    return None


def stop_string_check(tokenizer: Any, stops: tuple[str, ...]) -> StopCheck | None:
    """A per-step check for stop strings on the decoded tail of each row's completion so far, or None without
    stop strings (the generate path's stopping criterion calls it too)."""
    if not stops:
        return None
    tail = max(len(s) for s in stops) + 8

    def check(ids: Tensor) -> Tensor:  # ids (A, t)
        texts = tokenizer.batch_decode(ids[:, -tail:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in stops) for t in texts], dtype=torch.bool, device=ids.device)

    return check


@torch.no_grad()
def decode(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    s: SamplingSettings,
    *,
    eos_ids: set[int],
    pad_id: int,
    stop: StopCheck | None = None,
    between_steps: Callable[[], int] | None = None,
) -> tuple[Tensor, Tensor, list[int]]:
    """Sample ``s.n`` completions (1 when greedy) of each left-padded prompt, rows grouped by prompt.

    prompt_ids, prompt_mask: (B, P) on the model's device. Returns (tokens, logprobs), both (B*n, C) on the CPU,
    C = the longest completion: tokens long (each row's ids, ``pad_id`` after its end: after its EOS, its stop
    string or max_new_tokens), logprobs float32 (each sampled token's log_softmax(logits / T); 0 after the end;
    0 everywhere unless ``s.logprobs``), and the version that sampled each step's tokens (0s without
    ``between_steps``). ``s.ignore_eos``: EOS never ends a row and is never sampled."""
    from transformers import DynamicCache

    from rlhf.objectives.common import _accepts_logits_to_keep, position_ids_from_mask

    n = 1 if s.greedy else s.n
    temperature = 1.0 if s.greedy else s.temperature
    device = prompt_ids.device
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)  # (E,)
    cache = DynamicCache(config=model.config)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    version = between_steps() if between_steps is not None else 0  # the weights of the next forward
    versions: list[int] = []  # (steps,)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask),
                past_key_values=cache, use_cache=True, **extra)
    logits = out.logits[:, -1].float()  # (B, V): the next token of each prompt
    attn = prompt_mask  # (A, P + t): the active rows' attention mask
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)  # (B*n, V)
        attn = attn.repeat_interleave(n, dim=0)  # (B*n, P)
    rows = logits.shape[0]
    active = torch.arange(rows, device=device)  # (A,) the batch row each active row writes
    next_pos = attn.sum(dim=1)  # (A,) position of the token fed next: the real tokens before it
    tokens = torch.full((rows, s.max_new_tokens), pad_id, dtype=torch.long, device=device)  # (B*n, max_new)
    logprobs = torch.zeros((rows, s.max_new_tokens), dtype=torch.float32, device=device)  # (B*n, max_new)
    steps = 0
    for t in range(s.max_new_tokens):
        token, lp = _sample(logits, s, temperature, eos if s.ignore_eos else None)  # (A,), (A,) or None
        versions.append(version)
        tokens[active, t] = token
        if lp is not None:
            logprobs[active, t] = lp
        steps = t + 1
        if steps == s.max_new_tokens:
            break
        done = torch.zeros_like(token, dtype=torch.bool) if s.ignore_eos else torch.isin(token, eos)  # (A,)
        if stop is not None:
            done |= stop(tokens[active, :steps])
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)  # (A',)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            active, token, attn, next_pos = active[keep], token[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)  # (A, P + t + 1)
        if between_steps is not None:
            version = between_steps()
        out = model(input_ids=token[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        next_pos = next_pos + 1
        logits = out.logits[:, -1].float()  # (A, V)
    return tokens[:, :steps].cpu(), logprobs[:, :steps].cpu(), versions


def _sample(logits: Tensor, s: SamplingSettings, temperature: float, suppress: Tensor | None
            ) -> tuple[Tensor, Tensor | None]:
    """One token per row of raw logits (A, V) and, with ``s.logprobs``, its logprob under log_softmax(logits /
    temperature), read before ``suppress`` (EOS ids under ignore_eos) is masked and before top-k / top-p."""
    logp = torch.log_softmax(logits / temperature, dim=-1) if s.logprobs else None  # (A, V)
    scores = logits
    if suppress is not None:
        scores = scores.index_fill(1, suppress, -math.inf)  # (A, V)
    if s.greedy:
        token = scores.argmax(dim=-1)  # (A,)
    else:
        scores = _top_k_top_p(scores / temperature, s.top_k, s.top_p)  # (A, V)
        token = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)  # (A,)
    lp = logp.gather(1, token[:, None]).squeeze(1) if logp is not None else None  # (A,)
    return token, lp


def _top_k_top_p(scores: Tensor, top_k: int, top_p: float) -> Tensor:
    """(A, V) scores with -inf outside the k likeliest tokens (ties with the k-th kept) and outside the smallest
    set of likeliest tokens whose probability reaches top_p (the likeliest token always stays)."""
    V = scores.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (A, 1)
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)  # (A, V)
        probs = torch.softmax(ordered, dim=-1)  # (A, V)
        before = torch.cumsum(probs, dim=-1) - probs  # (A, V): mass of the likelier tokens
        drop = before >= top_p  # (A, V); the first (likeliest) token has before = 0 and stays
        scores = scores.scatter(1, order, ordered.masked_fill(drop, -math.inf))
    return scores
