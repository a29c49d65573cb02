"""CUDA IPC weight sync for colocated placement (rollout.placement=colocated, rollout.weight_sync=cuda_ipc).

Training rank r and engine r share GPU r. Per bucket, rank r lays its full float32 copies out in one GPU buffer
(`flatten_bucket`) and hands engine r a CUDA IPC handle of it with the metadata; the engine maps the buffer,
copies the tensors into its own weights, waits for the copy to finish on the GPU and returns; only then does rank
r drop the buffer and go on. No byte leaves the GPU and at most one bucket is in flight per rank. Every rank holds
the full weights during the gather (ZeRO-3 gathers on all ranks), so every rank serves its own engine.

The handle is `torch.multiprocessing.reductions.reduce_tensor(buffer)` pickled to bytes (it travels as bytes
through Ray and through vLLM's `collective_rpc`); opening it needs the same physical GPU, which colocated
placement guarantees.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch


def share(flat: torch.Tensor) -> bytes:
    """A CUDA IPC handle of `flat` (a CUDA tensor), as bytes."""
    from torch.multiprocessing.reductions import reduce_tensor

    if not flat.is_cuda:
        raise ValueError("weight sync (cuda_ipc): the buffer must be on a GPU")
    return pickle.dumps(reduce_tensor(flat))


def open_shared(handle: bytes) -> torch.Tensor:
    """Map a buffer shared with `share` (in another process on the same GPU)."""
    rebuild, args = pickle.loads(handle)
    return rebuild(*args)


def finish_copies() -> None:
    """Wait until this process's copies out of a shared buffer are done (the sender frees it next)."""
    torch.cuda.current_stream().synchronize()


def bucket_message(bucket: list[tuple[str, torch.Tensor]]) -> tuple[list[list[Any]], bytes, torch.Tensor, int]:
    """(metadata, handle, the buffer to keep alive until the engine returns, bytes) of one bucket."""
    from rlhf.runtime.weight_sync import flatten_bucket

    meta, flat = flatten_bucket(bucket)
    return meta, share(flat), flat, int(flat.numel())
