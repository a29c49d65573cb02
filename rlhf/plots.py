"""Training curves from a run's metrics.jsonl, as one PNG people can look at instead of reading numbers.

    rlhf plot runs/grpo_tiny_cpu            # -> runs/grpo_tiny_cpu/curves.png

Panels: every reward component's batch mean (a smoothed line over the raw points) with the held-out evals; KL and
the policy loss; the step time split by phase; for agent runs (rollout.kind: agent), the episodes: turns per
episode, tool calls, how episodes ended; under async the actor groups' busy shares and staleness; the peak memory
of each actor group (memory/peak_*). Needs matplotlib (the `plot` or `dev` extra).
"""

from __future__ import annotations

import json
import os
from typing import Any


def _records(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics here; is {run_dir} a run's output_dir?")
    return [json.loads(line) for line in open(path) if line.strip()]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-window:]
        out.append(sum(acc) / len(acc))
    return out


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _training(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("phase") not in ("eval", "sft")]


def has_training_steps(run_dir: str) -> bool:
    """Whether the run's metrics.jsonl holds a training step to plot (not so for `run.steps=0`: warm-up or
    evaluation only)."""
    return bool(_training(_records(run_dir)))


def plot_run(run_dir: str, out_path: str | None = None) -> str:
    plt = pyplot()
    if plt is None:
        raise RuntimeError("rlhf plot needs matplotlib: pip install 'rlhf-platform[plot]'")

    records = _records(run_dir)
    train = _training(records)
    evals = [r for r in records if r.get("phase") == "eval"]
    if not train:
        raise ValueError(f"{run_dir}: metrics.jsonl has no training steps yet")
    components = sorted({k.split("/")[1] for r in train for k in r if k.startswith("reward/") and k.endswith("/mean")
                         and k.count("/") == 2})
    agent = any("agent/turns_mean" in r for r in train)
    asynchronous = any("async/queue_depth" in r for r in train)  # pipeline.max_staleness >= 1
    memory = any(k.startswith("memory/peak_") for r in train for k in r)
    extra = [panel for panel, on in ((_agent_panel, agent), (_async_panel, asynchronous), (_memory_panel, memory))
             if on]
    fig, axes = plt.subplots(1, 3 + len(extra), figsize=(16 + 5 * len(extra), 4.5))
    window = max(1, len(train) // 20)

    ax = axes[0]
    # on-policy runs: each reward component; preference runs (DPO, MODPO): pair accuracy and reward margin
    series = {name: f"reward/{name}/mean" for name in components} or {
        "pair accuracy": "rewards/accuracy", "reward margin": "rewards/margin"}
    held_out = components or ["pref_accuracy", "reward_margin"]
    for name, key in series.items():
        steps, vals = _series(train, key)
        line, = ax.plot(steps, _smooth(vals, window), label=name)
        ax.scatter(steps, vals, s=4, alpha=0.25, color=line.get_color())
    for key in sorted({k for r in evals for k in r if k.startswith("eval/") and k.split("/")[1] in held_out}):
        steps, vals = _series(evals, key)
        ax.plot(steps, vals, "o--", label=f"held-out {key.split('/')[1]}")
    ax.set_title(("reward components" if components else "preference pairs") + " (dashed: held-out eval)")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)

    ax = axes[1]
    for key, label in (("kl", "KL to reference"), ("loss/policy", "policy loss"), ("loss/dpo", "DPO loss"),
                       ("critic/loss/value", "value loss")):
        steps, vals = _series(train, key)
        if steps:
            ax.plot(steps, _smooth(vals, window), label=label)
    ax.set_title("KL and losses")
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    ax = axes[2]
    phases = [p for p in ("generate", "score", "advantages", "train", "sync")
              if any(f"time/{p}" in r for r in train)] or ["step"]  # preference stages: the whole step
    steps = [r["step"] for r in train]
    bottom = [0.0] * len(train)
    for p in phases:
        vals = [float(r.get(f"time/{p}") or 0.0) for r in train]
        ax.bar(steps, vals, bottom=bottom, width=1.0, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("step time by phase (s)" + (": phases overlap under async" if asynchronous else ""))
    ax.set_xlabel("step")
    if phases:
        ax.legend(fontsize=8)

    for i, panel in enumerate(extra):
        panel(axes[3 + i], train, evals, window)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out_path = out_path or os.path.join(run_dir, "curves.png")
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path


def _agent_panel(ax: Any, train: list[dict[str, Any]], evals: list[dict[str, Any]], window: int) -> None:
    """Agent episodes: turns per episode (left axis), rates of tool use and of how episodes ended (right axis)."""
    steps, vals = _series(train, "agent/turns_mean")
    ax.plot(steps, _smooth(vals, window), color="black", label="turns per episode")
    steps, vals = _series(evals, "eval/agent/turns_mean")
    if steps:
        ax.plot(steps, vals, "o--", color="black", label="held-out turns")
    ax.set_ylabel("turns")
    rates = ax.twinx()
    for key, label in (("agent/episodes_with_tool_call", "episodes with a tool call"),
                       ("agent/end/done", "ended: done"), ("agent/end/max_turns", "ended: max_turns"),
                       ("agent/end/max_tokens", "ended: max_tokens"), ("agent/end/error", "ended: error")):
        steps, vals = _series(train, key)
        if steps and any(vals):
            rates.plot(steps, _smooth(vals, window), label=label, alpha=0.8)
    rates.set_ylim(-0.02, 1.02)
    rates.set_ylabel("rate")
    ax.set_title("agent episodes")
    ax.set_xlabel("step")
    lines = ax.get_legend_handles_labels()
    more = rates.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)


def _async_panel(ax: Any, train: list[dict[str, Any]], evals: list[dict[str, Any]], window: int) -> None:
    """Async pipeline: each actor group's busy share of the step (left axis), the samples' staleness (by their oldest
    token, and per token), the share of samples a weight sync split (keep mode) and the share of tokens the off-policy
    correction dropped or truncated (right axis)."""
    for key, label in (("busy/engines", "engines busy"), ("busy/rewards", "reward workers busy"),
                       ("busy/trainers", "trainers busy")):
        steps, vals = _series(train, key)
        if steps:
            ax.plot(steps, _smooth(vals, window), label=label)
    ax.set_ylabel("share of the step")
    right = ax.twinx()
    for key, label, style in (("async/staleness_mean", "staleness (versions)", "k--"),
                              ("async/token_staleness_mean", "staleness per token", "k:"),
                              ("async/mixed_version_share", "samples a sync split", "g-."),
                              ("offpolicy/masked_frac", "tokens dropped", "r:"),
                              ("offpolicy/truncated_frac", "tokens truncated", "m:")):
        steps, vals = _series(train, key)
        if steps:
            right.plot(steps, _smooth(vals, window), style, label=label)
    right.set_ylabel("versions / share")
    ax.set_title("async pipeline")
    ax.set_xlabel("step")
    lines, more = ax.get_legend_handles_labels(), right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)


def _memory_panel(ax: Any, train: list[dict[str, Any]], evals: list[dict[str, Any]], window: int) -> None:
    """Peak memory per actor group (GiB): resident memory of the largest rank / engine, and GPU memory on GPUs."""
    keys = sorted({k for r in train for k in r if k.startswith("memory/peak_")})
    for key in keys:
        steps, vals = _series(train, key)
        kind, group = key.split("/")[1].removeprefix("peak_").removesuffix("_gb"), key.split("/")[2]
        ax.plot(steps, vals, "-" if kind == "rss" else "--", label=f"{group} ({kind})")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("GiB")
    ax.set_title("peak memory per actor group")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
