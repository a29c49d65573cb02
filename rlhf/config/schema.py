"""The recipe schema: strict, typed, range-checked (pydantic v2, ``extra="forbid"`` everywhere).

A recipe is a YAML file validated into :class:`Recipe`. Unknown keys are errors (see ``rlhf.config.load``
for the message that names the file, the key path and the closest valid key). Cross-field checks run here,
before any actor starts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, model_validator

from rlhf.config.base import Strict
from rlhf.config.pipeline import PipelineConfig, check_pipeline
from rlhf.config.rollout import AgentConfig, VLLMConfig  # noqa: F401  (part of the schema)
from rlhf.config.objectives import (  # noqa: F401  (the objective sections are part of the schema)
    CGPOConfig,
    CGPOTaskConfig,
    CriticConfig,
    DPOConfig,
    GRPOConfig,
    MODPOConfig,
    ObjectiveConfig,
    OnlineDPOConfig,
    PolicyGradientConfig,
    PPOConfig,
    PRMObjectiveConfig,
    ReinforcePPConfig,
    RLOOConfig,
    SFTObjectiveConfig,
)


# --------------------------------------------------------------------------- run / model / data


class RunConfig(Strict):
    name: str = "run"
    output_dir: str = "runs/${run.name}"  # ${run.name} is substituted
    seed: int = 0
    steps: int = Field(100, ge=0, description="on-policy RL steps (or optimizer steps for offline objectives)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    tensorboard: bool = False
    progress: bool = True


class TinyModelConfig(Strict):
    """A small model built from config (random init) for tests and demos; no hub access."""

    arch: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(256, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: Optional[int] = Field(None, ge=1)
    max_position_embeddings: int = Field(256, ge=16)
    tokenizer_vocab_size: int = Field(64, ge=16, description="BPE vocab size for the locally trained tokenizer")

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
    path: Optional[str] = Field(None, description="local directory or hub id of a causal LM")
    tokenizer: Optional[str] = Field(None, description="defaults to the model path")
    tiny: Optional[TinyModelConfig] = Field(None, description="build a tiny model from config instead of path")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    lora: Optional[LoraConfig] = Field(None, description="train LoRA adapters instead of the full policy")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if (self.path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.path (a local dir or hub id) or model.tiny (build from config)")
        if self.tiny is not None and self.tokenizer is not None:
            raise ValueError("model.tokenizer cannot be combined with model.tiny: the tiny model trains its own "
                             "tokenizer (remove model.tokenizer, or use model.path)")
        return self


class SyntheticArithmeticConfig(Strict):
    n_train: int = Field(2000, ge=1)
    n_eval: int = Field(200, ge=1)
    min_operand: int = Field(0, ge=0)
    max_operand: int = Field(20, ge=1)
    ops: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+"])
    chatter: float = Field(
        0.0, ge=0, le=1, description="fraction of train completions with a trailing remark (messy SFT data)"
    )
    terms: int = Field(2, ge=2, le=6, description="operands per problem: 3 gives chains like '3+4-5='")
    show_steps: bool = Field(
        False, description="completions show the work, one step per line ('3+4=7\\n7-5=2'): process rewards")

    @model_validator(mode="after")
    def _range(self) -> "SyntheticArithmeticConfig":
        if self.max_operand < self.min_operand:
            raise ValueError("max_operand must be >= min_operand")
        return self


class DataConfig(Strict):
    source: Literal["synthetic_arithmetic", "jsonl", "parquet", "hf"] = "synthetic_arithmetic"
    train_path: Optional[str] = Field(None, description="file (jsonl/parquet) or hub dataset id for source=hf")
    eval_path: Optional[str] = None
    split: str = "train"
    prompt_column: str = "prompt"
    completion_column: str = Field("completion", description="target text for SFT")
    chosen_column: str = Field("chosen", description="preferred completion (preference objectives)")
    rejected_column: str = Field("rejected", description="dispreferred completion (preference objectives)")
    synthetic: SyntheticArithmeticConfig = Field(default_factory=SyntheticArithmeticConfig)
    chat_template: Literal["auto", "none"] = Field(
        "auto", description="auto: apply the tokenizer's chat template when it has one"
    )
    max_prompt_tokens: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _paths(self) -> "DataConfig":
        if self.source != "synthetic_arithmetic" and not self.train_path:
            raise ValueError(f"data.source={self.source} needs data.train_path")
        return self


# --------------------------------------------------------------------------- rewards


class RewardComponentConfig(Strict):
    name: str = Field(..., min_length=1)
    plugin: str = Field(..., description="registered name, or 'module:attr'")
    kind: Optional[Literal["reward", "constraint", "process"]] = Field(
        None, description="defaults to the plugin's kind (@reward -> reward, @judge -> constraint)"
    )
    weight: float = 1.0
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the plugin")
    timeout_s: float = Field(60.0, gt=0)
    on_error: Literal["fail", "nan", "zero"] = "fail"
    worker: Optional[str] = Field(
        None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
        description="the reward worker (one Ray actor) hosting this component; components naming the same "
        "worker share it and run one after another in it. Default: plugins with a setup() (reward models, LLM "
        "judges) get one each, the rest share the worker 'functions'")
    transform: Literal["none", "clip", "delta"] = Field(
        "none", description="process components: step-reward transform against step hacking (clip: min(r - "
        "clip_threshold, 0); delta: r_s - r_{s+1}, last step kept)")
    clip_threshold: float = Field(0.0, description="process components: eta of the clip transform")
    outcome: Literal["min", "mean", "last", "sum", "product"] = Field(
        "min", description="process components: the outcome value (reward/NAME/mean, eval) from the step scores")


class ScheduleConfig(Strict):
    """A component's weight over the run: weight x value(step)."""

    kind: Literal["constant", "linear", "cosine", "step"] = "linear"
    start: float = 1.0
    end: float = 1.0
    steps: Optional[int] = Field(None, ge=1, description="steps from start to end (default: run.steps)")
    step_every: Optional[int] = Field(None, ge=1, description="kind=step: multiply by step_factor every N steps")
    step_factor: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _step_args(self) -> "ScheduleConfig":
        if (self.kind == "step") != (self.step_every is not None and self.step_factor is not None):
            raise ValueError("schedule: kind=step needs step_every and step_factor, and only kind=step takes them")
        return self


