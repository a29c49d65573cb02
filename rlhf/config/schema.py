"""The recipe schema: strict, typed, range-checked (pydantic v2, ``extra="forbid"`` everywhere).

A recipe is a YAML file validated into :class:`Recipe`. Unknown keys are errors (see ``rlhf.config.load``
for the message that names the file, the key path and the closest valid key). Cross-field checks run here,
before any actor starts.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, PrivateAttr, field_validator, model_validator

from rlhf.config.base import Strict
from rlhf.config.conditioning import ConditioningConfig, check_conditioning
from rlhf.config.pipeline import PipelineConfig, check_pipeline
from rlhf.config.model import LoraConfig, ModelConfig, TinyModelConfig  # noqa: F401  (part of the schema)
from rlhf.config.rollout import AgentConfig, HFConfig, VLLMConfig  # noqa: F401  (part of the schema)
from rlhf.config.train import TrainConfig  # noqa: F401  (part of the schema)
from rlhf.config.weighting import (  # noqa: F401  (part of the schema)
    ConstraintConfig,
    GradientWeightingConfig,
    HypervolumeWeightingConfig,
    ScheduleConfig,
    WeightingConfig,
)
from rlhf.config.objectives import (  # noqa: F401  (the objective sections are part of the schema)
    CGPOConfig,
    CGPOTaskConfig,
    CriticConfig,
    DPOConfig,
    GRPOConfig,
    MAHDPOConfig,
    MODPOConfig,
    ObjectiveConfig,
    OnlineDPOConfig,
    PolicyGradientConfig,
    PPOConfig,
    PRMObjectiveConfig,
    RMConfig,
    ReinforcePPConfig,
    RLOOConfig,
    RSFConfig,
    SFTObjectiveConfig,
)


# --------------------------------------------------------------------------- run / model / data


class WandbConfig(Strict):
    """Weights & Biases options (used when ``run.trackers`` lists wandb); the run's files go to OUT/wandb/."""

    project: str = Field("rlhf", description="W&B project")
    entity: Optional[str] = Field(None, description="W&B team or user; None: the account's default")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline (default): no network, written under OUT/wandb/ (upload later with `wandb "
        "sync OUT/wandb/offline-run-*`); online: streams to the server (needs `wandb login` or WANDB_API_KEY)")
    tags: list[str] = Field(default_factory=list, description="W&B run tags")
    group: Optional[str] = Field(None, description="groups runs in the UI (e.g. the seeds of one sweep point)")


class MlflowConfig(Strict):
    """MLflow options (used when ``run.trackers`` lists mlflow)."""

    tracking_uri: Optional[str] = Field(
        None, description="None: a file store under the run's output directory (file:OUT/mlruns, no server); or "
        "any MLflow tracking URI (http://host:5000; sqlite:///mlflow.db needs the full mlflow package)")
    experiment: str = Field("rlhf", description="MLflow experiment (created when missing)")


class RunConfig(Strict):
    """The run: its name, where it writes, its seed and length, checkpoints and logging."""

    name: str = Field("run", description="the run's name: part of the default output_dir, of launcher job names "
                      "and of sweep run names")
    output_dir: str = Field("runs/${run.name}", description="where metrics, checkpoints and the summary are "
                            "written; ${run.name} is substituted")
    seed: int = Field(0, description="seeds torch, the data (synthetic rows, the held-out split), prompt sampling "
                      "and generation")
    steps: int = Field(100, ge=0, description="on-policy RL steps (or optimizer steps for offline objectives)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept; older ones are deleted")
    log_every: int = Field(1, ge=1, description="write metrics every N steps (and at the last step)")
    trackers: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="where metrics, the resolved recipe and the summary go (rlhf/trackers.py). output_dir/"
        "metrics.jsonl is always written (the summary, plots and --resume read it), so listing jsonl is optional: "
        "[wandb] means [jsonl, wandb]. wandb and mlflow need the [trackers] extra, tensorboard the [tensorboard] one")
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="options of the wandb tracker")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="options of the mlflow tracker")
    tensorboard: bool = Field(False, description="deprecated: true is the same as listing tensorboard in "
                              "run.trackers (events in output_dir/tensorboard)")
    progress: bool = Field(True, description="show a progress bar on the console")

    @model_validator(mode="after")
    def _trackers_once(self) -> "RunConfig":
        twice = sorted({t for t in self.trackers if self.trackers.count(t) > 1})
        if twice:
            raise ValueError(f"run.trackers: {', '.join(twice)} listed more than once; list each tracker once")
        return self

    @property
    def tracker_names(self) -> tuple[str, ...]:
        """The trackers this run writes to: jsonl first (always), then the listed ones, and tensorboard when the
        deprecated ``run.tensorboard`` is true."""
        names = ["jsonl"] + [t for t in self.trackers if t != "jsonl"]
        if self.tensorboard and "tensorboard" not in names:
            names.append("tensorboard")
        return tuple(names)


