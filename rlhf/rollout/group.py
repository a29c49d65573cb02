"""Rollout engines as Ray actors: one `RolloutActor` per engine, prompts sharded across them.

    engines = RolloutGroup(recipe, model_dir)
    batch = engines.generate(prompts, settings)     # RolloutBatch, rows grouped by prompt, in prompt order
    reports = engines.load_weights(payload)         # in-place weight update: each engine's (version, fingerprint)

The group only drives its engines: how trained weights reach them (route, sync group, fallback, fingerprint
checks) is the runtime's sync coordinator's (rlhf/runtime/sync.py), which the group calls back when it restarts an
engine that died (``on_restart``) so the new engine gets the current weights. Only the rollout functions
(rlhf/rollout/functions.py) call `generate` / `generate_ids`.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

from rlhf.config.schema import Recipe
from rlhf.transport.placement import actor_gone, cpu_split, group_memory, has_gpus
from rlhf.transport.weights import WeightPayload
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

    def memory(self) -> dict[str, float]:
        """This engine's peak memory so far, GiB (its process tree: vLLM's engine core included)."""
        from rlhf.transport.placement import peak_memory

        return peak_memory()

    def info(self) -> dict[str, Any]:
        return self.engine.info()

    def node(self) -> dict[str, str]:
        """The Ray node this engine runs on ({node_id, ip}): the run's placement record."""
        from rlhf.transport.placement import actor_node

        return actor_node()


STOPS_HERE = ("The run stops here; checkpoints already written stay valid (`rlhf train RECIPE --resume`). An engine "
              "killed for memory (OutOfMemoryError: Ray's memory monitor) needs more free memory on its node: fewer "
              "engines or other jobs, or a smaller rollout.vllm.kv_cache_gb / rollout.batch_size")


class EngineDied(RuntimeError):
    """A rollout engine died and could not be replaced (or died again on every retry of one call)."""


