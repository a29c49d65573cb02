"""Weight sync over a process group of its own: training rank 0 broadcasts each bucket to every engine worker.

    # the sync coordinator (rlhf/runtime/sync.py) opens the group once (every member at once: the rendezvous blocks)
    rank 0 of the trainers: SyncGroup(host, port, rank=0, world_size=1 + engine workers, backend)
    engine worker w:         SyncGroup(host, port, rank=1 + w, world_size, backend)
    # each sync: engines call `receive()` while rank 0 calls `send(bucket)` per bucket, then `finish()`

The group is separate from the trainers' own `torch.distributed` world (DeepSpeed's) and from vLLM's: it is built
from a `TCPStore` (hosted by training rank 0) and a process-group object constructed directly, so it registers
nothing global. Backend: NCCL when CUDA is present (tensors go GPU to GPU), gloo otherwise (the same code, tested
on CPU).

Wire format, per bucket (every message is one broadcast from rank 0):
  1. header: int64 (2,) = [length of the metadata in bytes, length of the payload in bytes]; [0, 0] ends the sync;
  2. metadata: uint8 JSON, a list of [name, dtype, shape] in payload order;
  3. payload: uint8, every tensor's bytes one after another.
A receiver allocates from the header, splits the payload by the metadata and yields (name, tensor) views: a bucket
is one allocation and one transfer whatever its number of tensors.

Failures: a send that fails (an engine died, a timeout) closes the group on rank 0, which makes every receiver's
pending broadcast fail too; the sync coordinator then restarts what died and re-syncs through the object store
(``SyncCoordinator._fall_back`` in rlhf/runtime/sync.py). Nothing here retries by itself.
"""

from __future__ import annotations

import datetime
import json
import socket
from typing import Iterator

import torch

from rlhf.transport.weights import flatten_bucket, unflatten_bucket

END = (0, 0)


class SyncGroupError(RuntimeError):
    """The weight-sync group could not be opened or a transfer over it failed."""


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class SyncGroup:
    """One member of the weight-sync group (rank 0 sends, every other rank receives)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str | None = None,
                 timeout_s: float = 600.0) -> None:
        import torch.distributed as dist

        backend = backend or default_backend()
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"weight sync group: unknown backend {backend!r} (gloo or nccl)")
        if world_size < 2 or not 0 <= rank < world_size:
            raise ValueError(f"weight sync group: rank {rank} of world size {world_size}")
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
            store = dist.PrefixStore("rlhf-weight-sync/", self.store)
            if backend == "nccl":
                # built as torch's own `_new_process_group_helper` does; without options the NCCL backend uses its
                # 10-minute default and ignores `timeout_s`
                opts = dist.ProcessGroupNCCL.Options()
                opts.is_high_priority_stream = False
                opts._timeout = timeout
                self.pg = dist.ProcessGroupNCCL(store, rank, world_size, opts)
            else:
                self.pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        except Exception as e:  # noqa: BLE001 - re-raised with the address and rank that failed
            raise SyncGroupError(f"weight sync group: rank {rank}/{world_size} could not join {host}:{port} "
                                 f"({backend}): {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ primitives

    def _broadcast(self, t: torch.Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([t], opts).wait()

    # ------------------------------------------------------------------ rank 0

    def send(self, bucket: list[tuple[str, torch.Tensor]]) -> int:
        """Broadcast one bucket; returns the payload bytes."""
        if self.rank != 0:
            raise SyncGroupError("weight sync group: only rank 0 sends")
        if not bucket:
            return 0
        meta, payload = flatten_bucket(bucket)
        meta_t = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)  # (M,)
        self._broadcast(torch.tensor([meta_t.numel(), payload.numel()], dtype=torch.int64, device=self.device))
        self._broadcast(meta_t.to(self.device))
        self._broadcast(payload.to(self.device))
        return int(payload.numel())

    def finish(self) -> None:
        """Tell the receivers this sync is complete; returns once every broadcast of this sync has completed."""
        self._broadcast(torch.tensor(END, dtype=torch.int64, device=self.device))
        if self.device.type == "cuda":
            # NCCL's `wait()` only orders the current stream after the collective; without this the sends may
            # still be in flight when the caller goes on (e.g. `close()` would abort them)
            torch.cuda.current_stream(self.device).synchronize()

    # ------------------------------------------------------------------ ranks > 0

    def receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for every tensor of every bucket until rank 0 calls `finish`; tensors are views
        into one buffer per bucket, on this member's device."""
        if self.rank == 0:
            raise SyncGroupError("weight sync group: rank 0 does not receive")
        while True:
            header = torch.zeros(2, dtype=torch.int64, device=self.device)  # (2,)
            self._broadcast(header)
            meta_len, nbytes = (int(x) for x in header.tolist())
            if (meta_len, nbytes) == END:
                return
            meta_t = torch.empty(meta_len, dtype=torch.uint8, device=self.device)  # (M,)
            self._broadcast(meta_t)
            payload = torch.empty(nbytes, dtype=torch.uint8, device=self.device)  # (bytes,)
            self._broadcast(payload)
            yield from unflatten_bucket(json.loads(meta_t.cpu().numpy().tobytes().decode()), payload)

    def close(self) -> None:
        """Leave the group (a receiver blocked in `receive` then fails instead of waiting for its timeout)."""
        pg, self.pg = getattr(self, "pg", None), None
        if pg is not None:
            pg.abort()  # closes the connections now, without waiting for pending work
        self.store = None