class SyntheticArithmeticConfig(Strict):
    """Generated arithmetic problems (data.source: synthetic_arithmetic), e.g. '17+25=' -> '42'; the eval rows
    never appear among the training rows (rlhf/data/synthetic.py)."""

    n_train: int = Field(2000, ge=1, description="training rows (capped by the distinct problems left after the "
                         "eval rows)")
    n_eval: int = Field(200, ge=1, description="held-out rows, drawn first")
    min_operand: int = Field(0, ge=0, description="smallest operand")
    max_operand: int = Field(20, ge=1, description="largest operand")
    ops: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+"], description="the operators drawn "
                                              "from")
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
    """The rows trained and evaluated on: prompts (their other columns reach the reward plugins), SFT completions,
    preference pairs or step-labelled solutions, as the objective needs (rlhf/data/loaders.py)."""

    source: Literal["synthetic_arithmetic", "jsonl", "parquet", "hf"] = Field(
        "synthetic_arithmetic", description="synthetic_arithmetic: generated (data.synthetic); jsonl / parquet: a "
        "local file (train_path); hf: a hub dataset id or local dataset directory (train_path, split)")
    train_path: Optional[str] = Field(None, description="file (jsonl/parquet) or hub dataset id for source=hf")
    eval_path: Optional[str] = Field(
        None, description="held-out rows: a file like train_path (source=hf: another split's name); default: a "
        "seeded 5% hold-out of the training rows")
    split: str = Field("train", description="source=hf: the split read as training rows")
    prompt_column: str = Field("prompt", description="column holding the prompt text")
    completion_column: str = Field("completion", description="target text for SFT")
    chosen_column: str = Field("chosen", description="preferred completion (preference objectives)")
    rejected_column: str = Field("rejected", description="dispreferred completion (preference objectives)")
    synthetic: SyntheticArithmeticConfig = Field(default_factory=SyntheticArithmeticConfig)
    chat_template: Literal["auto", "none"] = Field(
        "auto", description="auto: apply the tokenizer's chat template when it has one"
    )
    max_prompt_tokens: int = Field(128, ge=1, description="prompt tokens at most; longer prompts lose their "
                                   "beginning (an agent episode's prompt is an error)")

    @model_validator(mode="after")
    def _paths(self) -> "DataConfig":
        if self.source != "synthetic_arithmetic" and not self.train_path:
            raise ValueError(f"data.source={self.source} needs data.train_path")
        return self


# --------------------------------------------------------------------------- rewards


class RewardComponentConfig(Strict):
    """One named reward component: a plugin that scores every sample (`rlhf rewards list` lists the plugins)."""

    name: str = Field(..., min_length=1, description="the component's name: in the metrics (reward/NAME/...), "
                      "weighting.schedules, constraints and eval.accuracy_component")
    plugin: str = Field(..., description="registered name, or 'module:attr'")
    kind: Optional[Literal["reward", "constraint", "process"]] = Field(
        None, description="defaults to the plugin's kind (@reward -> reward, @judge -> constraint)"
    )
    weight: float = Field(1.0, description="the component's weight in the weighted sum of the reward vector "
                          "(schedules, constraints and dynamic weighting change it during the run)")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the plugin")
    timeout_s: float = Field(60.0, gt=0, description="seconds one scoring call may take; past it the call "
                             "fails (on_error applies) and its reward worker is restarted")
    on_error: Literal["fail", "nan", "zero"] = Field(
        "fail", description="when the plugin fails: fail (stop with an error naming the component and sample), "
        "nan (NaN for the failed samples: they count 0 in the weighted sum), zero (0.0)")
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
    style: Literal["auto", "native", "trl", "trl_conversational", "verl", "openrlhf"] = Field(
        "auto", description="the plugin's calling convention (rewards/styles.py); auto: from its signature; "
        "trl_conversational: TRL's with each prompt and completion as a list of one chat message")
    columns: dict[str, str] = Field(default_factory=dict, description="{name the plugin gets: dataset column}")
    output_key: Optional[str] = Field(None, min_length=1, description="verl/openrlhf dicts: the key of the values")
    _dataset_name: Optional[str] = PrivateAttr(None)  # set by Recipe: a verl plugin's default data_source

    @property
    def dataset_name(self) -> Optional[str]:
        """The recipe's dataset name (a verl plugin's data_source when the data has no such column)."""
        return self._dataset_name