class ConstraintConfig(Strict):
    """Keep a component's batch mean above `min` (or below `max`) with a Lagrange multiplier on its weight."""

    component: str
    min: Optional[float] = None
    max: Optional[float] = None
    lr: float = Field(0.5, gt=0, description="dual ascent step on the multiplier per unit of violation")
    max_multiplier: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _one_bound(self) -> "ConstraintConfig":
        if (self.min is None) == (self.max is None):
            raise ValueError(f"constraint on {self.component!r}: give exactly one of min or max")
        return self


class HypervolumeWeightingConfig(Strict):
    reference: Optional[list[float]] = Field(
        None, description="reference point, one value per reward component (default: each component's first "
        "batch mean minus 1)")
    buffer_size: int = Field(32, ge=1, description="non-dominated points kept")
    lr: float = Field(1.0, ge=0, description="mirror-descent step on the weights, per unit of normalised HV slope")
    delta: float = Field(0.05, gt=0, description="probe step for each component's marginal hypervolume")
    gain_scale: float = Field(1.0, ge=0, description="advantages x (1 + gain_scale * relative HV gain of last step)")
    max_scale: float = Field(2.0, ge=1)
    min_weight: float = Field(0.05, ge=0, lt=1, description="floor of each simplex weight")


class GradientWeightingConfig(Strict):
    lr: float = Field(1.0, ge=0, description="mirror-descent step on the weights per unit of influence")
    min_weight: float = Field(0.05, ge=0, lt=1, description="floor of each simplex weight")
    every: int = Field(1, ge=1, description="recompute per-component gradients every N steps")
    max_samples: int = Field(64, ge=1, description="sequences per rank used for per-component gradients")


class WeightingConfig(Strict):
    kind: Literal["static", "hypervolume", "gradient"] = Field(
        "static", description="static weights; hypervolume-guided or gradient-based dynamic weights")
    normalize: Literal["component_then_sum", "sum_then_normalize"] = Field(
        "sum_then_normalize",
        description="component_then_sum: normalise each component within its group, then weight and sum; "
        "sum_then_normalize: weight and sum the raw components, then normalise the sum within the group",
    )
    schedules: dict[str, ScheduleConfig] = Field(default_factory=dict, description="per-component weight schedules")
    constraints: list[ConstraintConfig] = Field(default_factory=list)
    hypervolume: HypervolumeWeightingConfig = Field(default_factory=HypervolumeWeightingConfig)
    gradient: GradientWeightingConfig = Field(default_factory=GradientWeightingConfig)


# --------------------------------------------------------------------------- rollout / objective / train


