"""The recipe's `objective:` sections, one per objective kind (a discriminated union on `kind`).

Every policy-gradient objective (GRPO, GiGPO, RLOO, RSF, REINFORCE++, PPO, CGPO) shares one section of fields,
declared once in ``PolicyGradientConfig``: the clipped surrogate's (clip, clip-higher, KL loss term, aggregation, the
off-policy correction in ``off_policy``; see ``rlhf.objectives.common.Surrogate``) and the update loop's (epochs,
mini-batches). What each kind needs from the runtime is stated by the objective registry
(``rlhf.config.registry``), not here.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from rlhf.config.base import Strict


class OffPolicyConfig(Strict):
    """`objective.off_policy`: how the surrogate corrects for samples drawn by a behaviour policy other than the
    trainer's (stale weights under asynchronous training, another engine's kernels); see
    ``rlhf.objectives.offpolicy`` for each correction's definition and bias / variance."""

    correction: Literal["auto", "none", "behaviour", "tis", "mis", "decoupled"] = Field(
        "auto", description="auto: resolved by the driver (none when training is synchronous, decoupled when "
        "asynchronous); none: no correction; behaviour: coupled PPO, the clip ratio is taken against the rollout "
        "engine's logprobs; tis: truncated importance sampling min(p/b, cap); mis: masked importance sampling "
        "(IcePop), tokens whose p/b leaves [low, high] are dropped; decoupled: decoupled PPO (AReaL), clip against "
        "the trainer's proximal logprobs, weight p/b, tokens with p/b > cap dropped")
    level: Literal["token", "sequence"] = Field(
        "token", description="token: one weight per token; sequence (tis, mis only): tis truncates the sample's "
        "likelihood ratio exp(sum (p - b)), mis keeps or drops whole samples by their geometric-mean ratio")
    cap: float = Field(2.0, gt=0, description="tis: truncation cap of the weights; decoupled: tokens whose weight "
                       "exceeds it are dropped")
    low: float = Field(0.5, gt=0, description="mis: lower end of the band of kept ratios p/b")
    high: float = Field(2.0, gt=0, description="mis: upper end of the band of kept ratios p/b")

    @model_validator(mode="after")
    def _consistent(self) -> "OffPolicyConfig":
        if self.low >= self.high:
            raise ValueError(f"objective.off_policy.low ({self.low}) must be below objective.off_policy.high "
                             f"({self.high})")
        if not self.low <= 1.0 <= self.high:
            raise ValueError(f"objective.off_policy.low / objective.off_policy.high: the band [{self.low}, "
                             f"{self.high}] must contain 1 (the ratio of on-policy tokens)")
        if self.correction in ("behaviour", "decoupled") and self.level != "token":
            raise ValueError(f"objective.off_policy.correction: {self.correction} is token-level only; "
                             "objective.off_policy.level must be token")
        return self


class PolicyGradientConfig(Strict):
    """The fields every policy-gradient objective shares: the clipped surrogate and the update loop."""

    kind: str
    clip_eps: float = Field(0.2, gt=0, description="PPO clip: ratios outside [1 - clip_eps, 1 + clip_eps_high] "
                            "stop the gradient")
    clip_eps_high: Optional[float] = Field(None, gt=0, description="asymmetric upper clip (DAPO clip-higher); "
                                           "default = clip_eps")
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the reference as a loss term")
    kl_ratio_correction: bool = Field(
        False, description="multiply the k3 KL term by the ratio pi/pi_old: the unbiased estimate under "
        "off-policy samples (DeepSeek-V3.2; TRL's use_bias_correction_kl)")
    loss_agg: Literal["token_mean", "seq_mean", "dr_grpo"] = Field(
        "token_mean", description="token_mean (DAPO), seq_mean (GRPO paper), dr_grpo (sum / (rows * max_new_tokens))"
    )
    epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    mini_batches: int = Field(1, ge=1, description="optimizer steps per epoch")
    off_policy: OffPolicyConfig = Field(default_factory=OffPolicyConfig, description="off-policy correction of "
                                        "stale or mismatched samples (asynchronous training, rollout engines)")


