"""Code that runs inside vLLM's worker processes: the in-place weight update and its fingerprint.

vLLM imports this class by name (`worker_extension_cls="rlhf.rollout.vllm_worker.WeightUpdateExtension"`) and
mixes it into every worker; the engine reaches it with `llm.collective_rpc("rlhf_reload_weights", ...)` (buckets as
files) or `rlhf_join_sync_group` / `rlhf_receive_weights` (rollout.weight_sync=broadcast: each worker is a member of
the trainer's weight-sync group, `rlhf.runtime.weight_broadcast`, and streams the broadcast into the reload).

Why files and `reload_weights`: on CPU vLLM pre-packs linear weights for its kernels, so a model's own
`load_weights` leaves `.weight` empty; the worker's `reload_weights(weights_iterator=...)` redoes the layer-wise
processing and works on CPU and GPU alike. `collective_rpc` arguments travel as msgpack (tensors would arrive as
nested lists), so the buckets come as safetensors files in shared memory, read one at a time (memory-mapped).

Every tensor is fingerprinted as it streams into `reload_weights` (the same XXH3 digest the trainer computes), so
the fingerprint covers everything the worker received and loaded, after transport. vLLM's own parameters cannot
be read back on CPU (pre-packed), which is why the digest is taken on the way in.
"""

from __future__ import annotations

from typing import Iterator

import torch


class WeightUpdateExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `reload_weights`)."""

    def rlhf_reload_weights(self, paths: list[str]) -> tuple[str, int]:
        """Load every tensor of the given safetensors files in place; return (fingerprint, tensors loaded)."""
        from safetensors import safe_open

        def from_files() -> Iterator[tuple[str, torch.Tensor]]:
            for path in paths:
                with safe_open(path, framework="pt", device="cpu") as f:
                    for name in f.keys():
                        yield name, f.get_tensor(name)

        return self._rlhf_reload(from_files())

    def rlhf_join_sync_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                             timeout_s: float) -> int:
        """Join the weight-sync group (rollout.weight_sync=broadcast) as receiver rank_offset + this worker's rank
        within its engine; returns that rank."""
        from rlhf.runtime.weight_broadcast import SyncGroup

        self.rlhf_leave_sync_group()
        rank = rank_offset + int(getattr(self, "rank", 0))
        self._rlhf_sync_group = SyncGroup(host, port, rank, world_size, backend, timeout_s)
        return rank

    def rlhf_receive_weights(self) -> tuple[str, int]:
        """Stream the trainer's broadcast straight into `reload_weights`; return (fingerprint, tensors loaded)."""
        group = getattr(self, "_rlhf_sync_group", None)
        if group is None:
            raise RuntimeError("weight sync: this vLLM worker has not joined the weight-sync group")
        try:
            return self._rlhf_reload(group.receive())
        except BaseException:
            self.rlhf_leave_sync_group()  # the sender then fails at once instead of waiting for this reader
            raise

    def rlhf_leave_sync_group(self) -> None:
        group, self._rlhf_sync_group = getattr(self, "_rlhf_sync_group", None), None
        if group is not None:
            group.close()

    def _rlhf_reload(self, named: Iterator[tuple[str, torch.Tensor]]) -> tuple[str, int]:
        """Every tensor is fingerprinted on its way into `reload_weights` (one call: fused layers need all their
        shards in one reload)."""
        from rlhf.runtime.weight_sync import combine_digests, tensor_digest

        digests: dict[str, bytes] = {}

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in named:
                if name in digests:
                    raise ValueError(f"weight sync: tensor {name!r} was sent twice")
                digests[name] = tensor_digest(name, tensor)
                yield name, tensor

        self.reload_weights(weights_iterator=stream())  # type: ignore[attr-defined]
        _retie_lm_head(self.model_runner.get_model())  # type: ignore[attr-defined]
        return combine_digests(digests), len(digests)


def _retie_lm_head(model: torch.nn.Module) -> None:
    """Tied input/output embeddings: the LM head never appears in the checkpoint, so the reload never re-processes
    it and on CPU its pre-packed gemm (`cpu_linear`) keeps multiplying by the OLD embedding: logits silently stay
    those of the previous weights. Make sure the head is tied, then redo its kernel processing."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None:
        raise RuntimeError(
            f"weight sync: {type(model).__name__} ties its word embeddings but has no lm_head/model.embed_tokens; "
            "the engine cannot re-tie them after a weight update"
        )
    if head.weight is not embed.weight:
        head.tie_weights(embed)
    head.quant_method.process_weights_after_loading(head)  # CPU: re-pack the head's gemm from the new weight