class RolloutConfig(Strict):
    kind: Literal["single_turn", "agent"] = Field(
        "single_turn", description="the rollout function (rlhf/rollout/functions.py): single_turn, one completion "
        "per sample; agent, multi-turn episodes against rollout.agent.env (rlhf/rollout/agent.py)")
    agent: AgentConfig = Field(default_factory=AgentConfig)
    engine: Literal["hf", "vllm"] = "hf"
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    tis_cap: Optional[float] = Field(
        None, gt=0, description="truncated importance sampling: weight each token's policy-gradient term by "
        "min(p_trainer / p_rollout, tis_cap), correcting the rollout engine's logprob mismatch (vllm)"
    )
    placement: Literal["split", "colocated"] = Field(
        "split", description="split: engines and training ranks on GPUs of their own; colocated (GPU only): engine "
        "i shares GPU i with training rank i (num_engines = train.num_ranks; set vllm.sleep so the engine frees "
        "its memory while training runs)"
    )
    weight_sync: Literal["auto", "object_store", "broadcast", "cuda_ipc"] = Field(
        "auto", description="how trained weights reach the engines: object_store (safetensors buckets through "
        "Ray's object store), broadcast (training rank 0 broadcasts each bucket to every engine worker over a "
        "process group of their own: NCCL on GPUs, gloo on CPU), cuda_ipc (colocated: each training rank hands "
        "its engine CUDA IPC handles of its GPU buffers), auto (cuda_ipc when colocated, broadcast on GPUs, "
        "object_store on CPU)"
    )
    sync_timeout_s: float = Field(600.0, gt=0, description="broadcast: how long a member of the weight-sync "
                                  "group waits for the others before the sync fails (and falls back)")
    num_engines: int = Field(1, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    group_size: int = Field(8, ge=1, description="samples per prompt (n)")
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = Field(False, description="training rollouts decode max_new_tokens: EOS is "
                             "ignored (stop strings still apply), so every step does equal work (benchmarks); "
                             "evaluation still stops at EOS")
    batch_size: int = Field(64, ge=1, description="sequences per generate() call inside an engine")

    @property
    def completion_tokens(self) -> int:
        """The longest completion a rollout builds: an agent episode's max_tokens (model turns and observations),
        else max_new_tokens."""
        return self.agent.max_tokens if self.kind == "agent" else self.max_new_tokens

    @property
    def demonstration_template(self) -> str | None:
        """The observation template of multi-turn demonstrations (an agent's plain observations), else None."""
        plain = self.kind == "agent" and self.agent.observation_format != "chat"
        return self.agent.observation_template if plain else None

    @model_validator(mode="after")
    def _agent(self) -> "RolloutConfig":
        if self.kind == "agent" and not self.agent.env:
            raise ValueError("rollout.kind: agent needs rollout.agent.env (an environment name, 'module:Class' or an "
                             "entry point; `rlhf envs list` lists the built-in ones)")
        if self.kind != "agent" and self.agent.env:
            raise ValueError("rollout.agent.env is set but rollout.kind is single_turn; set rollout.kind: agent")
        return self


class WarmupConfig(Strict):
    """An SFT stage before the main objective, on the same data's completion column."""

    steps: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)


class TrainConfig(Strict):
    backend: Literal["deepspeed", "torch"] = "deepspeed"
    zero_stage: Literal[0, 1, 2, 3] = 2
    num_ranks: int = Field(2, ge=1)
    lr: float = Field(1e-5, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after warm-up: keep lr, or decay it to min_lr_ratio * lr by the last step"
    )
    lr_warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 over this many RL steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, ge=0)
    micro_batch_size: int = Field(64, ge=1, description="sequences per forward/backward on one rank")
    sync_bucket_mb: float = Field(256.0, gt=0, description="weight-sync bucket size")
    num_threads: Optional[int] = Field(
        None, ge=1, description="torch intra-op threads per training rank; default cores / num_ranks (fastest on a "
        "quiet machine; under outside load on few cores, 1 can be faster: bench/README.md)"
    )

    @model_validator(mode="after")
    def _torch_single(self) -> "TrainConfig":
        if self.backend == "torch" and self.num_ranks != 1:
            raise ValueError("train.backend=torch runs one rank; set train.num_ranks=1 or use backend=deepspeed")
        return self


class EvalConfig(Strict):
    every: int = Field(0, ge=0, description="evaluate every N steps; 0 = only before and after")
    max_samples: int = Field(200, ge=1)
    accuracy_component: Optional[str] = Field(None, description="reward component reported as accuracy")


class ProgressConfig(Strict):
    """MRT's progress reward (Qu et al. 2025): the change in estimated success probability at each step end."""

    enabled: bool = False
    component: Optional[str] = Field(None, description="the 0/1 outcome component that defines success")
    samples: int = Field(4, ge=1, description="completions sampled from each step prefix to estimate success")
    weight: float = Field(1.0, description="weight of the progress bonus next to the outcome reward")
    max_steps: int = Field(8, ge=1, description="steps per completion that get a bonus (cost: B x S x samples)")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="per prefix completion; default rollout's")


