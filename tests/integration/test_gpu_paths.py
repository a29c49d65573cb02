"""GPU-only paths, marked `gpu` (skipped without CUDA; conftest): the weight-sync group over NCCL between two
processes on two GPUs, and vLLM's sleep mode (memory freed while asleep, the same greedy output after waking).

The same SyncGroup code runs over gloo in tests/unit/test_weight_broadcast.py and, end to end with DeepSpeed and
the hf / vllm engines, in tests/integration/test_broadcast_sync.py and test_vllm_engine.py.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def _nccl_member(rank: int, port: int, world: int, out) -> None:
    torch.cuda.set_device(rank)
    from rlhf.transport.broadcast import SyncGroup

    group = SyncGroup("127.0.0.1", port, rank, world, "nccl", timeout_s=120)
    g = torch.Generator().manual_seed(0)
    sent = [("w", torch.randn(64, 32, generator=g)), ("b", torch.randn(32, generator=g).to(torch.bfloat16))]
    try:
        if rank == 0:
            group.send([(n, t.cuda()) for n, t in sent])
            group.finish()
        else:
            got = [(n, t.cpu()) for n, t in group.receive()]
            out.put([(n, torch.equal(a, b), a.device.type) for (n, a), (_, b) in zip(got, sent)])
    finally:
        group.close()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_sync_group_over_nccl_between_two_gpus():
    import torch.multiprocessing as mp

    from rlhf.transport.broadcast import free_port

    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_nccl_member, args=(r, port, 2, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert out.get(timeout=5) == [("w", True, "cpu"), ("b", True, "cpu")]


def test_vllm_sleep_frees_memory_and_wakes_with_the_same_weights(tmp_path):
    from rlhf.rollout.vllm import vllm_available

    if not vllm_available():
        pytest.skip("vllm is not installed")
    from rlhf.config.schema import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny
    from rlhf.rollout.vllm import VLLMEngine
    from rlhf.types import SamplingSettings

    corpus = [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)]
    cfg = TinyModelConfig(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2,
                          max_position_embeddings=64)
    model_dir = materialize_tiny(cfg, corpus, str(tmp_path / "model"), seed=0)
    engine = VLLMEngine(model_dir, vllm={"sleep": True, "gpu_memory_utilization": 0.3})
    try:
        settings = SamplingSettings(n=1, max_new_tokens=8, greedy=True)
        before = engine.generate(["1+2=", "3+4="], settings)
        free_awake, _ = torch.cuda.mem_get_info()
        engine.sleep()
        free_asleep, _ = torch.cuda.mem_get_info()
        assert free_asleep > free_awake + 2**28, "sleep level 1 frees the KV cache (and offloads the weights)"
        after = engine.generate(["1+2=", "3+4="], settings)  # wakes first
        assert torch.equal(before.completion_ids, after.completion_ids)
    finally:
        engine.shutdown()


def _ipc_child(handle: bytes, meta: list, out) -> None:
    from rlhf.transport.ipc import finish_copies, open_shared
    from rlhf.transport.weights import unflatten_bucket

    flat = open_shared(handle)
    # numpy arrays, pickled by value: a CPU tensor put on the queue travels as a shared-memory fd that the parent
    # can only fetch while this process is still alive (it exits right after the put)
    got = [(n, t.cpu().numpy().copy()) for n, t in unflatten_bucket(meta, flat)]
    finish_copies()
    out.put(got)


def test_cuda_ipc_buffer_opens_in_another_process():
    import torch.multiprocessing as mp

    from rlhf.transport.ipc import bucket_message

    g = torch.Generator().manual_seed(0)
    bucket = [("w", torch.randn(16, 8, generator=g).cuda()), ("b", torch.randn(8, generator=g).cuda())]
    meta, handle, flat, nbytes = bucket_message(bucket)
    assert nbytes == (16 * 8 + 8) * 4 and flat.is_cuda
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_ipc_child, args=(handle, meta, out))
    p.start()
    got = out.get(timeout=120)
    p.join(60)
    assert p.exitcode == 0
    assert [(n, torch.equal(torch.from_numpy(a), ref.cpu())) for (n, a), (_, ref) in zip(got, bucket)] == \
        [("w", True), ("b", True)]


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_colocated_grpo_syncs_by_cuda_ipc(ray_session, engine, tmp_path):
    """Training rank 0 and the engine share the GPU; weights move by CUDA IPC every step (auto picks it)."""
    import json

    from rlhf.config.load import validate_dict
    from rlhf.rollout.vllm import vllm_available
    from rlhf.runtime.controller import run

    if engine == "vllm" and not vllm_available():
        pytest.skip("vllm is not installed")
    from rlhf.config.schema import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny

    corpus = [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)]
    cfg = TinyModelConfig(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2,
                          max_position_embeddings=64)
    model_dir = materialize_tiny(cfg, corpus, str(tmp_path / "model"), seed=0)
    rollout = {"engine": engine, "placement": "colocated", "prompts_per_step": 4, "group_size": 4,
               "max_new_tokens": 6}
    if engine == "vllm":
        rollout["vllm"] = {"sleep": True, "gpu_memory_utilization": 0.2}
    recipe = validate_dict({
        "run": {"output_dir": str(tmp_path / "out"), "steps": 3, "progress": False},
        "model": {"path": model_dir},
        "data": {"synthetic": {"n_train": 64, "n_eval": 8, "max_operand": 20, "ops": ["+"]}, "max_prompt_tokens": 16},
        "rewards": [{"name": "correct", "plugin": "math_answer"}],
        "rollout": rollout,
        "objective": {"kind": "grpo"},
        "train": {"backend": "deepspeed", "zero_stage": 3, "num_ranks": 1, "lr": 1e-3, "micro_batch_size": 16},
        "eval": {"max_samples": 8},
    }, "test")
    run(recipe)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "sync/fast_route" in r]
    assert len(steps) == 3 and all(r["sync/fast_route"] == 1.0 for r in steps), steps
