"""Plain-torch training backend: one rank, AdamW, gradient clipping and accumulation (and fp16 loss scaling under
``train.precision: fp16``). For debugging, tests and one-process runs."""

from __future__ import annotations

import os
from typing import Callable, Iterator

import torch
from torch import nn

from rlhf.train.backend import bucket_params, full_copy, micro_size


class TorchBackend:
    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        grad_clip: float,
        precision: str = "fp32",
        **_: object,
    ) -> None:
        self.module = model
        self.rank, self.world_size = 0, 1
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas, weight_decay=weight_decay
        )
        device = next(model.parameters()).device
        # fp16 autocast (train.precision): dynamic loss scaling against gradient underflow; a step whose gradients
        # overflowed is skipped and the scale halved (grad_norm is then inf)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self._gas, self._micro = 1, 0

    def configure_batch(self, per_rank_batch: int, micro_batch_size: int) -> int:
        m = micro_size(per_rank_batch, micro_batch_size)
        self._gas = per_rank_batch // m
        return m

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self._gas
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> float | None:
        self._micro += 1
        if self._micro % self._gas:
            return None
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the gradients hold inf/NaN
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def full_parameter_buckets(self, bucket_bytes: int, only: Callable[[str], bool] | None = None,
                               every_rank: bool = False, on_device: bool = False
                               ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        named = [(n, p) for n, p in self.module.named_parameters() if only is None or only(n)]
        for bucket in bucket_params(named, bucket_bytes):
            yield [(n, full_copy(p, on_device)) for n, p in bucket]

    def save_checkpoint(self, path: str, exclude_frozen: bool = False) -> None:
        """The optimizer state (the weights themselves are saved by the worker; exclude_frozen changes nothing)."""
        os.makedirs(path, exist_ok=True)
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, os.path.join(path, "torch_optimizer.pt"))

    def load_checkpoint(self, path: str, strict: bool = True) -> None:
        state = torch.load(os.path.join(path, "torch_optimizer.pt"), weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
