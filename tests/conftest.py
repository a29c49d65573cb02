"""Shared test setup: no hub access, one thread per torch op pool, one local Ray per session, one tiny model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_extended = pytest.mark.skip(reason="extended suite (keeps the default run near 15 min): RLHF_SLOW_TESTS=1")
    extended = os.environ.get("RLHF_SLOW_TESTS") == "1"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "extended" in item.keywords and not extended:
            item.add_marker(skip_extended)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole session (tests that need Ray share it; started once, ~3-8 s)."""
    import logging

    import ray

    if not ray.is_initialized():
        import torch

        env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        if not torch.cuda.is_available():  # on a GPU machine DeepSpeed must find CUDA (the gpu-marked tests)
            env["DS_ACCELERATOR"] = "cpu"
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def arithmetic_model_dir(tmp_path_factory):
    """A tiny Llama + tokenizer trained on the synthetic arithmetic corpus, built once per session."""
    from rlhf.config.schema import DataConfig, SyntheticArithmeticConfig, TinyModelConfig
    from rlhf.data import load_rows
    from rlhf.models.tiny import materialize_tiny

    data = DataConfig(synthetic=SyntheticArithmeticConfig(n_train=300, n_eval=40, max_operand=20, ops=["+", "-"]))
    train, ev = load_rows(data, 0)
    cfg = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, max_position_embeddings=64)
    out = tmp_path_factory.mktemp("tiny") / "model"
    return materialize_tiny(cfg, [r["prompt"] + r["completion"] for r in train + ev], str(out), seed=0)