def _kl_in_reward(cfg: PolicyGradientConfig, where: str) -> None:
    """kl_ratio_correction corrects a KL loss term: an error where the KL sits in the reward."""
    if cfg.kl_ratio_correction:
        raise ValueError(f"objective.kl_ratio_correction corrects the KL loss term; {where} the KL is a penalty in "
                         "the reward (set kl_ratio_correction: false)")


class GRPOConfig(PolicyGradientConfig):
    """GRPO (Shao et al. 2024): each sample's advantage is its reward minus its prompt group's mean, divided by the
    group's std; the clipped surrogate. DAPO's dynamic sampling and overlong filtering are options."""

    kind: Literal["grpo"] = "grpo"
    scale_std: bool = Field(True, description="divide group-centred rewards by the group std (false: Dr. GRPO)")
    dynamic_sampling: bool = Field(
        False, description="DAPO: drop groups whose reward has zero variance and generate more prompts to refill"
    )
    max_sampling_rounds: int = Field(4, ge=1, description="generate() rounds per step at most, with dynamic_sampling")
    mask_truncated: bool = Field(False, description="DAPO overlong filtering: truncated completions get no loss")
    eps: float = Field(1e-6, gt=0, description="added to the group std before dividing by it")


class GiGPOConfig(PolicyGradientConfig):
    """GiGPO (Feng et al. 2025): episode-level group advantage plus a step-level advantage from the turns of
    agent episodes taken from the same environment state (rlhf/objectives/gigpo.py); needs rollout.kind: agent."""

    kind: Literal["gigpo"] = "gigpo"
    scale_std: bool = Field(True, description="divide group-centred episode returns and step returns by their "
                            "group's std (false: only centre, as Dr. GRPO)")
    eps: float = Field(1e-6, gt=0, description="added to the std of each group")
    omega: float = Field(1.0, ge=0, description="weight of the step-level (anchor-state) advantage next to the "
                         "episode-level one; 0 gives episode-level GRPO")
    gamma: float = Field(0.95, ge=0, le=1, description="discount of the turn rewards in the step returns")
    step_groups: Literal["anchor", "group"] = Field(
        "anchor", description="anchor: turns taken from the same environment state within a group are compared "
        "(GiGPO); group: all turns of a group are compared (turn-level returns with a group baseline)")


class RLOOConfig(PolicyGradientConfig):
    """RLOO (Ahmadian et al. 2024): leave-one-out baseline within each prompt's group, PPO-clip loss."""

    kind: Literal["rloo"] = "rloo"
    per_component: bool = Field(False, description="leave-one-out per reward component, then weight and sum")


class RSFConfig(PolicyGradientConfig):
    """Rejection-sampling fine-tuning (RAFT; DPA's training step, Wang et al. 2024): per prompt, the top_k samples by
    the weighted reward (under conditioning the prompt's own preference v^T r) are kept and the policy is trained
    by the token-mean NLL of the kept samples alone (rlhf/objectives/rsf.py). No ratio and no clip: clip_eps and
    clip_eps_high do not apply; kl_coef adds a KL term on the kept tokens (and loads the reference)."""

    kind: Literal["rsf"] = "rsf"
    top_k: int = Field(1, ge=1, description="samples kept per prompt group: the best ones by the weighted reward")
    min_reward: Optional[float] = Field(
        None, description="keep only samples whose weighted reward is >= this (a group none of whose samples "
        "reaches it keeps nothing); null: the group's best is kept whatever its reward")
    ties: Literal["first", "shortest"] = Field(
        "first", description="samples with equal weighted reward: first keeps the lower row index (a random one: "
        "a group's samples are i.i.d.), shortest the shorter completion")

    @model_validator(mode="after")
    def _nll_only(self) -> "RSFConfig":
        defaults = {"clip_eps": PolicyGradientConfig.model_fields["clip_eps"].default, "clip_eps_high": None}
        unused = [k for k, v in defaults.items() if getattr(self, k) != v]  # by value: full dumps round-trip
        if unused:
            raise ValueError(f"objective.{unused[0]}: rsf trains the NLL of the kept samples (no ratio, no clip); "
                             f"remove {' and '.join('objective.' + k for k in unused)}")
        if self.loss_agg != "token_mean":
            raise ValueError(f"objective.loss_agg={self.loss_agg!r}: rsf trains the token-mean NLL of the kept "
                             "samples (use token_mean)")
        return self


