"""The sync coordinator's restart path under async training (keep_copy): an engine restarted while the trainers
train (the pipeline's producer thread) gets the engines' version from an object-store copy, never from the
trainers, and the weight-sync group it is not a member of is closed by the next sync, on the consumer's side."""

from __future__ import annotations

from rlhf.runtime.sync import SyncCoordinator
from rlhf.transport.weights import WeightPayload


class Trainers:
    """Rank 0 of a policy whose weights are ``version`` after that many updates; records every call."""

    def __init__(self) -> None:
        self.version, self.calls = 0, []

    def export_weights(self, version: int, transport: str = "object_store") -> WeightPayload:
        self.calls.append(("export", version, transport))
        return WeightPayload(version=version, fingerprint=f"fp{self.version}", transport=transport)

    def sync_group_address(self):
        return "127.0.0.1", 1

    def open_sync_group(self, *args):
        self.calls.append(("open",))
        return "opened"

    def close_sync_group(self) -> None:
        self.calls.append(("close",))


class Engines:
    def __init__(self) -> None:
        self.on_restart = None
        self.held: dict[int, tuple[int, str]] = {0: (0, "fp0")}

    def sync_ranks(self):
        return [1]

    def join_sync_group(self, *args):
        return []

    def leave_sync_group(self) -> None:
        pass

    def get(self, refs):
        return refs

    def receive_weights(self, version: int):
        return {0: (version, None)}  # filled in by get(): what engine 0 reports after the broadcast

    def load_weights(self, payload: WeightPayload, engine: int | None = None):
        self.held[engine or 0] = (payload.version, payload.fingerprint)
        return [self.held[engine or 0]]


def _broadcast_sync(coordinator: SyncCoordinator, trainers: Trainers, engines: Engines, version: int) -> None:
    trainers.version = version
    engines.receive_weights = lambda v: {0: (v, f"fp{trainers.version}")}
    coordinator.sync(version)


def test_restart_during_training_takes_the_engines_version_from_the_copy():
    trainers, engines = Trainers(), Engines()
    sync = SyncCoordinator(trainers, engines, route="broadcast", gpus=False, keep_copy=True)
    _broadcast_sync(sync, trainers, engines, 3)
    assert ("export", 3, "object_store") in trainers.calls  # the copy, made on the consumer's side
    trainers.version = 4  # the trainers have updated since (the producer's engine dies now)
    trainers.calls.clear()
    engines.on_restart(0)
    assert engines.held[0] == (3, "fp3") and trainers.calls == []  # no trainer call from the producer's thread
    _broadcast_sync(sync, trainers, engines, 4)
    assert trainers.calls[0] == ("close",) and ("open",) in trainers.calls  # the group is reopened by the sync


def test_synchronous_restart_refetches_from_the_trainers():
    trainers, engines = Trainers(), Engines()
    sync = SyncCoordinator(trainers, engines, route="broadcast", gpus=False)
    _broadcast_sync(sync, trainers, engines, 3)
    assert ("export", 3, "object_store") not in trainers.calls  # no copy: the trainers are idle between steps
    trainers.calls.clear()
    engines.on_restart(0)
    assert trainers.calls == [("close",), ("export", 3, "object_store")] and engines.held[0] == (3, "fp3")
