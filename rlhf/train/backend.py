"""The training-backend protocol: what a training worker needs from DeepSpeed (or plain torch).

A backend owns the policy module and its optimizer on one rank. Collective methods (marked) must be entered by
every rank of the group, in the same order, or the group deadlocks.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch
from torch import nn


class TrainBackend(Protocol):
    module: nn.Module  # the policy; call it for forward passes
    rank: int
    world_size: int

    def configure_batch(self, per_rank_batch: int, micro_batch_size: int) -> int:
        """Set up gradient accumulation for optimizer steps over `per_rank_batch` rows; returns the micro size."""

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of one micro-batch (loss is already a mean over that micro-batch)."""

    def step(self) -> float | None:
        """Call after every backward; applies the optimizer at the accumulation boundary, returns the grad norm."""

    def set_lr(self, lr: float) -> None: ...

    def full_parameter_buckets(self, bucket_bytes: int, only: Callable[[str], bool] | None = None,
                               every_rank: bool = False, on_device: bool = False
                               ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """COLLECTIVE. Yield buckets of (name, full float32 tensor) on rank 0 (empty lists on other ranks); `only`
        keeps the parameters whose name it accepts (e.g. a LoRA adapter's). every_rank: full tensors on every rank
        (colocated engines read from their own rank); on_device: the copies stay on the rank's device (GPU)
        instead of host memory."""

    def save_checkpoint(self, path: str, exclude_frozen: bool = False) -> None:
        """COLLECTIVE. Optimizer + module state of this rank under `path` (exclude_frozen: leave out parameters
        without requires_grad, e.g. a LoRA base that is saved elsewhere)."""

    def load_checkpoint(self, path: str, strict: bool = True) -> None:
        """COLLECTIVE. strict=False: module state saved with exclude_frozen."""


def full_copy(p: torch.Tensor, on_device: bool = False) -> torch.Tensor:
    """A float32 copy of a full parameter, in host memory or (on_device) where the parameter lives."""
    return p.detach().to(p.device if on_device else "cpu", torch.float32).clone()


def bucket_params(
    named: list[tuple[str, nn.Parameter]], bucket_bytes: int, numel_of=lambda p: p.numel()
) -> list[list[tuple[str, nn.Parameter]]]:
    """Group parameters into buckets of at most `bucket_bytes` (float32 size); a large tensor gets its own."""
    buckets: list[list[tuple[str, nn.Parameter]]] = [[]]
    size = 0
    for name, p in named:
        nbytes = numel_of(p) * 4
        if buckets[-1] and size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append((name, p))
        size += nbytes
    return [b for b in buckets if b]


def micro_size(per_rank_batch: int, micro_batch_size: int) -> int:
    """Largest divisor of `per_rank_batch` that is <= `micro_batch_size`."""
    m = min(per_rank_batch, micro_batch_size)
    while per_rank_batch % m:
        m -= 1
    return m
