"""Weights out of a training rank: to the rollout engines (object store, broadcast, CUDA IPC), to a Hugging Face
directory, to a checkpoint.

    export = WeightExport(rank, settings)                   # once per worker; holds the weight-sync group
    export.attach(backend, hf_model, tokenizer, lora_base_dir)   # after every (re)build of the model
    payload = export.export_weights(version)                # COLLECTIVE: rank 0 returns the payload

Every method that reads full parameters is COLLECTIVE (ZeRO-3 gathers them on every rank). Which route a sync
takes, its fallback and the fingerprint check are the runtime's sync coordinator's; this module only sends.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import torch

from rlhf.train.settings import WorkerSettings
from rlhf.transport.placement import actor_gone


class WeightExport:
    def __init__(self, rank: int, settings: WorkerSettings) -> None:
        self.rank = rank
        self.settings = settings.export
        self.role = settings.role
        self.lora = settings.lora  # the LoRA config when this rank trains an adapter
        self.backend: Any = None
        self.hf_model: Any = None
        self.tokenizer: Any = None
        self.lora_base_dir: str | None = None
        self.sync_group: Any = None  # rank 0, rollout.weight_sync=broadcast: the weight-sync group (sender)
        self._streams = False  # save_hf writes shard by shard (set by attach)

    def attach(self, backend: Any, hf_model: Any, tokenizer: Any, lora_base_dir: str | None) -> None:
        from transformers import PreTrainedModel

        from rlhf.models.shards import streams_exactly

        self.backend, self.hf_model, self.tokenizer, self.lora_base_dir = backend, hf_model, tokenizer, lora_base_dir
        # the policy as a plain transformers model whose saved layout is its runtime one: saved shard by shard (every
        # rank decides alike: the save is collective)
        self._streams = (self.role == "policy" and isinstance(hf_model, PreTrainedModel)
                         and streams_exactly(hf_model))

    # ------------------------------------------------------------------ to the engines

    def export_weights(self, version: int, transport: str = "object_store") -> Any:
        """COLLECTIVE. Rank 0 returns a WeightPayload, others None. transport "object_store": its buckets are Ray
        object refs of safetensors bytes; "broadcast": each bucket goes over the weight-sync group (opened with
        `open_sync_group`) while the engines receive, and the payload carries only the fingerprint (and `error`
        if sending failed: the loop still runs to the end so ZeRO-3's collective gathers stay in step).
        With model.lora: only the adapter for engines that load adapters (hf), merged full weights otherwise."""
        import ray

        from rlhf.transport.weights import WeightPayload, combine_digests, pack_bucket, tensor_digest

        bucket_bytes = self.settings.bucket_bytes
        payload = WeightPayload(version=version, fingerprint="", transport=transport)
        digests: dict[str, bytes] = {}
        if self.lora is not None:
            buckets = self._lora_buckets(payload, bucket_bytes)
        else:
            buckets = self.backend.full_parameter_buckets(bucket_bytes, on_device=transport == "broadcast")
        group = self.sync_group if transport == "broadcast" and self.rank == 0 else None
        if transport == "broadcast" and self.rank == 0 and group is None:
            payload.error = "the weight-sync group is not open on training rank 0"
        for bucket in buckets:
            if self.rank != 0:
                continue
            if payload.adapter is None:  # full weights: in the engines' dtype (an adapter keeps float32)
                bucket = self._in_sync_dtype(bucket)
            if transport == "broadcast":
                if group is not None:
                    try:
                        payload.num_bytes += group.send(bucket)
                    except Exception as e:  # noqa: BLE001 - reported in payload.error; the coordinator falls back
                        payload.error = f"{type(e).__name__}: {e}"
                        self.close_sync_group()  # receivers blocked on this bucket fail now, not at the timeout
                        group = None
            else:
                blob = pack_bucket(bucket)
                payload.buckets.append(ray.put(blob))  # one bucket in memory at a time on this side
                payload.num_bytes += len(blob)
                del blob
            payload.num_params += len(bucket)
            digests.update((n, tensor_digest(n, t)) for n, t in bucket)
            del bucket
        if self.rank != 0:
            return None
        if group is not None:
            try:
                group.finish()
            except Exception as e:  # noqa: BLE001 - as above
                payload.error = f"{type(e).__name__}: {e}"
                self.close_sync_group()
        payload.fingerprint = combine_digests(digests)
        return payload

    def push_weights_ipc(self, version: int, engine: Any) -> tuple[Any, tuple[int, str] | None, str | None, bool]:
        """COLLECTIVE (rollout.weight_sync=cuda_ipc). Every rank streams the full weights to `engine`, the rollout
        actor on its own GPU: per bucket a CUDA IPC handle of one GPU buffer, kept alive until the engine has
        copied it. Returns (payload on rank 0 else None, the engine's (version, fingerprint), error, engine died);
        after an error the loop still runs to the end so ZeRO-3's collective gathers stay in step."""
        import ray

        from rlhf.transport.ipc import bucket_message
        from rlhf.transport.weights import WeightPayload, combine_digests, tensor_digest

        payload = WeightPayload(version=version, fingerprint="", transport="cuda_ipc")
        digests: dict[str, bytes] = {}
        error, died, report = None, False, None

        def call(method: Any, *args: Any) -> Any:
            nonlocal error, died
            if error is not None:
                return None
            try:
                return ray.get(method.remote(*args))
            except actor_gone() as e:
                error, died = f"died ({type(e).__name__})", True
            except Exception as e:  # noqa: BLE001 - returned to the coordinator, which falls back
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
            return None

        call(engine.begin_update, version)
        for bucket in self.backend.full_parameter_buckets(self.settings.bucket_bytes, every_rank=True,
                                                          on_device=True):
            bucket = self._in_sync_dtype(bucket)
            if error is None:
                try:
                    meta, handle, flat, nbytes = bucket_message(bucket)
                except Exception as e:  # noqa: BLE001 - as in `call`: reported, the loop goes on
                    error = f"{type(e).__name__}: {e}"
                else:
                    call(engine.update_ipc, meta, handle)
                    del flat  # the engine has copied it (or failed)
                    payload.num_bytes += nbytes
            payload.num_params += len(bucket)
            if self.rank == 0:
                digests.update((n, tensor_digest(n, t)) for n, t in bucket)
            del bucket
        report = call(engine.finish_update)
        payload.fingerprint = combine_digests(digests)
        return (payload if self.rank == 0 else None), report, error, died

    def _in_sync_dtype(self, bucket: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """The bucket's tensors cast to the engines' dtype (rollout.dtype): half the bytes to send for bf16
        engines, and the fingerprint is of exactly what the engines then hold."""
        dtype = getattr(torch, self.settings.sync_dtype)
        return [(n, t if t.dtype == dtype else t.to(dtype)) for n, t in bucket]

    def open_sync_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        """Rank 0 joins the weight-sync group as its sender (blocks until every engine worker has joined)."""
        from rlhf.transport.broadcast import SyncGroup

        if self.rank != 0:
            raise RuntimeError("open_sync_group: only training rank 0 sends weights")
        self.close_sync_group()
        self.sync_group = SyncGroup(host, port, 0, world_size, backend, timeout_s)

    def close_sync_group(self) -> None:
        group, self.sync_group = self.sync_group, None
        if group is not None:
            group.close()

    # ------------------------------------------------------------------ LoRA

    def _lora_buckets(self, payload: Any, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """COLLECTIVE. Buckets of what a LoRA policy syncs: the adapter tensors under their adapter keys (engines
        that load adapters; payload.adapter set), or every base weight with the adapter merged in."""
        from rlhf.models import lora

        if self.settings.adapter_only:
            payload.adapter = self.lora.model_dump(mode="json")
            for bucket in self.backend.full_parameter_buckets(bucket_bytes, only=lora.is_adapter_param):
                yield [(lora.adapter_key(n), t) for n, t in bucket]
            return
        yield from self._merged_buckets(bucket_bytes)

    def _merged_buckets(self, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """COLLECTIVE. Buckets of (base name, W + scale * B @ A) float32 tensors on rank 0: the full model a LoRA
        policy stands for (names and shapes of the base checkpoint)."""
        from rlhf.models import lora

        adapter = self._adapter_state()
        scale = lora.scale(self.lora)
        for bucket in self.backend.full_parameter_buckets(bucket_bytes, only=lambda n: not lora.is_adapter_param(n)):
            yield list(lora.merge_adapter(((lora.base_name(n), t) for n, t in bucket), adapter, scale))

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        """COLLECTIVE. {adapter key: float32 tensor} on rank 0 (empty on the others)."""
        from rlhf.models import lora

        state: dict[str, torch.Tensor] = {}
        for bucket in self.backend.full_parameter_buckets(2**30, only=lora.is_adapter_param):
            state.update((lora.adapter_key(n), t) for n, t in bucket)
        return state

    # ------------------------------------------------------------------ to disk

    def save_hf(self, out_dir: str) -> None:
        """COLLECTIVE. Rank 0 writes a loadable HF model directory (safetensors + config + tokenizer); a LoRA
        policy is written merged (base + adapter), e.g. the warm-up's OUT/sft."""
        dtype = getattr(torch, self.settings.dtype)
        if self.lora is not None:
            from rlhf.models import lora

            state = {n: t.to(dtype) for bucket in self._merged_buckets(2**30) for n, t in bucket}
            if self.rank == 0:
                lora.save_merged(self.hf_model.get_base_model(), state, out_dir)
                self.tokenizer.save_pretrained(out_dir)
            return
        if self._streams:  # rank 0 holds one shard at a time, not the whole model
            self._save_hf_shards(out_dir, dtype)
            return
        state: dict[str, torch.Tensor] = {}
        for bucket in self.backend.full_parameter_buckets(2**30):
            state.update((n, t.to(dtype)) for n, t in bucket)  # saved in the model's dtype
        if self.rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            if self.role == "critic":
                from rlhf.models.value import save_value_model

                save_value_model(self.hf_model, out_dir, state_dict=state)
            else:
                self.hf_model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(out_dir)

    def _save_hf_shards(self, out_dir: str, dtype: torch.dtype) -> None:
        """COLLECTIVE. The policy's weights written one gathered bucket (a shard of SHARD_BYTES) at a time, so
        rank 0 never holds the whole model (a ZeRO-3 rank holds only its partition); then config and tokenizer."""
        from rlhf.models.shards import SHARD_BYTES, ShardWriter

        writer = ShardWriter(out_dir) if self.rank == 0 else None
        for bucket in self.backend.full_parameter_buckets(SHARD_BYTES):
            if writer is not None:
                writer.add({n: t.to(dtype) for n, t in bucket})  # in the model's dtype
            del bucket
        if writer is not None:
            writer.close()
            config = self.hf_model.config  # what save_pretrained records: the saved dtype and the model's class
            config.dtype = str(dtype).split(".")[1]
            config.architectures = [type(self.hf_model).__name__]
            config.save_pretrained(out_dir)
            if self.hf_model.can_generate():
                self.hf_model.generation_config.save_pretrained(out_dir)
            self.tokenizer.save_pretrained(out_dir)

    def save_checkpoint(self, ckpt_dir: str) -> None:
        """COLLECTIVE. HF weights (rank 0) + optimizer/engine state of every rank. With model.lora, `model/` is the
        adapter (peft layout, adapter_config.json pointing at the base) and the engine state leaves out the frozen
        base: `rlhf export` merges it into a full model."""
        if self.lora is None:
            self.save_hf(os.path.join(ckpt_dir, "model"))
            self.backend.save_checkpoint(os.path.join(ckpt_dir, "optim"))
            return
        from rlhf.models import lora

        adapter = self._adapter_state()
        if self.rank == 0:
            out = os.path.join(ckpt_dir, "model")
            lora.save_adapter(self.hf_model, out, self.lora_base_dir, adapter)
            self.tokenizer.save_pretrained(out)
        self.backend.save_checkpoint(os.path.join(ckpt_dir, "optim"), exclude_frozen=True)

    def param_digest(self, zero_stage: int) -> str:
        """COLLECTIVE. Fingerprint of the full parameters (used by tests to check ranks agree)."""
        from rlhf.transport.weights import fingerprint_named

        named: list[tuple[str, torch.Tensor]] = []
        for bucket in self.backend.full_parameter_buckets(2**30):
            named.extend(bucket)
        if self.rank == 0:
            return fingerprint_named(named)
        # other ranks: digest of their own full view (ZeRO-3 shards are gathered on rank 0 only)
        if zero_stage == 3:
            return ""
        return fingerprint_named(self.hf_model.named_parameters())
