"""The weight-sync group (rollout.weight_sync=broadcast) over gloo, members as threads of this process: buckets of
mixed dtypes arrive bit-exact, a failed sender makes every receiver fail quickly (no hang to the timeout), and the
engine-side loader refuses what it cannot place."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from rlhf.transport.broadcast import SyncGroup, SyncGroupError, free_port
from rlhf.transport.weights import WeightSyncError, fingerprint_module, fingerprint_named, load_named_into


def _members(world: int, fn) -> dict:
    """Run fn(group, out) for ranks 0..world-1 in threads of one group; return what each put in `out`."""
    port = free_port()
    out: dict = {}

    def member(rank: int) -> None:
        try:
            fn(SyncGroup("127.0.0.1", port, rank, world, "gloo", timeout_s=30), out)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            out[("error", rank)] = e

    threads = [threading.Thread(target=member, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a member hung"
    return out


def test_buckets_arrive_bit_exact_in_order():
    g = torch.Generator().manual_seed(0)
    buckets = [
        [("a.weight", torch.randn(3, 5, generator=g)), ("a.bias", torch.randn(5, generator=g))],
        [("b", torch.randn(2, 2, generator=g).to(torch.bfloat16)), ("steps", torch.tensor([7, 8], dtype=torch.int64)),
         ("scalar", torch.tensor(1.5))],
        [("c", torch.randn(4, 3, generator=g).t())],  # not contiguous on the sender
    ]
    sent = [kv for b in buckets for kv in b]

    def fn(group, out):
        if group.rank == 0:
            out["bytes"] = sum(group.send(b) for b in buckets)
            group.send([])  # an empty bucket sends nothing
            group.finish()
        else:
            out[group.rank] = [(n, t.clone()) for n, t in group.receive()]

    out = _members(3, fn)
    assert not [k for k in out if isinstance(k, tuple)], out
    assert out["bytes"] == sum(t.numel() * t.element_size() for _, t in sent)
    for rank in (1, 2):
        got = out[rank]
        assert [n for n, _ in got] == [n for n, _ in sent]
        for (_, a), (_, b) in zip(got, sent):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        assert fingerprint_named(got) == fingerprint_named(sent)


def test_two_syncs_over_one_group():
    def fn(group, out):
        for version in (1, 2):
            if group.rank == 0:
                group.send([("w", torch.full((4,), float(version)))])
                group.finish()
            else:
                out[(group.rank, version)] = [t.clone() for _, t in group.receive()]

    out = _members(2, fn)
    assert torch.equal(out[(1, 1)][0], torch.ones(4)) and torch.equal(out[(1, 2)][0], torch.full((4,), 2.0))


def test_a_sender_that_closes_mid_sync_fails_every_receiver_quickly():
    def fn(group, out):
        if group.rank == 0:
            group.send([("w", torch.ones(8))])
            time.sleep(0.3)
            group.close()  # what rank 0 does when a send fails: receivers must not wait for the 30 s timeout
        else:
            t0 = time.monotonic()
            with pytest.raises(RuntimeError):
                list(group.receive())
            out[group.rank] = time.monotonic() - t0

    out = _members(3, fn)
    assert not [k for k in out if isinstance(k, tuple)], out
    assert out[1] < 15 and out[2] < 15


def test_roles_and_arguments_are_checked():
    with pytest.raises(ValueError, match="rank 2 of world size 2"):
        SyncGroup("127.0.0.1", 1, 2, 2, "gloo")
    with pytest.raises(ValueError, match="unknown backend"):
        SyncGroup("127.0.0.1", 1, 0, 2, "mpi")

    def fn(group, out):
        if group.rank == 0:
            with pytest.raises(SyncGroupError, match="rank 0 does not receive"):
                next(group.receive())
            group.finish()
        else:
            with pytest.raises(SyncGroupError, match="only rank 0 sends"):
                group.send([("w", torch.ones(1))])
            out[1] = list(group.receive())

    out = _members(2, fn)
    assert out[1] == [] and not [k for k in out if isinstance(k, tuple)]


def test_an_unreachable_rendezvous_names_the_address():
    with pytest.raises(SyncGroupError, match=r"rank 1/2 could not join 127\.0\.0\.1:\d+ \(gloo\)"):
        SyncGroup("127.0.0.1", free_port(), 1, 2, "gloo", timeout_s=1)


def test_load_named_into_places_tensors_and_refuses_bad_ones():
    model = torch.nn.Linear(3, 2)
    new = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    fp, n = load_named_into(model, new.items())
    assert n == 2 and fp == fingerprint_module(model) == fingerprint_named(new.items())
    assert torch.equal(model.weight, new["weight"])
    with pytest.raises(WeightSyncError, match="sent twice"):
        load_named_into(model, [("bias", new["bias"]), ("bias", new["bias"])])
    with pytest.raises(WeightSyncError, match="no parameter named 'w'"):
        load_named_into(model, [("w", new["bias"])])
    with pytest.raises(WeightSyncError, match=r"shape \(2,\) in the engine, \(3,\) sent"):
        load_named_into(model, [("bias", torch.ones(3))])
    with pytest.raises(WeightSyncError, match="1 parameters were not sent"):
        load_named_into(model, [("weight", new["weight"])])
