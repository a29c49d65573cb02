"""Per-GPU memory estimates of the memory planner (bytes): model states under DeepSpeed ZeRO or plain torch, the
training activations of one micro-batch, and a rollout engine's weights and KV cache.

Model states (DeepSpeed's rules; N = train.num_ranks, Psi = trainable parameters, w = bytes of model.dtype):

    parameters   w Psi                 / N under ZeRO-3       (+ a LoRA's frozen base, w bytes each, never sharded)
    gradients    w Psi                 / N under ZeRO-2 and 3
    optimizer    (8 + 4 m) Psi         / N under ZeRO-1, 2, 3 (AdamW's two fp32 moments, + the fp32 master copy: m =
                                                              1 with 16-bit weights, or fp32 at ZeRO-1/2)
    step buffer  4 Psi (w < 4)         / N under ZeRO-1, 2, 3 (the fp32 copy of the gradients the optimizer step
                                                              reads; it exists when the activations are freed)
    ZeRO-3       2 w x the largest module (its parameters gathered whole and its gradient before the reduce-scatter)

so ZeRO-2 with 16-bit weights is 2 Psi + 18 Psi / N, DeepSpeed's own estimate; the torch backend is plain AdamW on
the weights (moments in model.dtype, no master copy). Peak = states + max(activations, step buffer).

Activations (one micro-batch of B sequences of T tokens; h hidden, I intermediate, L layers, a heads, q = a x
head_dim, V vocabulary; w the weights' bytes, p the compute bytes: 2 under bf16/fp16 weights or autocast, else
4). The tensors autograd saves for the backward, counted after Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", s b h (34 + 5 a s / h) per layer) and adapted to what transformers'
Llama/Qwen decoders save with SDPA attention (no s x s score matrix; no dropout):

    per layer    B T [(n_attn + n_mlp) h + 4 q p + 4 I p + 4 a]  +  B T^2 p
      RMSNorms   n = 4 + 2w bytes per element (their fp32 input or copy, the normalised value, the output); under
                 autocast over fp32 weights n_attn = 8 + 3p, n_mlp = 8 + 2p (each linear saves its own cast input)
      attention  q, k and v after RoPE (a padding mask makes transformers repeat k and v to all heads, so GQA
                 saves nothing here), the output: 4 q p; the softmax log-sum-exp 4a; the padding mask as SDPA's
                 float bias B T^2 p (the runtime's batches are padded, so the mask is always there)
      SwiGLU     gate, up, SiLU(gate), their product: 4 I p
    Qwen3        + (4 + 2w)(q + kv) for the per-head q/k norms
    autocast     + p x the decoder's linear weights (their casts are kept for the backward)
    final norm   B T h (4 + 2w)
    logits       kept: B (C + 1) V p_l, the logits themselves (rlhf.objectives.common.selected_logprobs keeps
                 them, not a log-softmax output, and computes each row's softmax again in the backward); peak of
                 the backward: 2 B C V p_l (the logits or their slice's gradient, and the logits' gradient), in
                 the head's dtype p_l (4 unless the weights are 16-bit) -- the term that dominates small models
                 with large vocabularies. C: completion tokens (policy gradient) or all T - 1 (pairs); 0 for
                 value and score heads (critics, reward models).

With gradient checkpointing each layer keeps only its input (B T h, 4 bytes under fp32 weights, else w) and the
bool mask (B T^2), and one layer is recomputed at a time: L B T h r + final + B T^2 + max(logits, one layer).
tests/unit/test_plan.py measures the saved tensors (saved_tensors_hooks) and the peak of live tensors (a
TorchDispatchMode) of tiny models on CPU against these formulas.

Engines: vLLM takes gpu_memory_utilization x the GPU: its weights (engine dtype / tensor-parallel size), its
profiled activation peak (VLLM_PROFILE_TOKENS tokens through the MLP, 3 I e / TP each, + the sampler's fp32 logits
of max_num_seqs = rollout.batch_size sequences), the CUDA overhead, and the KV cache in what is left:
2 x layers x kv_heads / TP x head_dim x bytes per token. The hf engine holds its weights, a KV cache for
rollout.batch_size sequences and the prefill activations. CUDA_OVERHEAD_GIB (CUDA context, NCCL buffers,
allocator fragmentation) is added once per process on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.plan.architectures import Architecture

GIB = 1024**3
CUDA_OVERHEAD_GIB = 1.5
CUDA_GRAPHS_GIB = 1.0  # vLLM's captured CUDA graphs when rollout.vllm.enforce_eager is false
VLLM_PROFILE_TOKENS = 8192  # tokens of vLLM's profiling forward (its max_num_batched_tokens)
KV_BLOCK = 16  # vLLM allocates the KV cache in blocks of 16 tokens
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelStates:
    """Bytes of one rank's model states; ``total`` is what stays allocated, ``step`` what the optimizer step adds
    when the activations are gone."""

    params: float
    grads: float
    optimizer: float
    step: float = 0.0
    gathered: float = 0.0  # ZeRO-3: the largest module gathered whole, with its gradient

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.gathered


def has_master_copy(weight_bytes: int, zero_stage: int) -> bool:
    """Whether DeepSpeed keeps an fp32 master partition: with 16-bit weights always; with fp32 weights at ZeRO-1/2
    too (they clone their partition, stage_1_and_2.py); ZeRO-3 over fp32 weights updates the partition itself
    (DeepSpeed's intent; its 0.19.8 device check misses it: rlhf/train/deepspeed.py shared_master_partitions);
    ZeRO-0 (the plain optimizer) has none."""
    return weight_bytes < 4 or zero_stage in (1, 2)


def model_states(trainable: int, frozen: int, weight_bytes: int, ranks: int, zero_stage: int, backend: str,
                 largest_module: int = 0) -> ModelStates:
    """One training rank's parameters, gradients and AdamW state (module docstring)."""
    w = weight_bytes
    if backend == "torch":
        return ModelStates(params=w * (trainable + frozen), grads=w * trainable, optimizer=2 * w * trainable)
    shard_p = ranks if zero_stage == 3 else 1
    shard_g = ranks if zero_stage >= 2 else 1
    shard_o = ranks if zero_stage >= 1 else 1
    master = 4 if has_master_copy(w, zero_stage) else 0
    return ModelStates(
        params=w * (trainable + frozen) / shard_p,
        grads=w * trainable / shard_g,
        optimizer=(8 + master) * trainable / shard_o,
        step=(4 * trainable / shard_o) if w < 4 else 0.0,
        gathered=2 * w * largest_module if zero_stage == 3 else 0.0,
    )


def compute_bytes(weight_bytes: int, precision: str) -> int:
    """Bytes of the activations: 2 when the weights are 16-bit or autocast runs bf16/fp16, else 4."""
    return 2 if weight_bytes == 2 or precision in ("bf16", "fp16") else 4


def _layer_bytes(arch: Architecture, w: int, p: int, tokens: int, sequences: int, seq_len: int) -> float:
    """What one decoder layer saves for the backward (module docstring)."""
    h = arch.hidden_size
    if w != p:  # autocast over fp32 weights: every linear saves its own cast copy of the norm's output
        n_attn, n_mlp = 8 + 3 * p, 8 + 2 * p
    else:
        n_attn = n_mlp = 4 + 2 * w
    per_token = ((n_attn + n_mlp) * h + 4 * arch.q_dim * p + 4 * arch.intermediate_size * p
                 + 4 * arch.num_attention_heads)
    if arch.qk_norm:
        per_token += (4 + 2 * w) * (arch.q_dim + arch.kv_dim)
    return tokens * per_token + sequences * seq_len * seq_len * p


def logits_bytes(arch: Architecture, w: int, sequences: int, positions: int) -> float:
    """The peak of the logits and their gradient in the backward (module docstring)."""
    head = 4 if w == 4 else w
    return sequences * positions * arch.vocab_size * 2 * head


def kept_logits_bytes(arch: Architecture, w: int, sequences: int, positions: int) -> float:
    """The logits kept for the backward: the scored positions and the one after them (module docstring)."""
    head = 4 if w == 4 else w
    return sequences * (positions + 1) * arch.vocab_size * head


def activation_parts(arch: Architecture, w: int, p: int, sequences: int, seq_len: int, logit_positions: int,
                     checkpointing: bool) -> tuple[float, float]:
    """(saved, peak) activation bytes of one forward + backward of `sequences` x `seq_len` tokens: what autograd
    keeps at the end of the forward, and the peak of the backward (module docstring). logit_positions: scored
    positions per sequence (0: a value or score head, no vocabulary logits)."""
    tokens = sequences * seq_len
    h, layers = arch.hidden_size, arch.num_hidden_layers
    layer = _layer_bytes(arch, w, p, tokens, sequences, seq_len)
    casts = p * layers * (arch.layer_params - 2 * h) if w != p else 0  # autocast's weight copies
    final = tokens * h * (4 + 2 * w)
    logits = logits_bytes(arch, w, sequences, logit_positions) if logit_positions else 0.0
    logprobs = kept_logits_bytes(arch, w, sequences, logit_positions) if logit_positions else 0.0
    if not checkpointing:
        kept = layers * layer + casts + final
        return kept + logprobs, kept + logits
    residual = 4 if w == 4 else w
    kept = layers * tokens * h * residual + final + sequences * seq_len * seq_len
    return kept + logprobs, kept + max(logits, layer + casts / layers)


def activation_bytes(arch: Architecture, w: int, p: int, sequences: int, seq_len: int, logit_positions: int,
                     checkpointing: bool) -> float:
    """The peak activation bytes of one micro-batch's forward + backward (activation_parts)."""
    return activation_parts(arch, w, p, sequences, seq_len, logit_positions, checkpointing)[1]


@dataclass(frozen=True)
class EngineMemory:
    """One engine GPU: its weights, the rest of what it takes, the KV cache, and what that cache holds."""

    weights: float
    other: float  # profiled activations / prefill, CUDA overhead (and CUDA graphs)
    kv_cache: float
    reserved: float  # what the engine takes of the GPU (vLLM: gpu_memory_utilization x GPU)
    kv_per_token: int
    sequences: int  # sequences of seq_len tokens the KV cache holds
    max_model_len: int
    model_len_fits: bool  # vLLM refuses to start when one max_model_len sequence does not fit its KV cache


def vllm_engine(arch: Architecture, engine_bytes: int, tensor_parallel: int, utilization: float, gpu_bytes: float,
                max_num_seqs: int, seq_len: int, max_model_len: int, enforce_eager: bool) -> EngineMemory:
    """One GPU of a vLLM engine (module docstring)."""
    weights = arch.num_params * engine_bytes / tensor_parallel
    profile = (VLLM_PROFILE_TOKENS * 3 * arch.intermediate_size * engine_bytes / tensor_parallel
               + max_num_seqs * arch.vocab_size * 4)
    other = profile + (CUDA_OVERHEAD_GIB + (0 if enforce_eager else CUDA_GRAPHS_GIB)) * GIB
    reserved = utilization * gpu_bytes
    kv = reserved - weights - other
    per_token = arch.kv_bytes_per_token(engine_bytes, tensor_parallel)
    blocks = -(-seq_len // KV_BLOCK) * KV_BLOCK
    sequences = max(0, int(kv // (per_token * blocks))) if kv > 0 else 0
    return EngineMemory(weights, other, kv, reserved, per_token, sequences, max_model_len,
                        kv >= per_token * max_model_len)


def hf_engine(arch: Architecture, engine_bytes: int, batch_size: int, prompt_tokens: int,
              seq_len: int) -> EngineMemory:
    """One GPU of the hf engine: weights, a KV cache for rollout.batch_size sequences, the prefill."""
    weights = arch.num_params * engine_bytes
    per_token = arch.kv_bytes_per_token(engine_bytes)
    kv = batch_size * seq_len * per_token
    prefill = batch_size * prompt_tokens * 3 * arch.intermediate_size * engine_bytes + batch_size * arch.vocab_size * 4
    other = prefill + CUDA_OVERHEAD_GIB * GIB
    return EngineMemory(weights, other, kv, weights + other + kv, per_token, batch_size, seq_len, True)
