"""The memory plan of a recipe: one table per kind of GPU (training rank, PPO critic rank, rollout engine; or the
shared GPU of a colocated run), whether everything fits, and the first recipe key to change when it does not.

    setup = setup_of(recipe)                       # what the planner reads from a validated recipe
    plan = make_plan(setup, nodes=1, gpus_per_node=None, gpu_gib=80)
    print(render(plan)); plan.fits; plan.verdict

Remedies, in this order: for the engines rollout.vllm.max_model_len, gpu_memory_utilization (higher when split,
lower when colocated), rollout.vllm.sleep (colocated), tensor_parallel_size, rollout.dtype; for the training
ranks train.gradient_checkpointing=true, a lower train.micro_batch_size, train.zero_stage=3, model.lora.enabled=true.
Each alone first, then together (keeping each that lowers the largest GPU's peak); last more training ranks (ZeRO
shards the states over more GPUs), alone or with those changes, whichever needs fewer GPUs. The figures are in
rlhf/plan/memory.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from rlhf.plan import memory as mem
from rlhf.plan.architectures import Architecture, resolve_architecture

GIB = mem.GIB


@dataclass(frozen=True)
class Setup:
    """Everything the figures depend on, read from a recipe (remedies change copies of it)."""

    arch: Architecture
    weight_bytes: int
    precision: str
    backend: str
    zero_stage: int
    ranks: int
    micro_batch_size: int
    rows: int  # training rows of one optimizer step on all ranks (sequences, or pairs)
    seqs_per_row: int  # 2 for preference pairs
    seq_len: int
    prompt_tokens: int
    logit_positions: int  # scored positions per sequence; 0: a score head (no vocabulary logits)
    checkpointing: bool
    lora_r: int  # 0: no LoRA
    lora_targets: Any
    reference: bool
    critic_ranks: int  # 0: no critic
    critic_heads: int
    score_heads: int
    engine: str  # hf | vllm | "" (no rollouts)
    engines: int
    engine_bytes: int
    tensor_parallel: int
    utilization: float
    sleep: bool
    enforce_eager: bool
    batch_size: int
    max_model_len: int
    colocated: bool
    model_label: str = ""

    @property
    def engine_gpus(self) -> int:
        return 0 if not self.engine or self.colocated else self.engines * self.tensor_parallel

    @property
    def gpus_needed(self) -> int:
        return self.ranks + self.critic_ranks + self.engine_gpus

    def micro(self, ranks: int) -> int:
        """Rows per forward/backward: the largest divisor of the rank's rows <= train.micro_batch_size."""
        per_rank = max(1, self.rows // ranks)
        m = min(per_rank, self.micro_batch_size)
        while per_rank % m:
            m -= 1
        return m


def setup_of(recipe: Any) -> Setup:
    """The planner's view of a validated recipe (PlanError when its model's architecture cannot be known)."""
    from rlhf.config.registry import capabilities

    caps = capabilities(recipe.objective)
    arch = resolve_architecture(recipe.model)
    t, r, m, obj = recipe.train, recipe.rollout, recipe.model, recipe.objective
    pairs_stage = caps.stage == "online_pairs" or caps.data in ("pairs", "rm_pairs")
    if caps.rollouts:
        seq_len, prompt = recipe.data.max_prompt_tokens + r.completion_tokens, recipe.data.max_prompt_tokens
        rows = r.prompts_per_step if pairs_stage else r.prompts_per_step * r.group_size // caps.mini_batches
        positions = seq_len if pairs_stage else r.completion_tokens
    else:
        seq_len, prompt = obj.max_length, obj.max_length
        rows, positions = obj.batch_size, obj.max_length
    critic = getattr(obj, "critic", None) if caps.critic else None
    lora = m.lora if m.lora is not None and m.lora.enabled else None
    source = "model.tiny" if m.tiny is not None else m.path
    return Setup(
        arch=arch, weight_bytes=mem.DTYPE_BYTES[m.dtype], precision=t.precision, backend=t.backend,
        zero_stage=t.zero_stage if t.backend == "deepspeed" else 0, ranks=t.num_ranks,
        micro_batch_size=t.micro_batch_size, rows=rows, seqs_per_row=2 if pairs_stage else 1, seq_len=seq_len,
        prompt_tokens=prompt, logit_positions=0 if caps.score_heads else positions,
        checkpointing=t.gradient_checkpointing, lora_r=lora.r if lora else 0,
        lora_targets=lora.target_modules if lora else "all-linear", reference=caps.needs_reference,
        critic_ranks=(critic.num_ranks or t.num_ranks) if critic is not None else 0,
        critic_heads=(len(recipe.rewards) + 1) if critic is not None and critic.vector else 1,
        score_heads=len(caps.score_heads), engine=r.engine if caps.rollouts else "", engines=r.num_engines,
        engine_bytes=mem.DTYPE_BYTES[recipe.engine_dtype], tensor_parallel=r.vllm.tensor_parallel_size,
        utilization=r.vllm.gpu_memory_utilization, sleep=r.vllm.sleep, enforce_eager=r.vllm.enforce_eager,
        batch_size=r.batch_size, max_model_len=r.vllm.max_model_len or arch.max_position_embeddings,
        colocated=r.placement == "colocated" and caps.rollouts, model_label=str(source))


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    count: int
    rows: list[tuple[str, float, str]] = field(default_factory=list)  # (what, bytes, note)
    peak: float = 0.0
    note: str = ""


@dataclass
class Plan:
    setup: Setup
    gpu_bytes: float
    nodes: int
    gpus_per_node: int
    tables: list[Table]
    problems: list[str]  # empty: it fits
    verdict: str = ""
    remedy: str | None = None

    @property
    def fits(self) -> bool:
        return not self.problems


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def _train_rows(s: Setup, critic: bool) -> tuple[list[tuple[str, float, str]], float, float]:
    """(rows, resident bytes, peak bytes) of one policy (or critic) training rank."""
    a, w, p = s.arch, s.weight_bytes, mem.compute_bytes(s.weight_bytes, s.precision)
    ranks = s.critic_ranks if critic else s.ranks
    lora = 0 if critic else (a.lora_params(s.lora_r, s.lora_targets) if s.lora_r else 0)
    if critic:
        trainable, frozen = a.backbone_params + s.critic_heads * (a.hidden_size + 1), 0
    elif s.score_heads:
        trainable, frozen = a.backbone_params + s.score_heads * a.hidden_size, 0
    else:
        trainable, frozen = (lora, a.num_params) if lora else (a.num_params, 0)
    st = mem.model_states(trainable, frozen, w, ranks, s.zero_stage, s.backend, a.largest_module_params)
    shard = {0: "full copy", 1: "optimizer sharded", 2: "grads + optimizer sharded", 3: "all sharded"}
    how = "torch AdamW" if s.backend == "torch" else f"ZeRO-{s.zero_stage} over {ranks}: {shard[s.zero_stage]}"
    micro = s.micro(ranks)
    seqs = micro * s.seqs_per_row
    positions = 0 if critic else s.logit_positions
    act = mem.activation_bytes(a, w, p, seqs, s.seq_len, positions, s.checkpointing)
    other = mem.activation_bytes(a, w, p, seqs, s.seq_len, positions, not s.checkpointing)
    dtype = {4: "float32", 2: "16-bit"}[w]
    pnote = f"{trainable + frozen:,} in {dtype}" + (f" ({trainable:,} LoRA adapter, base frozen)" if lora else "")
    rows = [
        ("parameters", st.params, f"{pnote}; {how}"),
        ("gradients", st.grads, "trainable only" if lora else ""),
        ("optimizer state", st.optimizer, "AdamW: 2 fp32 moments" + (" + fp32 master" if s.backend != "torch"
                                                                       and mem.has_master_copy(w, s.zero_stage)
                                                                       else "")),
    ]
    if st.step:
        rows.append(("optimizer step buffer", st.step, "fp32 gradients at the step (not with activations)"))
    if st.gathered:
        rows.append(("ZeRO-3 gathered module", st.gathered, f"{a.largest_module_params:,} params + grad"))
    ck = "on" if s.checkpointing else "off"
    rows.append(("activations", act, f"{seqs} seq x {s.seq_len} tok, checkpointing {ck} "
                 f"({'off' if s.checkpointing else 'on'}: {_gib(other)})"))
    ref = 0.0
    if s.reference and not critic:
        if lora:
            rows.append(("reference model", 0.0, "-- the base with the adapter disabled (no copy)"))
        elif s.zero_stage == 3:  # a DeepSpeed ZeRO-3 inference engine: partitioned like the policy
            ref = a.num_params * w / s.ranks
            rows.append(("reference model", ref, f"sharded over {s.ranks} ranks (ZeRO-3 inference engine)"))
        else:
            ref = a.num_params * w
            rows.append(("reference model", ref, "-- a full copy on every rank (ZeRO-3 would shard it)"))
    overhead = mem.CUDA_OVERHEAD_GIB * GIB
    rows.append(("CUDA/NCCL overhead", overhead, "context, communication buffers, fragmentation"))
    resident = st.total + ref + overhead
    return rows, resident, resident + max(act, st.step)


def _engine(s: Setup, gpu: float) -> mem.EngineMemory:
    if s.engine == "vllm":
        return mem.vllm_engine(s.arch, s.engine_bytes, s.tensor_parallel, s.utilization, gpu, s.batch_size,
                               s.seq_len, s.max_model_len, s.enforce_eager)
    return mem.hf_engine(s.arch, s.engine_bytes, s.batch_size, s.prompt_tokens, s.seq_len)


def _engine_rows(s: Setup, e: mem.EngineMemory) -> list[tuple[str, float, str]]:
    tp = f" / TP {s.tensor_parallel}" if s.engine == "vllm" and s.tensor_parallel > 1 else ""
    rows = [("engine weights", e.weights, f"{s.engine}, {s.arch.num_params:,} params x {s.engine_bytes} B{tp}"),
            ("engine activations + overhead", e.other, "profile run, sampler, CUDA context"),
            ("KV cache", e.kv_cache, f"{e.kv_per_token:,} B/token: {e.sequences} sequences of {s.seq_len} tokens"
             + (f" (the rest of gpu_memory_utilization {s.utilization:g} x GPU)" if s.engine == "vllm" else
                f" (rollout.batch_size {s.batch_size})"))]
    return rows


def evaluate(s: Setup, gpu: float, nodes: int, gpus_per_node: int) -> Plan:
    """The tables and the problems of `s` on `nodes` x `gpus_per_node` GPUs of `gpu` bytes."""
    tables, problems = [], []
    rows, resident, peak = _train_rows(s, critic=False)
    train = Table("training GPU" + (" (shared with its engine)" if s.colocated else ""), s.ranks, rows, peak)
    tables.append(train)
    if s.engine:
        e = _engine(s, gpu)
        if s.colocated:
            train.rows += [(f"engine: {r[0]}", r[1], r[2]) for r in _engine_rows(s, e)]
            awake = e.reserved if s.engine == "vllm" else e.weights + e.other + e.kv_cache
            context = mem.CUDA_OVERHEAD_GIB * GIB  # the engine process's own, while training runs
            asleep = context if s.sleep and s.engine == "vllm" else (
                e.weights + context if s.engine == "hf" else awake)
            generating, training = resident + awake, peak + asleep
            train.peak = max(generating, training)
            train.note = (f"generating {_gib(generating)} GiB, training {_gib(training)} GiB"
                          + (" (engine asleep)" if s.sleep and s.engine == "vllm" else ""))
        else:
            tables.append(Table(f"engine GPU ({s.engine})", s.engine_gpus, _engine_rows(s, e),
                                e.reserved if s.engine == "vllm" else e.weights + e.other + e.kv_cache))
        if e.kv_cache <= 0 or e.sequences < 1:
            problems.append(f"the {s.engine} engine has no room for a KV cache of one {s.seq_len}-token sequence")
        elif not e.model_len_fits:
            problems.append(f"vLLM's KV cache ({_gib(e.kv_cache)} GiB) cannot hold one max_model_len = "
                            f"{s.max_model_len}-token sequence; vLLM refuses to start")
    if s.critic_ranks:
        rows, _, cpeak = _train_rows(s, critic=True)
        tables.append(Table("critic GPU (PPO value model)", s.critic_ranks, rows, cpeak))
    for t in tables:
        if t.peak > gpu:
            problems.append(f"{t.title} needs {_gib(t.peak)} GiB of {gpu / GIB:g}")
    if s.gpus_needed > nodes * gpus_per_node:
        problems.append(f"needs {s.gpus_needed} GPUs, {nodes} x {gpus_per_node} given")
    if s.engine == "vllm" and not s.colocated and s.tensor_parallel > gpus_per_node:
        problems.append(f"rollout.vllm.tensor_parallel_size {s.tensor_parallel} > {gpus_per_node} GPUs per node")
    return Plan(s, gpu, nodes, gpus_per_node, tables, problems)


# --------------------------------------------------------------------------- remedies


def _candidates(s: Setup, gpus_per_node: int) -> Iterator[tuple[str, Setup]]:
    """Single changes of `s`, in the order they are proposed."""
    if s.engine == "vllm":
        if s.max_model_len > s.seq_len:
            yield f"rollout.vllm.max_model_len={s.seq_len}", replace(s, max_model_len=s.seq_len)
        if not s.colocated and s.utilization < 0.9:
            yield "rollout.vllm.gpu_memory_utilization=0.9", replace(s, utilization=0.9)
        if s.colocated and not s.sleep:
            yield "rollout.vllm.sleep=true", replace(s, sleep=True)
        if s.colocated:
            for u in (0.4, 0.3, 0.2):
                if u < s.utilization:
                    yield f"rollout.vllm.gpu_memory_utilization={u}", replace(s, utilization=u)
        tp = s.tensor_parallel * 2
        while not s.colocated and tp <= gpus_per_node and s.arch.num_attention_heads % tp == 0:
            yield f"rollout.vllm.tensor_parallel_size={tp}", replace(s, tensor_parallel=tp)
            tp *= 2
    if s.engine and s.engine_bytes == 4:
        yield "rollout.dtype=bfloat16", replace(s, engine_bytes=2)
    if not s.checkpointing:
        yield "train.gradient_checkpointing=true", replace(s, checkpointing=True)
    micro = s.micro(s.ranks)
    for m in range(micro - 1, 0, -1):
        if replace(s, micro_batch_size=m).micro(s.ranks) == m:
            yield f"train.micro_batch_size={m}", replace(s, micro_batch_size=m)
    if s.backend == "deepspeed" and s.zero_stage < 3 and not s.lora_r:
        yield "train.zero_stage=3", replace(s, zero_stage=3)
    if not s.lora_r and not s.score_heads:
        keys = "model.lora.enabled=true" + (" train.zero_stage=2" if s.zero_stage == 3 else "")
        yield keys, replace(s, lora_r=8, lora_targets="all-linear", zero_stage=min(s.zero_stage, 2))
    if s.backend == "deepspeed" and s.zero_stage >= 1:
        for n in range(s.ranks + 1, 1025):
            if s.rows % n == 0:
                keys = f"train.num_ranks={n}" + (f" rollout.num_engines={n}" if s.colocated else "")
                yield keys, replace(s, ranks=n, engines=n if s.colocated else s.engines)


def _worst(plan: Plan) -> float:
    return max(t.peak for t in plan.tables)


def _is_ranks(keys: str) -> bool:
    return keys.startswith("train.num_ranks=")


def remedy(s: Setup, gpu: float, nodes: int, gpus_per_node: int) -> tuple[str, Plan] | None:
    """The first change that makes `s` fit: a single recipe change (in _candidates' order), else those changes
    together (in order, keeping each that lowers the largest GPU's peak), else more training ranks, alone or
    with those changes (whichever needs fewer GPUs); None when nothing fits. Any number of GPUs is allowed."""
    big = 1 << 20
    for keys, cand in _candidates(s, gpus_per_node):
        if not _is_ranks(keys) and (p := evaluate(cand, gpu, nodes, big)).fits:
            return keys, p
    chosen, cur, best = [], s, evaluate(s, gpu, nodes, big)
    for keys in [k for k, _ in _candidates(s, gpus_per_node) if not _is_ranks(k)]:
        trial = next((c for k, c in _candidates(cur, gpus_per_node) if k == keys), None)
        if trial is None:
            continue
        p = evaluate(trial, gpu, nodes, big)
        if p.fits:
            return " ".join(chosen + [keys]), p
        if _worst(p) < _worst(best) or len(p.problems) < len(best.problems):
            chosen, cur, best = chosen + [keys], trial, p
    found = []  # more ranks alone, or with the changes above: whichever needs fewer GPUs
    for base, prefix in ((s, []), (cur, chosen)):
        for keys, cand in _candidates(base, gpus_per_node):
            if _is_ranks(keys) and (p := evaluate(cand, gpu, nodes, big)).fits:
                found.append((cand.gpus_needed, len(found), " ".join(prefix + [keys]), p))
                break
    return min(found)[2:] if found else None


def make_plan(s: Setup, nodes: int = 1, gpus_per_node: int | None = None, gpu_gib: float = 80.0) -> Plan:
    """The plan of `s` with its verdict and, when it does not fit, the first change that makes it fit."""
    gpn = gpus_per_node or max(1, -(-s.gpus_needed // nodes))
    gpu = gpu_gib * GIB
    plan = evaluate(s, gpu, nodes, gpn)
    largest = max(plan.tables, key=lambda t: t.peak)
    if plan.fits:
        plan.verdict = (f"fits: the largest is the {largest.title} at {_gib(largest.peak)} GiB of {gpu_gib:g} GiB "
                        f"({largest.peak / gpu:.0%}) on {nodes} x {gpn} GPUs")
        return plan
    plan.verdict = "does not fit: " + "; ".join(plan.problems)
    if evaluate(s, gpu, 1, 1 << 20).fits:  # only short of GPUs
        plan.verdict += ". Give more GPUs (--nodes / --gpus-per-node)"
        return plan
    found = remedy(s, gpu, nodes, gpus_per_node or max(gpn, 8))  # tensor parallelism within a node
    if found is not None:
        keys, after = found
        figures = ", ".join(f"{t.title} {_gib(t.peak)} GiB" for t in after.tables)
        more = (f" on {after.setup.gpus_needed} GPUs" if after.setup.gpus_needed > nodes * gpn else "")
        plan.remedy = keys
        plan.verdict += f". First change: {keys} -> {figures}{more}"
    else:
        plan.verdict += (f". Nothing the planner tries fits {gpu_gib:g} GiB GPUs (the changes above, together, and "
                         "up to 1024 ranks): use larger GPUs or a smaller model")
    return plan


def render(plan: Plan, title: str = "") -> str:
    """The plan as plain-text tables and a verdict line."""
    s, a = plan.setup, plan.setup.arch
    lines = [title] if title else []
    kv, heads = a.num_key_value_heads, a.num_attention_heads
    gqa = f", GQA {heads}/{kv} heads" if kv < heads else ""
    lines.append(f"model: {s.model_label} ({a.model_type}): {a.num_params / 1e9:.3f}B parameters, vocab "
                 f"{a.vocab_size}, {a.num_hidden_layers} layers, hidden {a.hidden_size}{gqa}"
                 f"{', tied embeddings' if a.tie_word_embeddings else ''}")
    engines = (f"; {s.engines} {s.engine} engine(s), TP {s.tensor_parallel}, "
               f"{'colocated' if s.colocated else 'split'}" if s.engine else "; no rollout engines")
    lines.append(f"GPUs: {plan.nodes} node(s) x {plan.gpus_per_node} of {plan.gpu_bytes / GIB:g} GiB; "
                 f"{s.ranks} training rank(s){f', {s.critic_ranks} critic rank(s)' if s.critic_ranks else ''}"
                 f"{engines}")
    for t in plan.tables:
        lines.append("")
        lines.append(f"{t.title} x{t.count}".ljust(42) + "GiB".rjust(8) + "  note")
        for what, value, note in t.rows:
            lines.append(f"  {what}".ljust(42) + _gib(value).rjust(8) + (f"  {note}" if note else ""))
        lines.append("  peak".ljust(42) + _gib(t.peak).rjust(8) + f"  of {plan.gpu_bytes / GIB:g} GiB"
                     + (f"; {t.note}" if t.note else ""))
    lines.append("")
    lines.append(f"verdict: {plan.verdict}")
    return "\n".join(lines)
