"""Training rank 0 owns the object-store copies of the weights it exports: when its process or node is lost while
the engines fetch them, the engines' call fails with Ray's OwnerDiedError (wrapped in the engine's task error).
The coordinator turns that into the run's one-line errors: TrainWorkerDied naming the lost rank when a rank is
gone, else a WeightSyncError -- never Ray's traceback."""

from __future__ import annotations

import pytest
import ray.exceptions

from rlhf.runtime.sync import SyncCoordinator
from rlhf.train.group import TrainWorkerDied
from rlhf.transport.weights import WeightPayload, WeightSyncError


def _owner_died() -> Exception:
    """What the engine group raises: the engine's RayTaskError as an instance of its cause (rollout/group.py)."""
    cause = ray.exceptions.OwnerDiedError("ab" * 28, "", "")
    return ray.exceptions.RayTaskError("load_weights", "Traceback ...", cause).as_instanceof_cause()


class Engines:
    on_restart = None

    def load_weights(self, payload: WeightPayload, engine: int | None = None):
        raise _owner_died()


class Trainers:
    def __init__(self, dead_rank: int | None) -> None:
        self.dead_rank = dead_rank

    def export_weights(self, version: int, transport: str = "object_store") -> WeightPayload:
        return WeightPayload(version=version, fingerprint="fp", transport=transport)

    def check_alive(self) -> None:
        if self.dead_rank is not None:
            raise TrainWorkerDied(f"a training worker died: policy rank {self.dead_rank} (Ray node n1, 10.0.0.2)")


def test_the_wrapped_error_is_an_object_lost_error():
    assert isinstance(_owner_died(), ray.exceptions.ObjectLostError)


def test_lost_rank_is_named():
    sync = SyncCoordinator(Trainers(dead_rank=0), Engines(), "object_store", gpus=False)
    with pytest.raises(TrainWorkerDied, match=r"policy rank 0 \(Ray node n1"):
        sync.sync(3)


def test_lost_object_with_every_rank_alive_is_a_weight_sync_error():
    sync = SyncCoordinator(Trainers(dead_rank=None), Engines(), "object_store", gpus=False)
    with pytest.raises(WeightSyncError, match=r"weight sync of version 3: .*OwnerDiedError.*--resume") as info:
        sync.sync(3)
    assert info.value.__cause__ is None and info.value.__suppress_context__
