"""The training worker group: N `TrainWorker` Ray actors forming one DeepSpeed process group.

    group = TrainGroup(recipe)            # actors placed by rlhf.transport.placement, rendezvous on rank 0
    group.nodes                           # where each rank runs: [{node_id, ip}] (OUT/placement.json)
    group.build(model_dir, lr)            # every rank loads the model and builds its engine
    metrics = group.train_rl(experience)  # shards the batch across ranks, averages the metrics
"""

from __future__ import annotations

import math
from typing import Any, Callable, TypeVar

from rlhf.config.schema import Recipe
from rlhf.transport.placement import actor_gone, group_memory
from rlhf.types import ExperienceBatch, SFTBatch

T = TypeVar("T")


class TrainWorkerDied(RuntimeError):
    """A training rank died; the run stops and the last checkpoint stays valid."""


class TrainGroup:
    def __init__(self, recipe: Recipe, role: str = "policy", num_ranks: int | None = None) -> None:
        import ray

        from rlhf.train.settings import worker_settings
        from rlhf.train.worker import TrainWorker
        from rlhf.transport.placement import cpu_split, train_bundles

        self.recipe, self.role = recipe, role
        self.world_size = num_ranks or recipe.train.num_ranks
        threads = recipe.train.num_threads or cpu_split(recipe, self.world_size)[1]
        colocated = role == "policy" and recipe.rollout.placement == "colocated"  # shares GPUs with the engines
        options = train_bundles(self.world_size, colocated=colocated, strategy=recipe.ray.placement_strategy)
        actor_cls = ray.remote(TrainWorker)
        self.workers = [
            actor_cls.options(**options[r]).remote(r, self.world_size, worker_settings(recipe, role), threads)
            for r in range(self.world_size)
        ]
        self.nodes: list[dict[str, str]] = []  # filled next; read by the lost-rank message meanwhile
        self.nodes = self._all(lambda w: w.node.remote())
        addr, port = self._get(self.workers[0].address.remote())  # rank 0's node IP: the ranks may be anywhere
        self._all(lambda w: w.init_process_group.remote(addr, port))

    # ------------------------------------------------------------------ plumbing

    def _get(self, refs: Any) -> Any:
        """Results of one call on the ranks; the first failure stops the whole group at once.

        Waiting on all ranks together would hang when one rank fails while the others sit in a collective
        (they would wait for the dead rank until the process-group timeout).
        """
        import ray

        single = not isinstance(refs, list)
        pending = [refs] if single else list(refs)
        rank = None  # the rank whose call is being read: lists are in rank order, single calls go to rank 0
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                rank = 0 if single else refs.index(done[0])
                ray.get(done[0])  # raises at the first failed rank
            results = ray.get(refs)
        except actor_gone() as e:
            lost = self._lost(e, rank)
            self.shutdown()
            raise TrainWorkerDied(
                f"a training worker died: {lost}; the run stops here. Checkpoints already written under "
                f"{self.recipe.run.output_dir}/checkpoints are intact: continue with `rlhf train RECIPE --resume` "
                "(on a cluster with enough nodes for ray.placement_strategy)."
            ) from None  # the message says it all: Ray's traceback of a lost actor adds nothing to act on
        except ray.exceptions.RayTaskError as e:
            self.shutdown()  # the other ranks may be blocked in a collective with the failed one
            raise e.as_instanceof_cause() from None  # keeps the worker's exception type and remote traceback
        return results

    def _lost(self, e: Any, rank: int | None = None) -> str:
        """Which rank died and where it ran: 'rank 1 (Ray node 3f2a..., 10.0.0.5): its process or its node is gone
        (ActorUnavailableError: ...)'."""
        actor_id = getattr(e, "actor_id", None)  # an OutOfMemoryError names no actor
        actor_id = actor_id if isinstance(actor_id, str) else None
        ranks = [r for r, w in enumerate(self.workers) if w._actor_id.hex() == actor_id]
        if not ranks and rank is not None:  # no actor named (OutOfMemoryError): the call's own rank
            ranks = [rank]
        cause = " ".join(str(e).replace("The task may or may not have been executed on the actor.", "").split())
        cause = f"{type(e).__name__}: {cause[:200].rsplit(' ', 1)[0] + ' ...' if len(cause) > 200 else cause}"
        if not ranks:
            return f"a {self.role} rank is gone ({cause})"
        r = ranks[0]
        where = (f"Ray node {self.nodes[r]['node_id']}, {self.nodes[r]['ip']}" if r < len(self.nodes)
                 else "not placed yet")
        return f"{self.role} rank {r} ({where}): its process or its node is gone ({cause})"

    def _all(self, call: Callable[[Any], Any]) -> list[Any]:
        return self._get([call(w) for w in self.workers])

    def _shards(self, batch: T) -> list[T]:
        n = batch.batch_size
        if n % self.world_size:
            raise ValueError(f"batch of {n} rows cannot be split evenly over {self.world_size} training ranks")
        k = n // self.world_size
        return [batch.slice(r * k, (r + 1) * k) for r in range(self.world_size)]

    # ------------------------------------------------------------------ API

    def build(self, model_dir: str, lr: float, num_heads: int | None = None,
              score_heads: tuple[str, ...] = (), policy_heads: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        self.model_dir = model_dir
        return self._all(lambda w: w.build.remote(model_dir, lr, num_heads, tuple(score_heads), tuple(policy_heads)))

    def logprobs(self, exp: ExperienceBatch, reference: bool = False):
        """(B, C) logprobs of every row, sharded over the ranks (policy, or the frozen reference)."""
        import torch

        shards = self._shards(exp)
        return torch.cat(self._get([w.logprobs.remote(s, reference) for w, s in zip(self.workers, shards)]))

    def values(self, exp: ExperienceBatch):
        """(B, C, S) critic values, sharded over the ranks."""
        import torch

        shards = self._shards(exp)
        return torch.cat(self._get([w.values.remote(s) for w, s in zip(self.workers, shards)]))

    def train_critic(self, exp: ExperienceBatch) -> dict[str, float]:
        shards = self._shards(exp)
        return _mean_metrics(self._get([w.train_critic.remote(s) for w, s in zip(self.workers, shards)]))

    def set_lr(self, lr: float) -> None:
        self._all(lambda w: w.set_lr.remote(lr))

    def load_reference(self, model_dir: str) -> None:
        self._all(lambda w: w.load_reference.remote(model_dir))

    def train_rl(self, exp: ExperienceBatch) -> dict[str, float]:
        shards = self._shards(exp)
        results = self._get([w.train_rl.remote(s) for w, s in zip(self.workers, shards)])
        return _mean_metrics(results)

    def component_gram(self, exp: ExperienceBatch, component_advantages: Any, max_samples: int) -> Any:
        """(K, K) Gram matrix of the per-component policy gradients (component_advantages: (B, K)); rows sharded
        over the ranks as in train_rl, each rank using at most `max_samples` of its rows."""
        shards = self._shards(exp)
        k = exp.batch_size // self.world_size
        refs = [w.component_gram.remote(s, component_advantages[r * k : (r + 1) * k], max_samples)
                for r, (w, s) in enumerate(zip(self.workers, shards))]
        return self._get(refs)[0]  # the same matrix on every rank

    def train_sft(self, batch: Any) -> dict[str, float]:
        """One optimizer step of supervised fine-tuning (SFTBatch; the warm-up)."""
        shards = self._shards(batch)
        return _mean_metrics(self._get([w.train_sft.remote(s) for w, s in zip(self.workers, shards)]))

    def train_supervised(self, batch: Any) -> dict[str, float]:
        """One optimizer step of the objective's own supervised loss (PRMBatch: the PRM step-tag loss)."""
        shards = self._shards(batch)
        return _mean_metrics(self._get([w.train_supervised.remote(s) for w, s in zip(self.workers, shards)]))

    def eval_supervised(self, batch: Any) -> dict[str, float]:
        """The objective's supervised metrics on a batch, no update (mean over the ranks' shards)."""
        shards = self._shards(batch)
        return _mean_metrics(self._get([w.eval_supervised.remote(s) for w, s in zip(self.workers, shards)]))

    def policy_logprobs(self, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0):
        """(B, C) logprobs under the trained policy (every rank computes; rank 0's answer is returned)."""
        return self._all(lambda w: w.policy_logprobs.remote(input_ids, attention_mask, prompt_len, temperature))[0]

    def preference_logps(self, batch: Any, reference: bool):
        """(B, 2) summed logps of [chosen, rejected], rows sharded over the ranks."""
        import torch

        shards = self._shards(batch)
        return torch.cat(self._get([w.preference_logps.remote(s, reference) for w, s in zip(self.workers, shards)]))

    def train_preference(self, pairs: Any) -> dict[str, float]:
        shards = self._shards(pairs)
        return _mean_metrics(self._get([w.train_preference.remote(s) for w, s in zip(self.workers, shards)]))

    def train_online_pairs(self, exp: ExperienceBatch) -> dict[str, float]:
        """Rows (2i, 2i+1) are one pair; the pair count must split evenly over the ranks."""
        shards = self._shards(exp)
        if any(s.batch_size % 2 for s in shards):
            raise ValueError("train_online_pairs: every rank needs whole (chosen, rejected) pairs")
        return _mean_metrics(self._get([w.train_online_pairs.remote(s) for w, s in zip(self.workers, shards)]))

    def drop_reference(self) -> None:
        self._all(lambda w: w.drop_reference.remote())

    def export_weights(self, version: int, transport: str = "object_store") -> Any:
        return self._all(lambda w: w.export_weights.remote(version, transport))[0]

    def push_weights_ipc(self, version: int, engines: list[Any]) -> tuple[Any, list[tuple[Any, str | None, bool]]]:
        """Rank r streams its weights to engines[r] (colocated); returns (rank 0's payload, per engine
        (its (version, fingerprint) report, error or None, whether it died))."""
        if len(engines) != self.world_size:
            raise ValueError(f"cuda_ipc weight sync: {len(engines)} engines for {self.world_size} training ranks "
                             "(colocated placement pairs them one to one)")
        results = self._get([w.push_weights_ipc.remote(version, e) for w, e in zip(self.workers, engines)])
        return results[0][0], [(report, error, died) for _, report, error, died in results]

    def check_alive(self) -> None:
        """Ask every rank where it runs: a rank that is gone raises TrainWorkerDied naming it and its node."""
        self._all(lambda w: w.node.remote())

    def sync_group_address(self) -> tuple[str, int]:
        """Rendezvous of the weight-sync group: rank 0's node and a free port there."""
        return self._get(self.workers[0].address.remote())

    def open_sync_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> Any:
        """Rank 0 joins the weight-sync group; returns the call's ref (the engines join at the same time)."""
        return self.workers[0].open_sync_group.remote(host, port, world_size, backend, timeout_s)

    def close_sync_group(self) -> None:
        self._get(self.workers[0].close_sync_group.remote())

    def save_hf(self, out_dir: str) -> None:
        self._all(lambda w: w.save_hf.remote(out_dir))

    def save_checkpoint(self, ckpt_dir: str) -> None:
        self._all(lambda w: w.save_checkpoint.remote(ckpt_dir))

    def load_optimizer(self, ckpt_dir: str) -> None:
        self._all(lambda w: w.load_optimizer.remote(ckpt_dir))

    def param_digests(self) -> list[str]:
        return self._all(lambda w: w.param_digest.remote())

    def memory(self) -> dict[str, float]:
        """memory/peak_{rss,gpu}_gb/GROUP: the largest peak over the ranks (GROUP: trainers, or the role)."""
        group = "trainers" if self.role == "policy" else self.role
        return group_memory(group, self._all(lambda w: w.memory.remote()))

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []


def _mean_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Mean over the ranks (max for time/* and memory/*); a rank's NaN means "nothing measured here" (e.g. a reward-model head
    without labels in its shard) and is left out; NaN only when every rank says so."""
    keys = set().union(*results)
    out = {}
    for k in keys:
        vals = [r[k] for r in results if k in r and not (isinstance(r[k], float) and math.isnan(r[k]))]
        out[k] = float("nan") if not vals else max(vals) if k.startswith(("time/", "memory/")) else sum(vals) / len(vals)
    return out
