"""Shared helpers for the benchmarks: arguments, Ray, timing, machine facts, and writing results.

Every benchmark reports ratios of two things measured in the same run on the same machine, so the figures
travel between machines better than absolute seconds do. Each writes ``NAME.json`` (every number it measured)
and ``NAME.md`` (a table and a verdict) under ``--out`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

DEFAULT_OUT = str(Path(__file__).resolve().parent / "results")
REPO_ROOT = Path(__file__).resolve().parent.parent

# What every Ray worker of a benchmark needs: no hub, DeepSpeed on CPU when there is no GPU, quiet tokenizers.
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def setup_env() -> None:
    """Process-level settings every benchmark wants before torch / transformers / Ray are imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: let the benchmark fail where it imports it
        return False


def parse_args(argv: Sequence[str] | None, description: str, **extra: dict[str, Any]) -> argparse.Namespace:
    """``--quick`` (a tiny run, for smoke tests) and ``--out DIR``, plus benchmark-specific flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds): checks the bench works, not the figures")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"directory for NAME.json / NAME.md (default {DEFAULT_OUT})")
    for flag, kwargs in extra.items():
        p.add_argument(flag, **kwargs)
    return p.parse_args(list(argv) if argv is not None else None)


@contextlib.contextmanager
def ray_running(num_cpus: int = 2) -> Iterator[bool]:
    """Use the running Ray, or start a local one and shut it down at the end; yields True when we started it."""
    import ray

    started = False
    if not ray.is_initialized():
        env = dict(WORKER_ENV)
        env["DS_ACCELERATOR"] = os.environ.get("DS_ACCELERATOR", "cpu")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING,
                 runtime_env={"env_vars": env})
        started = True
    try:
        yield started
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def repeat_times(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of `repeats` calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def summary(values: Sequence[float]) -> dict[str, float]:
    """median, min, max and count of a list of seconds (the median is the figure; min/max show the spread)."""
    vals = [float(v) for v in values]
    return {"median": median(vals), "min": min(vals) if vals else math.nan, "max": max(vals) if vals else math.nan,
            "n": len(vals)}


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def is_finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """Cores, memory, date, versions: what a reader needs to compare two result files."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for mod in ("ray", "deepspeed", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    try:
        info["load_avg_1m"] = os.getloadavg()[0]  # a shared machine: how busy it was when we started
    except OSError:
        pass
    return info


def _cpu_model() -> str | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total_gib() -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ""
    return (f"{info['cores_usable']} cores ({info.get('cpu_model') or 'unknown CPU'}), {info.get('memory_gib')} GiB"
            f"{gpu}; torch {info['torch']}, ray {info.get('ray')}, deepspeed {info.get('deepspeed')}; "
            f"load {info.get('load_avg_1m', float('nan')):.2f} at start; {info['date']}")


# --------------------------------------------------------------------------- results


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            if not math.isfinite(x):
                return "–"
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out_dir: str, name: str, result: dict[str, Any], markdown: str) -> dict[str, str]:
    """Write OUT/NAME.json (with NaN written as null) and OUT/NAME.md; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(json_path, "w") as f:
        json.dump(_nan_to_none(result), f, indent=1)
        f.write("\n")
    with open(md_path, "w") as f:
        f.write(markdown.rstrip() + "\n")
    return {"json": json_path, "markdown": md_path}


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def header(title: str, command: str, info: dict[str, Any], quick: bool) -> str:
    note = "\n\n**--quick run: a smoke test, not a measurement.**" if quick else ""
    return f"# {title}\n\n`{command}` — {machine_line(info)}{note}\n"


def earlier_result(out_dir: str, name: str) -> dict[str, Any] | None:
    """The last full (not --quick) OUT/NAME.json, or None: what a bench re-running one of its parts keeps."""
    path = os.path.join(out_dir, f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        earlier = json.load(f)
    return None if earlier.get("quick") else earlier


def read_metrics(path: str, phase: str = "rl") -> list[dict[str, Any]]:
    """The records of one phase from a run's metrics.jsonl."""
    with open(path) as f:
        return [r for r in (json.loads(line) for line in f if line.strip()) if r.get("phase") == phase]


