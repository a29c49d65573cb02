"""The `hf` rollout engine: a transformers model on CPU (or one GPU), the default engine for tiny runs.

    engine = HFEngine(model_dir, dtype="float32", decode="auto")  # our own loop where it can run
    batch = engine.generate(["12+7="], SamplingSettings(n=4, max_new_tokens=8))

Two decode paths, same RolloutBatch: ``loop`` (rlhf/rollout/hf_decode.py), our own KV-cache loop that drops each
row from the batch and the cache once it has ended, so finished rows cost nothing (issue 20); ``generate``,
transformers' ``model.generate``, which runs every row until the last one ends. ``auto`` (the default,
``rollout.hf.decode``) takes the loop unless the model's cache cannot drop rows (remote code, linear-attention
layers). Greedy decoding gives the
same tokens on both; sampling with a seed is deterministic on both but draws other samples on each.

Returns token ids and, when asked (``SamplingSettings.logprobs``), the logprob of every sampled token under the
sampling temperature, recorded while sampling from the raw logits (log_softmax(logits / T), the trainer's formula;
no second forward pass): on identical weights it differs from the trainer's by float rounding (~1e-6, the KV
cache's incremental forward against the trainer's full one).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Literal

import torch

from rlhf.rollout.base import eos_ids
from rlhf.rollout.hf_decode import decode, loop_unsupported, stop_string_check
from rlhf.rollout.keep import StepGate, alone, at_boundary
from rlhf.transport.weights import (WeightSyncError, fingerprint_module, fingerprint_named, load_buckets_into,
                                   load_named_into)
from rlhf.types import RolloutBatch, SamplingSettings, token_versions


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
        decode: Literal["auto", "loop", "generate"] = "auto",
        keep_updates: bool = False,
    ) -> None:
        from rlhf.models.load import load_causal_lm, load_tokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(model_dir, dtype, trust_remote_code).eval().requires_grad_(False)
        self.model_dir = model_dir
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size
        self.weight_version = 0
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        # Sampling follows the recipe alone: a shipped generation_config (repetition_penalty, min_p, ...) would be
        # merged into every generate() call and make samples come from a distribution the loss does not model.
        from transformers import GenerationConfig

        self.model.generation_config = GenerationConfig(
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids)
        )
        self.decode = _decode_path(decode, self.model)  # "loop" | "generate"
        if keep_updates and self.decode != "loop":
            why = "rollout.hf.decode is generate" if decode == "generate" else loop_unsupported(self.model)
            raise ValueError("pipeline.weight_update: keep with the hf engine needs its decode loop (rollout.hf.decode:"
                             f" loop or auto); here it cannot run: {why}")
        # pipeline.weight_update: keep -- updates land between decode steps of a generation in flight
        self.gate = StepGate() if keep_updates else None

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[str], settings: SamplingSettings) -> RolloutBatch:
        from rlhf.data import encode_prompts, format_prompts

        if not prompts:
            raise ValueError("generate: no prompts")
        texts = format_prompts(self.tokenizer, prompts, self.chat_template)
        batch = self._in_chunks(len(texts), lambda a, b: encode_prompts(self.tokenizer, texts[a:b],
                                                                         self.max_prompt_tokens), settings)
        batch.prompts = [p for p in prompts for _ in range(1 if settings.greedy else settings.n)]
        return batch

    def generate_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        """Continue token-id prefixes (already formatted and tokenised, e.g. a prompt plus part of a completion):
        ``settings.n`` samples each; ``prompts`` are left empty and completions hold only the new text."""
        from rlhf.data.collate import left_pad

        if not prefixes:
            raise ValueError("generate_ids: no prefixes")
        batch = self._in_chunks(len(prefixes), lambda a, b: left_pad(prefixes[a:b], self.tokenizer.pad_token_id),
                                settings)
        batch.prompts = [""] * batch.batch_size
        return batch

    def _in_chunks(self, count: int, encode: Any, settings: SamplingSettings) -> RolloutBatch:
        """Generate for ``count`` inputs, ``encode(start, stop)`` -> left-padded (ids, mask), a chunk at a time."""
        if self.gate is not None:
            with self.gate.generating():
                return self._chunks(count, encode, settings)
        return self._chunks(count, encode, settings)

    def _chunks(self, count: int, encode: Any, settings: SamplingSettings) -> RolloutBatch:
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        per_call = max(1, self.batch_size // max(1, settings.n))
        parts = [self._generate_chunk(*encode(start, start + per_call), settings)
                 for start in range(0, count, per_call)]
        return RolloutBatch.cat(parts, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def _generate_chunk(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, s: SamplingSettings) -> RolloutBatch:
        tok = self.tokenizer
        n = 1 if s.greedy else s.n
        step_versions = None
        if self.decode == "loop":
            completion_ids, sampled_logprobs, step_versions = decode(  # (B*n, C), (B*n, C), (C,)
                self.model, prompt_ids.to(self.device), prompt_mask.to(self.device), s, eos_ids=self.eos_ids,
                pad_id=tok.pad_token_id, stop=stop_string_check(tok, s.stop), between_steps=self._between_steps)
        else:
            completion_ids, sampled_logprobs = self._hf_generate(prompt_ids, prompt_mask, s, n)
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0)  # (B*n, P)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)  # (B*n, P)
        completion_mask, finished = _completion_mask(completion_ids, set() if s.ignore_eos else self.eos_ids)
        if s.stop:
            completion_mask, finished = _cut_at_stop(tok, completion_ids, completion_mask, finished, s.stop)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
        if s.logprobs:  # recorded while sampling: no second forward pass
            logprobs = sampled_logprobs * completion_mask  # (B*n, C)
        else:
            logprobs = torch.full(completion_ids.shape, math.nan)  # (B*n, C): not asked for
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
            versions=token_versions(completion_mask, self.weight_version) if step_versions is None else
            torch.where(completion_mask.bool(), torch.tensor(step_versions, dtype=torch.long)[None, :], -1),
        )

    def _between_steps(self) -> int:
        """The decode loop, before each forward: weight updates asked for meanwhile land here (keep mode); the
        version the next forward runs with."""
        if self.gate is not None:
            self.gate.boundary(_nothing, _nothing)
        return self.weight_version

    def _hf_generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, s: SamplingSettings, n: int
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``generate`` path: (B*n, C) completion ids as ``model.generate`` returned them (pad after a row's
        end) and, with ``s.logprobs``, (B*n, C) the sampled tokens' logprobs recorded while sampling, else None."""
        temperature = 1.0 if s.greedy else s.temperature
        suppress = sorted(self.eos_ids) if s.ignore_eos else []  # EOS masked after its logprob is read
        recorder = _SampledLogprobs(temperature, s.logprobs, suppress) if s.logprobs or suppress else None
        out = self.model.generate(
            input_ids=prompt_ids.to(self.device),
            attention_mask=prompt_mask.to(self.device),
            generation_config=self._generation_config(s, n),
            stopping_criteria=_stop_criteria(self.tokenizer, s.stop, prompt_ids.shape[1]),
            logits_processor=[recorder] if recorder is not None else None,
        ).cpu()  # (B*n, P + C)
        completion_ids = out[:, prompt_ids.shape[1]:]  # (B*n, C)
        return completion_ids, recorder.result(completion_ids) if s.logprobs else None

    def _generation_config(self, s: SamplingSettings, n: int) -> Any:
        """The recipe's sampling settings (the model's shipped generation_config was replaced at load)."""
        from transformers import GenerationConfig

        cfg = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
            use_cache=True,
            do_sample=not s.greedy,
        )
        # ignore_eos: the EOS logits are masked by _SampledLogprobs (after it reads the logprobs), not by
        # min_new_tokens, whose processor would run first and change the recorded distribution
        if not s.greedy:
            cfg.temperature, cfg.top_p, cfg.top_k = s.temperature, s.top_p, (s.top_k or None)
        return cfg

    def completion_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, temperature: float = 1.0
    ) -> torch.Tensor:
        # keep mode: not while weights may change between decode steps
        return alone(self.gate, lambda: self._completion_logprobs(input_ids, attention_mask, prompt_len, temperature))

    @torch.no_grad()
    def _completion_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, temperature: float = 1.0
    ) -> torch.Tensor:
        from rlhf.objectives.common import completion_logprobs

        lp = completion_logprobs(
            self.model, input_ids.to(self.device), attention_mask.to(self.device), prompt_len, temperature
        )
        return lp.cpu()  # (B, C)

    def set_head_mix(self, mix: Iterable[float]) -> None:
        """A multi-head model directory (rlhf/models/multihead.py: heads.json beside the causal LM): generate with
        the logits sum_k mix_k logits_k of its heads from now on. The lm_head becomes the merged head sum_k mix_k
        W_k, which gives exactly those logits (the heads are linear and the saved lm_head is untied)."""
        from rlhf.models.multihead import is_multihead_dir, merged_head, read_heads

        if not is_multihead_dir(self.model_dir):
            raise ValueError(f"set_head_mix: {self.model_dir} is not a multi-head model directory (no heads.json)")
        _names, _mix, heads = read_heads(self.model_dir)  # (K, V, H)
        head = self.model.get_output_embeddings()
        if head.weight is self.model.get_input_embeddings().weight:
            raise ValueError(f"set_head_mix: {self.model_dir}'s lm_head is tied to its embeddings")
        with torch.no_grad():
            head.weight.copy_(merged_head(heads, list(mix)).to(head.weight.device, head.weight.dtype))  # (V, H)

    # ------------------------------------------------------------------ weights

    def load_weights(self, buckets: Iterable[bytes], version: int,
                     adapter: dict[str, Any] | None = None) -> tuple[int, str]:
        """Load a full model's buckets in place, or (adapter: the trainer's model.lora config) a LoRA adapter's:
        the model is wrapped with that config once, then only adapter tensors move. Returns (version,
        fingerprint of what the engine now holds: every parameter, or every adapter tensor). Keep mode: at the
        next decode step of a generation in flight."""
        return at_boundary(self.gate, lambda: self._load_weights(buckets, version, adapter))

    def _load_weights(self, buckets: Iterable[bytes], version: int,
                      adapter: dict[str, Any] | None = None) -> tuple[int, str]:
        if version < self.weight_version:
            raise WeightSyncError(f"weight sync: version {version} is older than the engine's {self.weight_version}")
        if adapter is not None:
            from rlhf.models.lora import LoraError, ensure_engine_adapter, load_adapter_tensors
            from rlhf.transport.weights import unpack_bucket

            try:
                self.model = ensure_engine_adapter(self.model, adapter)
                load_adapter_tensors(self.model, (kv for blob in buckets for kv in unpack_bucket(blob).items()),
                                     "weight sync (LoRA adapter)")
            except LoraError as e:
                raise WeightSyncError(str(e)) from e
            fp = adapter_fingerprint(self.model)
        elif getattr(self.model, "_rlhf_lora", None) is not None:
            raise WeightSyncError("weight sync: this engine holds a LoRA adapter; the trainer sent full weights")
        else:
            fp, _ = load_buckets_into(self.model, buckets)
        self.weight_version = version
        return version, fp

    def join_sync_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                        timeout_s: float) -> int:
        """Join the weight-sync group as receiver `rank` (rollout.weight_sync=broadcast); returns the ranks used."""
        from rlhf.transport.broadcast import SyncGroup

        self.leave_sync_group()
        self._sync_group = SyncGroup(host, port, rank, world_size, backend, timeout_s)
        return 1

    def begin_update(self, version: int) -> None:
        """Start an in-place update that arrives in pieces (`update_ipc`), ended by `finish_update`."""
        from rlhf.transport.weights import ParamLoader

        if version < self.weight_version:
            raise WeightSyncError(f"weight sync: version {version} is older than the engine's {self.weight_version}")
        if getattr(self.model, "_rlhf_lora", None) is not None:
            raise WeightSyncError("weight sync: this engine holds a LoRA adapter; the trainer sends full weights")
        self._update = (version, ParamLoader(self.model))

    def update_ipc(self, meta: list, handle: bytes) -> int:
        """One bucket from the colocated training rank's GPU buffer (rollout.weight_sync=cuda_ipc)."""
        from rlhf.transport.ipc import finish_copies, open_shared
        from rlhf.transport.weights import unflatten_bucket

        loader = self._pending_update()[1]
        before = len(loader.seen)
        loader.load(unflatten_bucket(meta, open_shared(handle)))
        finish_copies()  # the trainer frees the buffer when this returns
        return len(loader.seen) - before

    def finish_update(self) -> tuple[int, str]:
        version, loader = self._pending_update()
        self._update = None
        fp, _ = loader.finish()
        self.weight_version = version
        return version, fp

    def _pending_update(self) -> tuple[int, Any]:
        update = getattr(self, "_update", None)
        if update is None:
            raise WeightSyncError("weight sync: no update in progress (begin_update was not called)")
        return update

    def sync_ranks(self) -> int:
        return 1

    def receive_weights(self, version: int) -> tuple[int, str]:
        """Receive the full model over the weight-sync group, in place; return (version, fingerprint). Keep mode:
        at the next decode step of a generation in flight."""
        return at_boundary(self.gate, lambda: self._receive_weights(version))

    def _receive_weights(self, version: int) -> tuple[int, str]:
        if version < self.weight_version:
            raise WeightSyncError(f"weight sync: version {version} is older than the engine's {self.weight_version}")
        group = getattr(self, "_sync_group", None)
        if group is None:
            raise WeightSyncError("weight sync: this engine has not joined the weight-sync group")
        if getattr(self.model, "_rlhf_lora", None) is not None:
            raise WeightSyncError("weight sync: this engine holds a LoRA adapter; broadcast sends full weights")
        try:
            fp, _ = load_named_into(self.model, group.receive())
        except BaseException:
            self.leave_sync_group()  # the sender then fails at once instead of waiting for this reader
            raise
        self.weight_version = version
        return version, fp

    def leave_sync_group(self) -> None:
        group, self._sync_group = getattr(self, "_sync_group", None), None
        if group is not None:
            group.close()

    def fingerprint(self) -> str:
        if getattr(self.model, "_rlhf_lora", None) is not None:
            return adapter_fingerprint(self.model)
        return fingerprint_module(self.model)

    def info(self) -> dict[str, Any]:
        return {
            "engine": "hf",
            "decode": self.decode,
            "params": sum(p.numel() for p in self.model.parameters()),
            "version": self.weight_version,
            "threads": torch.get_num_threads(),
        }


