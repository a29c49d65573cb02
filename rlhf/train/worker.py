"""One training rank: the policy on a DeepSpeed (or torch) backend, a frozen reference, and the objective's loss.

`TrainGroup` (rlhf/train/group.py) runs one `TrainWorker` per rank as a Ray actor. Every public method here is
called on all ranks at once with that rank's shard of the batch; methods marked COLLECTIVE must be.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from typing import Any

import torch

from rlhf.types import ExperienceBatch, SFTBatch


class TrainWorker:
    def __init__(self, rank: int, world_size: int, recipe: dict[str, Any], num_threads: int,
                 role: str = "policy") -> None:
        from rlhf.config.schema import Recipe

        self.rank, self.world_size, self.role = rank, world_size, role
        self.recipe = Recipe.model_validate(recipe)
        torch.set_num_threads(max(1, num_threads))
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # decided here, on the worker's own node
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.backend: Any = None
        self.reference: torch.nn.Module | None = None
        self.hf_model: Any = None
        self.tokenizer: Any = None
        self.lora_base_dir: str | None = None  # model.lora: the base the policy's adapter sits on
        self._sync_group: Any = None  # rank 0, rollout.weight_sync=broadcast: the weight-sync group (sender)

    # ------------------------------------------------------------------ setup

    def address(self) -> tuple[str, int]:
        """Rank 0 picks the rendezvous address of the process group (its node's IP as Ray sees it)."""
        import ray

        from rlhf.transport.broadcast import free_port

        return ray.util.get_node_ip_address(), free_port()

    def init_process_group(self, master_addr: str, master_port: int) -> None:
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(self.rank) if not torch.cuda.is_available() else "0",
        )

    def build(self, model_dir: str, lr: float, num_heads: int | None = None) -> dict[str, Any]:
        """(Re)build the model from an HF directory with a fresh optimizer at learning rate `lr`: the policy, or
        for the critic role a value model (backbone + `num_heads` value heads)."""
        from rlhf.models.load import load_causal_lm, load_tokenizer

        t = self.recipe.train
        torch.manual_seed(self.recipe.run.seed)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=self.recipe.model.trust_remote_code)
        if self.role == "critic":
            from rlhf.models.value import load_value_model

            if num_heads is None:
                raise ValueError("a critic needs num_heads")
            self.hf_model = load_value_model(model_dir, num_heads, self.recipe.model.dtype,
                                             self.recipe.model.trust_remote_code)
        elif self._lora() is not None:  # base (frozen) + adapter: fresh, or the one saved in an adapter checkpoint
            from rlhf.models import lora

            self.lora_base_dir = lora.adapter_base_dir(model_dir) if lora.is_adapter_dir(model_dir) else model_dir
            self.hf_model = load_causal_lm(self.lora_base_dir, self.recipe.model.dtype,
                                           self.recipe.model.trust_remote_code)
        else:
            self.hf_model = load_causal_lm(model_dir, self.recipe.model.dtype, self.recipe.model.trust_remote_code)
        _disable_dropout(self.hf_model)  # ratios and KL must not carry dropout noise (as TRL/OpenRLHF do)
        if self._lora() is not None:  # after _disable_dropout: model.lora.dropout is the adapter's own choice
            from rlhf.models import lora

            self.hf_model = lora.wrap(self.hf_model, self._lora())
            if lora.is_adapter_dir(model_dir):
                lora.load_adapter_dir(self.hf_model, model_dir)
        self.hf_model.train()
        self.hf_model.config.use_cache = False
        kwargs = dict(lr=lr, betas=tuple(t.betas), weight_decay=t.weight_decay, grad_clip=t.grad_clip)
        if t.backend == "deepspeed":
            from rlhf.train.deepspeed import DeepSpeedBackend

            self.backend = DeepSpeedBackend(self.hf_model, zero_stage=t.zero_stage, dtype=self.recipe.model.dtype, **kwargs)
        else:
            from rlhf.train.torch import TorchBackend

            self.backend = TorchBackend(self.hf_model, **kwargs)
        n = sum(p.numel() for p in self.hf_model.parameters())
        trainable = sum(p.numel() for p in self.hf_model.parameters() if p.requires_grad)
        return {"rank": self.rank, "params": n, "trainable_params": trainable, "threads": torch.get_num_threads()}

    def _lora(self) -> Any:
        """The LoRA config when the policy trains an adapter (model.lora enabled; never the critic), else None."""
        cfg = self.recipe.model.lora
        return cfg if self.role == "policy" and cfg is not None and cfg.enabled else None

    def load_reference(self, model_dir: str) -> None:
        """A frozen copy of the policy at `model_dir`, used for the KL term. With model.lora: the policy's own base
        with the adapter disabled (no second copy), which must be the model at `model_dir`."""
        from rlhf.models.load import load_causal_lm

        if self._lora() is not None:
            from rlhf.models import lora

            if self.lora_base_dir is None:
                raise RuntimeError("load_reference: build() the LoRA policy first")
            if os.path.realpath(model_dir) != os.path.realpath(self.lora_base_dir):
                raise ValueError(f"load_reference: with model.lora the reference is the adapter's base "
                                 f"{self.lora_base_dir}, but {model_dir} was asked for")
            self.reference = lora.AdapterDisabled(self.backend.module, self.hf_model)
            return
        self.reference = load_causal_lm(model_dir, self.recipe.model.dtype, self.recipe.model.trust_remote_code)
        self.reference.eval().requires_grad_(False).to(self.device)

    # ------------------------------------------------------------------ updates

    def train_rl(self, exp: ExperienceBatch) -> dict[str, float]:
        """COLLECTIVE. Reference/old logprobs, then epochs x mini-batches of optimizer steps on this rank's shard."""
        from rlhf.objectives import build_objective
        from rlhf.objectives.common import completion_logprobs
        from rlhf.objectives.offpolicy import apply_tis, mismatch_metrics

        objective = build_objective(self.recipe.objective)
        cfg = self.recipe.objective
        exp = exp.to(self.device)
        temperature = self.recipe.rollout.temperature
        tis_cap = self.recipe.rollout.tis_cap
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        with torch.no_grad():
            if objective.needs_reference and exp.ref_logprobs is None:
                if self.reference is None:
                    raise RuntimeError("the objective needs a reference model but none was loaded")
                exp.ref_logprobs = self._logprobs_chunked(self.reference, exp, temperature)
            token_level = getattr(objective, "token_level_advantages", False)
            reuse_old = cfg.epochs * cfg.mini_batches == 1 and not token_level
            if not reuse_old and exp.old_logprobs is None:
                self.hf_model.eval()
                exp.old_logprobs = self._logprobs_chunked(self.backend.module, exp, temperature)
                self.hf_model.train()
            if token_level:  # REINFORCE++: KL-shaped token rewards -> returns -> whitening over every rank's tokens
                exp.advantages = objective.token_advantages(
                    exp.advantages, exp.old_logprobs, exp.ref_logprobs, exp.completion_mask, reduce=self._all_reduce
                )  # (B, C)
        timings["time/ref_old_logprobs"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n = exp.batch_size
        mini = n // cfg.mini_batches
        micro = self.backend.configure_batch(mini, self.recipe.train.micro_batch_size)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for _epoch in range(cfg.epochs):
            for start in range(0, n, mini):
                # token_mean over the whole mini-batch of every rank: the backend divides each micro-batch loss by
                # the accumulation steps and averages over ranks, so normalise by global tokens / (gas * world)
                if getattr(cfg, "loss_agg", "") == "dr_grpo":  # constant denominator per micro-batch
                    normalizer = float(micro * self.recipe.rollout.max_new_tokens)
                else:
                    tokens = self._global_sum(exp.completion_mask[start : start + mini].sum())
                    normalizer = max(tokens, 1.0) / ((mini // micro) * self.world_size)
                def loss_fn(part: ExperienceBatch, normalizer: float = normalizer):
                    logprobs = completion_logprobs(
                        self.backend.module, part.input_ids, part.attention_mask, part.prompt_len, temperature
                    )  # (b, C)
                    old = logprobs.detach() if part.old_logprobs is None else part.old_logprobs  # pre-update
                    advantages, extra = part.advantages, {}
                    if part.rollout_logprobs is not None:  # rollout engine vs trainer: measure, optionally correct
                        extra = mismatch_metrics(old, part.rollout_logprobs, part.completion_mask)
                        if tis_cap is not None:
                            advantages, tis = apply_tis(
                                advantages, old, part.rollout_logprobs, part.completion_mask, tis_cap
                            )  # (b, C)
                            extra.update(tis)
                    rows = {} if part.nll_rows is None else {"nll_rows": part.nll_rows}  # CGPO's CRRAFT rows
                    out = objective.loss(logprobs, old, part.ref_logprobs, advantages, part.completion_mask, normalizer,
                                         **rows)
                    out.metrics.update(extra)
                    return out

                parts = (exp.slice(m0, m0 + micro) for m0 in range(start, start + mini, micro))
                self._optimize(parts, loss_fn, sums, counts)
        timings["time/update"] = time.perf_counter() - t0
        return {**{k: sums[k] / counts[k] for k in sums}, **timings}

    def component_gram(self, exp: ExperienceBatch, component_advantages: torch.Tensor,
                       max_samples: int) -> torch.Tensor:
        """COLLECTIVE. (K, K) Gram matrix of the per-component policy gradients over every rank's rows.

        Component k's gradient is that of the on-policy surrogate -sum_t A_k * logprob_t / T (T: completion
        tokens over all ranks), at the current parameters, from this rank's first `max_samples` rows;
        component_advantages is (b, K). Nothing is accumulated into .grad and the optimizer is not touched.
        The Gram matrix is of the gradients SUMMED over ranks, computed without gathering them: each rank
        reduces one shard of every gradient, takes that shard's partial Gram and the partials are all-reduced.
        """
        from rlhf.objectives.common import completion_logprobs

        n = min(max_samples, exp.batch_size)
        exp = exp.slice(0, n).to(self.device)
        adv = component_advantages[:n].to(self.device, torch.float32)  # (n, K)
        model = _hookless_twin(self.hf_model)
        params = [p for p in model.parameters() if p.requires_grad]
        logprobs = completion_logprobs(model, exp.input_ids, exp.attention_mask, exp.prompt_len,
                                       self.recipe.rollout.temperature)  # (n, C)
        mask = exp.completion_mask.to(logprobs.dtype)  # (n, C)
        tokens = max(self._global_sum(mask.sum()), 1.0)
        rows = []
        K = adv.shape[1]
        for k in range(K):
            loss = -(adv[:, k : k + 1] * logprobs * mask).sum() / tokens
            grads = torch.autograd.grad(loss, params, retain_graph=k < K - 1, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                   for g, p in zip(grads, params)]))
        return self._sharded_gram(torch.stack(rows)).cpu()  # (K, K)

    def _sharded_gram(self, local: torch.Tensor) -> torch.Tensor:
        """COLLECTIVE when world_size > 1. local: (K, P) this rank's gradients -> Gram of their sum over ranks."""
        if self.world_size == 1:
            return local @ local.T
        W, P = self.world_size, local.shape[1]
        bounds = [(P * r) // W for r in range(W + 1)]
        mine = None
        for r in range(W):  # rank r receives the sum of shard r
            shard = local[:, bounds[r] : bounds[r + 1]].contiguous()  # (K, P_r)
            torch.distributed.reduce(shard, dst=r)
            if r == self.rank:
                mine = shard
        partial = mine @ mine.T  # (K, K)
        torch.distributed.all_reduce(partial)
        return partial

    def _optimize(self, parts, loss_fn, sums: dict[str, float], counts: dict[str, int],
                  norm_key: str = "grad_norm") -> None:
        """COLLECTIVE. backward + step per micro-batch (the backend applies the optimizer at the accumulation
        boundary); metrics are summed into `sums`/`counts`."""
        for part in parts:
            out = loss_fn(part)
            self.backend.backward(out.loss)
            norm = self.backend.step()
            _accumulate(sums, counts, out.metrics)
            if norm is not None:
                _accumulate(sums, counts, {norm_key: norm})

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """COLLECTIVE when world_size > 1: elementwise sum over ranks (returns a tensor on t's device)."""
        if self.world_size == 1:
            return t
        out = t.detach().to(self.device).clone()
        torch.distributed.all_reduce(out)
        return out.to(t.device)

    def _global_sum(self, value: torch.Tensor) -> float:
        """COLLECTIVE when world_size > 1: the sum of `value` over ranks."""
        return float(self._all_reduce(value.detach().float().reshape(1)))

    def _logprobs_chunked(self, model: torch.nn.Module, exp: ExperienceBatch, temperature: float) -> torch.Tensor:
        from rlhf.objectives.common import completion_logprobs

        step = self.recipe.train.micro_batch_size
        parts = [
            completion_logprobs(
                model, exp.input_ids[i : i + step], exp.attention_mask[i : i + step], exp.prompt_len, temperature
            )
            for i in range(0, exp.batch_size, step)
        ]
        return torch.cat(parts, dim=0)  # (B, C)

    @torch.no_grad()
    def policy_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                        temperature: float = 1.0) -> torch.Tensor:
        """COLLECTIVE (ZeRO-3 forwards gather parameters). (B, C) logprobs under the current policy."""
        from rlhf.objectives.common import completion_logprobs

        self.hf_model.eval()
        try:
            return completion_logprobs(
                self.backend.module, input_ids.to(self.device), attention_mask.to(self.device), prompt_len, temperature
            ).cpu()
        finally:
            self.hf_model.train()

    @torch.no_grad()
    def logprobs(self, exp: ExperienceBatch, reference: bool) -> torch.Tensor:
        """COLLECTIVE for the policy under ZeRO-3. (B, C) logprobs of this rank's shard (policy or reference)."""
        if reference and self.reference is None:
            raise RuntimeError("logprobs(reference=True) needs load_reference() first")
        exp = exp.to(self.device)
        self.hf_model.eval()
        try:
            model = self.reference if reference else self.backend.module
            return self._logprobs_chunked(model, exp, self.recipe.rollout.temperature).cpu()
        finally:
            self.hf_model.train()

    # ------------------------------------------------------------------ critic

    @torch.no_grad()
    def values(self, exp: ExperienceBatch) -> torch.Tensor:
        """COLLECTIVE. (B, C, S) critic values of this rank's shard."""
        from rlhf.models.value import completion_values

        exp = exp.to(self.device)
        self.hf_model.eval()
        try:
            step = self.recipe.train.micro_batch_size
            parts = [completion_values(self.backend.module, exp.input_ids[i : i + step],
                                       exp.attention_mask[i : i + step], exp.prompt_len)
                     for i in range(0, exp.batch_size, step)]
        finally:
            self.hf_model.train()
        return torch.cat(parts).float().cpu()

    def train_critic(self, exp: ExperienceBatch) -> dict[str, float]:
        """COLLECTIVE. Epochs x mini-batches of clipped value-loss steps towards exp.returns."""
        from rlhf.models.value import completion_values
        from rlhf.objectives.ppo import value_loss

        cfg = self.recipe.objective
        exp = exp.to(self.device)
        n = exp.batch_size
        mini = n // cfg.mini_batches
        micro = self.backend.configure_batch(mini, self.recipe.train.micro_batch_size)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        def loss_fn(part: ExperienceBatch):
            values = completion_values(self.backend.module, part.input_ids, part.attention_mask, part.prompt_len)
            return value_loss(values, part.values, part.returns, part.completion_mask, cfg.critic.value_clip)

        for _epoch in range(cfg.epochs):
            parts = (exp.slice(m0, m0 + micro) for m0 in range(0, n, micro))
            self._optimize(parts, loss_fn, sums, counts, norm_key="critic/grad_norm")
        return {k: sums[k] / counts[k] for k in sums}

    def train_sft(self, batch: Any) -> dict[str, float]:
        """COLLECTIVE. One optimizer step of a supervised objective on this rank's shard: SFT for an SFTBatch,
        the PRM step-tag loss for a PRMBatch."""
        batch = batch.to(self.device)
        micro = self.backend.configure_batch(batch.batch_size, self.recipe.train.micro_batch_size)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        objective = _supervised_objective(batch)
        parts = (batch.slice(m0, m0 + micro) for m0 in range(0, batch.batch_size, micro))
        self._optimize(parts, lambda part: objective.loss_sft(self.backend.module, part), sums, counts)
        return {k: sums[k] / counts[k] for k in sums}

    @torch.no_grad()
    def eval_supervised(self, batch: Any) -> dict[str, float]:
        """COLLECTIVE under ZeRO-3. The supervised objective's metrics on this rank's shard, no update."""
        self.hf_model.eval()
        try:
            return _supervised_objective(batch).loss_sft(self.backend.module, batch.to(self.device)).metrics
        finally:
            self.hf_model.train()

    # ------------------------------------------------------------------ preference pairs

    def _pair_logps(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) summed completion logps of chosen and of rejected, from one forward over both."""
        from rlhf.objectives.common import token_logprobs
        from rlhf.objectives.dpo import sequence_logps

        ids, mask, loss_mask = batch.stacked()  # (2B, T)
        logps = sequence_logps(token_logprobs(model, ids, mask), loss_mask[:, 1:])  # (2B,)
        return logps.chunk(2)

    @torch.no_grad()
    def preference_logps(self, batch: Any, reference: bool) -> torch.Tensor:
        """COLLECTIVE for the policy under ZeRO-3. (B, 2) [chosen, rejected] summed logps, no gradient."""
        if reference and self.reference is None:
            raise RuntimeError("preference_logps(reference=True) needs load_reference() first")
        model = self.reference if reference else self.backend.module
        self.hf_model.eval()
        try:
            chosen, rejected = self._pair_logps(model, batch.to(self.device))
        finally:
            self.hf_model.train()
        return torch.stack([chosen, rejected], dim=1).cpu()  # (B, 2)

    def train_preference(self, pairs: Any) -> dict[str, float]:
        """COLLECTIVE. One optimizer step of the DPO-family loss on this rank's shard of pairs."""
        from rlhf.objectives import build_objective

        objective = build_objective(self.recipe.objective)
        pairs = pairs.to(self.device)
        micro = self.backend.configure_batch(pairs.batch_size, self.recipe.train.micro_batch_size)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        def loss_fn(part: Any):
            chosen, rejected = self._pair_logps(self.backend.module, part.batch)  # (b,), (b,)
            ref = part.ref_logps  # (b, 2) or None (reference-free)
            lengths = {}
            if objective.needs_lengths:
                lengths = dict(chosen_lengths=part.batch.chosen_loss_mask[:, 1:].sum(1),
                               rejected_lengths=part.batch.rejected_loss_mask[:, 1:].sum(1))
            return objective.loss(chosen, rejected, None if ref is None else ref[:, 0],
                                  None if ref is None else ref[:, 1], margin=part.margin, **lengths)

        parts = (pairs.slice(m0, m0 + micro) for m0 in range(0, pairs.batch_size, micro))
        self._optimize(parts, loss_fn, sums, counts)
        return {k: sums[k] / counts[k] for k in sums}

    def train_online_pairs(self, exp: ExperienceBatch) -> dict[str, float]:
        """COLLECTIVE. One optimizer step of the DPO-family loss on rollout pairs: rows (2i, 2i+1) of the shard are
        (chosen, rejected) completions of one prompt; reference logps are computed here, on the fly."""
        from rlhf.objectives import build_objective
        from rlhf.objectives.common import completion_logprobs
        from rlhf.train.backend import micro_size

        objective = build_objective(self.recipe.objective)
        temperature = self.recipe.rollout.temperature
        exp = exp.to(self.device)  # (2P, ...) rows: chosen, rejected, chosen, ...
        if objective.needs_reference:
            with torch.no_grad():
                exp.ref_logprobs = self._logprobs_chunked(self.reference, exp, temperature)  # (2P, C)
        n_pairs = exp.batch_size // 2
        pairs_per_micro = micro_size(n_pairs, max(1, self.recipe.train.micro_batch_size // 2))
        micro = self.backend.configure_batch(exp.batch_size, 2 * pairs_per_micro)

        def loss_fn(part: ExperienceBatch):
            seq = (completion_logprobs(self.backend.module, part.input_ids, part.attention_mask, part.prompt_len,
                                       temperature) * part.completion_mask).sum(1)  # (b,)
            ref = None if part.ref_logprobs is None else (part.ref_logprobs * part.completion_mask).sum(1)  # (b,)
            lengths = part.completion_mask.sum(1)  # (b,)
            extra = dict(chosen_lengths=lengths[0::2], rejected_lengths=lengths[1::2]) if objective.needs_lengths else {}
            if part.pair_info is not None:  # CGPO's CODPO: per-pair [weight, beta] of each pair's task
                extra["pair_info"] = part.pair_info[0::2]  # (b/2, 2)
            return objective.loss(seq[0::2], seq[1::2], None if ref is None else ref[0::2],
                                  None if ref is None else ref[1::2], **extra)

        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        parts = (exp.slice(m0, m0 + micro) for m0 in range(0, exp.batch_size, micro))
        self._optimize(parts, loss_fn, sums, counts)
        return {k: sums[k] / counts[k] for k in sums}

    def drop_reference(self) -> None:
        """Free the reference model (preference objectives cache its logps once)."""
        self.reference = None

    # ------------------------------------------------------------------ weights out

    def export_weights(self, version: int, transport: str = "object_store") -> Any:
        """COLLECTIVE. Rank 0 returns a WeightPayload, others None. transport "object_store": its buckets are Ray
        object refs of safetensors bytes; "broadcast": each bucket goes over the weight-sync group (opened with
        `open_sync_group`) while the engines receive, and the payload carries only the fingerprint (and `error`
        if sending failed: the loop still runs to the end so ZeRO-3's collective gathers stay in step).
        With model.lora: only the adapter for engines that load adapters (hf), merged full weights otherwise."""
        import ray

        from rlhf.transport.weights import WeightPayload, combine_digests, pack_bucket, tensor_digest

        bucket_bytes = int(self.recipe.train.sync_bucket_mb * 2**20)
        payload = WeightPayload(version=version, fingerprint="", transport=transport)
        digests: dict[str, bytes] = {}
        if self._lora() is not None:
            buckets = self._lora_buckets(payload, bucket_bytes)
        else:
            buckets = self.backend.full_parameter_buckets(bucket_bytes, on_device=transport == "broadcast")
        group = self._sync_group if transport == "broadcast" and self.rank == 0 else None
        if transport == "broadcast" and self.rank == 0 and group is None:
            payload.error = "the weight-sync group is not open on training rank 0"
        for bucket in buckets:
            if self.rank != 0:
                continue
            if transport == "broadcast":
                if group is not None:
                    try:
                        payload.num_bytes += group.send(bucket)
                    except Exception as e:  # noqa: BLE001 - reported in payload.error; the controller falls back
                        payload.error = f"{type(e).__name__}: {e}"
                        self.close_sync_group()  # receivers blocked on this bucket fail now, not at the timeout
                        group = None
            else:
                blob = pack_bucket(bucket)
                payload.buckets.append(ray.put(blob))  # one bucket in memory at a time on this side
                payload.num_bytes += len(blob)
                del blob
            payload.num_params += len(bucket)
            digests.update((n, tensor_digest(n, t)) for n, t in bucket)
            del bucket
        if self.rank != 0:
            return None
        if group is not None:
            try:
                group.finish()
            except Exception as e:  # noqa: BLE001 - as above
                payload.error = f"{type(e).__name__}: {e}"
                self.close_sync_group()
        payload.fingerprint = combine_digests(digests)
        return payload

    def push_weights_ipc(self, version: int, engine: Any) -> tuple[Any, tuple[int, str] | None, str | None, bool]:
        """COLLECTIVE (rollout.weight_sync=cuda_ipc). Every rank streams the full weights to `engine`, the rollout
        actor on its own GPU: per bucket a CUDA IPC handle of one GPU buffer, kept alive until the engine has
        copied it. Returns (payload on rank 0 else None, the engine's (version, fingerprint), error, engine died);
        after an error the loop still runs to the end so ZeRO-3's collective gathers stay in step."""
        import ray

        from rlhf.transport.ipc import bucket_message
        from rlhf.transport.weights import WeightPayload, combine_digests, tensor_digest

        payload = WeightPayload(version=version, fingerprint="", transport="cuda_ipc")
        digests: dict[str, bytes] = {}
        error, died, report = None, False, None

        def call(method: Any, *args: Any) -> Any:
            nonlocal error, died
            if error is not None:
                return None
            try:
                return ray.get(method.remote(*args))
            except ray.exceptions.RayActorError as e:
                error, died = f"died ({type(e).__name__})", True
            except Exception as e:  # noqa: BLE001 - returned to the controller, which falls back
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
            return None

        call(engine.begin_update, version)
        bucket_bytes = int(self.recipe.train.sync_bucket_mb * 2**20)
        for bucket in self.backend.full_parameter_buckets(bucket_bytes, every_rank=True, on_device=True):
            if error is None:
                try:
                    meta, handle, flat, nbytes = bucket_message(bucket)
                except Exception as e:  # noqa: BLE001 - as in `call`: reported, the loop goes on
                    error = f"{type(e).__name__}: {e}"
                else:
                    call(engine.update_ipc, meta, handle)
                    del flat  # the engine has copied it (or failed)
                    payload.num_bytes += nbytes
            payload.num_params += len(bucket)
            if self.rank == 0:
                digests.update((n, tensor_digest(n, t)) for n, t in bucket)
            del bucket
        report = call(engine.finish_update)
        payload.fingerprint = combine_digests(digests)
        return (payload if self.rank == 0 else None), report, error, died

    def open_sync_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        """Rank 0 joins the weight-sync group as its sender (blocks until every engine worker has joined)."""
        from rlhf.transport.broadcast import SyncGroup

        if self.rank != 0:
            raise RuntimeError("open_sync_group: only training rank 0 sends weights")
        self.close_sync_group()
        self._sync_group = SyncGroup(host, port, 0, world_size, backend, timeout_s)

    def close_sync_group(self) -> None:
        group, self._sync_group = self._sync_group, None
        if group is not None:
            group.close()

    def _lora_buckets(self, payload: Any, bucket_bytes: int) -> Any:
        """COLLECTIVE. Buckets of what a LoRA policy syncs: the adapter tensors under their adapter keys (engines
        in lora.ENGINES_WITH_ADAPTERS; payload.adapter set), or every base weight with the adapter merged in."""
        from rlhf.models import lora

        cfg = self._lora()
        if self.recipe.rollout.engine in lora.ENGINES_WITH_ADAPTERS:
            payload.adapter = cfg.model_dump(mode="json")
            for bucket in self.backend.full_parameter_buckets(bucket_bytes, only=lora.is_adapter_param):
                yield [(lora.adapter_key(n), t) for n, t in bucket]
            return
        yield from self._merged_buckets(bucket_bytes)

    def _merged_buckets(self, bucket_bytes: int) -> Any:
        """COLLECTIVE. Buckets of (base name, W + scale * B @ A) float32 tensors on rank 0: the full model a LoRA
        policy stands for (names and shapes of the base checkpoint)."""
        from rlhf.models import lora

        adapter = self._adapter_state()
        scale = lora.scale(self._lora())
        for bucket in self.backend.full_parameter_buckets(bucket_bytes, only=lambda n: not lora.is_adapter_param(n)):
            yield list(lora.merge_adapter(((lora.base_name(n), t) for n, t in bucket), adapter, scale))

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        """COLLECTIVE. {adapter key: float32 tensor} on rank 0 (empty on the others)."""
        from rlhf.models import lora

        state: dict[str, torch.Tensor] = {}
        for bucket in self.backend.full_parameter_buckets(2**30, only=lora.is_adapter_param):
            state.update((lora.adapter_key(n), t) for n, t in bucket)
        return state

    def save_hf(self, out_dir: str) -> None:
        """COLLECTIVE. Rank 0 writes a loadable HF model directory (safetensors + config + tokenizer); a LoRA
        policy is written merged (base + adapter), e.g. the warm-up's OUT/sft."""
        dtype = getattr(torch, self.recipe.model.dtype)
        if self._lora() is not None:
            from rlhf.models import lora

            state = {n: t.to(dtype) for bucket in self._merged_buckets(2**30) for n, t in bucket}
            if self.rank == 0:
                lora.save_merged(self.hf_model.get_base_model(), state, out_dir)
                self.tokenizer.save_pretrained(out_dir)
            return
        state: dict[str, torch.Tensor] = {}
        for bucket in self.backend.full_parameter_buckets(2**30):
            state.update((n, t.to(dtype)) for n, t in bucket)  # saved in the model's dtype
        if self.rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            if self.role == "critic":
                from rlhf.models.value import save_value_model

                save_value_model(self.hf_model, out_dir, state_dict=state)
            else:
                self.hf_model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(out_dir)

    def save_checkpoint(self, ckpt_dir: str) -> None:
        """COLLECTIVE. HF weights (rank 0) + optimizer/engine state of every rank. With model.lora, `model/` is the
        adapter (peft layout, adapter_config.json pointing at the base) and the engine state leaves out the frozen
        base: `rlhf export` merges it into a full model."""
        if self._lora() is None:
            self.save_hf(os.path.join(ckpt_dir, "model"))
            self.backend.save_checkpoint(os.path.join(ckpt_dir, "optim"))
            return
        from rlhf.models import lora

        adapter = self._adapter_state()
        if self.rank == 0:
            out = os.path.join(ckpt_dir, "model")
            lora.save_adapter(self.hf_model, out, self.lora_base_dir, adapter)
            self.tokenizer.save_pretrained(out)
        self.backend.save_checkpoint(os.path.join(ckpt_dir, "optim"), exclude_frozen=True)

    def load_optimizer(self, ckpt_dir: str) -> None:
        """COLLECTIVE. After `build(ckpt_dir/model)`: restore the optimizer state."""
        self.backend.load_checkpoint(os.path.join(ckpt_dir, "optim"), strict=self._lora() is None)

    def set_lr(self, lr: float) -> None:
        self.backend.set_lr(lr)

    def param_digest(self) -> str:
        """COLLECTIVE. Fingerprint of the full parameters (used by tests to check ranks agree)."""
        from rlhf.transport.weights import fingerprint_named

        named: list[tuple[str, torch.Tensor]] = []
        for bucket in self.backend.full_parameter_buckets(2**30):
            named.extend(bucket)
        if self.rank == 0:
            return fingerprint_named(named)
        # other ranks: digest of their own full view (ZeRO-3 shards are gathered on rank 0 only)
        if getattr(self.backend, "zero_stage", 0) == 3:
            return ""
        return fingerprint_named(self.hf_model.named_parameters())

    def ping(self) -> str:
        return json.dumps({"rank": self.rank, "pid": os.getpid()})


def _disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _accumulate(sums: dict[str, float], counts: dict[str, int], metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        sums[k] += float(v)
        counts[k] += 1


def _hookless_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A second module object over the SAME parameter and buffer tensors, without the engine's hooks.

    DeepSpeed hooks the model's forward to track backward passes and runs its gradient-reduction epilogue
    after any backward through it, torch.autograd.grad included. Per-component gradients (a measurement, not
    a training step) go through this twin instead: built on the meta device, then given the live tensors (no
    copy), so it always sees the current weights."""
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
    _disable_dropout(twin)
    return twin.train(model.training)


def _supervised_objective(batch: Any) -> Any:
    """The loss a supervised batch type is trained with."""
    from rlhf.data.prm import PRMBatch
    from rlhf.objectives.prm import PRM
    from rlhf.objectives.sft import SFT

    return PRM() if isinstance(batch, PRMBatch) else SFT()
