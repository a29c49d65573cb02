"""Model architectures for the memory planner: a small table of well-known hub models (no download, ever), a local
``config.json`` reader, ``model.tiny``, and exact parameter counts from the architecture.

    arch = resolve_architecture(recipe.model)       # PlanError naming model.path when it cannot be known
    arch.num_params                                 # embeddings + layers + final norm + lm_head unless tied
    arch.kv_bytes_per_token(2)                      # 2 x layers x kv_heads x head_dim x bytes

Counted modules (Llama / Mistral / Qwen2 / Qwen3 decoders, as transformers builds them): the token embedding
(V x h); per layer q, k, v, o projections (GQA: k and v have kv_heads x head_dim outputs; Qwen2 has q/k/v biases,
Llama biases when ``attention_bias``), Qwen3's per-head q/k RMSNorms (head_dim each), the gate/up/down MLP
(3 x h x I, biases when ``mlp_bias``) and two RMSNorms (h each); the final norm (h); the LM head (V x h) unless
``tie_word_embeddings``. The figures in KNOWN are the published ``config.json`` values of those hub models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any


class PlanError(ValueError):
    """The planner cannot size this recipe; the message names the recipe key."""


@dataclass(frozen=True)
class Architecture:
    """A decoder-only causal LM's shape: what the memory figures need."""

    name: str
    model_type: str  # llama | qwen2 | qwen3 | mistral (others are counted as Llama-style decoders)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each q and k head

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters of the output head beyond the embedding (0 when tied)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def attention_params(self) -> int:
        h, q, kv = self.hidden_size, self.q_dim, self.kv_dim
        n = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            n += q + 2 * kv
        if self.o_bias:
            n += h
        if self.qk_norm:
            n += 2 * self.head_dim
        return n

    @property
    def mlp_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        return 3 * h * i + ((2 * i + h) if self.mlp_bias else 0)

    @property
    def layer_params(self) -> int:
        return self.attention_params + self.mlp_params + 2 * self.hidden_size

    @property
    def num_params(self) -> int:
        """Every parameter of the causal LM, counted once (a tied head shares the embedding)."""
        return (self.embedding_params + self.num_hidden_layers * self.layer_params + self.hidden_size
                + self.lm_head_params)

    @property
    def backbone_params(self) -> int:
        """Without the LM head (a critic's or reward model's transformer)."""
        return self.num_params - self.lm_head_params

    @property
    def largest_module_params(self) -> int:
        """The largest single module's own parameters (DeepSpeed's "largest layer": ZeRO-3 gathers it whole)."""
        h, i = self.hidden_size, self.intermediate_size
        return max(self.embedding_params, h * i + (i if self.mlp_bias else 0), h * self.q_dim + self.q_dim)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each decoder linear layer, by its transformers module name."""
        h, q, kv, i = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def lora_params(self, r: int, target_modules: Any) -> int:
        """Adapter parameters of LoRA rank r on the named linear layers of every decoder layer ("all-linear": all
        seven; names match by suffix, as peft does); A is r x in, B is out x r."""
        shapes = self.linear_shapes()
        names = list(shapes) if target_modules == "all-linear" else [
            n for n in shapes if any(n == t or n.endswith("." + t) or t.endswith(n) for t in target_modules)]
        return self.num_hidden_layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)

    def kv_bytes_per_token(self, dtype_bytes: int, tensor_parallel: int = 1) -> int:
        """KV-cache bytes one token takes on one GPU: 2 (K and V) x layers x kv heads x head_dim x bytes; the kv
        heads are split over the tensor-parallel GPUs (each holds at least one)."""
        heads = max(1, self.num_key_value_heads // tensor_parallel)
        return 2 * self.num_hidden_layers * heads * self.head_dim * dtype_bytes


def _qwen25(name: str, vocab: int, h: int, i: int, layers: int, heads: int, kv: int, tie: bool,
            ctx: int) -> Architecture:
    return Architecture(name, "qwen2", vocab, h, i, layers, heads, kv, tie, ctx, qkv_bias=True)


def _qwen3(name: str, h: int, i: int, layers: int, heads: int, kv: int, tie: bool) -> Architecture:
    return Architecture(name, "qwen3", 151936, h, i, layers, heads, kv, tie, 40960, head_dim=128, qk_norm=True)


def _llama(name: str, h: int, i: int, layers: int, heads: int, kv: int, tie: bool, ctx: int) -> Architecture:
    return Architecture(name, "llama", 128256, h, i, layers, heads, kv, tie, ctx, head_dim=h // heads)


_BASE = [
    # Qwen2.5 (base / -Instruct: same shapes; the base 1.5B-32B configs say 131072 positions, -Instruct 32768)
    _qwen25("Qwen/Qwen2.5-0.5B", 151936, 896, 4864, 24, 14, 2, True, 32768),
    _qwen25("Qwen/Qwen2.5-1.5B", 151936, 1536, 8960, 28, 12, 2, True, 131072),
    _qwen25("Qwen/Qwen2.5-3B", 151936, 2048, 11008, 36, 16, 2, True, 32768),
    _qwen25("Qwen/Qwen2.5-7B", 152064, 3584, 18944, 28, 28, 4, False, 131072),
    _qwen25("Qwen/Qwen2.5-14B", 152064, 5120, 13824, 48, 40, 8, False, 131072),
    _qwen25("Qwen/Qwen2.5-32B", 152064, 5120, 27648, 64, 40, 8, False, 131072),
    _qwen3("Qwen/Qwen3-0.6B", 1024, 3072, 28, 16, 8, True),
    _qwen3("Qwen/Qwen3-1.7B", 2048, 6144, 28, 16, 8, True),
    _qwen3("Qwen/Qwen3-4B", 2560, 9728, 36, 32, 8, True),
    _qwen3("Qwen/Qwen3-8B", 4096, 12288, 36, 32, 8, False),
    _llama("meta-llama/Llama-3.2-1B", 2048, 8192, 16, 32, 8, True, 131072),
    _llama("meta-llama/Llama-3.2-3B", 3072, 8192, 28, 24, 8, True, 131072),
    _llama("meta-llama/Llama-3.1-8B", 4096, 14336, 32, 32, 8, False, 131072),
    _llama("meta-llama/Meta-Llama-3-8B", 4096, 14336, 32, 32, 8, False, 8192),
]


def _known() -> dict[str, Architecture]:
    table: dict[str, Architecture] = {}
    for a in _BASE:
        table[a.name] = a
        if a.model_type != "qwen3":  # Qwen3 ships one (hybrid thinking) model per size
            ctx = 32768 if a.model_type == "qwen2" else a.max_position_embeddings
            table[a.name + "-Instruct"] = replace(a, name=a.name + "-Instruct", max_position_embeddings=ctx)
    return table


KNOWN: dict[str, Architecture] = _known()


def from_config(config: dict[str, Any], name: str) -> Architecture:
    """An Architecture from a transformers ``config.json`` dict (a multimodal config's ``text_config`` is read
    when the top level has no ``hidden_size``). KeyError when a size is missing. Defaults as the Llama / Qwen
    configs have them: kv heads = heads, head_dim = hidden / heads, untied embeddings, no biases (Qwen2: q/k/v
    biases)."""
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", "")}
    heads = int(config["num_attention_heads"])
    model_type = str(config.get("model_type", ""))
    return Architecture(
        name=name, model_type=model_type, vocab_size=int(config["vocab_size"]),
        hidden_size=int(config["hidden_size"]), intermediate_size=int(config["intermediate_size"]),
        num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_position_embeddings=int(config.get("max_position_embeddings") or 0),
        head_dim=int(config.get("head_dim") or 0),
        qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
        o_bias=model_type != "qwen2" and bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=model_type.startswith("qwen3"),
    )


def tiny_architecture(tiny: Any) -> Architecture:
    """``model.tiny`` as rlhf/models/tiny.py builds it: head_dim = hidden / heads, and the vocabulary
    ``vocab_size``, else at most ``tokenizer_vocab_size`` (the trained BPE may stop short of it: an upper bound)."""
    return Architecture(
        name=f"model.tiny ({tiny.arch})", model_type=tiny.arch,
        vocab_size=tiny.vocab_size or tiny.tokenizer_vocab_size,
        hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size, num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_kv_heads or tiny.num_heads,
        tie_word_embeddings=tiny.tie_word_embeddings, max_position_embeddings=tiny.max_position_embeddings,
        qkv_bias=tiny.arch == "qwen2")


def resolve_architecture(model: Any) -> Architecture:
    """The recipe's model (``model`` section): model.tiny, a local directory's config.json, or a hub id of the
    KNOWN table. Anything else is a PlanError naming model.path (nothing is downloaded)."""
    if model.tiny is not None:
        return tiny_architecture(model.tiny)
    path = str(model.path)
    config_file = os.path.join(os.path.expanduser(path), "config.json")
    if os.path.isfile(config_file):
        try:
            with open(config_file, encoding="utf-8") as f:
                return from_config(json.load(f), path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PlanError(f"model.path: cannot read the architecture from {config_file}: "
                            f"{type(e).__name__}: {e}") from None
    if path in KNOWN:
        return KNOWN[path]
    raise PlanError(f"model.path: {path!r} is neither a local directory with a config.json nor a hub model in the "
                    f"planner's table (e.g. Qwen/Qwen2.5-7B-Instruct, meta-llama/Llama-3.1-8B; the list: "
                    f"rlhf/plan/architectures.py); pass a local directory with config.json")