# --------------------------------------------------------------------------- rollout / objective / train


class RolloutConfig(Strict):
    """Generation of the training samples: the rollout function, the engines, sampling and weight sync."""

    kind: Literal["single_turn", "agent"] = Field(
        "single_turn", description="the rollout function (rlhf/rollout/functions.py): single_turn, one completion "
        "per sample; agent, multi-turn episodes against rollout.agent.env (rlhf/rollout/agent.py)")
    agent: AgentConfig = Field(default_factory=AgentConfig)
    engine: Literal["hf", "vllm"] = Field("hf", description="the generation engine: hf (transformers generate) "
                                          "or vllm (rollout.vllm)")
    hf: HFConfig = Field(default_factory=HFConfig)
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
    num_engines: int = Field(1, ge=1, description="engines (Ray actors); each call's prompts are sharded over "
                             "them")
    prompts_per_step: int = Field(16, ge=1, description="prompts per RL step; each is sampled group_size times")
    group_size: int = Field(8, ge=1, description="samples per prompt (n)")
    max_new_tokens: int = Field(32, ge=1, description="tokens per completion at most (an agent's: per model "
                                "turn)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the training rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: the smallest set of tokens with this "
                         "probability; 1 keeps all")
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens; 0 = no limit")
    stop: list[str] = Field(default_factory=list, description="strings that end a completion besides EOS (kept "
                            "in the completion)")
    ignore_eos: bool = Field(False, description="training rollouts decode max_new_tokens: EOS is "
                             "ignored (stop strings still apply), so every step does equal work (benchmarks); "
                             "evaluation still stops at EOS")
    batch_size: int = Field(64, ge=1, description="sequences per generate() call inside an engine")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the engines' weights and compute (the weight sync sends this dtype); auto: "
        "train.precision's dtype (bf16 -> bfloat16, fp16 -> float16; auto: as resolved), else model.dtype")

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

    steps: int = Field(0, ge=0, description="SFT optimizer steps before the main objective; 0 = no warm-up")
    batch_size: int = Field(32, ge=1, description="rows per SFT step over all ranks (divisible by "
                            "train.num_ranks)")
    lr: float = Field(1e-3, gt=0, description="learning rate of the warm-up")


class EvalConfig(Strict):
    """Held-out evaluation (greedy completions of held-out prompts, or the objective's own metrics on held-out
    rows) before, during and after training."""

    every: int = Field(0, ge=0, description="evaluate every N steps; 0 = only before and after")
    max_samples: int = Field(200, ge=1, description="held-out rows evaluated (the first N)")
    accuracy_component: Optional[str] = Field(None, description="reward component reported as accuracy")


class ProgressConfig(Strict):
    """MRT's progress reward (Qu et al. 2025): the change in estimated success probability at each step end."""

    enabled: bool = Field(False, description="add the progress bonus to each step (needs component)")
    component: Optional[str] = Field(None, description="the 0/1 outcome component that defines success")
    samples: int = Field(4, ge=1, description="completions sampled from each step prefix to estimate success")
    weight: float = Field(1.0, description="weight of the progress bonus next to the outcome reward")
    max_steps: int = Field(8, ge=1, description="steps per completion that get a bonus (cost: B x S x samples)")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="per prefix completion; default rollout's")


