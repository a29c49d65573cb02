"""One training rank as a Ray actor: the shell around a model on a DeepSpeed (or torch) backend.

`TrainGroup` (rlhf/train/group.py) runs one `TrainWorker` per rank. The shell owns the state of its rank (the
model, its backend, the frozen reference, the objective built once from its settings) and hands it to the pure
per-batch step functions (rlhf/train/steps.py) and to weight export (rlhf/train/export.py). Every public method
is called on all ranks at once with that rank's shard of the batch; methods marked COLLECTIVE must be. The worker
reads only its own settings (rlhf/train/settings.py), never the recipe.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from rlhf.train import precision, steps
from rlhf.train.export import WeightExport
from rlhf.train.settings import WorkerSettings
from rlhf.types import ExperienceBatch


class TrainWorker:
    def __init__(self, rank: int, world_size: int, settings: WorkerSettings, num_threads: int) -> None:
        from rlhf.config.registry import build_objective, capabilities

        self.rank, self.world_size, self.settings = rank, world_size, settings
        self.precision = settings.train.precision  # "auto" resolved for this rank's device and model in build()
        torch.set_num_threads(max(1, num_threads))
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # decided here, on the worker's own node
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.objective = build_objective(settings.objective)  # once per worker
        self.token_level = capabilities(settings.objective).token_level
        self.backend: Any = None
        self.reference: torch.nn.Module | None = None
        self.hf_model: Any = None
        self.policy_heads: tuple[str, ...] = ()  # a multi-head policy's LM heads (MAH-DPO), set by build()
        self.export = WeightExport(rank, settings)

    # ------------------------------------------------------------------ setup

    def address(self) -> tuple[str, int]:
        """Rank 0 picks the rendezvous address of the process group (its node's IP as Ray sees it)."""
        import ray

        from rlhf.transport.broadcast import free_port

        return ray.util.get_node_ip_address(), free_port()

    def node(self) -> dict[str, str]:
        """The Ray node this rank runs on ({node_id, ip}): the run's placement record."""
        from rlhf.transport.placement import actor_node

        return actor_node()

    def init_process_group(self, master_addr: str, master_port: int) -> None:
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(self.rank) if not torch.cuda.is_available() else "0",
        )

    def build(self, model_dir: str, lr: float, num_heads: int | None = None,
              score_heads: tuple[str, ...] = (), policy_heads: tuple[str, ...] = ()) -> dict[str, Any]:
        """(Re)build the model from an HF directory with a fresh optimizer at learning rate `lr`: the policy, for
        the critic role a value model (backbone + `num_heads` value heads), with `score_heads` a reward model
        (a sequence-classification model with one scalar output per named head), or with `policy_heads` a
        multi-head policy (one LM head per name on the causal LM's trunk; rlhf/models/multihead.py)."""
        from rlhf.models.load import load_tokenizer

        s, t, lora_cfg = self.settings, self.settings.train, self.settings.lora
        torch.manual_seed(s.seed)
        tokenizer = load_tokenizer(model_dir, trust_remote_code=s.model.trust_remote_code)
        lora_base_dir = None
        self.policy_heads = tuple(policy_heads)
        self.hf_model = self.backend = None  # a rebuild frees the previous model before loading the next
        with self._loading():  # ZeRO-3: constructed partitioned, the checkpoint copied in module by module
            if s.role == "critic":
                from rlhf.models.value import load_value_model

                if num_heads is None:
                    raise ValueError("a critic needs num_heads")
                self.hf_model = load_value_model(model_dir, num_heads, s.model.dtype, s.model.trust_remote_code)
            elif lora_cfg is not None:  # base (frozen) + adapter: fresh, or the one saved in an adapter checkpoint
                from rlhf.models import lora

                lora_base_dir = lora.adapter_base_dir(model_dir) if lora.is_adapter_dir(model_dir) else model_dir
                self.hf_model = self._load(lora_base_dir, score_heads, tokenizer)
            else:
                self.hf_model = self._load(model_dir, score_heads, tokenizer)
        steps.disable_dropout(self.hf_model)  # ratios and KL must not carry dropout noise (as TRL/OpenRLHF do)
        self.precision = precision.resolved(t.precision, self.device, self.hf_model)
        precision.check_precision(self.precision, self.device)
        if t.gradient_checkpointing:  # before the LoRA wrap: transformers' own switch on the HF model
            precision.enable_checkpointing(self.hf_model)
        if lora_cfg is not None:  # after disable_dropout: model.lora.dropout is the adapter's own choice
            from rlhf.models import lora

            self.hf_model = lora.wrap(self.hf_model, lora_cfg)
            if lora.is_adapter_dir(model_dir):
                lora.load_adapter_dir(self.hf_model, model_dir)
        self.hf_model.train()
        self.hf_model.config.use_cache = False
        precision.autocast_forward(self.hf_model, self.precision, self.device)  # before DeepSpeed wraps the module
        kwargs = dict(lr=lr, betas=tuple(t.betas), weight_decay=t.weight_decay, grad_clip=t.grad_clip)
        if t.backend == "deepspeed":
            from rlhf.train.deepspeed import DeepSpeedBackend

            self.backend = DeepSpeedBackend(self.hf_model, zero_stage=t.zero_stage, dtype=s.model.dtype, **kwargs)
        else:
            from rlhf.train.torch import TorchBackend

            self.backend = TorchBackend(self.hf_model, precision=self.precision, **kwargs)
        self.export.attach(self.backend, self.hf_model, tokenizer, lora_base_dir)
        numel = lambda p: getattr(p, "ds_numel", None) or p.numel()  # noqa: E731 - ZeRO-3: the full size
        n = sum(numel(p) for p in self.hf_model.parameters())
        trainable = sum(numel(p) for p in self.hf_model.parameters() if p.requires_grad)
        return {"rank": self.rank, "params": n, "trainable_params": trainable, "threads": torch.get_num_threads(),
                "precision": self.precision}

    def _load(self, model_dir: str, score_heads: tuple[str, ...], tokenizer: Any) -> Any:
        """The policy (a causal LM; a multi-head one with policy_heads) or, with score_heads, a reward model
        (sequence classification)."""
        m = self.settings.model
        if self.policy_heads:
            from rlhf.models.multihead import load_multihead

            return load_multihead(model_dir, self.policy_heads, m.dtype, m.trust_remote_code, self.objective.mix)
        if score_heads:
            from rlhf.models.reward import load_reward_model

            return load_reward_model(model_dir, score_heads, m.dtype, m.trust_remote_code, tokenizer.pad_token_id)
        from rlhf.models.load import load_causal_lm

        return load_causal_lm(model_dir, m.dtype, m.trust_remote_code)

    def load_reference(self, model_dir: str) -> None:
        """A frozen copy of the policy at `model_dir`, used for the KL term. With model.lora: the policy's own base
        with the adapter disabled (no second copy), which must be the model at `model_dir`."""
        from rlhf.models.load import load_causal_lm

        if self.settings.lora is not None:
            from rlhf.models import lora

            base = self.export.lora_base_dir
            if base is None:
                raise RuntimeError("load_reference: build() the LoRA policy first")
            if os.path.realpath(model_dir) != os.path.realpath(base):
                raise ValueError(f"load_reference: with model.lora the reference is the adapter's base "
                                 f"{base}, but {model_dir} was asked for")
            self.reference = lora.AdapterDisabled(self.backend.module, self.hf_model)
            return
        m, t = self.settings.model, self.settings.train
        self.reference = None
        with self._loading():
            reference = load_causal_lm(model_dir, m.dtype, m.trust_remote_code)
        reference.eval().requires_grad_(False).to(self.device)
        precision.autocast_forward(reference, self.precision, self.device)
        if t.backend == "deepspeed":  # ZeRO-3: sharded like the policy (its forwards gather, collectively)
            from rlhf.train.deepspeed import inference_engine

            reference = inference_engine(reference, t.zero_stage, m.dtype)
        self.reference = reference

    def _loading(self) -> Any:
        """The context models are loaded in: partitioned construction under DeepSpeed ZeRO-3, else nothing."""
        import contextlib

        t = self.settings.train
        if t.backend != "deepspeed" or t.zero_stage != 3:
            return contextlib.nullcontext()
        from rlhf.train.deepspeed import partitioned_loading

        return partitioned_loading(t.zero_stage, self.settings.model.dtype)

    def drop_reference(self) -> None:
        """Free the reference model (preference objectives cache its logps once)."""
        self.reference = None

    def _ctx(self) -> steps.StepContext:
        return steps.StepContext(self.backend, self.hf_model, self.reference, self.device, self.rank,
                                 self.world_size, self.settings.steps)

    # ------------------------------------------------------------------ updates (rlhf/train/steps.py)

    def train_rl(self, exp: ExperienceBatch) -> dict[str, float]:
        """COLLECTIVE. A policy-gradient update of the objective's surrogate on this rank's shard."""
        return self._with_memory(steps.policy_gradient_update(self._ctx(), exp, self.objective, self.token_level))

    def train_critic(self, exp: ExperienceBatch) -> dict[str, float]:
        """COLLECTIVE. Clipped value-loss steps towards exp.returns (the critic role)."""
        return self._with_memory(steps.value_update(self._ctx(), exp, self.objective))

    def train_sft(self, batch: Any) -> dict[str, float]:
        """COLLECTIVE. One optimizer step of supervised fine-tuning (the warm-up) on this rank's shard."""
        from rlhf.objectives.sft import SFT

        return self._with_memory(steps.supervised_update(self._ctx(), batch, SFT()))

    def train_supervised(self, batch: Any) -> dict[str, float]:
        """COLLECTIVE. One optimizer step of the objective's own supervised loss (PRM) on this rank's shard."""
        return self._with_memory(steps.supervised_update(self._ctx(), batch, self.objective))

    def eval_supervised(self, batch: Any) -> dict[str, float]:
        """COLLECTIVE under ZeRO-3. The objective's supervised metrics on this rank's shard, no update."""
        return steps.supervised_eval(self._ctx(), batch, self.objective)

    def train_preference(self, pairs: Any) -> dict[str, float]:
        """COLLECTIVE. One optimizer step of the objective's pair loss on this rank's shard of offline pairs."""
        return self._with_memory(steps.pair_update(self._ctx(), pairs, self.objective, bool(self.policy_heads)))

    def train_online_pairs(self, exp: ExperienceBatch) -> dict[str, float]:
        """COLLECTIVE. One optimizer step of the objective's pair loss on rollout pairs (rows 2i, 2i+1)."""
        return self._with_memory(steps.online_pair_update(self._ctx(), exp, self.objective))

    def component_gram(self, exp: ExperienceBatch, component_advantages: torch.Tensor,
                       max_samples: int) -> torch.Tensor:
        """COLLECTIVE. (K, K) Gram matrix of the per-component policy gradients over every rank's rows."""
        return steps.component_gram(self._ctx(), exp, component_advantages, max_samples)

    # ------------------------------------------------------------------ forward passes

    @torch.no_grad()
    def logprobs(self, exp: ExperienceBatch, reference: bool) -> torch.Tensor:
        """COLLECTIVE under ZeRO-3 (the policy and the sharded reference). (B, C) logprobs of this rank's shard."""
        if reference and self.reference is None:
            raise RuntimeError("logprobs(reference=True) needs load_reference() first")
        ctx = self._ctx()
        with ctx.eval_mode():
            model = self.reference if reference else self.backend.module
            s = self.settings.steps
            return steps.logprobs_chunked(model, exp.to(self.device), s.temperature, s.logprob_micro,
                                          s.packing).cpu()

    @torch.no_grad()
    def policy_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                        temperature: float = 1.0) -> torch.Tensor:
        """COLLECTIVE (ZeRO-3 forwards gather parameters). (B, C) logprobs under the current policy, from one
        forward (padding-free with train.packing: 0 on completion padding; equal on real tokens)."""
        with self._ctx().eval_mode():
            return steps.forward_logprobs(self.backend.module, input_ids.to(self.device),
                                          attention_mask.to(self.device), prompt_len, temperature,
                                          self.settings.steps.packing).cpu()

    def values(self, exp: ExperienceBatch) -> torch.Tensor:
        """COLLECTIVE. (B, C, S) critic values of this rank's shard."""
        return steps.critic_values(self._ctx(), exp)

    @torch.no_grad()
    def preference_logps(self, batch: Any, reference: bool) -> torch.Tensor:
        """COLLECTIVE under ZeRO-3 (policy and reference). (B, 2) [chosen, rejected] summed logps, no gradient;
        (B, 2, K) per head for a multi-head policy (its reference has one head)."""
        if reference and self.reference is None:
            raise RuntimeError("preference_logps(reference=True) needs load_reference() first")
        model = self.reference if reference else self.backend.module
        heads = bool(self.policy_heads) and not reference
        with self._ctx().eval_mode():
            chosen, rejected = steps.pair_logps(model, batch.to(self.device), heads, self.settings.steps.packing)
        return torch.stack([chosen, rejected], dim=1).cpu()  # (B, 2) or (B, 2, K)

    # ------------------------------------------------------------------ weights out (rlhf/train/export.py)

    def export_weights(self, version: int, transport: str = "object_store") -> Any:
        """COLLECTIVE. Rank 0 returns a WeightPayload, others None (see WeightExport.export_weights)."""
        return self.export.export_weights(version, transport)

    def push_weights_ipc(self, version: int, engine: Any) -> tuple[Any, tuple[int, str] | None, str | None, bool]:
        """COLLECTIVE (rollout.weight_sync=cuda_ipc): see WeightExport.push_weights_ipc."""
        return self.export.push_weights_ipc(version, engine)

    def open_sync_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        self.export.open_sync_group(host, port, world_size, backend, timeout_s)

    def close_sync_group(self) -> None:
        self.export.close_sync_group()

    def save_hf(self, out_dir: str) -> None:
        self.export.save_hf(out_dir)

    def save_checkpoint(self, ckpt_dir: str) -> None:
        self.export.save_checkpoint(ckpt_dir)

    def load_optimizer(self, ckpt_dir: str) -> None:
        """COLLECTIVE. After `build(ckpt_dir/model)`: restore the optimizer state."""
        self.backend.load_checkpoint(os.path.join(ckpt_dir, "optim"), strict=self.settings.lora is None)

    def set_lr(self, lr: float) -> None:
        self.backend.set_lr(lr)

    def param_digest(self) -> str:
        """COLLECTIVE. Fingerprint of the full parameters (used by tests to check ranks agree)."""
        t = self.settings.train
        return self.export.param_digest(t.zero_stage if t.backend == "deepspeed" else 0)

    def memory(self) -> dict[str, float]:
        """This rank's peak memory so far, GiB (rss; gpu on a GPU)."""
        from rlhf.transport.placement import peak_memory

        return peak_memory()

    def _with_memory(self, metrics: dict[str, float]) -> dict[str, float]:
        """An update's metrics and this rank's peak memory (memory/peak_{rss,gpu}_gb/GROUP; the group takes the
        max over ranks)."""
        from rlhf.transport.placement import group_memory

        group = "trainers" if self.settings.role == "policy" else self.settings.role
        return {**metrics, **group_memory(group, [self.memory()])}

    def ping(self) -> str:
        return json.dumps({"rank": self.rank, "pid": os.getpid()})
