"""Code that runs inside vLLM's worker processes: in-place weight updates and their fingerprint.

vLLM imports this class by name (`worker_extension_cls="rlhf.rollout.vllm_worker.WeightUpdateExtension"`) and
mixes it into every worker; the engine reaches it with `llm.collective_rpc(...)`:
- `rlhf_update_begin`, one `rlhf_update_files` (object store: safetensors files in shared memory) or
  `rlhf_update_ipc` (colocated GPU: a CUDA IPC buffer) per bucket, `rlhf_update_finish`: vLLM's layer-wise
  reload (`initialize_layerwise_reload` / the model's `load_weights` / `finalize_layerwise_reload`), so a bucket
  can end in the middle of a fused layer (q/k/v, gate/up): a layer is processed once all its tensors are in;
- `rlhf_join_sync_group` / `rlhf_receive_weights` (broadcast): each worker is a member of the trainer's
  weight-sync group (`rlhf.transport.broadcast`) and streams the broadcast into the same layer-wise reload.

Why not a model's plain `load_weights` alone: on CPU vLLM pre-packs linear weights for its kernels, so loading
without the reload's re-processing leaves `.weight` stale; the layer-wise reload redoes it on CPU and GPU alike.
`collective_rpc` arguments travel as msgpack (tensors would arrive as nested lists), hence files and handles.

Every tensor is fingerprinted as it streams in (the same XXH3 digest the trainer computes), so the fingerprint
covers everything the worker received and loaded, after transport. vLLM's own parameters cannot be read back on
CPU (pre-packed), which is why the digest is taken on the way in.
"""

from __future__ import annotations

from typing import Iterator

import torch


class WeightUpdateExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `reload_weights`)."""

    def rlhf_join_sync_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                             timeout_s: float) -> int:
        """Join the weight-sync group (rollout.weight_sync=broadcast) as receiver rank_offset + this worker's rank
        within its engine; returns that rank."""
        from rlhf.transport.broadcast import SyncGroup

        self.rlhf_leave_sync_group()
        rank = rank_offset + int(getattr(self, "rank", 0))
        self._rlhf_sync_group = SyncGroup(host, port, rank, world_size, backend, timeout_s)
        return rank

    def rlhf_receive_weights(self) -> tuple[str, int]:
        """Stream the trainer's broadcast straight into a layer-wise reload; return (fingerprint, tensors loaded)."""
        group = getattr(self, "_rlhf_sync_group", None)
        if group is None:
            raise RuntimeError("weight sync: this vLLM worker has not joined the weight-sync group")
        try:
            self.rlhf_update_begin()
            self._rlhf_update_piece(group.receive())
            return self.rlhf_update_finish()
        except BaseException:
            self.rlhf_leave_sync_group()  # the sender then fails at once instead of waiting for this reader
            raise

    def rlhf_leave_sync_group(self) -> None:
        group, self._rlhf_sync_group = getattr(self, "_rlhf_sync_group", None), None
        if group is not None:
            group.close()

    # ---- an update in pieces (one call per bucket): vLLM's layer-wise reload, begun and finished around them.
    # A layer is re-processed for its kernels once all of its tensors have arrived, whichever bucket they came in.

    def rlhf_update_begin(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self._rlhf_digests: dict[str, bytes] = {}
        initialize_layerwise_reload(self.model_runner.get_model())  # type: ignore[attr-defined]

    def rlhf_update_files(self, paths: list[str]) -> int:
        """One piece from safetensors files (the object-store route); returns the tensors loaded."""
        from safetensors import safe_open

        def from_files() -> Iterator[tuple[str, torch.Tensor]]:
            for path in paths:
                with safe_open(path, framework="pt", device="cpu") as f:
                    for name in f.keys():
                        yield name, f.get_tensor(name)

        return self._rlhf_update_piece(from_files())

    def rlhf_update_ipc(self, meta: list, handle: bytes) -> int:
        """One piece from a CUDA IPC buffer of the colocated training rank (rollout.weight_sync=cuda_ipc)."""
        from rlhf.transport.ipc import finish_copies, open_shared
        from rlhf.transport.weights import unflatten_bucket

        flat = open_shared(handle)
        n = self._rlhf_update_piece(unflatten_bucket(meta, flat))
        finish_copies()  # the trainer frees the buffer when this returns
        return n

    def rlhf_update_finish(self) -> tuple[str, int]:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        from rlhf.transport.weights import combine_digests

        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            finalize_layerwise_reload(model, self.vllm_config.model_config)  # type: ignore[attr-defined]
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):  # as the worker's own reload
            getattr(self.model_runner, reset, lambda: None)()  # type: ignore[attr-defined]
        _retie_lm_head(model)
        digests, self._rlhf_digests = self._rlhf_digests, {}
        return combine_digests(digests), len(digests)

    def _rlhf_update_piece(self, named: Iterator[tuple[str, torch.Tensor]]) -> int:
        from vllm.config import set_current_vllm_config

        from rlhf.transport.weights import tensor_digest

        digests = self._rlhf_digests
        before = len(digests)

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in named:
                if name in digests:
                    raise ValueError(f"weight sync: tensor {name!r} was sent twice")
                digests[name] = tensor_digest(name, tensor)
                yield name, tensor

        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            self.model_runner.get_model().load_weights(stream())  # type: ignore[attr-defined]
        return len(digests) - before


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
