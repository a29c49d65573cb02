"""Rollout engines as Ray actors: one `RolloutActor` per engine, prompts sharded across them.

    engines = RolloutGroup(recipe, model_dir)
    batch = engines.generate(prompts, settings)     # RolloutBatch, rows grouped by prompt, in prompt order
    engines.sync(payload)                           # in-place weight update + fingerprint check
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from rlhf.config.schema import Recipe
from rlhf.rollout.base import cat_rollouts
from rlhf.runtime.weight_sync import WeightPayload, check_sync
from rlhf.types import RolloutBatch, SamplingSettings

ENGINES = {"hf": "rlhf.rollout.hf:HFEngine", "vllm": "rlhf.rollout.vllm:VLLMEngine"}


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

    def load_weights(self, bucket_refs: list[Any], version: int) -> tuple[int, str]:
        import ray

        blobs = (ray.get(ref) for ref in bucket_refs)  # one bucket in memory at a time
        return self.engine.load_weights(blobs, version)

    def completion_logprobs(self, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0):
        return self.engine.completion_logprobs(input_ids, attention_mask, prompt_len, temperature)

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

        from rlhf.runtime.placement import has_gpus, rollout_options

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
        self.actors = [
            actor_cls.options(**rollout_options(gpus)).remote(r.engine, model_dir, {**kwargs, **_engine_kwargs(recipe, i)})
            for i in range(r.num_engines)
        ]
        self.infos = self._get([a.info.remote() for a in self.actors])  # waits until every engine has loaded
        self.pad_token_id = _pad_id(model_dir, recipe)

    def _get(self, refs: Any) -> Any:
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None

    def generate(self, prompts: list[str], settings: SamplingSettings) -> RolloutBatch:
        k = len(self.actors)
        shards = [prompts[i * len(prompts) // k : (i + 1) * len(prompts) // k] for i in range(k)]
        refs = []
        for i, (actor, shard) in enumerate(zip(self.actors, shards)):
            if not shard:
                continue
            seed = None if settings.seed is None else settings.seed + 1000 * i
            refs.append(actor.generate.remote(shard, dataclasses.replace(settings, seed=seed)))
        return cat_rollouts(self._get(refs), self.pad_token_id)

    def sync(self, payload: WeightPayload) -> list[tuple[int, str]]:
        """Push the trainer's weights into every engine and verify what each now holds."""
        reports = self._get([a.load_weights.remote(payload.buckets, payload.version) for a in self.actors])
        check_sync(payload, reports)
        return reports

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


def _engine_kwargs(recipe: Recipe, index: int) -> dict[str, Any]:
    """Engine-specific constructor arguments (vllm: its recipe block, per-engine CPU cores, seed)."""
    r = recipe.rollout
    if r.engine != "vllm":
        return {}
    from rlhf.rollout.vllm import cpu_binding

    return {"vllm": r.vllm.model_dump(), "cpu_bind": cpu_binding(index, r.num_engines),
            "seed": recipe.run.seed + 1000 * index}


def _pad_id(model_dir: str, recipe: Recipe) -> int:
    from rlhf.models.load import load_tokenizer

    return int(load_tokenizer(model_dir, trust_remote_code=recipe.model.trust_remote_code).pad_token_id)
