"""Weight sync from training rank 0 to rollout engines: bucketed safetensors blobs with a fingerprint check.

Protocol (CPU and any machine without a faster path):
  1. every training rank enters `export_weights` (ZeRO-3 gathers are collective); rank 0 packs each bucket of
     full float32 tensors into safetensors bytes, `ray.put`s it, and returns the refs + a fingerprint;
  2. each engine loads every bucket in place (no restart) and reports the fingerprint of what it now holds;
  3. the sync coordinator (rlhf/runtime/sync.py) compares the fingerprints and the version (`check_sync`): a
     mismatch raises `WeightSyncError`.

The fingerprint is a 128-bit XXH3 hash of every parameter's name, shape and float32 bytes, combined in name
order, so the same weights give the same digest on both sides whatever the bucket layout. It guards against bugs
and corruption in transit (not against an adversary): XXH3 runs at memory speed, ~30x faster than SHA-256 here,
which made hashing half of the sync time (bench/weight_sync.py).

LoRA (``model.lora``): for engines that load adapters (``hf``) the payload holds only the adapter tensors under
peft's adapter-file keys, and ``payload.adapter`` carries the LoRA config the engine wraps its model with; the
engine then fingerprints the adapter tensors it holds (same keys), so a corrupted or dropped adapter bucket fails
the check. Other engines (vLLM) get the merged full weights (W + scale * B @ A) under the base names, checked as
a full model. See rlhf/models/lora.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
import xxhash
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn


class WeightSyncError(RuntimeError):
    """The engine does not hold the weights the trainer sent."""


@dataclass
class WeightPayload:
    """What rank 0 exports for one sync."""

    version: int
    fingerprint: str
    buckets: list[Any] = field(default_factory=list)  # ray.ObjectRef of bytes (or raw bytes in-process)
    num_params: int = 0
    num_bytes: int = 0
    adapter: dict[str, Any] | None = None  # model.lora config when the buckets hold only a LoRA adapter
    transport: str = "object_store"  # or "broadcast" (no buckets: sent over the sync group) / "cuda_ipc"
    error: str | None = None  # broadcast: why sending failed on rank 0 (the sync coordinator falls back)


def tensor_digest(name: str, t: torch.Tensor) -> bytes:
    """XXH3-128 of one parameter: its name, shape and float32 bytes."""
    t32 = t.detach().to("cpu", torch.float32).contiguous()
    h = xxhash.xxh3_128(name.encode())
    h.update(str(tuple(t32.shape)).encode())
    h.update(memoryview(t32.numpy()).cast("B"))
    return h.digest()


def combine_digests(digests: dict[str, bytes]) -> str:
    """One fingerprint from per-parameter digests, in name order (independent of bucket layout)."""
    h = xxhash.xxh3_128()
    for name in sorted(digests):
        h.update(name.encode())
        h.update(digests[name])
    return h.hexdigest()


def fingerprint_named(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    return combine_digests({n: tensor_digest(n, t) for n, t in named})


def fingerprint_module(module: nn.Module) -> str:
    return fingerprint_named(module.named_parameters())


def pack_bucket(named: list[tuple[str, torch.Tensor]]) -> bytes:
    return st_save({n: t.contiguous() for n, t in named})


def unpack_bucket(blob: bytes) -> dict[str, torch.Tensor]:
    return st_load(blob)


def flatten_bucket(bucket: list[tuple[str, torch.Tensor]]) -> tuple[list[list[Any]], torch.Tensor]:
    """One bucket as (metadata [[name, dtype, shape], ...], one uint8 buffer of every tensor's bytes in order) on
    the tensors' device: what the broadcast and CUDA IPC routes move in one transfer."""
    tensors = [t.detach().contiguous() for _, t in bucket]
    meta = [[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for (n, _), t in zip(bucket, tensors)]
    return meta, torch.cat([t.reshape(-1).view(torch.uint8) for t in tensors])  # (bytes,)


def unflatten_bucket(meta: list[list[Any]], flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) views into `flat` (uint8, (bytes,)) as `flatten_bucket` laid them out."""
    offset = 0
    for name, dtype, shape in meta:
        dt = getattr(torch, dtype)
        numel = 1
        for d in shape:
            numel *= int(d)
        size = numel * torch.empty((), dtype=dt).element_size()
        yield name, flat[offset : offset + size].view(dt).view(shape)
        offset += size
    if offset != flat.numel():
        raise WeightSyncError(f"weight sync: bucket metadata covers {offset} bytes, the buffer has {flat.numel()}")


def load_buckets_into(module: nn.Module, blobs: Iterable[bytes]) -> tuple[str, int]:
    """Copy every tensor of every safetensors bucket into `module`'s parameters in place; see `load_named_into`."""
    return load_named_into(module, (kv for blob in blobs for kv in unpack_bucket(blob).items()))


def load_named_into(module: nn.Module, named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int]:
    """Copy (name, tensor) pairs into `module`'s parameters in place; return (fingerprint, count).

    Unknown names, shape mismatches, a name sent twice and parameters left without an update are errors.
    """
    loader = ParamLoader(module)
    loader.load(named)
    return loader.finish()


class ParamLoader:
    """An in-place update of `module`'s parameters that arrives in several pieces (buckets): `load` each, then
    `finish` checks that every parameter came exactly once and returns (fingerprint, count)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.params = dict(module.named_parameters())
        self.seen: set[str] = set()

    def load(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for name, tensor in named:
                if name not in self.params:
                    raise WeightSyncError(f"weight sync: engine has no parameter named {name!r}")
                if name in self.seen:
                    raise WeightSyncError(f"weight sync: tensor {name!r} was sent twice")
                p = self.params[name]
                if tuple(p.shape) != tuple(tensor.shape):
                    raise WeightSyncError(
                        f"weight sync: {name} has shape {tuple(p.shape)} in the engine, {tuple(tensor.shape)} sent"
                    )
                p.copy_(tensor.to(p.device, p.dtype))
                self.seen.add(name)

    def finish(self) -> tuple[str, int]:
        missing = sorted(set(self.params) - self.seen)
        if missing:
            raise WeightSyncError(f"weight sync: {len(missing)} parameters were not sent, e.g. {missing[:3]}")
        return fingerprint_module(self.module), len(self.seen)


def check_sync(expected: WeightPayload, reports: list[tuple[int, str]]) -> None:
    """Compare each engine's (version, fingerprint) with what the trainer sent."""
    for i, (version, fp) in enumerate(reports):
        if version != expected.version:
            raise WeightSyncError(f"weight sync: engine {i} reports version {version}, trainer sent {expected.version}")
        if fp != expected.fingerprint:
            what = "LoRA adapter" if expected.adapter is not None else "weights"
            raise WeightSyncError(
                f"weight sync: engine {i} holds {what} with fingerprint {fp[:12]}…, trainer sent "
                f"{expected.fingerprint[:12]}… (version {expected.version}); the engine's {what} are not the "
                "trainer's"
            )
