"""The per-batch step functions of a training rank: one function per kind of update, no state of their own.

    ctx = StepContext(backend, hf_model, reference, device, rank, world_size, settings)
    metrics = policy_gradient_update(ctx, experience, objective, token_level=False)

Each function receives this rank's shard and runs on every rank at once (COLLECTIVE: gradient reduction, the
normalisers' all-reduces and ZeRO-3's gathered forwards all need every rank). The worker (rlhf/train/worker.py)
is the shell that owns the model and calls these; the losses are the objective's (rlhf/objectives).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch

from rlhf.objectives.common import completion_logprobs
from rlhf.objectives.packing import balanced_partition, packed_completion_logprobs
from rlhf.train.settings import StepSettings
from rlhf.types import ExperienceBatch, LossOutput


@dataclass
class StepContext:
    """What a step function needs of its rank."""

    backend: Any  # TrainBackend: .module (the trained model), backward / step / configure_batch
    hf_model: torch.nn.Module  # the HF model under the backend (train / eval mode)
    reference: torch.nn.Module | None  # the frozen reference, when loaded
    device: torch.device
    rank: int
    world_size: int
    settings: StepSettings

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """COLLECTIVE when world_size > 1: elementwise sum over ranks (returns a tensor on t's device)."""
        if self.world_size == 1:
            return t
        out = t.detach().to(self.device).clone()
        torch.distributed.all_reduce(out)
        return out.to(t.device)

    def global_sum(self, value: torch.Tensor) -> float:
        """COLLECTIVE when world_size > 1: the sum of `value` over ranks."""
        return float(self.all_reduce(value.detach().float().reshape(1)))

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Forward passes without dropout-style training behaviour, back to train mode afterwards."""
        self.hf_model.eval()
        try:
            yield
        finally:
            self.hf_model.train()


class Metrics:
    """Per-key means of the metrics of every micro-batch (NaN and None values skipped)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            self.sums[k] += float(v)
            self.counts[k] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def optimize(ctx: StepContext, parts: Iterable[Any], loss_fn: Callable[[Any], LossOutput], metrics: Metrics,
             norm_key: str = "grad_norm") -> None:
    """COLLECTIVE. backward + step per micro-batch (the backend applies the optimizer at the accumulation
    boundary); metrics are accumulated into `metrics`."""
    for part in parts:
        out = loss_fn(part)
        ctx.backend.backward(out.loss)
        norm = ctx.backend.step()
        metrics.add(out.metrics)
        if norm is not None:
            metrics.add({norm_key: norm})


def micro_batches(batch: Any, start: int, stop: int, micro: int) -> Iterator[Any]:
    return (batch.slice(m0, m0 + micro) for m0 in range(start, stop, micro))


def length_grouped(exp: ExperienceBatch, start: int, stop: int, micro: int,
                   enabled: bool = True) -> Iterator[ExperienceBatch]:
    """Micro-batches of rows start..stop of similar completion length, each without the columns that are padding
    in all its rows (``ExperienceBatch.trimmed``): the same rows and the same loss (every term is a sum over its
    tokens divided by a normaliser fixed for the mini-batch), less work on padding when lengths vary. The row count
    per micro-batch is unchanged, so every rank still runs the same number of forwards (ZeRO-3). enabled=False
    (train.group_by_length: false): rows in order, padded to the batch's longest."""
    if not enabled:
        return micro_batches(exp, start, stop, micro)
    part = exp.slice(start, stop)
    order = torch.argsort(part.completion_lengths(), stable=True)  # (stop - start,)
    part = part.select(order)
    return (part.slice(m0, m0 + micro).trimmed() for m0 in range(0, stop - start, micro))


def token_balanced(exp: ExperienceBatch, start: int, stop: int, micro: int) -> Iterator[ExperienceBatch]:
    """Micro-batches of `micro` rows of rows start..stop with about the same number of real (prompt + completion)
    tokens each (``balanced_partition``; train.packing.balance), each trimmed: with packed forwards a micro-batch
    costs about its real tokens, so equal tokens mean equal work per forward on every rank. Same rows, same number
    of micro-batches, same loss as ``length_grouped``."""
    part = exp.slice(start, stop)
    groups = balanced_partition(part.attention_mask.sum(dim=1), (stop - start) // micro)
    return (part.select(torch.tensor(g, device=part.input_ids.device)).trimmed() for g in groups)


def train_parts(exp: ExperienceBatch, start: int, stop: int, micro: int, s: StepSettings) -> Iterator[ExperienceBatch]:
    """The micro-batches of rows start..stop: token-balanced (train.packing.balance) or length-grouped."""
    if s.balance_tokens:
        return token_balanced(exp, start, stop, micro)
    return length_grouped(exp, start, stop, micro, s.group_by_length)


def forward_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                     temperature: float, packing: bool) -> torch.Tensor:
    """(b, C) completion logprobs of input_ids, attention_mask (b, P + C): packed, padding-free (train.packing; 0
    on completion padding) or padded (the pad token's logprob on completion padding); equal on real tokens."""
    fn = packed_completion_logprobs if packing else completion_logprobs
    return fn(model, input_ids, attention_mask, prompt_len, temperature)


def part_logprobs(model: torch.nn.Module, part: ExperienceBatch, temperature: float,
                  packing: bool) -> torch.Tensor:
    """(b, C) completion logprobs of a micro-batch (``forward_logprobs``)."""
    return forward_logprobs(model, part.input_ids, part.attention_mask, part.prompt_len, temperature, packing)


def part_values(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                packing: bool) -> torch.Tensor:
    """(b, C, S) critic values of input_ids, attention_mask (b, P + C): packed (train.packing; 0 on completion
    padding) or padded (garbage on completion padding); equal on real tokens."""
    from rlhf.models.value import completion_values, packed_completion_values

    fn = packed_completion_values if packing else completion_values
    return fn(model, input_ids, attention_mask, prompt_len)


def logprobs_chunked(model: torch.nn.Module, exp: ExperienceBatch, temperature: float, micro: int,
                     packing: bool = False) -> torch.Tensor:
    """(B, C) completion logprobs of `exp` under `model`, `micro` rows per forward (each chunk trimmed of its
    all-padding columns, or packed; the padding positions of the result are 0)."""
    C = exp.input_ids.shape[1] - exp.prompt_len
    parts = []
    for i in range(0, exp.batch_size, micro):
        chunk = exp.slice(i, i + micro).trimmed()
        lp = part_logprobs(model, chunk, temperature, packing)  # (b, C')
        parts.append(torch.nn.functional.pad(lp, (0, C - lp.shape[1])))  # (b, C)
    return torch.cat(parts, dim=0)  # (B, C)


# --------------------------------------------------------------------------- policy gradient


def policy_gradient_update(ctx: StepContext, exp: ExperienceBatch, objective: Any,
                           token_level: bool = False) -> dict[str, float]:
    """COLLECTIVE. Reference/old logprobs, then epochs x mini-batches of optimizer steps of the objective's
    surrogate on this rank's shard. token_level: exp.advantages are the objective's sequence scores, finished into
    token advantages here once logprobs are known (REINFORCE++)."""
    from rlhf.objectives.offpolicy import mismatch_metrics

    s = ctx.settings
    exp = exp.to(ctx.device)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        if objective.needs_reference and exp.ref_logprobs is None:
            if ctx.reference is None:
                raise RuntimeError("the objective needs a reference model but none was loaded")
            exp.ref_logprobs = logprobs_chunked(ctx.reference, exp, s.temperature, s.logprob_micro, s.packing)
        reuse_old = s.epochs * s.mini_batches == 1 and not token_level
        if not reuse_old and exp.old_logprobs is None:
            with ctx.eval_mode():
                exp.old_logprobs = logprobs_chunked(ctx.backend.module, exp, s.temperature, s.logprob_micro,
                                                    s.packing)
        if token_level:  # KL-shaped token rewards -> returns -> whitening over every rank's tokens
            exp.advantages = objective.token_advantages(exp.advantages, exp.old_logprobs, exp.ref_logprobs,
                                                        exp.loss_mask, reduce=ctx.all_reduce,
                                                        scale=exp.advantage_scale)  # (B, C)
    timings["time/ref_old_logprobs"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    surrogate = objective.surrogate
    n = exp.batch_size
    mini = n // s.mini_batches
    micro = ctx.backend.configure_batch(mini, s.micro_batch_size)
    metrics = Metrics()
    for _epoch in range(s.epochs):
        for start in range(0, n, mini):
            # token_mean over the whole mini-batch of every rank: the backend divides each micro-batch loss by the
            # accumulation steps and averages over ranks, so normalise by global tokens / (gas * world)
            if surrogate.loss_agg == "dr_grpo":  # constant denominator per micro-batch
                normalizer = float(micro * s.max_new_tokens)
            else:
                tokens = ctx.global_sum(exp.loss_mask[start : start + mini].sum())
                normalizer = max(tokens, 1.0) / ((mini // micro) * ctx.world_size)

            def loss_fn(part: ExperienceBatch, normalizer: float = normalizer) -> LossOutput:
                logprobs = part_logprobs(ctx.backend.module, part, s.temperature, s.packing)  # (b, C)
                old = logprobs.detach() if part.old_logprobs is None else part.old_logprobs  # pre-update
                extra = {}
                if part.rollout_logprobs is not None:  # the engine's (behaviour) logprobs vs the trainer's
                    extra = mismatch_metrics(old, part.rollout_logprobs, part.loss_mask)
                out = surrogate.loss(logprobs, old, part.ref_logprobs, part.advantages, part.loss_mask, normalizer,
                                     nll_rows=part.nll_rows, behaviour_logprobs=part.rollout_logprobs)
                out.metrics.update(extra)
                return out

            optimize(ctx, train_parts(exp, start, start + mini, micro, s), loss_fn, metrics)
    timings["time/update"] = time.perf_counter() - t0
    return {**metrics.means(), **timings}


def value_update(ctx: StepContext, exp: ExperienceBatch, objective: Any) -> dict[str, float]:
    """COLLECTIVE. Epochs x micro-batches of clipped value-loss steps towards exp.returns (the critic's rank).
    The micro-batches stay length-grouped with packing too: the value loss is a mean over each micro-batch's own
    tokens, so regrouping rows by tokens (train.packing.balance) would change the gradient."""
    s = ctx.settings
    exp = exp.to(ctx.device)
    n = exp.batch_size
    micro = ctx.backend.configure_batch(n // s.mini_batches, s.micro_batch_size)
    metrics = Metrics()

    def loss_fn(part: ExperienceBatch) -> LossOutput:
        values = part_values(ctx.backend.module, part.input_ids, part.attention_mask, part.prompt_len,
                             s.packing)  # (b, C, S)
        return objective.value_loss(values, part.values, part.returns, part.loss_mask)

    for _epoch in range(s.epochs):
        optimize(ctx, length_grouped(exp, 0, n, micro, s.group_by_length), loss_fn, metrics,
                 norm_key="critic/grad_norm")
    return metrics.means()


@torch.no_grad()
def critic_values(ctx: StepContext, exp: ExperienceBatch) -> torch.Tensor:
    """COLLECTIVE. (B, C, S) critic values of this rank's shard (0 on completion padding when packed)."""
    exp = exp.to(ctx.device)
    micro = ctx.settings.micro_batch_size
    with ctx.eval_mode():
        parts = [part_values(ctx.backend.module, exp.input_ids[i : i + micro], exp.attention_mask[i : i + micro],
                             exp.prompt_len, ctx.settings.packing)
                 for i in range(0, exp.batch_size, micro)]  # (micro, C, S) each
    return torch.cat(parts).float().cpu()


# --------------------------------------------------------------------------- supervised


def supervised_update(ctx: StepContext, batch: Any, objective: Any) -> dict[str, float]:
    """COLLECTIVE. One optimizer step of a supervised loss (``objective.loss_sft``: SFT, PRM) on this shard."""
    batch = batch.to(ctx.device)
    micro = ctx.backend.configure_batch(batch.batch_size, ctx.settings.micro_batch_size)
    metrics = Metrics()
    optimize(ctx, micro_batches(batch, 0, batch.batch_size, micro),
             lambda part: objective.loss_sft(ctx.backend.module, part), metrics)
    return metrics.means()


@torch.no_grad()
def supervised_eval(ctx: StepContext, batch: Any, objective: Any) -> dict[str, float]:
    """COLLECTIVE under ZeRO-3. The supervised loss's metrics on this shard, no update."""
    with ctx.eval_mode():
        return objective.loss_sft(ctx.backend.module, batch.to(ctx.device)).metrics


# --------------------------------------------------------------------------- preference pairs


def pair_logps(model: torch.nn.Module, batch: Any, heads: bool = False,
               packing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) summed completion logps of chosen and of rejected, from one forward over both; ``heads``: a
    multi-head policy's (B, K) logps of every head, from one trunk forward. packing (train.packing): the 2B
    right-padded sequences packed padding-free (each row's first token as its one-token "prompt", so the (2B,
    T - 1) logprobs are those of tokens 1..T-1, as ``token_logprobs``')."""
    from rlhf.objectives.common import token_logprobs
    from rlhf.objectives.dpo import sequence_logps

    ids, mask, loss_mask = batch.stacked()  # (2B, T)
    if heads:
        from rlhf.objectives.mah_dpo import head_sequence_logps, packed_head_sequence_logps

        fn = packed_head_sequence_logps if packing else head_sequence_logps
        return fn(model, ids, mask, loss_mask).chunk(2)  # (B, K) each
    if packing:
        token = packed_completion_logprobs(model, ids, mask, 1)  # (2B, T - 1), 0 on padding
    else:
        token = token_logprobs(model, ids, mask)  # (2B, T - 1)
    logps = sequence_logps(token, loss_mask[:, 1:])  # (2B,)
    return logps.chunk(2)


def pair_update(ctx: StepContext, pairs: Any, objective: Any, heads: bool = False) -> dict[str, float]:
    """COLLECTIVE. One optimizer step of the objective's pair loss on this rank's shard of offline pairs
    (``PairBatch``: collated pairs, cached reference logps, MODPO margins, per-pair info such as a multi-head
    policy's (B, K) labels); ``heads``: the policy is multi-head (its logps are (b, K))."""
    pairs = pairs.to(ctx.device)
    micro = ctx.backend.configure_batch(pairs.batch_size, ctx.settings.micro_batch_size)
    metrics = Metrics()

    def loss_fn(part: Any) -> LossOutput:
        chosen, rejected = pair_logps(ctx.backend.module, part.batch, heads,
                                      ctx.settings.packing)  # (b,) or (b, K) each
        ref = part.ref_logps  # (b, 2) or None (reference-free)
        return objective.pair_loss(chosen, rejected, None if ref is None else ref[:, 0],
                                   None if ref is None else ref[:, 1], margin=part.margin,
                                   chosen_lengths=part.batch.chosen_loss_mask[:, 1:].sum(1),
                                   rejected_lengths=part.batch.rejected_loss_mask[:, 1:].sum(1),
                                   pair_info=part.pair_info)

    optimize(ctx, micro_batches(pairs, 0, pairs.batch_size, micro), loss_fn, metrics)
    return metrics.means()


def online_pair_update(ctx: StepContext, exp: ExperienceBatch, objective: Any) -> dict[str, float]:
    """COLLECTIVE. One optimizer step of the objective's pair loss on rollout pairs: rows (2i, 2i+1) of the shard
    are (chosen, rejected) completions of one prompt; reference logps are computed here, on the fly."""
    from rlhf.train.backend import micro_size

    s = ctx.settings
    exp = exp.to(ctx.device)  # (2P, ...) rows: chosen, rejected, chosen, ...
    if objective.pairs_need_reference:
        with torch.no_grad():
            exp.ref_logprobs = logprobs_chunked(ctx.reference, exp, s.temperature, s.logprob_micro,
                                                s.packing)  # (2P, C)
    n_pairs = exp.batch_size // 2
    pairs_per_micro = micro_size(n_pairs, max(1, s.micro_batch_size // 2))
    micro = ctx.backend.configure_batch(exp.batch_size, 2 * pairs_per_micro)

    def loss_fn(part: ExperienceBatch) -> LossOutput:
        seq = (part_logprobs(ctx.backend.module, part, s.temperature, s.packing) * part.loss_mask).sum(1)  # (b,)
        ref = None if part.ref_logprobs is None else (part.ref_logprobs * part.loss_mask).sum(1)  # (b,)
        lengths = part.loss_mask.sum(1)  # (b,)
        pair_info = None if part.pair_info is None else part.pair_info[0::2]  # (b/2, 2) CODPO's [weight, beta]
        return objective.pair_loss(seq[0::2], seq[1::2], None if ref is None else ref[0::2],
                                   None if ref is None else ref[1::2], chosen_lengths=lengths[0::2],
                                   rejected_lengths=lengths[1::2], pair_info=pair_info)

    metrics = Metrics()
    parts = (m.trimmed() for m in micro_batches(exp, 0, exp.batch_size, micro))  # pairs stay adjacent: no sort
    optimize(ctx, parts, loss_fn, metrics)
    return metrics.means()


# --------------------------------------------------------------------------- per-component gradients


def component_gram(ctx: StepContext, exp: ExperienceBatch, component_advantages: torch.Tensor,
                   max_samples: int) -> torch.Tensor:
    """COLLECTIVE. (K, K) Gram matrix of the per-component policy gradients over every rank's rows.

    Component k's gradient is that of the on-policy surrogate -sum_t A_k * logprob_t / T (T: completion tokens
    over all ranks), at the current parameters, from this rank's first `max_samples` rows; component_advantages
    is (b, K). Nothing is accumulated into .grad and the optimizer is not touched. The Gram matrix is of the
    gradients SUMMED over ranks, computed without gathering them: each rank reduces one shard of every gradient,
    takes that shard's partial Gram and the partials are all-reduced.
    """
    n = min(max_samples, exp.batch_size)
    exp = exp.slice(0, n).to(ctx.device)
    adv = component_advantages[:n].to(ctx.device, torch.float32)  # (n, K)
    model = hookless_twin(ctx.hf_model)
    params = [p for p in model.parameters() if p.requires_grad]
    logprobs = part_logprobs(model, exp, ctx.settings.temperature, ctx.settings.packing)  # (n, C)
    mask = exp.loss_mask.to(logprobs.dtype)  # (n, C)
    tokens = max(ctx.global_sum(mask.sum()), 1.0)
    rows = []
    K = adv.shape[1]
    for k in range(K):
        loss = -(adv[:, k : k + 1] * logprobs * mask).sum() / tokens
        grads = torch.autograd.grad(loss, params, retain_graph=k < K - 1, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                               for g, p in zip(grads, params)]))
    return sharded_gram(ctx, torch.stack(rows)).cpu()  # (K, K)


def sharded_gram(ctx: StepContext, local: torch.Tensor) -> torch.Tensor:
    """COLLECTIVE when world_size > 1. local: (K, P) this rank's gradients -> Gram of their sum over ranks."""
    if ctx.world_size == 1:
        return local @ local.T
    W, P = ctx.world_size, local.shape[1]
    bounds = [(P * r) // W for r in range(W + 1)]
    mine = None
    for r in range(W):  # rank r receives the sum of shard r
        shard = local[:, bounds[r] : bounds[r + 1]].contiguous()  # (K, P_r)
        torch.distributed.reduce(shard, dst=r)
        if r == ctx.rank:
            mine = shard
    partial = mine @ mine.T  # (K, K)
    torch.distributed.all_reduce(partial)
    return partial


def disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def hookless_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A second module object over the SAME parameter and buffer tensors, without the engine's hooks.

    DeepSpeed hooks the model's forward to track backward passes and runs its gradient-reduction epilogue after
    any backward through it, torch.autograd.grad included. Per-component gradients (a measurement, not a training
    step) go through this twin instead: built on the meta device, then given the live tensors (no copy), so it
    always sees the current weights."""
    from transformers import AutoModelForCausalLM

    if model.__class__.__name__.endswith("ForCausalLM"):
        with torch.device("meta"):
            twin = AutoModelForCausalLM.from_config(model.config, torch_dtype=next(model.parameters()).dtype)
    else:
        raise TypeError(f"per-component gradients need a causal LM, got {type(model).__name__}")
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        owner_name, _, attr = name.rpartition(".")
        owner = twin.get_submodule(owner_name)
        if isinstance(tensor, torch.nn.Parameter):
            owner._parameters[attr] = tensor
        else:
            owner._buffers[attr] = tensor
    left = [n for n, t in [*twin.named_parameters(), *twin.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"per-component gradients: the twin model lacks tensors {left[:3]}")
    disable_dropout(twin)
    return twin.train(model.training)