class ReinforcePPConfig(PolicyGradientConfig):
    """REINFORCE++ (Hu et al. 2025): KL-shaped token rewards, reward-to-go, global batch normalisation."""

    kind: Literal["reinforce_pp"] = "reinforce_pp"
    kl_coef: float = Field(0.01, ge=0, description="KL penalty inside the token rewards")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="estimator of the per-token KL to the "
                                                    "reference in the token rewards")
    gamma: float = Field(1.0, ge=0, le=1, description="discount of the reward-to-go")
    baseline: Literal["none", "group"] = Field("none", description="group: REINFORCE++-baseline (group mean)")
    eps: float = Field(1e-6, gt=0, description="added to the std of the global advantage whitening")

    @model_validator(mode="after")
    def _kl(self) -> "ReinforcePPConfig":
        _kl_in_reward(self, "under reinforce_pp")
        return self


class CriticConfig(Strict):
    """The value model of PPO, trained by its own DeepSpeed worker group."""

    lr: float = Field(1e-5, gt=0, description="learning rate of the critic")
    num_ranks: Optional[int] = Field(None, ge=1, description="defaults to train.num_ranks")
    vector: bool = Field(
        False, description="one value head per reward component (+1 for the KL stream): per-component GAE, "
        "combined by the weights afterwards, so weights can change without retraining the critic"
    )
    value_clip: Optional[float] = Field(0.2, gt=0, description="clip values to old_value +- this; null: no clip")
    init_from: Optional[str] = Field(None, description="causal LM dir for the critic backbone; default: the policy's")


class PPOConfig(PolicyGradientConfig):
    """PPO (Schulman et al. 2017) with GAE and a learned critic, as in RLHF (Ouyang et al. 2022)."""

    kind: Literal["ppo"] = "ppo"
    gamma: float = Field(1.0, ge=0, le=1, description="discount of GAE")
    lam: float = Field(0.95, ge=0, le=1, description="lambda of GAE")
    kl_coef: float = Field(0.05, ge=0, description="KL coefficient: of the penalty in the reward (the adaptive "
                           "controller's start) or of the k3 loss term, by kl_mode")
    kl_mode: Literal["reward", "loss"] = Field(
        "reward", description="reward: -kl_coef * (logp - ref) on every token's reward; loss: a k3 loss term"
    )
    adaptive_kl: bool = Field(False, description="Ziegler et al. 2019 controller towards kl_target")
    kl_target: float = Field(0.1, gt=0, description="adaptive_kl: the batch KL the controller steers toward")
    kl_horizon: int = Field(10000, ge=1, description="adaptive_kl: the controller's horizon in samples (larger: "
                            "slower changes of kl_coef)")
    whiten_advantages: bool = Field(True, description="normalise the advantages to mean 0 and std 1 over the "
                                    "batch's completion tokens")
    critic: CriticConfig = Field(default_factory=CriticConfig)

    @model_validator(mode="after")
    def _adaptive(self) -> "PPOConfig":
        if self.adaptive_kl and self.kl_mode != "reward":
            raise ValueError("adaptive_kl controls the KL penalty in the reward: set kl_mode: reward")
        if self.kl_mode == "reward":
            _kl_in_reward(self, "with kl_mode: reward")
        return self


class DPOConfig(Strict):
    """Offline preference optimisation on (prompt, chosen, rejected) pairs: DPO, IPO, conservative DPO."""

    kind: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="strength of the implicit KL to the reference (ipo: its tau)")
    loss_type: Literal["sigmoid", "ipo", "cdpo"] = Field(
        "sigmoid", description="sigmoid (DPO), ipo (IPO), cdpo (conservative DPO, with label_smoothing)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cdpo: probability that a label is flipped")
    reference_free: bool = Field(False, description="a uniform reference (log-probs 0): no reference model")
    ipo_average: bool = Field(True, description="ipo: per-token averaged log-ratios (as TRL)")
    batch_size: int = Field(32, ge=1, description="preference pairs per optimizer step")
    max_length: int = Field(512, ge=4, description="tokens per prompt + completion; longer pairs lose their tail")

    @model_validator(mode="after")
    def _smoothing(self) -> "DPOConfig":
        if self.label_smoothing and self.loss_type != "cdpo":
            raise ValueError("label_smoothing is used by loss_type: cdpo only")
        return self