def _cause(e: BaseException) -> str:
    """One line of a Ray error: its type and its message's first line, cut at 300 characters."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


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
            dtype=recipe.engine_dtype,
            trust_remote_code=recipe.model.trust_remote_code,
            chat_template=recipe.data.chat_template,
            max_prompt_tokens=recipe.data.max_prompt_tokens,
            batch_size=r.batch_size,
            num_threads=cpu_split(recipe)[0],
        )
        actor_cls = ray.remote(RolloutActor)
        gpus = r.vllm.tensor_parallel_size if r.engine == "vllm" else 1
        require_gpus_for(r.placement)
        strategy = recipe.ray.placement_strategy
        options = (lambda i: colocated_options(i, r.num_engines, strategy)) if r.placement == "colocated" else \
            (lambda i: rollout_options(gpus, strategy))
        # keep mode: the actor serves the producer's generate and the consumer's weight sync at the same time
        concurrency = {"max_concurrency": 2} if recipe.pipeline.updates_in_flight else {}
        self._start = lambda i: actor_cls.options(**options(i), **concurrency).remote(  # noqa: E731
            r.engine, model_dir, {**kwargs, **_engine_kwargs(recipe, i)})
        self.actors = [self._start(i) for i in range(r.num_engines)]
        self.infos = self._get([a.info.remote() for a in self.actors])  # waits until every engine has loaded
        self.nodes: list[dict[str, str]] = self._get([a.node.remote() for a in self.actors])  # where each runs
        from rlhf.models.load import load_tokenizer

        # the engines' tokenizer, driver-side: pad id, and mapping step ends to token positions (process rewards)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=recipe.model.trust_remote_code)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.max_restarts = MAX_RESTARTS_PER_CALL
        self.restarts = 0  # engines restarted after dying (logged as events/rollout_restarts)
        self.on_restart: Callable[[int], None] | None = None  # gives a restarted engine i the current weights
        self.sleeps = r.engine == "vllm" and r.vllm.sleep  # engines free their memory while training runs
        self._restarting = threading.RLock()  # on_restart may load weights, which may restart the engine again

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
        return RolloutBatch.cat([parts[i] for i in sorted(parts)], self.pad_token_id)

    def _with_restarts(self, calls: dict[int, tuple], submit: Callable[[Any, tuple], Any]) -> dict[int, Any]:
        import ray

        results: dict[int, Any] = {}
        pending = dict(calls)
        for attempt in range(self.max_restarts + 1):
            actors = {i: self.actors[i] for i in pending}
            refs = {i: submit(actors[i], args) for i, args in pending.items()}
            died = []
            for i, ref in refs.items():
                try:
                    results[i] = self._get(ref)
                except actor_gone() as e:
                    died.append((i, e))
            if not died:
                return results
            if attempt == self.max_restarts:
                i, e = died[0]
                raise EngineDied(f"rollout engine {i} died {self.max_restarts + 1} times in one call; last: "
                                 f"{_cause(e)}. {STOPS_HERE}")
            for i, _ in died:
                self._restart(i, actors[i])
            pending = {i: calls[i] for i, _ in died}
        return results

    def _restart(self, i: int, dead: Any = None) -> None:
        """Replace engine i; ``dead``: the handle a call failed on. With weight syncs landing during generation
        (pipeline.weight_update: keep) the producer's and the consumer's threads can both find the same engine
        dead: the second finds it replaced already and just retries its call."""
        with self._restarting:
            if dead is not None and self.actors[i] is not dead:
                return
            self._replace(i)

    def _replace(self, i: int) -> None:
        import ray

        ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._start(i)
        try:
            self.infos[i] = self._get(self.actors[i].info.remote())
            self.nodes[i] = self._get(self.actors[i].node.remote())
        except actor_gone() as e:  # e.g. Ray's memory monitor killed the new engine while it loaded the model
            raise EngineDied(f"rollout engine {i} died, and its replacement died while starting: {_cause(e)}. "
                             f"{STOPS_HERE}") from None
        self.restarts += 1
        if self.on_restart is not None:
            self.on_restart(i)

    def restart(self, i: int) -> None:
        """Replace engine i (e.g. it died during a sync)."""
        self._restart(i)

    # ------------------------------------------------------------------ weight updates (driven by the runtime)

    def load_weights(self, payload: WeightPayload, engine: int | None = None) -> list[tuple[int, str]]:
        """Load object-store buckets into every engine, restarting any that dies (or into engine `engine` only, no
        restart); returns each one's (version, fingerprint), for the caller to check."""
        args = (payload.buckets, payload.version, payload.adapter)
        if engine is not None:
            return [self._get(self.actors[engine].load_weights.remote(*args))]
        results = self._with_restarts({i: args for i in range(len(self.actors))},
                                      lambda a, call_args: a.load_weights.remote(*call_args))
        return [results[i] for i in range(len(self.actors))]

    def join_sync_group(self, host: str, port: int, world: int, backend: str, timeout_s: float,
                        ranks: list[int]) -> list[Any]:
        """Refs of every engine's workers (``ranks``: each engine's count, from `sync_ranks`) joining the
        weight-sync group as ranks 1.. (training rank 0 joins at the same time: the rendezvous blocks until all
        have)."""
        refs, offset = [], 1
        for actor, n in zip(self.actors, ranks):
            refs.append(actor.join_sync_group.remote(host, port, offset, world, backend, timeout_s))
            offset += n
        return refs

    def sync_ranks(self) -> list[int]:
        """Weight-sync group members of each engine (its workers)."""
        return self._get([a.sync_ranks.remote() for a in self.actors])

    def receive_weights(self, version: int) -> dict[int, Any]:
        """Refs of every engine receiving one broadcast sync."""
        return {i: a.receive_weights.remote(version) for i, a in enumerate(self.actors)}

    def leave_sync_group(self) -> None:
        """Every engine leaves the weight-sync group (engines that died are skipped)."""
        import ray

        for a in self.actors:
            try:
                self._get(a.leave_sync_group.remote())
            except actor_gone():
                pass  # a dead engine has left the group with its process

    def get(self, refs: Any) -> Any:
        """ray.get with a remote exception re-raised as its own type."""
        return self._get(refs)

    def completion_logprobs(self, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0):
        return self._get(self.actors[0].completion_logprobs.remote(input_ids, attention_mask, prompt_len, temperature))

    def sleep(self) -> None:
        """Engines that sleep (vllm with rollout.vllm.sleep) free their memory until the next generate or sync;
        for the others this is not even a Ray call."""
        if self.sleeps:
            self._get([a.sleep.remote() for a in self.actors])

    def fingerprints(self) -> list[str]:
        return self._get([a.fingerprint.remote() for a in self.actors])

    def memory(self) -> dict[str, float]:
        """memory/peak_{rss,gpu}_gb/engines: the largest peak over the engines (each engine's process tree). An
        engine that died since its last call is left out: the next generate restarts it (and says so)."""
        import ray

        peaks = []
        for ref in [a.memory.remote() for a in self.actors]:
            try:
                peaks.append(ray.get(ref))
            except actor_gone():
                continue
        return group_memory("engines", peaks)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


def _engine_kwargs(recipe: Recipe, index: int) -> dict[str, Any]:
    """Engine-specific constructor arguments (hf: its decode path; vllm: its recipe block, per-engine CPU cores,
    seed; both: whether weight updates land during generation)."""
    r = recipe.rollout
    if r.engine == "hf":
        return {"decode": r.hf.decode, "keep_updates": recipe.pipeline.updates_in_flight}
    if r.engine != "vllm":
        return {}
    from rlhf.rollout.vllm import cpu_binding

    return {"vllm": r.vllm.model_dump(), "cpu_bind": cpu_binding(index, r.num_engines, cpu_split(recipe)[2]),
            "seed": recipe.run.seed + 1000 * index, "keep_updates": recipe.pipeline.updates_in_flight}

