"""CUDA IPC weight sync for colocated placement (rollout.placement=colocated, rollout.weight_sync=cuda_ipc).

Training rank r and engine r share GPU r. Per bucket, rank r lays its full float32 copies out in one GPU buffer
(`flatten_bucket`) and hands engine r a CUDA IPC handle of it with the metadata; the engine maps the buffer,
copies the tensors into its own weights, waits for the copy to finish on the GPU and returns; only then does rank
r drop the buffer and go on. No byte leaves the GPU and at most one bucket is in flight per rank. Every rank holds
the full weights during the gather (ZeRO-3 gathers on all ranks), so every rank serves its own engine.

The handle is `torch.multiprocessing.reductions.reduce_tensor(buffer)` with the GPU's UUID, pickled to bytes (it
travels as bytes through Ray and through vLLM's `collective_rpc`); opening it needs the same physical GPU, which
colocated placement guarantees. reduce_tensor records the sender's device *index*, which is only meaningful under
the sender's CUDA_VISIBLE_DEVICES: the receiver finds the GPU by its UUID among its own devices instead (as vLLM's
own IPC weight transfer does).
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
    uuid = str(torch.cuda.get_device_properties(flat.device).uuid)
    return pickle.dumps((uuid, reduce_tensor(flat)))


_STORAGE_DEVICE = 6  # position of the device index in reduce_tensor's args for rebuild_cuda_tensor


def open_shared(handle: bytes) -> torch.Tensor:
    """Map a buffer shared with `share` (in another process on the same GPU)."""
    uuid, (rebuild, args) = pickle.loads(handle)
    local = [i for i in range(torch.cuda.device_count()) if str(torch.cuda.get_device_properties(i).uuid) == uuid]
    if not local:
        raise ValueError(f"weight sync (cuda_ipc): the buffer's GPU ({uuid}) is not visible to this process; CUDA "
                         "IPC needs the training rank and its engine on the same GPU (rollout.placement: colocated)")
    args = list(args)
    args[_STORAGE_DEVICE] = local[0]  # the same GPU under this process's CUDA_VISIBLE_DEVICES numbering
    return rebuild(*args)


def finish_copies() -> None:
    """Wait until this process's copies out of a shared buffer are done (the sender frees it next)."""
    torch.cuda.current_stream().synchronize()


def bucket_message(bucket: list[tuple[str, torch.Tensor]]) -> tuple[list[list[Any]], bytes, torch.Tensor, int]:
    """(metadata, handle, the buffer to keep alive until the engine returns, bytes) of one bucket."""
    from rlhf.transport.weights import flatten_bucket

    meta, flat = flatten_bucket(bucket)
    return meta, share(flat), flat, int(flat.numel())
