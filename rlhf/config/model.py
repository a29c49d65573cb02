"""Recipe sections of the policy model: ``model`` (a local directory or hub id, or a tiny model built from
config), ``model.tiny`` and ``model.lora``; the recipe itself is in rlhf/config/schema.py."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from rlhf.config.base import Strict


class TinyModelConfig(Strict):
    """A small model built from config (random init) for tests and demos; no hub access."""

    arch: Literal["llama", "qwen2"] = Field("llama", description="the transformers model class (Llama or Qwen2)")
    hidden_size: int = Field(128, ge=8, description="width of the hidden states (divisible by num_heads)")
    intermediate_size: int = Field(256, ge=8, description="width of the MLP")
    num_layers: int = Field(2, ge=1, description="decoder layers")
    num_heads: int = Field(4, ge=1, description="attention heads")
    num_kv_heads: Optional[int] = Field(None, ge=1, description="key/value heads (grouped-query attention; must "
                                        "divide num_heads); default: num_heads")
    max_position_embeddings: int = Field(256, ge=16, description="longest sequence (prompt + completion) the "
                                         "model takes")
    tokenizer_vocab_size: int = Field(64, ge=16, description="BPE vocab size for the locally trained tokenizer")
    vocab_size: Optional[int] = Field(None, ge=16, description="rows of the embedding and the LM head; default "
                                      "the trained tokenizer's size. Set it to a real model's (e.g. 151936 for "
                                      "Qwen2.5) to build a model of real shape: ids the tokenizer never produces "
                                      "stay unused")
    tie_word_embeddings: bool = Field(True, description="the LM head shares the embedding matrix")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base (Qwen2.5: 1000000)")

    @model_validator(mode="after")
    def _heads(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {kv}")
        return self


class LoraConfig(Strict):
    """LoRA adapters on the policy (``model.lora``), trained with ``peft``; the base weights stay frozen.

    Where it lives: under ``model`` because an adapter is part of what the policy *is* (verl puts it at
    ``actor_rollout_ref.model.lora_rank / lora_alpha / target_modules``); the keys are peft's ``LoraConfig`` ones,
    which TRL takes as ``peft_config`` and OpenRLHF exposes as ``--lora_rank / --lora_alpha / --target_modules /
    --lora_dropout``: ``r``, ``alpha`` (peft's lora_alpha), ``dropout``, ``target_modules``. It applies to every
    stage that trains the policy (warm-up SFT: its adapter is merged into OUT/sft, the base of the main stage's
    adapter); a PPO critic stays fully fine-tuned. The KL reference is the base with the adapter disabled (no
    second copy). Target module names are checked against the model's linear layers when it is loaded.
    """

    enabled: bool = Field(True, description="false: train the full model (lets an override switch LoRA off)")
    r: int = Field(8, ge=1, description="adapter rank (OpenRLHF --lora_rank)")
    alpha: float = Field(16.0, gt=0, description="scale = alpha / r (peft lora_alpha)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input in training passes; keep 0 "
                           "for RL (ratios and KL are computed without dropout)")
    target_modules: Union[list[str], Literal["all-linear"]] = Field(
        "all-linear", description="linear module names (suffixes, e.g. [q_proj, v_proj]) or all-linear (every "
        "linear layer but the output head)")
    bias: Literal["none"] = Field("none", description="biases stay frozen (the only mode supported)")
    modules_to_save: Optional[list[str]] = Field(
        None, description="modules trained in full next to the adapter and saved / synced with it (e.g. lm_head)")

    @model_validator(mode="after")
    def _targets(self) -> "LoraConfig":
        if isinstance(self.target_modules, list):
            if not self.target_modules:
                raise ValueError("model.lora.target_modules: empty list; name linear modules or use all-linear")
            bad = [t for t in self.target_modules if not t or not t.strip()]
            if bad:
                raise ValueError("model.lora.target_modules: empty module name")
        return self


class ModelConfig(Strict):
    """The policy: a causal LM from a local directory or the hub (path), or a tiny one built from config (tiny)."""

    path: Optional[str] = Field(None, description="local directory or hub id of a causal LM")
    tokenizer: Optional[str] = Field(None, description="defaults to the model path")
    tiny: Optional[TinyModelConfig] = Field(None, description="build a tiny model from config instead of path")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the weights in the training ranks, the engines and the weight sync")
    trust_remote_code: bool = Field(False, description="let transformers run the model's and tokenizer's own "
                                    "code from their repository")
    lora: Optional[LoraConfig] = Field(None, description="train LoRA adapters instead of the full policy")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if (self.path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.path (a local dir or hub id) or model.tiny (build from config)")
        if self.tiny is not None and self.tokenizer is not None:
            raise ValueError("model.tokenizer cannot be combined with model.tiny: the tiny model trains its own "
                             "tokenizer (remove model.tokenizer, or use model.path)")
        return self