class OnlineDPOConfig(Strict):
    """Online DPO: per prompt, the best and the worst of its fresh samples (ranked by the weighted reward vector)
    form a (chosen, rejected) pair; ties are skipped. DPO/IPO/cDPO loss against the frozen reference."""

    kind: Literal["online_dpo"] = "online_dpo"
    beta: float = Field(0.1, gt=0, description="strength of the implicit KL to the reference (ipo: its tau)")
    loss_type: Literal["sigmoid", "ipo", "cdpo"] = Field(
        "sigmoid", description="sigmoid (DPO), ipo (IPO), cdpo (conservative DPO, with label_smoothing)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cdpo: probability that a label is flipped")
    reference_free: bool = Field(False, description="a uniform reference (log-probs 0): no reference model")
    ipo_average: bool = Field(True, description="ipo: per-token averaged log-ratios (as TRL)")


class MODPOConfig(Strict):
    """MODPO: DPO on one objective's preference pairs with a margin from the other objectives' reward components.

    The weight vector is (preference_weight, rewards[*].weight); it must lie on the simplex (sum to 1)."""

    kind: Literal["modpo"] = "modpo"
    beta: float = Field(0.1, gt=0, description="DPO beta (divided by preference_weight in the loss)")
    preference_weight: float = Field(0.5, gt=0, le=1, description="w_k: weight of the preference data's objective")
    batch_size: int = Field(32, ge=1, description="preference pairs per optimizer step")
    max_length: int = Field(512, ge=4, description="tokens per prompt + completion; longer pairs lose their tail")


class CGPOTaskConfig(Strict):
    """One CGPO task: its reward components, its judges and its constrained optimiser (rlhf/objectives/cgpo.py)."""

    rewards: list[str] = Field(..., min_length=1, description="names of reward components (in `rewards:`) summed "
                               "with their weights into the task's reward")
    judges: list[str] = Field(default_factory=list, description="names of constraint components (judges) a sample "
                              "of this task must satisfy")
    optimizer: Literal["crpg", "codpo", "crraft"] = Field(
        "crpg", description="the task's update: crpg (constrained policy gradient), codpo (DPO on (satisfying, "
        "violating) pairs), crraft (fine-tuning on the best satisfying samples)")
    weight: float = Field(1.0, gt=0, description="the task's weight in the combined update: sum over tasks of "
                          "weight x the task's own mean loss (crpg / crraft tasks in one step, codpo tasks in "
                          "another)")
    beta: Optional[float] = Field(None, gt=0, description="codpo: this task's DPO beta (default: objective.beta)")
    share: Optional[float] = Field(None, gt=0, description="relative share of each step's prompts (default: the "
                                   "task's share of the training rows)")
    baseline_column: Optional[str] = Field(
        None, description="dataset column holding a baseline response (e.g. the reference answer) for the "
        "calibrated reward sigmoid(r(a) - r(baseline)); default: the mean reward of the prompt's samples")
    top_k: int = Field(1, ge=1, description="crraft: best satisfying samples kept per prompt")
    threshold: Optional[float] = Field(None, gt=0, lt=1, description="crraft: keep a sample only if its "
                                       "calibrated reward exceeds this")


