"""Models: load HF causal LMs and tokenizers (local path or hub id); build tiny ones from config for tests/demos."""

from rlhf.models.load import ModelLoadError, load_causal_lm, load_tokenizer, resolve_model_dir
from rlhf.models.tiny import build_tiny_model, materialize_tiny, train_tokenizer

__all__ = [
    "ModelLoadError",
    "build_tiny_model",
    "load_causal_lm",
    "load_tokenizer",
    "materialize_tiny",
    "resolve_model_dir",
    "train_tokenizer",
]
