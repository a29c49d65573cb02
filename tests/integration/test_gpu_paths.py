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
    from rlhf.runtime.weight_broadcast import SyncGroup

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

    from rlhf.runtime.weight_broadcast import free_port

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