class CGPOConfig(PolicyGradientConfig):
    """CGPO (Xu et al. 2024): tasks with their own rewards, judges and constrained optimiser (CRPG, CODPO, CRRAFT);
    prompts are stratified by task; calibrated rewards; violating samples are negatives."""

    kind: Literal["cgpo"] = "cgpo"
    tasks: dict[str, CGPOTaskConfig] = Field(..., min_length=1)
    task_column: str = Field("task", description="dataset column naming each prompt's task")
    default_task: Optional[str] = Field(None, description="task of rows that have no task column (default: such "
                                        "rows are an error)")
    # CRPG / CRRAFT: the clipped policy-gradient update (the shared fields; mini_batches are stratified: each
    # task is normalised within each optimizer step)
    scale_std: bool = Field(True, description="crpg: divide group-centred rewards by the group std")
    eps: float = Field(1e-6, gt=0, description="crpg: added to the group std")
    # CODPO: DPO loss on (best satisfying, violating) pairs + nll_coef x length-normalised NLL of the chosen one
    beta: float = Field(0.1, gt=0, description="codpo: DPO beta of the codpo tasks that set none")
    loss_type: Literal["sigmoid", "ipo", "cdpo"] = Field("sigmoid", description="codpo: the DPO loss (sigmoid, "
                                                         "ipo, cdpo)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="codpo, loss_type cdpo: probability that a "
                                   "label is flipped")
    reference_free: bool = Field(False, description="codpo: a uniform reference (log-probs 0)")
    nll_coef: float = Field(1.0, ge=0, description="codpo: lambda of the chosen response's NLL / length term")

    @model_validator(mode="after")
    def _tasks(self) -> "CGPOConfig":
        if self.default_task is not None and self.default_task not in self.tasks:
            raise ValueError(f"objective.default_task {self.default_task!r} is not a task; tasks are "
                             f"{sorted(self.tasks)}")
        if self.label_smoothing and self.loss_type != "cdpo":
            raise ValueError("objective.label_smoothing is used by loss_type: cdpo only")
        if self.loss_agg == "dr_grpo":
            raise ValueError("objective.loss_agg: CGPO normalises each task's term by its own tokens or sequences; "
                             "use token_mean or seq_mean")
        for name, task in self.tasks.items():
            if task.optimizer != "codpo" and task.beta is not None:
                raise ValueError(f"objective.tasks.{name}.beta: a DPO beta applies to optimizer codpo only")
            if task.optimizer != "crraft" and (task.top_k != 1 or task.threshold is not None):
                raise ValueError(f"objective.tasks.{name}: top_k / threshold apply to optimizer crraft only")
        return self


class PRMObjectiveConfig(Strict):
    """Train a process reward model on step-labelled rows (prompt, steps, labels), step-tag style."""

    kind: Literal["prm"] = "prm"
    batch_size: int = Field(32, ge=1, description="rows per optimizer step")
    step_tag: str = Field("\n", min_length=1, description="appended after every step; its last token is scored")
    good: str = Field("+", min_length=1, description="the single token meaning 'this step is correct'")
    bad: str = Field("-", min_length=1, description="the single token meaning 'this step is wrong'")
    max_length: int = Field(256, ge=8, description="tokens per row; steps whose tag falls beyond it are dropped")
    steps_column: str = Field("steps", description="column holding each row's list of step texts")
    labels_column: str = Field("labels", description="column holding one label per step (1 / true: correct)")
    error_rate: float = Field(0.5, ge=0, le=1, description="synthetic data: share of rows with one wrong step")


def check_heads(heads: list[str], preference_columns: Optional[dict[str, str]]) -> None:
    """Named heads (a reward model's or a multi-head policy's): unique, and every preference column names one."""
    dup = sorted({h for h in heads if heads.count(h) > 1})
    if dup:
        raise ValueError(f"objective.heads: duplicate names {dup}")
    unknown = sorted(set(preference_columns or {}) - set(heads))
    if unknown:
        raise ValueError(f"objective.preference_columns: {unknown} are not heads; heads are {heads}")


class RMConfig(Strict):
    """Train an outcome reward model (Bradley-Terry) on preference pairs (prompt, chosen, rejected): a scalar
    head per named output on the causal LM's last hidden state, saved as a Hugging Face sequence-classification
    model. Several heads (``heads``) give a multi-objective RM, each trained on its own preference column."""

    kind: Literal["rm"] = "rm"
    heads: list[str] = Field(default_factory=lambda: ["score"], min_length=1,
                             description="names of the model's outputs (one scalar head each; the saved model's "
                             "labels); a reward_model component picks one by name")
    preference_columns: Optional[dict[str, str]] = Field(
        None, description="per head, the data column saying which completion that objective prefers: 1 (chosen), "
        "-1 (rejected), 0 or null (no preference: the head gets no loss from the pair). Heads not named here "
        "prefer chosen. Unset: every head prefers chosen")
    margin_column: Optional[str] = Field(
        None, description="a numeric column m: loss -log sigmoid(r_preferred - r_other - m) (Llama-2's margin)")
    center_coef: float = Field(0.0, ge=0, description="+ coef * mean((r_chosen + r_rejected)^2): keeps rewards "
                               "centred on 0 (TRL's center_rewards_coefficient; 0.01 is the usual value)")
    batch_size: int = Field(32, ge=1, description="preference pairs per optimizer step")
    max_length: int = Field(512, ge=4, description="tokens per prompt + completion; longer pairs lose their tail")

    @model_validator(mode="after")
    def _columns(self) -> "RMConfig":
        check_heads(self.heads, self.preference_columns)
        return self


