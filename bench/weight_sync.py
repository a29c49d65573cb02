"""Seconds per GB of the real weight sync (DeepSpeed ZeRO-2 / ZeRO-3 -> hf engine) vs a plain memory copy.

    python -m bench.weight_sync            # ~1.5-2 min on 2 cores: a ~59 MB Llama (hidden 512, 8 layers)
    python -m bench.weight_sync --quick    # seconds: a ~7 MB model, smoke test

What is timed, in one run on one machine:
  1. the real sync: ``TrainGroup.export_weights`` on 2 DeepSpeed ranks (gloo; ZeRO-2, then ZeRO-3) +
     ``SyncCoordinator.deliver`` into one hf engine (load + fingerprint check), with the recipe's default bucket
     size; then the same weights by the coordinator's broadcast route (rollout.weight_sync=broadcast: a gloo
     group, rank 0 -> the engine);
  2. the peers: ``Tensor.copy_`` of a float32 tensor of the same byte count into a preallocated one, and a
     ``bytes`` copy (``bytearray(blob)``) of one packed blob of the same size;
  3. the parts of the sync, by calling the functions of ``rlhf/transport/weights.py`` directly on the same
     tensors in the driver: copy-out (what the ZeRO gather hands over) + pack (safetensors), the fingerprint,
     ``ray.put`` + ``ray.get`` in another process, unpack + in-place copy into the engine's model.

Figures (ratios): real sync / tensor copy and real sync / bytes copy, per ZeRO stage; broadcast / object store;
each part's share of the sync.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, Sequence

from bench.common import (
    with_former_defaults,
    header,
    machine_info,
    md_table,
    parse_args,
    print_result,
    ratio,
    ray_running,
    repeat_times,
    save_figure,
    setup_env,
    summary,
    timed,
    write_results,
)

NAME = "weight_sync"
GB = 1e9


def build_model(out_dir: str, quick: bool) -> tuple[str, dict[str, int]]:
    """A tiny-config Llama big enough that bytes dominate (hidden 512, 8 layers: ~59 MB float32)."""
    from rlhf.config.schema import TinyModelConfig
    from rlhf.models.tiny import materialize_tiny

    size = dict(hidden_size=256, intermediate_size=256, num_layers=4, num_heads=4) if quick else \
        dict(hidden_size=512, intermediate_size=512, num_layers=8, num_heads=8)
    cfg = TinyModelConfig(max_position_embeddings=64, tokenizer_vocab_size=64, **size)
    corpus = [f"{a}+{b}={a + b}" for a in range(30) for b in range(30)]
    return materialize_tiny(cfg, corpus, os.path.join(out_dir, "model"), seed=0), size


def make_recipe(out_dir: str, zero_stage: int):
    from rlhf.config.schema import Recipe

    return Recipe.model_validate(with_former_defaults({  # measured before 2026-12-08
        "run": {"output_dir": os.path.join(out_dir, f"run_z{zero_stage}")},
        "model": {"path": "unused"},  # the groups are built from the directory given to build()
        "rewards": [{"name": "r", "plugin": "exact_match"}],
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "objective": {"kind": "grpo"},
        "train": {"backend": "deepspeed", "zero_stage": zero_stage, "num_ranks": 2, "lr": 1e-4},
    }))


def bench_real_sync(model_dir: str, workdir: str, stages: Sequence[int], repeats: int) -> dict[str, Any]:
    """Export (2 ranks) + engine sync, per ZeRO stage; one engine serves both stages (versions keep rising)."""
    from concurrent.futures import ThreadPoolExecutor

    from rlhf.rollout.group import RolloutGroup
    from rlhf.runtime.sync import SyncCoordinator
    from rlhf.train.group import TrainGroup

    out: dict[str, Any] = {}
    version = 0
    with ThreadPoolExecutor(1) as pool:  # the engine loads while the first training group starts
        engine_future = pool.submit(RolloutGroup, make_recipe(workdir, stages[0]), model_dir)
        engines = None
        try:
            for stage in stages:
                recipe = make_recipe(workdir, stage)
                start_s, trainers = timed(lambda: TrainGroup(recipe))
                try:
                    build_s, _ = timed(lambda: trainers.build(model_dir, recipe.train.lr))
                    engines = engine_future.result()
                    sync = SyncCoordinator(trainers, engines, "object_store", gpus=False)
                    export_s, sync_s, total_s = [], [], []
                    info: dict[str, Any] = {}
                    for i in range(repeats + 1):  # the first round warms up (allocations, first ray.put)
                        version += 1
                        t_export, payload = timed(lambda: trainers.export_weights(version))
                        t_sync, _ = timed(lambda: sync.deliver(payload))
                        info = {"num_bytes": payload.num_bytes, "num_params": payload.num_params,
                                "num_buckets": len(payload.buckets)}
                        del payload
                        if i:
                            export_s.append(t_export)
                            sync_s.append(t_sync)
                            total_s.append(t_export + t_sync)
                    # rollout.weight_sync=broadcast on the same trainers and engine: rank 0 -> engine over gloo
                    bcast_s: list[float] = []
                    broadcast = SyncCoordinator(trainers, engines, "broadcast", recipe.rollout.sync_timeout_s,
                                                gpus=False)
                    for i in range(repeats + 1):  # the first round also opens the group
                        version += 1
                        t_b, payload = timed(lambda: broadcast.sync(version))
                        if payload.transport != "broadcast":
                            raise RuntimeError(f"broadcast sync fell back: {broadcast.last_failure}")
                        if i:
                            bcast_s.append(t_b)
                    broadcast.close()
                finally:
                    trainers.shutdown()
                total, bcast = summary(total_s), summary(bcast_s)
                out[f"zero{stage}"] = {
                    **info, "group_start_s": start_s, "build_s": build_s,
                    "export_s": summary(export_s), "engine_sync_s": summary(sync_s), "total_s": total,
                    "s_per_gb": total["median"] / (info["num_bytes"] / GB),
                    "broadcast_s": bcast, "broadcast_s_per_gb": bcast["median"] / (info["num_bytes"] / GB),
                    "bucket_mb": recipe.train.sync_bucket_mb,
                }
        finally:
            engines = engines or _result_or_none(engine_future)
            if engines is not None:
                engines.shutdown()
    return out


def _result_or_none(future: Any) -> Any:
    try:
        return future.result()
    except Exception:  # the engine failed to start: the error that matters was raised already
        return None


def bench_peers(num_bytes: int, repeats: int) -> dict[str, Any]:
    """Plain in-memory copies of the same number of bytes."""
    import torch

    src = torch.randn(num_bytes // 4)  # float32
    dst = torch.empty_like(src)
    copy_s = repeat_times(lambda: dst.copy_(src), repeats, warmup=2)
    blob = src.numpy().tobytes()
    bytes_s = repeat_times(lambda: bytearray(blob), repeats, warmup=2)
    # not peers but reference points for the fingerprint: one pass of common hashes over the same bytes
    hashes = {"sha256": lambda: hashlib.sha256(blob).digest(), "blake2b": lambda: hashlib.blake2b(blob).digest()}
    try:
        import xxhash

        hashes["xxh3_128"] = lambda: xxhash.xxh3_128(blob).digest()
    except ImportError:  # only a reference point: skip it where xxhash is not installed
        pass
    out = {"num_bytes": num_bytes, "tensor_copy_s": summary(copy_s), "bytes_copy_s": summary(bytes_s),
           "torch_threads": torch.get_num_threads()}
    for name, fn in hashes.items():
        out[f"{name}_s"] = summary(repeat_times(fn, max(2, repeats // 4), warmup=1))
    return out


def bench_parts(model_dir: str, bucket_mb: float, repeats: int) -> dict[str, Any]:
    """Each part of the sync, timed on the driver with the model's own tensors and the module's functions."""
    import ray
    import torch

    from rlhf.models.load import load_causal_lm
    from rlhf.transport.weights import (
        combine_digests,
        fingerprint_module,
        pack_bucket,
        tensor_digest,
        unpack_bucket,
    )
    from rlhf.train.backend import bucket_params

    trainer_model = load_causal_lm(model_dir, "float32", False)  # stands in for rank 0's gathered view
    engine_model = load_causal_lm(model_dir, "float32", False)  # the engine's copy, loaded in place
    named = list(trainer_model.named_parameters())
    buckets = bucket_params(named, int(bucket_mb * 2**20))
    engine_params = dict(engine_model.named_parameters())

    def copy_out():  # rlhf.train.backend.full_copy: the float32 copy the gather hands to the packer
        return [[(n, p.detach().to("cpu", torch.float32).clone()) for n, p in b] for b in buckets]

    copied = copy_out()

    def pack():
        return [pack_bucket(b) for b in copied]

    blobs = pack()

    def digest_trainer():
        return combine_digests({n: tensor_digest(n, t) for b in copied for n, t in b})

    refs: list[Any] = []

    def put():
        refs.clear()
        refs.extend(ray.put(b) for b in blobs)

    put()
    probe = _probe_cls().remote()
    ray.get(probe.get_all.remote([]))  # started

    def get_remote():  # the engine's side of the transport, timed inside the other process
        return ray.get(probe.get_all.remote(refs))

    unpacked = [unpack_bucket(b) for b in blobs]

    def unpack():
        return [unpack_bucket(b) for b in blobs]

    def copy_in():  # load_buckets_into's in-place copy
        with torch.no_grad():
            for tensors in unpacked:
                for name, t in tensors.items():
                    engine_params[name].copy_(t.to(engine_params[name].dtype))

    def fingerprint_engine():
        return fingerprint_module(engine_model)

    parts = {
        "copy_out": repeat_times(copy_out, repeats),
        "pack": repeat_times(pack, repeats),
        "fingerprint_trainer": repeat_times(digest_trainer, repeats),
        "ray_put": repeat_times(put, repeats),
        "ray_get_remote": [],
        "unpack": repeat_times(unpack, repeats),
        "copy_in": repeat_times(copy_in, repeats),
        "fingerprint_engine": repeat_times(fingerprint_engine, repeats),
    }
    get_remote()
    for _ in range(repeats):
        parts["ray_get_remote"].append(get_remote())
    ray.kill(probe)
    refs.clear()
    return {"num_bytes": sum(len(b) for b in blobs), "num_buckets": len(blobs),
            **{k: summary(v) for k, v in parts.items()}}


_PROBE: Any = None


def _probe_cls():
    """A Ray actor that fetches blobs from the object store the way the rollout actor does (one at a time)."""
    global _PROBE
    if _PROBE is None:
        import ray

        class Probe:
            def get_all(self, refs: list) -> float:
                import time

                t0 = time.perf_counter()
                for ref in refs:
                    blob = ray.get(ref)
                    del blob
                return time.perf_counter() - t0

        _PROBE = ray.remote(num_cpus=0)(Probe)
    return _PROBE


# the parts, grouped as the issue asks: gather+pack, transport, engine load, fingerprint
GROUPS = {
    "gather+pack (copy-out, safetensors pack)": ("copy_out", "pack"),
    "transport (ray.put, ray.get in another process)": ("ray_put", "ray_get_remote"),
    "engine load (unpack, in-place copy)": ("unpack", "copy_in"),
    "fingerprint (trainer + engine)": ("fingerprint_trainer", "fingerprint_engine"),
}
REST = "rest (Ray calls, ZeRO gather, scheduling; negative: the parts ran slower in the driver)"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0])
    setup_env()
    quick = args.quick
    repeats = 2 if quick else 5
    stages = [2] if quick else [2, 3]  # each DeepSpeed group takes ~10 s to start and build on 2 cores
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench_weight_sync_") as tmp:
        model_dir, size = build_model(tmp, quick)
        with ray_running():
            real = bench_real_sync(model_dir, tmp, stages, repeats)
            num_bytes = real[f"zero{stages[0]}"]["num_bytes"]
            peers = bench_peers(num_bytes, 5 if quick else 20)
            parts = bench_parts(model_dir, real[f"zero{stages[0]}"]["bucket_mb"], repeats)

    copy_med, bytes_med = peers["tensor_copy_s"]["median"], peers["bytes_copy_s"]["median"]
    ratios: dict[str, float] = {}
    for stage in stages:
        total = real[f"zero{stage}"]["total_s"]["median"]
        ratios[f"zero{stage}_sync_over_tensor_copy"] = ratio(total, copy_med)
        ratios[f"zero{stage}_sync_over_bytes_copy"] = ratio(total, bytes_med)
        bcast = real[f"zero{stage}"]["broadcast_s"]["median"]
        ratios[f"zero{stage}_broadcast_over_tensor_copy"] = ratio(bcast, copy_med)
        ratios[f"zero{stage}_broadcast_over_object_store"] = ratio(bcast, total)
    if len(stages) > 1:
        ratios["zero3_over_zero2_sync"] = ratio(real["zero3"]["total_s"]["median"], real["zero2"]["total_s"]["median"])
    ref_total = real[f"zero{stages[0]}"]["total_s"]["median"]
    shares = {g: sum(parts[p]["median"] for p in ps) / ref_total for g, ps in GROUPS.items()}
    shares[REST] = 1 - sum(shares.values())
    result = {
        "bench": NAME, "quick": quick, "machine": info, "model": size, "real_sync": real, "peers": peers,
        "parts": parts, "part_shares_of_zero2_sync": shares, "ratios": ratios,
        "s_per_gb": {**{f"zero{s}": real[f"zero{s}"]["s_per_gb"] for s in stages},
                     **{f"broadcast_zero{s}": real[f"zero{s}"]["broadcast_s_per_gb"] for s in stages},
                     "tensor_copy": copy_med / (num_bytes / GB), "bytes_copy": bytes_med / (num_bytes / GB)},
        "required_ratios": [f"zero{s}_sync_over_{p}_copy" for s in stages for p in ("tensor", "bytes")],
    }
    result["paths"] = write_results(args.out, NAME, result, render(result, quick))
    result["paths"]["plot"] = plot(result, args.out)
    return result


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    """Seconds per GB: the real sync per ZeRO stage, each of its parts, and the plain copies (log scale)."""
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None

    gb = result["parts"]["num_bytes"] / GB
    bars = [(f"sync ZeRO-{k[-1]}", v, "tab:red") for k, v in result["s_per_gb"].items() if k.startswith("zero")]
    bars += [(f"broadcast ZeRO-{k[-1]}", v, "tab:purple") for k, v in result["s_per_gb"].items()
             if k.startswith("broadcast")]
    bars += [(f"part: {p}", result["parts"][p]["median"] / gb, "tab:orange") for p in
             ("copy_out", "pack", "fingerprint_trainer", "ray_put", "ray_get_remote", "unpack", "copy_in",
              "fingerprint_engine")]
    bars += [("Tensor.copy_", result["s_per_gb"]["tensor_copy"], "tab:green"),
             ("bytearray copy", result["s_per_gb"]["bytes_copy"], "tab:green")]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color=[b[2] for b in bars][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("seconds per GB (log)")
    ax.set_title("Weight sync vs plain copies, same bytes, same run")
    return save_figure(plt, fig, out_dir, NAME)


def render(result: dict[str, Any], quick: bool) -> str:
    real, peers, parts, ratios = result["real_sync"], result["peers"], result["parts"], result["ratios"]
    spg = result["s_per_gb"]
    any_stage = next(iter(real.values()))
    mb = any_stage["num_bytes"] / 2**20
    cmd = "python -m bench.weight_sync" + (" --quick" if quick else "")
    m = result["model"]
    lines = [header("Weight sync: seconds per GB vs a plain memory copy", cmd, result["machine"], quick)]
    lines.append(f"Model: tiny-config Llama, hidden {m['hidden_size']}, {m['num_layers']} layers, "
                 f"{any_stage['num_params']} tensors, {mb:.1f} MiB float32 in {any_stage['num_buckets']} "
                 f"bucket(s) of at most {any_stage['bucket_mb']:g} MB. 2 DeepSpeed ranks (gloo) -> 1 hf engine. "
                 "Medians in seconds.\n")
    rows = [[f"sync, ZeRO-{k[-1]}", v["export_s"]["median"], v["engine_sync_s"]["median"], v["total_s"]["median"],
             spg[k], ratios[f"{k}_sync_over_tensor_copy"], ratios[f"{k}_sync_over_bytes_copy"]]
            for k, v in real.items()]
    rows += [[f"broadcast (gloo), ZeRO-{k[-1]}", "", "", v["broadcast_s"]["median"], v["broadcast_s_per_gb"],
              ratios[f"{k}_broadcast_over_tensor_copy"], ratio(v["broadcast_s"]["median"], peers["bytes_copy_s"]["median"])]
             for k, v in real.items()]
    rows.append(["`Tensor.copy_` (same bytes)", "", "", peers["tensor_copy_s"]["median"], spg["tensor_copy"], 1.0,
                 ratio(peers["tensor_copy_s"]["median"], peers["bytes_copy_s"]["median"])])
    rows.append(["`bytearray(blob)` (same bytes)", "", "", peers["bytes_copy_s"]["median"], spg["bytes_copy"],
                 ratio(peers["bytes_copy_s"]["median"], peers["tensor_copy_s"]["median"]), 1.0])
    for label, key in (("one `hashlib.sha256` pass", "sha256_s"), ("one `hashlib.blake2b` pass", "blake2b_s"),
                       ("one `xxhash.xxh3_128` pass", "xxh3_128_s")):
        if key not in peers:
            continue
        t = peers[key]["median"]
        rows.append([f"{label} (same bytes)", "", "", t, t / (peers["num_bytes"] / GB),
                     ratio(t, peers["tensor_copy_s"]["median"]), ratio(t, peers["bytes_copy_s"]["median"])])
    lines.append(md_table(["what", "export (trainer)", "sync (engine)", "total", "s/GB", "x tensor copy",
                           "x bytes copy"], rows))
    lines.append("\nsync = `rollout.weight_sync: object_store` (export + engine load); broadcast = "
                 "`rollout.weight_sync: broadcast` (rank 0 sends each bucket over a gloo group while the engine "
                 "receives; the call also checks fingerprints). Broadcast / object store: "
                 + ", ".join(f"ZeRO-{k[-1]} {ratios[k + '_broadcast_over_object_store']:.2f}" for k in real) + ".\n")
    lines.append("\n## Where the sync time goes\n")
    lines.append("Each part timed in the driver on the same tensors with the functions of "
                 "`rlhf/transport/weights.py`; shares are of the ZeRO-2 sync's total.\n")
    prow = [[p, parts[p]["median"], parts[p]["median"] / (parts["num_bytes"] / GB)] for p in
            ("copy_out", "pack", "fingerprint_trainer", "ray_put", "ray_get_remote", "unpack", "copy_in",
             "fingerprint_engine")]
    lines.append(md_table(["part", "seconds", "s/GB"], prow))
    lines.append("")
    lines.append(md_table(["group", "share of sync"],
                          [[g, f"{s:.0%}"] for g, s in result["part_shares_of_zero2_sync"].items()]))
    lines.append("\n## Verdict\n")
    lines.append(verdict(result))
    return "\n".join(lines)


ADVICE = {
    "gather+pack": "packing could skip the safetensors copy (ship the tensors' own buffers through the object "
                   "store)",
    "transport": "the object store copies the blob in and out again; on one node the engine could map it "
                 "zero-copy (numpy buffers) instead of unpickling bytes",
    "engine load": "unpacking could copy straight from the blob into the engine's parameters",
    "fingerprint": "a faster digest would cut it (compare the hash rows above)",
}


def verdict(result: dict[str, Any]) -> str:
    shares = dict(result["part_shares_of_zero2_sync"])
    rest = shares.pop(REST)
    top, top_share = max(shares.items(), key=lambda kv: kv[1])
    ratios, s, peers = result["ratios"], result["s_per_gb"], result["peers"]
    stages = " and ".join(f"{s[k]:.1f} s/GB with ZeRO-{k[-1]} ({ratios[k + '_sync_over_tensor_copy']:.0f}x)"
                          for k in result["real_sync"])
    parts = result["parts"]
    fp = parts["fingerprint_trainer"]["median"] + parts["fingerprint_engine"]["median"]
    fp_share = shares["fingerprint (trainer + engine)"]
    sha = peers["sha256_s"]["median"]
    if rest >= 0.1:
        rest_text = (f"{rest:.0%} of the sync is in no timed part: the Ray calls to the ranks and the engine, the "
                     "ZeRO gather collective, and three processes sharing the cores.")
    else:
        rest_text = (f"The timed parts account for the whole sync (remainder {rest:+.0%}; a negative remainder "
                     "means the parts ran a little slower in the driver than inside the actors).")
    advice = next((v for k, v in ADVICE.items() if top.startswith(k)), "")
    return (f"The sync moves weights at {stages} the time of a plain `Tensor.copy_` of the same bytes "
            f"({s['tensor_copy']:.2f} s/GB). The biggest part is {top} at {top_share:.0%} of the ZeRO-2 sync"
            + (f"; {advice}" if advice else "") + ". "
            f"The two fingerprint passes take {fp * 1e3:.0f} ms ({fp_share:.0%} of the sync); one SHA-256 pass "
            f"over the same bytes takes {sha * 1e3:.0f} ms here. " + rest_text + " Every byte is touched about "
            "eight times (copy-out, pack, hash, put, get, unpack, copy-in, hash again) where a copy touches it "
            "once; on GPU the NCCL / CUDA-IPC path of DESIGN.md avoids packing altogether.")

if __name__ == "__main__":
    print_result(main())