class ProcessConfig(Strict):
    """How completions are cut into steps for process (step-level) reward components."""

    segment: Literal["newline", "delimiter", "regex", "function"] = "newline"
    delimiter: Optional[str] = Field(None, description="segment: delimiter -- the literal separator")
    pattern: Optional[str] = Field(None, description="segment: regex -- the separator pattern")
    function: Optional[str] = Field(None, description="segment: function -- 'module:attr', text -> list of steps")
    progress: ProgressConfig = Field(default_factory=ProgressConfig)

    @model_validator(mode="after")
    def _needs(self) -> "ProcessConfig":
        from rlhf.advantages.process import Segmenter

        Segmenter(self.segment, self.delimiter, self.pattern, self.function)  # raises naming the missing key
        return self


class RayConfig(Strict):
    address: Optional[str] = Field(None, description="None starts a local Ray")
    num_cpus: Optional[int] = Field(None, ge=1)


class Recipe(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardComponentConfig] = Field(default_factory=list)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    objective: Annotated[ObjectiveConfig, Field(discriminator="kind")] = Field(default_factory=GRPOConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _placement_checks(self) -> "Recipe":
        """rollout.placement / rollout.weight_sync against the sizes they need (GPUs are checked at start)."""
        r = self.rollout
        if r.placement == "colocated":
            if r.num_engines != self.train.num_ranks:
                raise ValueError(f"rollout.placement: colocated puts engine i on training rank i's GPU, so "
                                 f"rollout.num_engines ({r.num_engines}) must equal train.num_ranks "
                                 f"({self.train.num_ranks})")
            if r.engine == "vllm" and r.vllm.tensor_parallel_size != 1:
                raise ValueError("rollout.placement: colocated engines take one GPU each; set "
                                 "rollout.vllm.tensor_parallel_size: 1 (or use placement: split)")
        if r.weight_sync == "cuda_ipc":
            if r.placement != "colocated":
                raise ValueError("rollout.weight_sync: cuda_ipc shares GPU memory between a training rank and the "
                                 "engine on the same GPU; it needs rollout.placement: colocated (else: broadcast)")
            if self.model.lora is not None and self.model.lora.enabled:
                raise ValueError("rollout.weight_sync: cuda_ipc does not carry LoRA weights yet; use broadcast "
                                 "(vllm) or object_store")
        return self

    @model_validator(mode="after")
    def _lora_checks(self) -> "Recipe":
        """model.lora against the backend and options it cannot work with (rlhf/models/lora.py)."""
        lora = self.model.lora
        if lora is None or not lora.enabled:
            return self
        if self.train.backend == "deepspeed" and self.train.zero_stage == 3:
            raise ValueError("model.lora: ZeRO-3 partitions the frozen base weights, which the adapter sync, the "
                             "merge and the adapter-disabled reference read in full; use train.zero_stage 0-2 "
                             "(an adapter's optimizer state is small, so ZeRO-2 saves nearly as much)")
        if self.weighting.kind == "gradient":
            raise ValueError("model.lora: weighting.kind=gradient computes per-component gradients of the full "
                             "model; use weighting.kind static or hypervolume with LoRA")
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> "Recipe":
        from rlhf.config.registry import check_objective, check_progress, check_weighting

        names = [c.name for c in self.rewards]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rewards: duplicate component names {dup}")
        check_objective(self)  # the objective against the rest (its capabilities, and the checks of its own)
        if self.warmup.steps and self.warmup.batch_size % self.train.num_ranks:
            raise ValueError(
                f"warmup.batch_size {self.warmup.batch_size} must be divisible by train.num_ranks {self.train.num_ranks}"
            )
        w = self.weighting
        for where, comp in [*((f"weighting.schedules.{n}", n) for n in w.schedules),
                            *((f"weighting.constraints.{i}.component", c.component)
                              for i, c in enumerate(w.constraints))]:
            if comp not in names:
                raise ValueError(f"{where}: {comp!r} is not a reward component; components are {names}")
        if w.hypervolume.reference is not None and len(w.hypervolume.reference) != len(names):
            raise ValueError(f"weighting.hypervolume.reference has {len(w.hypervolume.reference)} values; "
                             f"one per reward component ({len(names)}: {names}) is needed")
        check_weighting(self)
        if w.kind == "gradient" and self.train.zero_stage == 3 and self.train.backend == "deepspeed":
            raise ValueError("weighting.kind=gradient: per-component gradients are computed on full parameters; "
                             "ZeRO-3 partitions them. Use train.zero_stage 0-2")
        prog = self.process.progress
        if prog.enabled:
            if prog.component is None:
                raise ValueError("process.progress.enabled needs process.progress.component: the 0/1 outcome "
                                 f"component that defines success (one of {names})")
            if prog.component not in names:
                raise ValueError(f"process.progress.component {prog.component!r} is not a reward component; "
                                 f"components are {names}")
            check_progress(self)
        check_pipeline(self)
        acc = self.eval.accuracy_component
        if acc is not None and acc not in names:
            raise ValueError(f"eval.accuracy_component {acc!r} is not a reward component; components are {names}")
        return self