class MAHDPOConfig(Strict):
    """MAH-DPO: a multi-head policy (K LM heads on one trunk, all starting as the reference's head); head k is
    trained by DPO on objective k's preference labels, the trunk by every head's loss. Generation mixes the heads'
    logits (``mix``; evaluation also at ``eval_mixes``). Checkpoints keep the heads (rlhf/models/multihead.py)."""

    kind: Literal["mah_dpo"] = "mah_dpo"
    heads: list[str] = Field(..., min_length=1, description="the objectives, one LM head each, in head order "
                             "(names used in metrics: head/NAME/pair_acc/OBJECTIVE, and by `rlhf export --mix`)")
    preference_columns: Optional[dict[str, str]] = Field(
        None, description="per head, the data column with its objective's label: 1 (chosen preferred), -1 "
        "(rejected preferred), 0 or null (no preference: the pair gives that head no loss). Heads not named "
        "here read the column named as the head")
    beta: float = Field(0.1, gt=0, description="DPO beta of every head (strength of the implicit KL to the "
                        "reference, the initial single-head model)")
    nll_coef: float = Field(0.0, ge=0, description="weight of an NLL term per head on each labelled pair's "
                            "preferred completion, per token (RPO-style): keeps each head's likelihood of the answers "
                            "its objective prefers, so the trunk cannot drift a head into malformed text; 0 = none")
    mix: Optional[list[float]] = Field(
        None, description="the default mix: generation uses logits sum_k mix_k logits_k, and the saved model/'s "
        "lm_head is the merged head sum_k mix_k W_k (what an ordinary HF / vLLM load serves); default uniform")
    eval_mixes: Optional[list[list[float]]] = Field(
        None, description="evaluation generates greedily from the held-out prompts at each of these mixes and "
        "scores the completions with the recipe's reward components (eval/mix/I/COMPONENT); default: each head "
        "alone, then the uniform mix. No reward components: no generation at evaluation")
    batch_size: int = Field(32, ge=1, description="preference pairs per optimizer step")
    max_length: int = Field(512, ge=4, description="tokens per prompt + completion; longer pairs lose their tail")

    @model_validator(mode="after")
    def _heads(self) -> "MAHDPOConfig":
        check_heads(self.heads, self.preference_columns)
        K = len(self.heads)
        for where, mix in [("mix", self.mix), *((f"eval_mixes.{i}", m) for i, m in enumerate(self.eval_mixes or []))]:
            if mix is not None and len(mix) != K:
                raise ValueError(f"objective.{where}: {mix} needs {K} weights, one per head {self.heads}")
        return self

    def column_of(self, head: str) -> str:
        """The data column holding ``head``'s preference labels."""
        return (self.preference_columns or {}).get(head, head)

    def resolved_eval_mixes(self) -> list[list[float]]:
        """``eval_mixes``, or each head alone then the uniform mix."""
        if self.eval_mixes is not None:
            return [list(m) for m in self.eval_mixes]
        K = len(self.heads)
        alone = [[float(j == k) for j in range(K)] for k in range(K)]
        return alone + ([[1.0 / K] * K] if K > 1 else [])


ObjectiveConfig = Union[
    GRPOConfig, GiGPOConfig, RLOOConfig, RSFConfig, ReinforcePPConfig, PPOConfig, OnlineDPOConfig, DPOConfig,
    MODPOConfig, CGPOConfig, PRMObjectiveConfig, RMConfig, MAHDPOConfig,
]


class SFTObjectiveConfig(Strict):
    """Supervised fine-tuning (used by the warm-up stage; not yet a main `objective:`)."""

    kind: Literal["sft"] = "sft"
