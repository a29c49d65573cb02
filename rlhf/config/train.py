"""Recipe section ``train``: the policy's training ranks (backend, ZeRO stage, optimizer, learning-rate schedule,
batches, precision, activation checkpointing); the recipe itself is in rlhf/config/schema.py."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from rlhf.config.base import Strict


class PackingConfig(Strict):
    """``train.packing``: padding-free training forwards (rlhf/objectives/packing.py)."""

    def on(self, trust_remote_code: bool) -> bool:
        """Whether the training forwards pack: enabled, or auto with a transformers model class."""
        return self.enabled is True or (self.enabled == "auto" and not trust_remote_code)

    enabled: Union[bool, Literal["auto"]] = Field(
        "auto", description="run each micro-batch padding-free: its sequences' real tokens packed back to back with "
        "position ids restarting per sequence, so attention is block-diagonal (varlen with flash attention) and "
        "only completion positions reach the LM head; the same loss and gradient as the padded forward. Covers "
        "policy-gradient updates and their reference / old logprobs, the PPO critic's value forwards and updates, "
        "preference-pair forwards (offline DPO-family pairs, MAH-DPO's multi-head policy included, their cached "
        "reference logps, online DPO pairs), per-component gradients (gradient-based weighting) and the trainer's "
        "logprob checks. auto: on, except with model.trust_remote_code (a model class of its own may not read "
        "packed position ids); false: padded micro-batches")
    balance: bool = Field(
        True, description="with enabled: split each mini-batch into its micro-batches by real tokens (about the "
        "same tokens per micro-batch, the same rows per micro-batch and the same number of micro-batches) instead "
        "of by completion length (group_by_length)")


class TrainConfig(Strict):
    """The policy's training ranks: backend, ZeRO stage, optimizer (AdamW), learning-rate schedule, batches."""

    backend: Literal["deepspeed", "torch"] = Field(
        "deepspeed", description="deepspeed (ZeRO, any number of ranks) or torch (plain AdamW, one rank)")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage: 1 partitions the optimizer "
                                            "state over the ranks, 2 also the gradients, 3 also the parameters")
    num_ranks: int = Field(2, ge=1, description="training ranks (processes; one GPU each on GPUs)")
    lr: float = Field(1e-5, gt=0, description="learning rate of the main objective (peak, after any warm-up)")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after warm-up: keep lr, or decay it to min_lr_ratio * lr by the last step"
    )
    lr_warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 over this many RL steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="linear / cosine: the last step's lr as a fraction "
                                "of lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient's global norm to this; 0 = no clipping")
    micro_batch_size: int = Field(64, ge=1, description="sequences per forward/backward on one rank")
    logprob_micro_batch_size: Optional[int] = Field(
        None, ge=1, description="sequences per no-grad logprob forward on one rank (reference and old-policy "
        "logprobs, the trainer's logprob checks); default micro_batch_size. No activations are kept for a "
        "backward pass, so larger chunks fit, and under ZeRO-3 every forward gathers each layer once: fewer, larger "
        "chunks gather less often")
    sync_bucket_mb: float = Field(256.0, gt=0, description="weight-sync bucket size")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="compute precision of the training ranks' forward and backward passes: bf16 / fp16 "
        "run them under autocast while the weights (model.dtype) and the optimizer state stay as they are "
        "(float32 master weights); bf16 is fast on a CPU with AVX512-BF16 or AMX (emulated, and slow, on "
        "others) and on GPUs with bf16. auto: bf16 on GPUs and on such CPUs for models with hidden size >= 256 "
        "(smaller ones run slower under autocast), else fp32; fp32 when model.dtype is not float32. The driver "
        "resolves it once per run and logs it (rlhf/train/precision.py)")
    group_by_length: bool = Field(
        True, description="micro-batches of rows with similar completion lengths, each cut to its own longest row "
        "(the same loss and gradient, less work on padding; transformers' group_by_length); false: rows in "
        "rollout order, padded to the batch's longest")
    packing: PackingConfig = Field(default_factory=PackingConfig, description="padding-free training forwards "
                                   "(dynamic micro-batches balanced by tokens)")
    gradient_checkpointing: bool = Field(
        False, description="recompute each decoder layer's activations in the backward pass instead of keeping "
        "them (policy and critic): less activation memory for about one more forward pass")
    num_threads: Optional[int] = Field(
        None, ge=1, description="torch intra-op threads per training rank; default cores / num_ranks (fastest on a "
        "quiet machine; under outside load on few cores, 1 can be faster: bench/README.md)"
    )

    @model_validator(mode="after")
    def _torch_single(self) -> "TrainConfig":
        if self.backend == "torch" and self.num_ranks != 1:
            raise ValueError("train.backend=torch runs one rank; set train.num_ranks=1 or use backend=deepspeed")
        return self
