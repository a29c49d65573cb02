"""Rollout engines as Ray actors: one `RolloutActor` per engine, prompts sharded across them.

    engines = RolloutGroup(recipe, model_dir)
    batch = engines.generate(prompts, settings)     # RolloutBatch, rows grouped by prompt, in prompt order
    engines.sync(payload)                           # in-place weight update + fingerprint check
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from rlhf.config.schema import Recipe
from rlhf.rollout.base import cat_rollouts
from rlhf.transport.placement import has_gpus
from rlhf.transport.weights import WeightPayload, check_sync
from rlhf.types import RolloutBatch, SamplingSettings

ENGINES = {"hf": "rlhf.rollout.hf:HFEngine", "vllm": "rlhf.rollout.vllm:VLLMEngine"}
MAX_RESTARTS_PER_CALL = 2


def engine_class(name: str) -> type:
    import importlib

    if name not in ENGINES:
        raise ValueError(f"rollout.engine: unknown engine {name!r}; available: {sorted(ENGINES)}")
    module, attr = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), attr)


class RolloutActor:
    """Hosts one engine inside a Ray actor process."""

    def __init__(self, engine: str, model_dir: str, kwargs: dict[str, Any]) -> None:
        self.engine = engine_class(engine)(model_dir, **kwargs)

    def generate(self, prompts: list[str], settings: SamplingSettings) -> RolloutBatch:
        return self.engine.generate(prompts, settings)

    def generate_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        return self.engine.generate_ids(prefixes, settings)

    def load_weights(self, bucket_refs: list[Any], version: int, adapter: dict[str, Any] | None = None
                     ) -> tuple[int, str]:
        import ray

        blobs = (ray.get(ref) for ref in bucket_refs)  # one bucket in memory at a time
        if adapter is not None:  # a LoRA adapter only (model.lora; engines that load adapters)
            return self.engine.load_weights(blobs, version, adapter=adapter)
        return self.engine.load_weights(blobs, version)

    def completion_logprobs(self, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0):
        return self.engine.completion_logprobs(input_ids, attention_mask, prompt_len, temperature)

    # rollout.weight_sync=cuda_ipc: the colocated training rank calls these, one bucket at a time
    def begin_update(self, version: int) -> None:
        self.engine.begin_update(version)

    def update_ipc(self, meta: list, handle: bytes) -> int:
        return self.engine.update_ipc(meta, handle)

    def finish_update(self) -> tuple[int, str]:
        return self.engine.finish_update()

    # rollout.weight_sync=broadcast: the engine's workers are members of the trainer's weight-sync group
    def sync_ranks(self) -> int:
        return self.engine.sync_ranks()

    def join_sync_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                        timeout_s: float) -> int:
        return self.engine.join_sync_group(host, port, rank, world_size, backend, timeout_s)

    def receive_weights(self, version: int) -> tuple[int, str]:
        return self.engine.receive_weights(version)

    def leave_sync_group(self) -> None:
        self.engine.leave_sync_group()

    def sleep(self) -> None:
        """Free accelerator memory until the next generate/sync (engines that can: vllm with sleep mode)."""
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()

    def fingerprint(self) -> str:
        return self.engine.fingerprint()

    def info(self) -> dict[str, Any]:
        return self.engine.info()


class RolloutGroup:
    def __init__(self, recipe: Recipe, model_dir: str) -> None:
        import ray

        from rlhf.transport.placement import colocated_options, require_gpus_for, rollout_options

        r = recipe.rollout
        if r.engine == "vllm":
            from rlhf.rollout.vllm import require_vllm

            require_vllm()  # a clear message here, before any actor starts
            if r.vllm.sleep and not has_gpus():
                raise ValueError("rollout.vllm.sleep: vLLM has no sleep mode on CPU; set it to false")
        kwargs = dict(
            dtype=recipe.model.dtype,
            trust_remote_code=recipe.model.trust_remote_code,
            chat_template=recipe.data.chat_template,
            max_prompt_tokens=recipe.data.max_prompt_tokens,
            batch_size=r.batch_size,
            num_threads=max(1, (os.cpu_count() or 1) // r.num_engines),
        )
        actor_cls = ray.remote(RolloutActor)
        gpus = r.vllm.tensor_parallel_size if r.engine == "vllm" else 1
        require_gpus_for(r.placement)
        options = (lambda i: colocated_options(i, r.num_engines)) if r.placement == "colocated" else \
            (lambda i: rollout_options(gpus))
        self._start = lambda i: actor_cls.options(**options(i)).remote(  # noqa: E731
            r.engine, model_dir, {**kwargs, **_engine_kwargs(recipe, i)})
        self.actors = [self._start(i) for i in range(r.num_engines)]
        self.infos = self._get([a.info.remote() for a in self.actors])  # waits until every engine has loaded
        from rlhf.models.load import load_tokenizer

        # the engines' tokenizer, driver-side: pad id, and mapping step ends to token positions (process rewards)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=recipe.model.trust_remote_code)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.max_restarts = MAX_RESTARTS_PER_CALL
        self.restarts = 0  # engines restarted after dying (logged as events/rollout_restarts)
        self._payload: WeightPayload | None = None  # the last weights synced: a restarted engine gets them
        self.weight_sync = resolve_weight_sync(recipe, has_gpus())
        self.sync_timeout_s = r.sync_timeout_s
        self.sync_fallbacks = 0  # broadcast syncs that failed and went through the object store instead
        self.last_sync_failure: str | None = None
        self._sync_world = 0  # members of the open weight-sync group (0: not open)
        self._refetch: Callable[[], WeightPayload] | None = None  # broadcast: object-store export for restarts

    def _get(self, refs: Any) -> Any:
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None

    def generate(self, prompts: list[str], settings: SamplingSettings) -> RolloutBatch:
        """Prompts sharded over the engines. An engine that dies mid-call (killed, out of memory, segfault) is
        restarted, given the last synced weights (fingerprint-checked) and its shard generated again, with the
        same seed: up to `max_restarts` times per call."""
        return self._sharded(prompts, settings, lambda a, args: a.generate.remote(*args))

    def generate_ids(self, prefixes: list[list[int]], settings: SamplingSettings) -> RolloutBatch:
        """Continue token-id prefixes (a prompt plus part of a completion), sharded like `generate`; the
        completions hold only the new text. Used to estimate success from a partial solution (MRT progress)."""
        return self._sharded(prefixes, settings, lambda a, args: a.generate_ids.remote(*args))

    def _sharded(self, items: list, settings: SamplingSettings, submit: Callable[[Any, tuple], Any]) -> RolloutBatch:
        k = len(self.actors)
        shards = [items[i * len(items) // k : (i + 1) * len(items) // k] for i in range(k)]
        calls = {}
        for i, shard in enumerate(shards):
            if shard:
                seed = None if settings.seed is None else settings.seed + 1000 * i
                calls[i] = (shard, dataclasses.replace(settings, seed=seed))
        parts = self._with_restarts(calls, submit)
        return cat_rollouts([parts[i] for i in sorted(parts)], self.pad_token_id)

    def _with_restarts(self, calls: dict[int, tuple], submit: Callable[[Any, tuple], Any]) -> dict[int, Any]:
        import ray

        results: dict[int, Any] = {}
        pending = dict(calls)
        for attempt in range(self.max_restarts + 1):
            refs = {i: submit(self.actors[i], args) for i, args in pending.items()}
            died = []
            for i, ref in refs.items():
                try:
                    results[i] = self._get(ref)
                except ray.exceptions.RayActorError as e:
                    died.append((i, e))
            if not died:
                return results
            if attempt == self.max_restarts:
                i, e = died[0]
                raise RuntimeError(f"rollout engine {i} died {self.max_restarts + 1} times in one call; last: "
                                   f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
            for i, _ in died:
                self._restart(i)
            pending = {i: calls[i] for i, _ in died}
        return results

    def _restart(self, i: int) -> None:
        import ray

        ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._start(i)
        self.infos[i] = self._get(self.actors[i].info.remote())
        self.restarts += 1
        if self._sync_world:  # the new process is not a member of the weight-sync group: reopen it at next sync
            self._close_sync_group()
        if self._payload is None and self._refetch is not None:  # broadcast: the weights are not in the store
            self._payload = self._refetch()
        if self._payload is not None:
            report = self._get(self.actors[i].load_weights.remote(self._payload.buckets, self._payload.version,
                                                                  self._payload.adapter))
            check_sync(self._payload, [report])

    def sync(self, payload: WeightPayload) -> list[tuple[int, str]]:
        """Push the trainer's weights into every engine and verify what each now holds."""
        self._payload = payload
        calls = {i: (payload.buckets, payload.version, payload.adapter) for i in range(len(self.actors))}
        results = self._with_restarts(calls, lambda a, args: a.load_weights.remote(*args))
        reports = [results[i] for i in range(len(self.actors))]
        check_sync(payload, reports)
        return reports

    def sync_broadcast(self, trainers: Any, version: int) -> WeightPayload:
        """rollout.weight_sync=broadcast: training rank 0 broadcasts every bucket over the weight-sync group
        while all engines receive, then the fingerprints are checked. If anything fails on the way (an engine
        died, a member timed out), the group is closed, dead engines are restarted and this sync goes through the
        object store instead (counted in `sync_fallbacks`); the next sync reopens the group."""
        import ray

        self._refetch = lambda: trainers.export_weights(version)
        if not self._sync_world:
            self._open_sync_group(trainers)
        refs = {i: a.receive_weights.remote(version) for i, a in enumerate(self.actors)}
        payload = trainers.export_weights(version, transport="broadcast")
        reports: dict[int, tuple[int, str]] = {}
        failures, died = [], []
        if payload.error:
            failures.append(f"training rank 0: {payload.error}")
        for i, ref in refs.items():
            try:
                reports[i] = self._get(ref)
            except ray.exceptions.RayActorError:
                died.append(i)
                failures.append(f"engine {i} died")
            except Exception as e:  # noqa: BLE001 - collected, reported in last_sync_failure, then the fallback
                failures.append(f"engine {i}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
        if not failures:
            check_sync(payload, [reports[i] for i in range(len(self.actors))])
            self._payload = None  # not in the object store: a restarted engine gets them through `_refetch`
            return payload
        self._close_sync_group(trainers)
        return self._fall_back(trainers, version, failures, died)

    def sync_ipc(self, trainers: Any, version: int) -> WeightPayload:
        """rollout.weight_sync=cuda_ipc (colocated): every training rank streams its full weights to the engine
        on its GPU through CUDA IPC buffers, one bucket at a time; then the fingerprints are checked. A failure
        falls back to the object store as for broadcast."""
        self._refetch = lambda: trainers.export_weights(version)
        payload, results = trainers.push_weights_ipc(version, self.actors)
        failures = [f"engine {i}: {err}" for i, (_, err, _) in enumerate(results) if err]
        died = [i for i, (_, _, dead) in enumerate(results) if dead]
        if not failures:
            check_sync(payload, [report for report, _, _ in results])
            self._payload = None
            return payload
        return self._fall_back(trainers, version, failures, died)

    def _fall_back(self, trainers: Any, version: int, failures: list[str], died: list[int]) -> WeightPayload:
        """A fast-route sync failed: restart dead engines and redo the sync through the object store."""
        self.sync_fallbacks += 1
        self.last_sync_failure = "; ".join(failures)
        self._refetch = None
        for i in died:
            self._restart(i)
        fallback = trainers.export_weights(version)
        self.sync(fallback)
        self._refetch = lambda: trainers.export_weights(version)
        return fallback

    def _open_sync_group(self, trainers: Any) -> None:
        """Training rank 0 (rank 0) and every engine worker (ranks 1..) meet at rank 0's address."""
        ranks = self._get([a.sync_ranks.remote() for a in self.actors])
        host, port = trainers.sync_group_address()
        world, backend = 1 + sum(ranks), ("nccl" if has_gpus() else "gloo")
        refs, offset = [trainers.open_sync_group(host, port, world, backend, self.sync_timeout_s)], 1
        for actor, n in zip(self.actors, ranks):
            refs.append(actor.join_sync_group.remote(host, port, offset, world, backend, self.sync_timeout_s))
            offset += n
        self._get(refs)
        self._trainers_in_group = trainers
        self._sync_world = world

    def _close_sync_group(self, trainers: Any = None) -> None:
        """Every member leaves (engines that died are skipped)."""
        import ray

        trainers = trainers or getattr(self, "_trainers_in_group", None)
        self._sync_world = 0
        if trainers is not None:
            trainers.close_sync_group()
        for a in self.actors:
            try:
                self._get(a.leave_sync_group.remote())
            except ray.exceptions.RayActorError:
                pass  # a dead engine has left the group with its process

    def completion_logprobs(self, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0):
        return self._get(self.actors[0].completion_logprobs.remote(input_ids, attention_mask, prompt_len, temperature))

    def sleep(self) -> None:
        self._get([a.sleep.remote() for a in self.actors])

    def fingerprints(self) -> list[str]:
        return self._get([a.fingerprint.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


def resolve_weight_sync(recipe: Recipe, gpus: bool) -> str:
    """The weight-sync route a run uses: rollout.weight_sync, or for "auto": CUDA IPC on colocated GPUs, broadcast
    (NCCL) on split GPUs, the object store on CPU. LoRA with an engine that loads adapters always uses the object
    store (the adapter is small and the engine wraps its model with it)."""
    from rlhf.models import lora

    r = recipe.rollout
    adapters = recipe.model.lora is not None and r.engine in lora.ENGINES_WITH_ADAPTERS
    if r.weight_sync == "auto":
        if not gpus or adapters:
            return "object_store"
        if r.placement == "colocated":  # broadcast cannot work there (below); cuda_ipc carries no LoRA weights
            return "cuda_ipc" if recipe.model.lora is None else "object_store"
        return "broadcast"
    if r.weight_sync == "broadcast" and adapters:
        raise ValueError(f"rollout.weight_sync: broadcast sends full weights, but model.lora with engine "
                         f"{r.engine!r} syncs only the adapter; use weight_sync: object_store (or auto)")
    if r.weight_sync == "broadcast" and gpus and r.placement == "colocated":
        raise ValueError("rollout.weight_sync: broadcast runs over NCCL, which refuses two members on one GPU "
                         "(training rank 0 and engine 0 share it under placement: colocated); use cuda_ipc, "
                         "object_store or auto")
    return r.weight_sync


def _engine_kwargs(recipe: Recipe, index: int) -> dict[str, Any]:
    """Engine-specific constructor arguments (vllm: its recipe block, per-engine CPU cores, seed)."""
    r = recipe.rollout
    if r.engine != "vllm":
        return {}
    from rlhf.rollout.vllm import cpu_binding

    return {"vllm": r.vllm.model_dump(), "cpu_bind": cpu_binding(index, r.num_engines),
            "seed": recipe.run.seed + 1000 * index}

