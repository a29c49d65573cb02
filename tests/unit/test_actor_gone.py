"""An actor killed by Ray's memory monitor: Ray reports an OutOfMemoryError for the call in flight (not the
RayActorError of a dead actor). Every group treats it as the actor being gone: a dead engine is skipped when the
weight-sync group closes and restarted; a replacement that dies too, or a lost training rank, stops the run with a
one-line error naming it (EngineDied, TrainWorkerDied), never Ray's traceback."""

from __future__ import annotations

import threading

import pytest
import ray
import ray.exceptions

from rlhf.rollout.group import EngineDied, RolloutGroup
from rlhf.train.group import TrainGroup
from rlhf.transport.placement import actor_gone

OOM = ray.exceptions.OutOfMemoryError(
    "Task was killed due to the node running low on memory. Memory on the node (IP: 10.0.0.2) was 22.55GB used / "
    "23.54GB limit")


class Call:
    def __init__(self, outcome):
        self.outcome = outcome

    def remote(self, *args):
        return self.outcome


class Actor:
    """A stand-in actor whose every call 'returns' `outcome` (an exception is raised by the group's _get)."""

    def __init__(self, outcome=None):
        self.info = self.node = self.leave_sync_group = Call(outcome)


def _raising_get(refs):
    if isinstance(refs, BaseException):
        raise refs
    return refs


def _engines(actors) -> RolloutGroup:
    group = RolloutGroup.__new__(RolloutGroup)
    group.actors, group.infos, group.nodes = list(actors), [{}] * len(actors), [{}] * len(actors)
    group.restarts, group.on_restart, group.max_restarts = 0, None, 2
    group._get = _raising_get
    group._restarting = threading.RLock()
    return group


def test_out_of_memory_counts_as_gone():
    assert isinstance(OOM, actor_gone()) and isinstance(ray.exceptions.ActorDiedError(), actor_gone())


def test_engine_killed_for_memory_is_skipped_when_the_sync_group_closes():
    engines = _engines([Actor(OOM), Actor("left")])
    engines.leave_sync_group()  # no error: the killed engine left the group with its process


def test_an_engine_found_dead_by_two_threads_is_restarted_once(monkeypatch):
    """pipeline.weight_update: keep -- the producer's generate and the consumer's weight sync both fail on the same
    dead engine: one replaces it, the other sees the replacement and only retries its call."""
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: None)
    dead = Actor(OOM)
    engines = _engines([dead])
    engines._start = lambda i: Actor("ok")
    threads = [threading.Thread(target=engines._restart, args=(0, dead)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engines.restarts == 1 and engines.actors[0] is not dead
    engines.restart(0)  # asked for by name (a sync that found it dead): always replaced
    assert engines.restarts == 2


def test_replacement_killed_too_stops_the_run_with_one_line(monkeypatch):
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: None)
    engines = _engines([Actor("ok")])
    engines._start = lambda i: Actor(OOM)  # the new engine is killed while it loads the model
    with pytest.raises(EngineDied, match=r"rollout engine 0 died, and its replacement died while starting: "
                                         r"OutOfMemoryError: .*22\.55GB used.*--resume.*kv_cache_gb"):
        engines.restart(0)


class Handle:
    def __init__(self, hex_id: str) -> None:
        self.hex_id = hex_id

    def hex(self) -> str:
        return self.hex_id


def test_training_rank_killed_for_memory_is_named():
    trainers = TrainGroup.__new__(TrainGroup)
    trainers.role = "policy"
    trainers.workers = [type("W", (), {"_actor_id": Handle(h)})() for h in ("aa", "bb")]
    trainers.nodes = [{"node_id": "n0", "ip": "10.0.0.1"}, {"node_id": "n1", "ip": "10.0.0.2"}]
    lost = trainers._lost(OOM, rank=1)
    assert lost.startswith("policy rank 1 (Ray node n1, 10.0.0.2): its process or its node is gone "
                           "(OutOfMemoryError: Task was killed due to the node running low on memory"), lost
