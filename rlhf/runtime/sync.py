"""The sync coordinator: how the trainer's weights reach the rollout engines, and the proof that they did.

    route = resolve_weight_sync(recipe, has_gpus())
    sync = SyncCoordinator(trainers, engines, route, recipe.rollout.sync_timeout_s)
    payload = sync.sync(version=step)       # export -> deliver -> every engine's (version, fingerprint) checked

It owns the route (object store, broadcast over a weight-sync group, CUDA IPC on colocated GPUs), the weight-sync
group's life, the fallback of a failed fast route to the object store, and the version + fingerprint checks
(``WeightSyncError`` on a mismatch). The engines and the trainers only send and receive (rlhf/rollout/group.py,
rlhf/train/export.py). When an engine dies and the rollout group restarts it, the coordinator gives the new engine
the current weights (and closes the sync group, which the new process is not a member of; the next sync
reopens it).
"""

from __future__ import annotations

from typing import Any, Callable

from rlhf.transport.placement import actor_gone
from rlhf.transport.weights import WeightPayload, WeightSyncError, check_sync

ROUTES = ("object_store", "broadcast", "cuda_ipc")


def resolve_weight_sync(recipe: Any, gpus: bool) -> str:
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


class SyncCoordinator:
    def __init__(self, trainers: Any, engines: Any, route: str = "object_store", timeout_s: float = 600.0,
                 gpus: bool | None = None, keep_copy: bool = False) -> None:
        """gpus: whether the weight-sync group runs over NCCL (GPUs) or gloo; None asks Ray's cluster when the
        group first opens. keep_copy (async training): after a fast-route sync, also export the same version to the
        object store, so that an engine restarted while the trainers train (the pipeline's producer thread) gets
        exactly the engines' version without calling the trainers (collective, and a newer version by then)."""
        self.keep_copy = keep_copy
        self._stale_group = False  # async: an engine restarted with the group open; closed by the next sync
        if route not in ROUTES:
            raise ValueError(f"weight sync route {route!r}; expected one of {ROUTES}")
        self.trainers, self.engines, self.route = trainers, engines, route
        self.timeout_s, self.gpus = timeout_s, gpus
        self.fallbacks = 0  # fast-route syncs that failed and went through the object store instead
        self.last_failure: str | None = None
        self._payload: WeightPayload | None = None  # the last weights in the object store: a restarted engine's
        self._refetch: Callable[[], WeightPayload] | None = None  # fast routes: an object-store export, for restarts
        self._group_world = 0  # members of the open weight-sync group (0: not open)
        engines.on_restart = self._restarted

    def sync(self, version: int) -> WeightPayload:
        """Training rank 0's weights into every engine by this run's route, fingerprint-checked."""
        if self._stale_group:  # an engine was restarted (async): the group it is not a member of is reopened now
            self._stale_group = False
            self._close_group()
        if self.route == "broadcast":
            return self._broadcast(version)
        if self.route == "cuda_ipc":
            return self._ipc(version)
        payload = self.trainers.export_weights(version)
        self.deliver(payload)
        return payload

    def deliver(self, payload: WeightPayload) -> list[tuple[int, str]]:
        """Load an object-store payload into every engine and check what each now holds (returns the reports);
        a restarted engine gets it too."""
        import ray

        self._payload = payload
        try:
            reports = self.engines.load_weights(payload)
        except ray.exceptions.ObjectLostError as e:  # OwnerDiedError: the rank that put the buckets is gone
            self.trainers.check_alive()  # TrainWorkerDied, naming the lost rank and its node
            raise WeightSyncError(
                f"weight sync of version {payload.version}: the engines could not fetch the weights from Ray's "
                f"object store ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}), though every training "
                "rank still answers; checkpoints already written stay valid (`rlhf train RECIPE --resume`)") from None
        check_sync(payload, reports)
        return reports

    # ------------------------------------------------------------------ fast routes

    def _broadcast(self, version: int) -> WeightPayload:
        """Training rank 0 broadcasts every bucket over the weight-sync group while all engines receive, then the
        fingerprints are checked. If anything fails on the way (an engine died, a member timed out), the group is
        closed, dead engines are restarted and this sync goes through the object store instead (counted in
        `fallbacks`); the next sync reopens the group."""
        import ray

        self._refetch = lambda: self.trainers.export_weights(version)
        if not self._group_world:
            self._open_group()
        refs = self.engines.receive_weights(version)
        payload = self.trainers.export_weights(version, transport="broadcast")
        reports: dict[int, tuple[int, str]] = {}
        failures, died = [], []
        if payload.error:
            failures.append(f"training rank 0: {payload.error}")
        for i, ref in refs.items():
            try:
                reports[i] = self.engines.get(ref)
            except actor_gone():
                died.append(i)
                failures.append(f"engine {i} died")
            except Exception as e:  # noqa: BLE001 - collected, reported in last_failure, then the fallback
                failures.append(f"engine {i}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
        if not failures:
            check_sync(payload, [reports[i] for i in range(len(refs))])
            self._keep(version)
            return payload
        self._close_group()
        return self._fall_back(version, failures, died)

    def _ipc(self, version: int) -> WeightPayload:
        """Every training rank streams its full weights to the colocated engine on its GPU through CUDA IPC
        buffers, one bucket at a time; then the fingerprints are checked. A failure falls back as for broadcast."""
        self._refetch = lambda: self.trainers.export_weights(version)
        payload, results = self.trainers.push_weights_ipc(version, self.engines.actors)
        failures = [f"engine {i}: {err}" for i, (_, err, _) in enumerate(results) if err]
        died = [i for i, (_, _, dead) in enumerate(results) if dead]
        if not failures:
            check_sync(payload, [report for report, _, _ in results])
            self._keep(version)
            return payload
        return self._fall_back(version, failures, died)

    def _keep(self, version: int) -> None:
        """After a fast-route sync: a restarted engine gets these weights through `_refetch` (from the trainers,
        synchronous training) or, with keep_copy, from an object-store copy of this version made now."""
        self._payload = self.trainers.export_weights(version) if self.keep_copy else None

    def _fall_back(self, version: int, failures: list[str], died: list[int]) -> WeightPayload:
        """A fast-route sync failed: restart dead engines and redo the sync through the object store."""
        self.fallbacks += 1
        self.last_failure = "; ".join(failures)
        self._refetch = None
        for i in died:
            self.engines.restart(i)
        fallback = self.trainers.export_weights(version)
        self.deliver(fallback)
        self._refetch = lambda: self.trainers.export_weights(version)
        return fallback

    def _open_group(self) -> None:
        """Training rank 0 (rank 0) and every engine worker (ranks 1..) meet at rank 0's address."""
        host, port = self.trainers.sync_group_address()
        ranks = self.engines.sync_ranks()  # weight-sync members of each engine (its workers)
        world = 1 + sum(ranks)
        if self.gpus is None:
            from rlhf.transport.placement import has_gpus

            self.gpus = has_gpus()
        backend = "nccl" if self.gpus else "gloo"
        refs = [self.trainers.open_sync_group(host, port, world, backend, self.timeout_s)]
        refs += self.engines.join_sync_group(host, port, world, backend, self.timeout_s, ranks)
        self.engines.get(refs)
        self._group_world = world

    def _close_group(self) -> None:
        """Every member leaves (engines that died are skipped)."""
        self._group_world = 0
        self.trainers.close_sync_group()
        self.engines.leave_sync_group()

    def close(self) -> None:
        """Close the weight-sync group if it is open (the next broadcast sync reopens it)."""
        if self._group_world:
            self._close_group()

    # ------------------------------------------------------------------ restarts

    def _restarted(self, i: int) -> None:
        """Engine i was restarted (it died): it gets the current weights, fingerprint-checked."""
        if self._group_world:  # the new process is not a member of the weight-sync group: reopen it at next sync
            if self.keep_copy:  # async: the trainers are busy in the other thread; the next sync closes it
                self._stale_group = True
            else:
                self._close_group()
        if self._payload is None and self._refetch is not None:  # fast routes: the weights are not in the store
            self._payload = self._refetch()
        if self._payload is not None:
            check_sync(self._payload, self.engines.load_weights(self._payload, engine=i))