class ProcessConfig(Strict):
    """How completions are cut into steps for process (step-level) reward components."""

    segment: Literal["newline", "delimiter", "regex", "function"] = Field(
        "newline", description="newline: one step per line; delimiter, regex, function: cut by the key of that "
        "name")
    delimiter: Optional[str] = Field(None, description="segment: delimiter -- the literal separator")
    pattern: Optional[str] = Field(None, description="segment: regex -- the separator pattern")
    function: Optional[str] = Field(None, description="segment: function -- 'module:attr', text -> list of steps")
    progress: ProgressConfig = Field(default_factory=ProgressConfig)

    @model_validator(mode="after")
    def _needs(self) -> "ProcessConfig":
        from rlhf.advantages.process import Segmenter

        Segmenter(self.segment, self.delimiter, self.pattern, self.function)  # raises naming the missing key
        return self


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a process environment variable's name


class RayConfig(Strict):
    """The Ray cluster the run's actors (engines, reward workers, training ranks) start in."""

    address: Optional[str] = Field(None, description="None starts a local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of a local Ray (default: the machine's); "
                                    "ignored when joining a cluster")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="how the training ranks' placement group lies on the cluster's nodes (Ray's "
        "strategies): PACK on as few nodes as possible, SPREAD over as many as possible (best effort), "
        "STRICT_SPREAD one rank per node (needs at least train.num_ranks nodes). Under SPREAD and STRICT_SPREAD "
        "the rollout engines spread over the nodes too. Where each rank and engine ran: OUT/placement.json")
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="environment variables of every actor's process (training ranks, "
        "engines, reward workers), set through the job's Ray runtime environment: e.g. MALLOC_MMAP_THRESHOLD_: "
        "'1048576' so glibc returns ZeRO-3's freed layer buffers on CPU (bench/README.md, zero3_memory). Values are "
        "strings (numbers are written as strings); a name must be a valid environment variable name")

    @field_validator("env_vars", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        """Numbers and booleans in YAML become the strings a process environment holds; names are checked."""
        if not isinstance(v, dict):
            return v
        out = {}
        for key, value in v.items():
            if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
                raise ValueError(f"{key!r} is not an environment variable name (letters, digits, _; not a digit "
                                 "first)")
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError(f"{key}: {value!r} is not a string or number (an environment holds strings)")
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


class Recipe(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardComponentConfig] = Field(
        default_factory=list, description="the named reward components: every sample gets one value from each")
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    objective: Annotated[ObjectiveConfig, Field(discriminator="kind")] = Field(
        default_factory=GRPOConfig, description="what is trained and how: objective.kind picks the objective, "
        "and with it the other keys of this section")
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    conditioning: ConditioningConfig = Field(default_factory=ConditioningConfig, description="per-prompt "
                                             "preference weights written into the prompt (DPA)")

    @property
    def engine_dtype(self) -> str:
        """The engines' dtype: rollout.dtype; auto: the training precision's dtype (bf16 -> bfloat16, fp16 ->
        float16), else model.dtype."""
        if self.rollout.dtype != "auto":
            return self.rollout.dtype
        return {"bf16": "bfloat16", "fp16": "float16"}.get(self.train.precision, self.model.dtype)

    @model_validator(mode="after")
    def _precision_checks(self) -> "Recipe":
        """train.precision against the weights' dtype and the backend."""
        t = self.train
        if t.precision in ("bf16", "fp16") and self.model.dtype != "float32":
            raise ValueError(f"train.precision: {t.precision} is autocast over float32 weights, but model.dtype is "
                             f"{self.model.dtype} (the weights already compute in it); set train.precision: fp32, "
                             "or model.dtype: float32 for float32 master weights")
        if t.precision == "fp16" and t.backend == "deepspeed":
            raise ValueError("train.precision: fp16 needs loss scaling, which the torch backend does; with "
                             "train.backend: deepspeed use model.dtype: float16 (DeepSpeed's fp16 mode, with its "
                             "own loss scaling and float32 master weights) or train.precision: bf16")
        return self

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
    def _reward_dataset_name(self) -> "Recipe":
        """verl plugins take a data_source; without that column: the hub id, the file's stem, or the source."""
        d = self.data
        local = d.source != "hf" and d.train_path
        name = d.train_path.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0] if local else d.train_path or d.source
        for component in self.rewards:
            component._dataset_name = name
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
        check_conditioning(self)
        acc = self.eval.accuracy_component
        if acc is not None and acc not in names:
            raise ValueError(f"eval.accuracy_component {acc!r} is not a reward component; components are {names}")
        return self
