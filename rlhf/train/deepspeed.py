"""DeepSpeed training backend: ZeRO 0/1/2/3, one rank per process (gloo on CPU, NCCL on GPU); under ZeRO-3 the
models are constructed partitioned (``partitioned_loading``) and the KL reference stays sharded
(``inference_engine``).

The process group is set up from the environment (MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK) that the
training actor group exports. The optimizer is AdamW with ``torch_adam`` so no C++ Adam op is compiled.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from rlhf.train.backend import bucket_params, full_copy, micro_size


def _init_distributed() -> None:
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def ds_config(
    zero_stage: int, lr: float, betas: tuple[float, float], weight_decay: float, grad_clip: float, world: int, dtype: str,
    hidden_size: int | None = None,
) -> dict:
    """The DeepSpeed config of a training rank. Communication buckets are sized from the model's hidden size h as
    transformers' DeepSpeed integration sizes its "auto" values (reduce h^2, ZeRO-3 prefetch 0.9 h^2 elements):
    DeepSpeed's own defaults (5e8 elements = 2 GB of float32 per bucket) cost more host memory than a 0.5B model's
    whole shard on CPU."""
    cfg: dict = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world,
        "gradient_clipping": grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": lr, "betas": list(betas), "weight_decay": weight_decay, "torch_adam": True},
        },
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    elif dtype == "float16":
        cfg["fp16"] = {"enabled": True}
    if hidden_size:
        bucket = hidden_size * hidden_size
        cfg["zero_optimization"].update({"reduce_bucket_size": bucket, "allgather_bucket_size": bucket})
        if zero_stage == 3:
            cfg["zero_optimization"].update({"stage3_prefetch_bucket_size": int(0.9 * bucket),
                                             "stage3_max_live_parameters": 10 * bucket,
                                             "stage3_max_reuse_distance": 10 * bucket, "sub_group_size": 10 * bucket})
    if zero_stage == 3:
        # gather small parameters eagerly; keep everything simple on tiny CPU runs
        cfg["zero_optimization"].update({"stage3_param_persistence_threshold": 0})
    return cfg


@contextmanager
def partitioned_loading(zero_stage: int, dtype: str) -> Iterator[None]:
    """Models loaded with ``from_pretrained`` inside are built partitioned under ZeRO-3: transformers constructs them
    in ``deepspeed.zero.Init`` (each rank allocates only its shard) and copies the checkpoint in module by module,
    gathering one module's parameters at a time, so no rank ever holds the full model. A no-op for stages 0-2.
    Only transformers' own construction is partitioned: modules a caller adds afterwards (a value head) are
    ordinary tensors until ``deepspeed.initialize`` partitions them."""
    if zero_stage != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    _init_distributed()  # zero.Init partitions over the process group
    hf_config = HfDeepSpeedConfig(ds_config(3, 1e-5, (0.9, 0.999), 0.0, 0.0, torch.distributed.get_world_size(),
                                            dtype))  # only the stage and the dtype matter for construction
    try:
        yield
    finally:
        unset_hf_deepspeed_config()  # later from_config / from_pretrained calls in this process build full models
        del hf_config


@contextmanager
def shared_master_partitions(zero_stage: int) -> Iterator[None]:
    """ZeRO-3 optimizers built inside keep no second float32 copy of a rank's partition when the weights already
    are float32 (train.precision fp32 or bf16/fp16 autocast over float32 weights): the optimizer updates the
    partition itself, as DeepSpeed intends ("weights ... already in and updated using fp32 ... we don't need
    another copy"). DeepSpeed 0.19.8 misses that case because ``_create_fp32_partitions`` compares a tensor's
    ``torch.device`` with the accelerator's device *name* (a string: never equal), so every rank kept the copy:
    4 bytes per parameter / ranks. Here the comparison gets a ``torch.device`` for the duration of that call.
    Partitions in another dtype (model.dtype bfloat16 / float16) still get their float32 master, and optimizer
    offload is untouched. A no-op for stages 0-2."""
    if zero_stage != 3:
        yield
        return
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    create = Stage3._create_fp32_partitions

    def create_shared(self: Stage3) -> None:
        name = self.device
        if type(name) is str:  # the accelerator's name ("cpu", "cuda:0"), not offload's enum
            self.device = torch.device(name)
        try:
            create(self)
        finally:
            self.device = name

    Stage3._create_fp32_partitions = create_shared
    try:
        yield
    finally:
        Stage3._create_fp32_partitions = create


def inference_engine(model: nn.Module, zero_stage: int, dtype: str) -> nn.Module:
    """A frozen model (the KL reference) as a DeepSpeed engine without optimizer: under ZeRO-3 its parameters stay
    partitioned over the ranks and every forward gathers them layer by layer (so its forwards are COLLECTIVE);
    other stages keep the plain module (a full copy per rank: nothing to shard without an optimizer)."""
    if zero_stage != 3:
        return model
    import deepspeed

    _init_distributed()
    config = ds_config(3, 0.0, (0.9, 0.999), 0.0, 0.0, torch.distributed.get_world_size(), dtype,
                       int(model.config.hidden_size))  # the policy's stage-3 settings, dtype and buckets
    del config["optimizer"], config["gradient_clipping"]  # frozen: no optimizer step
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None
    return engine


class DeepSpeedBackend:
    """One DeepSpeed engine on this rank."""

    def __init__(
        self,
        model: nn.Module,
        *,
        zero_stage: int,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        grad_clip: float,
        dtype: str = "float32",
    ) -> None:
        import deepspeed

        _init_distributed()
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        self.zero_stage = zero_stage
        config = ds_config(zero_stage, lr, betas, weight_decay, grad_clip, self.world_size, dtype,
                           int(model.config.hidden_size))  # HF models, peft wrappers and ValueModel carry .config
        with shared_master_partitions(zero_stage):
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config
            )
        self.module = self.engine  # forward through the engine (ZeRO-3 hooks gather parameters)

    def configure_batch(self, per_rank_batch: int, micro_batch_size: int) -> int:
        m = micro_size(per_rank_batch, micro_batch_size)
        self.engine.set_train_micro_batch_size(m)
        self.engine.set_train_batch_size(per_rank_batch * self.world_size)
        return m

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> float | None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def full_parameter_buckets(self, bucket_bytes: int, only: Callable[[str], bool] | None = None,
                               every_rank: bool = False, on_device: bool = False
                               ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        import deepspeed

        named = [(n, p) for n, p in self.engine.module.named_parameters() if only is None or only(n)]
        numel = (lambda p: p.ds_numel) if self.zero_stage == 3 else (lambda p: p.numel())
        for bucket in bucket_params(named, bucket_bytes, numel):
            params = [p for _, p in bucket]
            if self.zero_stage == 3:  # every rank holds the full tensors inside the context
                with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                    yield self._copies(bucket, every_rank, on_device)
            else:
                yield self._copies(bucket, every_rank, on_device)

    def _copies(self, bucket: list[tuple[str, nn.Parameter]], every_rank: bool, on_device: bool
                ) -> list[tuple[str, torch.Tensor]]:
        if self.rank != 0 and not every_rank:
            return []
        return [(n, full_copy(p, on_device)) for n, p in bucket]

    def save_checkpoint(self, path: str, exclude_frozen: bool = False) -> None:
        self.engine.save_checkpoint(path, tag="ds", save_latest=False, exclude_frozen_parameters=exclude_frozen)

    def load_checkpoint(self, path: str, strict: bool = True) -> None:
        load_path, _ = self.engine.load_checkpoint(
            path, tag="ds", load_optimizer_states=True, load_lr_scheduler_states=False, load_module_strict=strict
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {os.path.join(path, 'ds')}")