def curve(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every record that has ``key``."""
    return [(r["step"], r[key]) for r in records if r.get(key) is not None]


# The task every bench measured (the demo's until 2026-12-07, when the demo moved to operands 0-20 so that its
# gain is unmistakable): pinned here so the published bench figures stay the figures of this code.
BENCH_TASK = ("data.synthetic.max_operand=30", "data.synthetic.n_train=1700", "eval.every=0")


# Recipe defaults that changed on 2026-12-08 (issue 20): train.packing and rollout.hf.decode went from off /
# generate to auto, train.precision from fp32 to auto. A bench whose published figures were measured before passes
# these overrides until it is re-measured, so that its figures stay the figures of the code it runs; bench/README.md
# says which benches do.
FORMER_DEFAULTS_DICT = {"train": {"packing": {"enabled": False}, "precision": "fp32"},
                        "rollout": {"hf": {"decode": "generate"}}}


def _dotted(d: dict[str, Any], prefix: str = "") -> list[str]:
    """A nested recipe dict as KEY=VALUE overrides (YAML scalars: false, fp32)."""
    out = []
    for key, value in d.items():
        if isinstance(value, dict):
            out += _dotted(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


FORMER_DEFAULTS = tuple(_dotted(FORMER_DEFAULTS_DICT))  # the same as overrides, for load_recipe / tiny_recipe


def with_former_defaults(d: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict with FORMER_DEFAULTS_DICT merged into its sections (for benches that build Recipe dicts)."""
    out = dict(d)
    for section, values in FORMER_DEFAULTS_DICT.items():
        out[section] = {**values, **out.get(section, {})}
    return out


def tiny_recipe(overrides: Sequence[str], output_dir: str, edit: Callable[[dict], None] | None = None):
    """recipes/grpo_tiny_cpu.yaml on the bench task (BENCH_TASK) with `overrides`, writing into `output_dir`,
    optionally edited as a dict (e.g. to replace the reward list) and validated again."""
    from rlhf.config import load_recipe
    from rlhf.config.schema import Recipe

    recipe = load_recipe(REPO_ROOT / "recipes" / "grpo_tiny_cpu.yaml",
                         [*BENCH_TASK, *overrides, f"run.output_dir={output_dir}"])
    if edit is None:
        return recipe
    data = recipe.model_dump(mode="json")
    edit(data)
    return Recipe.model_validate(data)


def without_vllm(name: str, title: str, command: str, info: dict[str, Any], quick: bool, out_dir: str) -> dict[str, Any]:
    """The result of a bench that compares against the vllm engine when vllm is not installed: says so, no ratios."""
    md = header(title, command, info, quick)
    md += "\nvllm is not installed: nothing to compare (`RLHF_WITH_VLLM=1 . scripts/setup.sh`).\n"
    result = {"bench": name, "machine": info, "quick": quick, "skipped": "vllm not installed",
              "ratios": {}, "required_ratios": []}
    write_results(out_dir, name, result, md)
    print(md)
    return result


def save_figure(plt, fig, out_dir: str, name: str) -> str:
    """Lay out, write OUT/NAME.png and close the figure; returns the path."""
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_result(result: dict[str, Any]) -> None:
    """What `python -m bench.NAME` prints at the end: the ratios, then where the markdown went."""
    print({k: round(v, 4) if is_finite_positive(v) else v for k, v in result["ratios"].items()})
    print(result["paths"]["markdown"])


def probe_seconds(repeats: int = 5) -> float:
    """Median seconds of a fixed CPU workload (float32 matmuls on torch's default threads): how fast the machine
    is right now. Taken before and after each side, it estimates how much outside load each side ran under."""
    import statistics

    import torch

    a = torch.randn(384, 384, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = a
        for _ in range(40):
            x = torch.tanh(x @ a)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
