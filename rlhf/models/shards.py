"""Write a Hugging Face model directory's weights one bucket at a time, so the writer never holds the whole model.

    writer = ShardWriter(out_dir)
    for bucket in buckets:                  # e.g. a ZeRO-3 rank 0's gathered full parameters, SHARD_BYTES at a time
        writer.add(dict(bucket))            # one safetensors shard per bucket, written now
    files = writer.close()                  # model.safetensors, or model-0000i-of-0000N.safetensors + index

The layout is the one ``save_pretrained`` writes and ``from_pretrained`` (and vLLM) read: a single
``model.safetensors`` when everything fit in one bucket, else numbered shards and ``model.safetensors.index.json``
(``metadata.total_size`` in bytes and a ``weight_map`` from tensor name to file). Shards are written under temporary
names and renamed at ``close``, so an interrupted save leaves no file a loader would take for weights.
"""

from __future__ import annotations

import json
import os

import torch

SHARD_BYTES = 512 * 2**20  # one shard, and so the most a saving rank holds gathered at once
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def streams_exactly(model: torch.nn.Module) -> bool:
    """True when ``save_pretrained`` would write this transformers model's parameters under their own names, so
    writing them bucket by bucket gives its layout. False when transformers reverts a load-time weight conversion
    at save (e.g. fused MoE experts split back into the hub layout): that may need every tensor at once, and the
    caller keeps the whole-state ``save_pretrained``. Remote-code models keep it too (it copies their code)."""
    if model.is_remote_code():
        return False
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers before 5: no load-time conversions to revert
        return True
    probe = {n: torch.empty(0, device="meta") for n, _ in model.named_parameters()}
    try:
        saved = revert_weight_conversion(model, dict(probe))
    except (RuntimeError, ValueError, IndexError):  # a converter that needs real shapes: not a plain renaming
        return False
    return set(saved) == set(probe)


class ShardWriter:
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self._parts: list[list[str]] = []  # tensor names per shard, in order
        self._total = 0  # bytes of every tensor written
        os.makedirs(out_dir, exist_ok=True)

    def _temp(self, i: int) -> str:
        return os.path.join(self.out_dir, f".shard-{i:05d}.safetensors.partial")

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write these tensors as the next shard (nothing for an empty dict)."""
        from safetensors.torch import save_file

        if not tensors:
            return
        clash = [n for n in tensors if any(n in part for part in self._parts)]
        if clash:
            raise ValueError(f"ShardWriter: tensor {clash[0]!r} was already written to an earlier shard")
        save_file({n: t.contiguous() for n, t in tensors.items()}, self._temp(len(self._parts)),
                  metadata={"format": "pt"})
        self._parts.append(list(tensors))
        self._total += sum(t.numel() * t.element_size() for t in tensors.values())

    def close(self) -> list[str]:
        """Give the shards their final names (and write the index when there are several); returns the files."""
        import glob

        from safetensors.torch import save_file

        stale = [os.path.join(self.out_dir, WEIGHTS), os.path.join(self.out_dir, INDEX)]
        stale += glob.glob(os.path.join(self.out_dir, "model-*-of-*.safetensors"))  # paths under out_dir as given
        for path in stale:  # an earlier save here must not be read alongside this one
            if os.path.exists(path):
                os.remove(path)
        n = len(self._parts)
        if n == 0:  # a model without parameters still gets its (empty) weights file
            save_file({}, os.path.join(self.out_dir, WEIGHTS), metadata={"format": "pt"})
            return [WEIGHTS]
        names = [WEIGHTS] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            os.replace(self._temp(i), os.path.join(self.out_dir, name))
        if n > 1:
            weight_map = {t: names[i] for i, part in enumerate(self._parts) for t in part}
            with open(os.path.join(self.out_dir, INDEX), "w") as f:
                json.dump({"metadata": {"total_size": self._total}, "weight_map": weight_map}, f, indent=2)
            names.append(INDEX)
        return names