def _decode_path(decode: str, model: Any) -> str:
    """The decode path an engine takes: ``loop`` (rlhf/rollout/hf_decode.py) or ``generate``; ``auto`` is the
    loop unless the model cannot run it, ``loop`` on such a model is an error."""
    if decode not in ("auto", "loop", "generate"):
        raise ValueError(f"HFEngine: decode must be auto, loop or generate (got {decode!r})")
    if decode == "generate":
        return "generate"
    reason = loop_unsupported(model)
    if reason is None:
        return "loop"
    if decode == "loop":
        raise ValueError(f"HFEngine: decode=loop cannot run this model: {reason}; use decode=generate (or auto)")
    return "generate"


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's generation_config EOS list."""
    return eos_ids(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))


def _completion_mask(completion_ids: torch.Tensor, eos_ids: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) mask up to and including the first EOS, and (B,) whether an EOS was produced."""
    is_eos = torch.isin(completion_ids, torch.tensor(sorted(eos_ids)))  # (B, C)
    finished = is_eos.any(dim=1)  # (B,)
    C = completion_ids.shape[1]
    first = torch.where(finished, is_eos.float().argmax(dim=1), torch.full_like(finished, C, dtype=torch.long))
    positions = torch.arange(C).unsqueeze(0)  # (1, C)
    mask = (positions <= first.unsqueeze(1)).long()  # (B, C)
    return mask, finished


def _stop_position(tokenizer: Any, ids: list[int], stops: tuple[str, ...]) -> int | None:
    """Index of the token whose decoding completes the first stop string, or None."""
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        if any(stop in text for stop in stops):
            return k - 1
    return None


def _cut_at_stop(tokenizer, completion_ids, mask, finished, stops) -> tuple[torch.Tensor, torch.Tensor]:
    """End each completion at the token that completes a stop string (kept, as vLLM's include_stop_str)."""
    mask, finished = mask.clone(), finished.clone()
    for b in range(completion_ids.shape[0]):
        length = int(mask[b].sum())
        k = _stop_position(tokenizer, completion_ids[b, :length].tolist(), stops)
        if k is not None:
            mask[b, k + 1 :] = 0
            finished[b] = True
    return mask, finished


def _stop_criteria(tokenizer: Any, stops: tuple[str, ...], prompt_len: int) -> Any:
    """Per-row stopping on stop strings for ``generate``: the decode loop's check (``stop_string_check``, on the
    decoded tail of the completion, so any tokenizer works) as a transformers stopping criterion."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    check = stop_string_check(tokenizer, stops)
    if check is None:
        return None

    class _StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return check(input_ids[:, prompt_len:])  # (B,) bool

    return StoppingCriteriaList([_StopOnStrings()])


def adapter_fingerprint(model: Any) -> str:
    """Fingerprint of the LoRA adapter tensors an engine holds, under the adapter-file keys the trainer sends."""
    from rlhf.models.lora import adapter_named_parameters

    return fingerprint_named(adapter_named_parameters(model))


class _SampledLogprobs:
    """A logits processor that records log pi(o_t) of each sampled token while ``generate`` samples: the raw
    logits at step t (custom processors run before the temperature / top-k / top-p warpers) give
    log_softmax(logits / temperature), the trainer's formula (rlhf/objectives/common.py), and the token sampled
    from them is read at step t + 1 (or at the end). One (B, V) row of log-probabilities is kept at a time, and
    the per-token values stay on the device until ``result``. ``suppress`` (ignore_eos): those token ids get -inf
    after the logprobs are read, so EOS is never sampled while the recorded distribution stays the policy's."""

    def __init__(self, temperature: float, record: bool = True, suppress: list[int] | None = None) -> None:
        self.temperature, self.record, self.suppress = temperature, record, list(suppress or [])
        self.last: torch.Tensor | None = None  # (B, V) log-probabilities of the step not yet read
        self.steps: list[torch.Tensor] = []  # (B,) per generated token, on the model's device

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.record:
            if self.last is not None:
                self.steps.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))  # (B,)
            self.last = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # (B, V)
        if self.suppress:
            scores = scores.clone()
            scores[:, self.suppress] = -math.inf
        return scores

    def result(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """(B, C) logprobs of ``completion_ids`` (what generate returned after the prompt); 0 past the end."""
        B, C = completion_ids.shape
        steps = list(self.steps)
        if self.last is not None and len(steps) < C:
            steps.append(self.last.gather(-1, completion_ids[:, len(steps): len(steps) + 1].to(self.last.device))
                         .squeeze(-1))
        out = torch.zeros(B, C)
        if steps:
            out[:, : len(steps)] = torch.stack(steps, dim=1)[:, :C].cpu()
        return out  # (B, C)


def _nothing() -> None:
    """The hf engine's pause and resume around an update at a step boundary: its loop is already between steps."""
