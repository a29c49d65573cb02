"""Containment and cost of the code-execution sandbox: the hostile-program corpus, the time per sandboxed run vs a
plain ``python -c`` subprocess, and the throughput of ``code_tests`` with 1 and 2 concurrent runs.

    python -m bench.sandbox_corpus            # ~1.5 min on 2 cores
    python -m bench.sandbox_corpus --quick    # ~10 s: one attempt per group, few repeats (smoke test)

What is measured, in one run on one machine (the timings first: the corpus's fork bomb must not disturb them):
  1. the corpus (``rlhf/sandbox/corpus/``, the same one CI runs): every attempt in the default private view,
     contained / total, with each attempt's status and time; then every attempt again in the opt-in
     ``host_readonly`` view, to show what the private root adds;
  2. the time of one trivial run (``pass``), interleaved round-robin: ``run_python`` in the private view, in the
     host_readonly view, a plain ``subprocess.run([sys.executable, "-c", "pass"])`` (what a reward without a
     sandbox would start), and ``python -S -s -B -c pass`` (the flags the sandbox starts the interpreter with).
     Medians with min/max and the interquartile range; overhead = sandboxed / plain;
  3. throughput of the ``code_tests`` reward (through ``build_scorer``, as a recipe uses it) on a batch of
     completions against assert tests (half right, a quarter wrong, a quarter raising), with ``parallel: 1`` and
     ``parallel: 2``, alternating: programs per second; the 2 / 1 ratio on this 2-core machine.

Figures (ratios): contained share (private; must be 1), contained share in host_readonly, overhead per run
(private / plain, host_readonly / plain, private / host_readonly), throughput 2 / 1. On a machine whose kernel
refuses the private view, the bench says so and measures the host_readonly view only (throughput included).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from bench.common import header, machine_info, md_table, parse_args, print_result, ratio, summary, write_results

NAME = "sandbox_corpus"


def spread(values: Sequence[float]) -> dict[str, float]:
    """summary() plus the quartiles (the interquartile range is the spread a reader should trust)."""
    out = summary(values)
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
        out.update(q1=q1, q3=q3)
    else:
        out.update(q1=out["min"], q3=out["max"])
    return out


def run_corpus(quick: bool, filesystem: str) -> dict[str, Any]:
    from rlhf.sandbox import corpus

    attempts = corpus.ATTEMPTS
    if quick:  # one per group
        attempts = tuple({a.group: a for a in reversed(corpus.ATTEMPTS)}.values())
    base = dataclasses.replace(corpus.CORPUS_LIMITS, filesystem=filesystem)
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_sandbox_corpus_") as tmp, corpus.Host(tmp) as host:
        for attempt in attempts:
            outcome = corpus.run_attempt(attempt, host, base)
            rows.append({"name": attempt.name, "group": attempt.group, "goal": attempt.goal,
                         "enforced_by": attempt.enforced_by, "contained": outcome.contained,
                         "failures": list(outcome.failures), "status": outcome.result.status,
                         "seconds": outcome.seconds})
    contained = sum(r["contained"] for r in rows)
    return {"filesystem": filesystem, "attempts": rows, "contained": contained, "total": len(rows),
            "share": contained / len(rows), "wall_s": time.perf_counter() - start}


def run_overhead(rounds: int, private_ok: bool) -> dict[str, Any]:
    from rlhf.sandbox import SandboxLimits, run_python

    exe = sys.executable
    private, host = SandboxLimits(), SandboxLimits(filesystem="host_readonly")

    def sandboxed(limits: SandboxLimits):
        def call() -> None:
            result = run_python("pass", limits=limits)
            assert result.ok, result

        return call

    def plain(*flags: str):
        def call() -> None:
            subprocess.run([exe, *flags, "-c", "pass"], check=True)

        return call

    variants = {"private": sandboxed(private), "host_readonly": sandboxed(host), "plain": plain(),
                "plain_isolated_flags": plain("-S", "-s", "-B")}
    if not private_ok:
        del variants["private"]
    for call in variants.values():  # warm-up (the first private run resolves the runtime's libraries)
        call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    layers = run_python("pass", limits=private if private_ok else host).isolation
    seconds = {name: spread(v) for name, v in times.items()}
    seconds.setdefault("private", spread([float("nan")]))
    return {"rounds": rounds, "seconds": seconds, "raw": times, "isolation": list(layers)}


def run_throughput(batch: int, rounds: int, filesystem: str) -> dict[str, Any]:
    from rewards.api import build_scorer
    from rlhf.config.schema import RewardComponentConfig

    right = "```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    raising = "```python\ndef add(a, b):\n    raise ValueError('no')\n```"
    kinds = [right, right, wrong, raising]
    completions = [kinds[i % 4] for i in range(batch)]
    tests = ["assert add(1, 2) == 3\nassert add(-1, 1) == 0"] * batch
    expected = [1.0 if c is right else 0.0 for c in completions]
    scorers = {p: build_scorer(RewardComponentConfig(name="tests", plugin="code_tests",
                                                     args={"parallel": p, "filesystem": filesystem}))
               for p in (1, 2)}
    for scorer in scorers.values():  # warm-up
        scorer(["p"] * 2, completions[:2], {"tests": tests[:2]})
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for p, scorer in scorers.items():
            t0 = time.perf_counter()
            values = scorer(["p"] * batch, completions, {"tests": tests})
            seconds[p].append(time.perf_counter() - t0)
            assert [float(v) for v in values] == expected, values
    per_s = {p: [batch / s for s in v] for p, v in seconds.items()}
    return {"batch": batch, "rounds": rounds, "cores": len(os.sched_getaffinity(0)), "filesystem": filesystem,
            "programs_per_s": {str(p): spread(v) for p, v in per_s.items()},
            "seconds": {str(p): spread(v) for p, v in seconds.items()}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, __doc__.splitlines()[0])
    quick = args.quick
    info = machine_info()
    from rlhf.sandbox import isolation_layers

    private_ok = "private_root" in isolation_layers()
    overhead = run_overhead(5 if quick else 40, private_ok)
    throughput = run_throughput(8 if quick else 48, 1 if quick else 5, "private" if private_ok else "host_readonly")
    private = run_corpus(quick, "private") if private_ok else None
    host = run_corpus(quick, "host_readonly")
    sec, pps = overhead["seconds"], throughput["programs_per_s"]
    ratios = {
        "contained_share": private["share"] if private else float("nan"),
        "host_readonly_contained_share": host["share"],
        "overhead_private_vs_plain": ratio(sec["private"]["median"], sec["plain"]["median"]),
        "overhead_host_readonly_vs_plain": ratio(sec["host_readonly"]["median"], sec["plain"]["median"]),
        "private_vs_host_readonly": ratio(sec["private"]["median"], sec["host_readonly"]["median"]),
        "throughput_2_vs_1": ratio(pps["2"]["median"], pps["1"]["median"]),
    }
    result = {
        "bench": NAME, "quick": quick, "machine": info, "python": sys.version.split()[0],
        "corpus": {"private": private, "host_readonly": host}, "overhead": overhead, "throughput": throughput,
        "ratios": ratios, "private_view_available": private_ok,
        "required_ratios": ["contained_share", "overhead_private_vs_plain", "throughput_2_vs_1"] if private_ok
        else ["host_readonly_contained_share", "overhead_host_readonly_vs_plain", "throughput_2_vs_1"],
    }
    result["paths"] = write_results(args.out, NAME, result, render(result, quick))
    print_result(result)
    return result


def _ms(s: dict[str, float]) -> str:
    return f"{s['median'] * 1e3:.1f} ms (IQR {s['q1'] * 1e3:.1f}–{s['q3'] * 1e3:.1f}, range {s['min'] * 1e3:.1f}–" \
           f"{s['max'] * 1e3:.1f})"


def render(result: dict[str, Any], quick: bool) -> str:
    cmd = "python -m bench.sandbox_corpus" + (" --quick" if quick else "")
    private, host = result["corpus"]["private"], result["corpus"]["host_readonly"]
    ov, tp, r = result["overhead"], result["throughput"], result["ratios"]
    lines = [header("The sandbox against the hostile-program corpus, and what a sandboxed run costs", cmd,
                    result["machine"], quick)]
    if private is None:
        lines.append("**The kernel refuses the private file-system view on this machine** (no user or mount "
                     "namespace): default runs are refused, not run; only the opt-in host_readonly view was "
                     f"measured: {host['contained']} / {host['total']} contained. Isolation layers there: "
                     f"{', '.join(ov['isolation'])}.\n")
        private = dict(host, attempts=[dict(a, contained=False, status="refused") for a in host["attempts"]])
    else:
        verdict = "every attempt contained" if private["contained"] == private["total"] else \
            f"**{private['total'] - private['contained']} attempt(s) NOT contained**"
        lines.append(f"**Corpus, default private view: {private['contained']} / {private['total']} contained** "
                     f"({verdict}; {private['wall_s']:.1f} s). The opt-in `host_readonly` view: "
                     f"{host['contained']} / {host['total']}. Isolation layers: {', '.join(ov['isolation'])}.\n")
    by_name = {a["name"]: a for a in host["attempts"]}
    rows = []
    for a in private["attempts"]:
        h = by_name.get(a["name"])
        mark = "refused (not run)" if a["status"] == "refused" else "contained" if a["contained"] else "NOT CONTAINED"
        rows.append([a["group"], a["name"], a["goal"], mark,
                     ("contained" if h["contained"] else "not contained") if h else "–", a["status"],
                     f"{a['seconds']:.2f}", a["enforced_by"]])
    lines.append(md_table(["group", "attempt", "what it tries", "private view", "host_readonly view", "status",
                           "s", "contained by"], rows))
    failed = [a for a in private["attempts"] if not a["contained"] and a["status"] != "refused"]
    for a in failed:
        lines.append(f"\n- `{a['name']}`: {'; '.join(a['failures'])}")
    sec = ov["seconds"]
    lines.append(f"\n**One trivial run** (`pass`), {ov['rounds']} interleaved rounds, median (IQR, range):\n")
    lines.append(md_table(["what", "time", "/ plain"], [
        *([["`run_python`, private view (default)", _ms(sec["private"]), r["overhead_private_vs_plain"]]]
          if result["private_view_available"] else []),
        ["`run_python`, host_readonly view", _ms(sec["host_readonly"]), r["overhead_host_readonly_vs_plain"]],
        ["plain `python -c pass`", _ms(sec["plain"]), 1.0],
        ["plain `python -S -s -B -c pass`", _ms(sec["plain_isolated_flags"]),
         ratio(sec["plain_isolated_flags"]["median"], sec["plain"]["median"])],
    ]))
    pps = tp["programs_per_s"]
    lines.append(f"\n**`code_tests` throughput**, batch of {tp['batch']} completions (half right), "
                 f"{tp['rounds']} alternating rounds, {tp['cores']} cores, programs/s median (range):\n")
    lines.append(md_table(["parallel", "programs/s", "batch seconds"], [
        [p, f"{pps[p]['median']:.1f} ({pps[p]['min']:.1f}–{pps[p]['max']:.1f})",
         f"{tp['seconds'][p]['median']:.2f}"] for p in ("1", "2")]))
    lines.append(f"\nparallel 2 / 1: **{r['throughput_2_vs_1']:.2f}x**. Private view / plain `python -c`: "
                 f"**{r['overhead_private_vs_plain']:.2f}x**; private / host_readonly: "
                 f"{r['private_vs_host_readonly']:.2f}x.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
