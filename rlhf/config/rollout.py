"""Recipe sections of the rollout engines and rollout functions: ``rollout.hf`` (the hf engine), ``rollout.vllm``
(the vllm engine) and ``rollout.agent`` (multi-turn episodes against an environment); ``rollout`` itself is in
rlhf/config/schema.py."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from rlhf.config.base import Strict


class HFConfig(Strict):
    """Settings of the `hf` engine (rollout.engine: hf; rlhf/rollout/hf.py)."""

    decode: Literal["auto", "loop", "generate"] = Field(
        "auto", description="how the engine decodes: loop, its own KV-cache loop that drops each row from the "
        "batch once it has ended (rlhf/rollout/hf_decode.py; 1.71x the tokens per CPU-second on the demo's "
        "rollout, bench/README.md hf_decode); generate, transformers' model.generate, which runs every row until "
        "the last one ends; auto (the default), the loop unless the model's cache cannot drop rows (remote code, "
        "linear-attention layers), then generate. Greedy tokens are the same on both; a seed gives other (but "
        "fixed) samples on each")


class VLLMConfig(Strict):
    """Settings of the `vllm` engine (rollout.engine: vllm). GPU keys are ignored on CPU and vice versa."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (GPU only)")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="fraction of each GPU vLLM may take")
    kv_cache_gb: float = Field(1.0, gt=0, description="CPU: KV cache space per engine, GiB (VLLM_CPU_KVCACHE_SPACE)")
    max_model_len: Optional[int] = Field(None, ge=8, description="default: the model's max_position_embeddings")
    enforce_eager: bool = Field(True, description="no CUDA graphs (faster start-up; required on CPU)")
    sleep: bool = Field(
        False, description="colocated GPU placement: free KV cache and weights while training runs (not on CPU)"
    )
    in_process: bool = Field(
        True, description="run vLLM's engine core inside the rollout actor (CPU: fastest; the actor is its own "
        "process); false: vLLM's own EngineCore/worker processes"
    )
    prefix_caching: bool = Field(
        False, description="reuse the KV cache of prompt prefixes seen before (an agent episode sends its whole "
        "history every turn); the cache is reset after every weight sync"
    )
    kv_on_update: Literal["keep", "recompute"] = Field(
        "keep", description="pipeline.weight_update: keep -- the KV cache of the sequences in flight when new "
        "weights land. keep: as the older weights computed it (cheapest; each token's logprob is still exactly "
        "what sampled it, the behaviour policy of the off-policy correction); recompute: the sequences are "
        "preempted and re-prefilled under the new weights, so every token labelled version v was sampled by "
        "policy v itself (its logprob equals the trainer's at v), at the cost of one prefill of each"
    )


class AgentConfig(Strict):
    """Multi-turn episodes against an environment (rollout.kind: agent; rlhf/rollout/agent.py)."""

    env: Optional[str] = Field(None, description="the environment class: a registered name (rlhf envs list), "
                               "'package.module:Class' or an entry point of the group rlhf.environments")
    env_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the class's "
                                     "constructor (one instance per episode)")
    max_turns: int = Field(4, ge=1, description="model turns per episode at most")
    max_tokens: int = Field(256, ge=1, description="tokens after the prompt per episode at most (model turns and "
                            "observations); each turn generates at most min(rollout.max_new_tokens, what is left)")
    tool_parser: Literal["hermes", "call", "none"] = Field(
        "hermes", description="how tool calls are written: hermes (<tool_call>{json}</tool_call>), call "
        "(<call>name(args)</call>), none (no tools: every turn goes to the environment's step)")
    stop: list[str] = Field(default_factory=list, description="strings that end a model turn besides EOS and the "
                            "tool parser's closing tag (e.g. a newline for one-line actions)")
    observation_format: Literal["auto", "chat", "plain"] = Field(
        "auto", description="how observations are written into the episode: chat (a tool message in the "
        "tokenizer's chat template), plain (observation_template), auto (chat when the tokenizer has a template)")
    observation_template: str = Field("<obs>{observation}</obs>\n", description="plain format: the text "
                                      "appended after a model turn; {observation} is the environment's text")
    describe_tools: bool = Field(True, description="put the tools' schemas in the prompt (chat: the template's "
                                 "tools argument; plain: the parser's description before the first observation)")
    max_concurrency: int = Field(16, ge=1, description="environment calls run at once (threads)")
    call_timeout_s: float = Field(10.0, gt=0, description="each reset / step / tool / score call at most; a tool "
                                  "that times out gives an error observation, a step or score ends the episode")
