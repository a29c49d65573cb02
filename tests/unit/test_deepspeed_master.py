"""ZeRO-3 over float32 weights keeps no second float32 copy of a rank's partition
(rlhf/train/deepspeed.py ``shared_master_partitions``), and trains exactly as with the copy.

One DeepSpeed process (world size 1, gloo) in a subprocess, so this test's process keeps no process group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import contextlib, json, sys
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import rlhf.train.deepspeed as ds

    def train(shared, dtype):
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
        model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
        if not shared:
            ds.shared_master_partitions = lambda stage: contextlib.nullcontext()
        backend = ds.DeepSpeedBackend(model, zero_stage=3, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.01,
                                      grad_clip=1.0, dtype=dtype)
        ds.shared_master_partitions = SHARED
        opt = backend.optimizer
        same = [a.data_ptr() == b.data_ptr() for a, b in zip(opt.fp32_partitioned_groups_flat,
                                                              opt.fp16_partitioned_groups_flat)]
        ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            out = backend.module(input_ids=ids, labels=ids)
            backend.backward(out.loss)
            backend.step()
        flat = torch.cat([p.detach().float().reshape(-1) for p in opt.fp32_partitioned_groups_flat])
        return same, flat

    SHARED = ds.shared_master_partitions
    dtype = sys.argv[1]
    same_on, on = train(True, dtype)
    same_off, off = train(False, dtype)
    print(json.dumps({"shared_on": same_on, "shared_off": same_off, "equal": bool(torch.equal(on, off)),
                      "numel": on.numel()}))
""")


def _run(dtype: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, dtype], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_zero3_fp32_weights_share_the_master_partition_and_train_identically():
    r = _run("float32")
    assert r["numel"] > 0 and r["shared_on"] and all(r["shared_on"])  # the optimizer updates the partition itself
    assert not any(r["shared_off"])  # DeepSpeed 0.19.8 alone clones it (a 4-byte-per-parameter copy)
    assert r["equal"]  # bitwise the same parameters after 3 AdamW steps with clipping
