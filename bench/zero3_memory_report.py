"""The report of bench.zero3_memory: its markdown (tables, the allocator pass, the verdict) and its plot, from the
result dictionary ``bench.zero3_memory.main`` builds (split from it to keep each file short)."""

from __future__ import annotations

import math
from typing import Any

from bench.common import header, md_table, ratio, save_figure
from bench.zero3_memory import GIB, GOAL, MMAP_THRESHOLD, POINTS, PROMPT, RANKS, ROWS, STAGES, COMPLETION, NAME


def plot(result: dict[str, Any], out_dir: str) -> str | None:
    """Peak RSS per rank (max over ranks) per stage at each point, the floor shaded."""
    from rlhf.plots import pyplot

    plt = pyplot()
    if plt is None:
        return None
    peak, floor = result["peak_gib"], result["floor_gib"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.26
    colours = {"build": "tab:blue", "reference": "tab:orange", "step": "tab:red"}
    for i, point in enumerate(POINTS):
        xs = [j + (i - 1) * width for j in range(len(STAGES))]
        ax.bar(xs, [peak[s][point] for s in STAGES], width, color=colours[point], label=f"after {point}")
        if all(math.isfinite(floor[s][point]) for s in STAGES):
            ax.bar(xs, [floor[s][point] for s in STAGES], width, color="lightgrey", hatch="//", edgecolor="grey")
    var = result.get("allocator_variant")
    if var:  # the allocator pass's peak after the step, on the step bars
        ax.scatter([j + width for j in range(len(STAGES))], [var["peak_gib"][s]["step"] for s in STAGES],
                   marker="_", s=400, color="black", zorder=3, label="after step, MALLOC_MMAP_THRESHOLD_ 1 MiB")
    ax.set_xticks(range(len(STAGES)), [f"ZeRO-{s}" for s in STAGES])
    ax.set_ylabel("peak RSS per rank, GiB (max of 2 ranks)")
    r = result["ratios"]
    ax.set_title(f"{result['num_params'] / 1e6:.0f}M params fp32, 2 ranks: ZeRO-3 / ZeRO-0 = "
                 f"{r['zero3_over_zero0_step']:.2f} (goal <= {GOAL})", fontsize=10)
    ax.set_ylim(0, 1.55 * max(peak[s]["step"] for s in STAGES))  # room for the legend above the bars
    ax.legend(title="hatched: floor (tiny model)", fontsize=8, title_fontsize=8, loc="upper left", ncol=2)
    return save_figure(plt, fig, out_dir, NAME)


def render(result: dict[str, Any]) -> str:
    quick = result["quick"]
    cmd = "python -m bench.zero3_memory" + (" --quick" if quick else "")
    m, psi = result["model"], result["num_params"]
    peak, floor, inc, theo, plan = (result[k] for k in ("peak_gib", "floor_gib", "increase_gib", "theory_gib",
                                                         "plan_gib"))
    runs, r = result["runs"], result["ratios"]
    lines = [header("ZeRO-3 memory: per-rank peak RSS, ZeRO-0 / 2 / 3, reference included", cmd,
                    result["machine"], quick)]
    lines.append(f"Model: tiny-config Llama, hidden {m['hidden_size']}, intermediate {m['intermediate_size']}, "
                 f"{m['num_layers']} layers: **{psi:,} parameters** ({4 * psi / GIB:.2f} GiB float32 = 4 Psi). "
                 f"{RANKS} DeepSpeed ranks (gloo, CPU), float32, a fresh group (fresh processes) per stage. "
                 f"Step: GRPO, kl_coef 0.05, {ROWS} sequences x {PROMPT + COMPLETION} tokens (random ids). "
                 "Peak = each rank's VmHWM (`TrainWorker.memory()`), GiB; the max over the 2 ranks unless a "
                 "column says per rank.\n")
    lines.append(f"**Figure: peak RSS per rank after the step, ZeRO-3 / ZeRO-0 = {r['zero3_over_zero0_step']:.3f}** "
                 f"(goal <= {GOAL}: {'meets' if r['zero3_over_zero0_step'] <= GOAL else 'misses'}); "
                 f"ZeRO-2 / ZeRO-0 = {r['zero2_over_zero0_step']:.3f}. Over the floor (peak - the same run with a "
                 f"{result['floor_params']:,}-parameter model): ZeRO-3 / ZeRO-0 = "
                 f"{r['zero3_over_zero0_step_increase']:.3f}, ZeRO-2 / ZeRO-0 = "
                 f"{r['zero2_over_zero0_step_increase']:.3f}; theory (below, no DeepSpeed extras) "
                 f"{r['zero3_over_zero0_theory']:.3f}.\n")
    lines.append("## Peak RSS per rank (GiB)\n")
    rows = []
    for s in STAGES:
        pts = runs[f"zero{s}"]["points"]
        per_rank = " / ".join(f"{v:.2f}" for v in pts["step"]["peak_gib"])
        rows.append([f"ZeRO-{s}", peak[s]["start"], peak[s]["build"], peak[s]["reference"], peak[s]["step"],
                     per_rank, ratio(peak[s]["step"], peak[0]["step"])])
    for s in (STAGES if "floor_zero0" in runs else ()):
        rows.append([f"floor, ZeRO-{s}", floor[s]["start"], floor[s]["build"], floor[s]["reference"],
                     floor[s]["step"], " / ".join(f"{v:.2f}" for v in runs[f"floor_zero{s}"]["points"]["step"]
                                                  ["peak_gib"]), ""])
    lines.append(md_table(["run", "actor started", "after build", "after load_reference", "after step",
                           "after step, rank 0 / 1", "/ ZeRO-0"], rows))
    lines.append("\nPeak after each step (GiB, max over ranks): " + "; ".join(
        f"ZeRO-{s} " + " / ".join(f"{v:.2f}" for v in runs[f"zero{s}"].get("step_peaks_gib", [])) for s in STAGES)
        + ".")
    lines.append("\nThe floor: the same three calls with a "
                 f"{result['floor_params']:,}-parameter model at the same stage (Python, torch, transformers, "
                 "DeepSpeed imported, the gloo group and a DeepSpeed engine up). 'actor started': before `build` "
                 "(DeepSpeed not yet imported).\n")
    lines.append("## Resident after each point (GiB, rank 0 / rank 1: current VmRSS = anonymous + file-backed)\n")
    rows = []
    for s in STAGES:
        pts = runs[f"zero{s}"]["points"]
        rows.append([f"ZeRO-{s}"] + [" / ".join(f"{n['rss']:.2f} = {n['anon']:.2f} + {n['file']:.2f}"
                                               for n in pts[p]["now"]) for p in POINTS])
    lines.append(md_table(["run", "after build", "after load_reference", "after step"], rows))
    lines.append("\nFile-backed pages: transformers maps the safetensors checkpoint, and a model loaded without a "
                 "conversion keeps its tensors in that mapping until they are written. Under ZeRO-0/2 the "
                 "reference stays there (page cache, shared by the ranks) and is faulted in by its first forward; "
                 "rank 0's policy is too until DeepSpeed's broadcast / the first update copies it. The reference's "
                 "resident cost per rank (ZeRO-0/2: RssFile growth over the step; ZeRO-3: VmRSS growth over "
                 "`load_reference`): " + ", ".join(f"ZeRO-{s} {result['reference_gib'][s]:.2f}" for s in STAGES)
                 + f" GiB (4 Psi = {4 * psi / GIB:.2f}).\n")
    lines.append("## Increase over the floor vs theory and `rlhf plan` (GiB per rank)\n")
    rows = []
    var = result.get("allocator_variant")
    for s in STAGES:
        t, p = theo[s], plan[s]
        planned = p.get("total", float("nan")) if isinstance(p, dict) else float("nan")
        vinc = var["increase_gib"][s]["step"] if var else float("nan")
        rows.append([f"ZeRO-{s}", inc[s]["build"], inc[s]["reference"], inc[s]["step"], vinc, t["params"],
                     t["grads"], t["adam"], t["reference"], t["total"], t["master"], t["with_master"], planned,
                     ratio(inc[s]["step"], t["with_master"])])
    lines.append(md_table(["stage", "increase: build", "+ reference", "+ step", "+ step, malloc 1 MiB",
                           "theory: params", "grads", "Adam", "reference", "total", "DeepSpeed fp32 master",
                           "total with it", "`rlhf plan`", "measured / theory with master"], rows))
    lines.append("\nTheory: fp32 params 4 Psi, grads 4 Psi, Adam 8 Psi per rank; ZeRO-2 shards grads and Adam "
                 f"over N = {RANKS}, ZeRO-3 also the params; the reference 4 Psi (4 Psi / N under ZeRO-3). "
                 "DeepSpeed fp32 master: the fp32 copy of the rank's partition DeepSpeed keeps even for fp32 "
                 "weights at ZeRO-1/2; ZeRO-3 updates the partition itself (`shared_master_partitions` in "
                 "rlhf/train/deepspeed.py; DeepSpeed 0.19.8 alone cloned it). 'malloc 1 MiB': the allocator pass "
                 "below. `rlhf plan`: its training-GPU table for the same recipe without the CUDA overhead row "
                 "(model states + reference + activations): "
                 + "; ".join(f"ZeRO-{s}: " + (", ".join(f"{k} {v:.2f}" for k, v in plan[s].items())
                                               if "error" not in plan[s] else plan[s]["error"]) for s in STAGES)
                 + ".\n")
    secs = "; ".join(f"ZeRO-{s}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[f"zero{s}"]["seconds"].items())
                     for s in STAGES)
    lines.append(f"Seconds: {secs}. The group's own metric `memory/peak_rss_gb/trainers` after the step: "
                 + ", ".join(f"ZeRO-{s} {runs[f'zero{s}']['group_metric_gib']:.2f}" for s in STAGES) + ".\n")
    if result.get("allocator_variant"):
        lines.append(allocator_section(result))
    code = result["code"]
    lines.append(f"Code: HEAD {code['head']}" + (f" with uncommitted changes to {', '.join(code['rlhf_dirty'])} "
                 f"(diff sha256 {code['rlhf_diff_sha256']})" if code["rlhf_dirty"] else "") + ".\n")
    lines.append("## Verdict\n")
    lines.append(verdict(result))
    return "\n".join(lines)


def allocator_section(result: dict[str, Any]) -> str:
    v = result["allocator_variant"]
    peak, vpeak, r, vr = result["peak_gib"], v["peak_gib"], result["ratios"], v["ratios"]
    inherited = all(x == str(MMAP_THRESHOLD) for run in v["runs"].values()
                    for x in run.get("rank_malloc_mmap_threshold", [None]))
    rows = []
    for s in STAGES:
        now = result["runs"][f"zero{s}"]["points"]["step"]["now"]
        vnow = v["runs"][f"zero{s}"]["points"]["step"]["now"]
        rows.append([f"ZeRO-{s}", peak[s]["build"], vpeak[s]["build"], peak[s]["reference"], vpeak[s]["reference"],
                     peak[s]["step"], vpeak[s]["step"], max(n["anon"] for n in now), max(n["anon"] for n in vnow),
                     ratio(vpeak[s]["step"], vpeak[0]["step"])])
    lines = ["\n## The allocator: the same pass with MALLOC_MMAP_THRESHOLD_ = "
             f"{MMAP_THRESHOLD:,} bytes (peak RSS per rank, GiB, max over ranks)\n",
             "glibc serves large allocations from its heap once a freed mmapped chunk has raised its dynamic "
             "threshold (up to 32 MiB), and a freed heap chunk stays resident. ZeRO-3 allocates and frees every "
             "module's gathered parameters and gradients on each forward and backward; with the threshold fixed "
             "at 1 MiB every such buffer is its own mapping, returned to the kernel when freed, so RSS follows the "
             "live tensors. Ranks inherited the setting: " + ("yes" if inherited else "**no** (see JSON)") + ".\n",
             md_table(["stage", "build", "build, 1 MiB", "+ reference", "+ reference, 1 MiB", "after step",
                       "after step, 1 MiB", "anonymous resident after step", "same, 1 MiB", "/ ZeRO-0, 1 MiB"], rows),
             f"\nWith the threshold: ZeRO-3 / ZeRO-0 after the step {vr['zero3_over_zero0_step']:.3f} (default "
             f"{r['zero3_over_zero0_step']:.3f}), ZeRO-2 / ZeRO-0 {vr['zero2_over_zero0_step']:.3f}; over the floor "
             f"ZeRO-3 / ZeRO-0 {vr['zero3_over_zero0_step_increase']:.3f}. The reference's resident partition "
             f"under ZeRO-3: {v['reference_gib'][3]:.2f} GiB (default allocator {result['reference_gib'][3]:.2f}). "
             "What the knob costs in time (s per step, mean of the steps, default -> 1 MiB): "
             + ", ".join(f"ZeRO-{s} {result['runs'][f'zero{s}']['seconds']['step']:.1f} -> "
                         f"{v['runs'][f'zero{s}']['seconds']['step']:.1f}" for s in STAGES)
             + f" (every large allocation becomes an mmap whose pages fault in afresh; load "
             f"{result['machine'].get('load_avg_1m', math.nan):.1f} at the start of the first pass, "
             f"{v['machine'].get('load_avg_1m', math.nan):.1f} of the second).\n"]
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> str:
    r, peak, floor, theo = result["ratios"], result["peak_gib"], result["floor_gib"], result["theory_gib"]
    fig = r["zero3_over_zero0_step"]
    meets = "meets" if fig <= GOAL else "misses"
    text = (f"ZeRO-3 {meets} the goal (<= {GOAL}): its per-rank peak after a step with the reference is {fig:.2f} of "
            f"ZeRO-0's ({peak[3]['step']:.2f} vs {peak[0]['step']:.2f} GiB); ZeRO-2 is at "
            f"{r['zero2_over_zero0_step']:.2f}. ")
    if math.isfinite(floor[3]["step"]):
        text += (f"Every rank pays a floor of {floor[3]['step']:.2f} GiB whatever the model; over it ZeRO-3 / ZeRO-0 "
                 f"is {r['zero3_over_zero0_step_increase']:.2f}, against {r['zero3_over_zero0_theory']:.2f} in theory "
                 + (f"({r['zero3_over_zero0_theory_with_master']:.2f} with DeepSpeed's fp32 master partition, "
                    f"{theo[3]['master']:.2f} GiB per rank). " if theo[3]["master"] else
                    "(ZeRO-3 keeps no fp32 master partition over fp32 weights: shared_master_partitions). "))
    var = result.get("allocator_variant")
    if var:
        vp, over = var["peak_gib"], var["increase_gib"][3]["step"] - theo[3]["with_master"]
        text += (f"The glibc heap accounts for {peak[3]['step'] - vp[3]['step']:.2f} GiB of ZeRO-3's peak (ZeRO-0: "
                 f"{peak[0]['step'] - vp[0]['step']:.2f}): with MALLOC_MMAP_THRESHOLD_ = 1 MiB in the ranks' "
                 f"environment ZeRO-3 / ZeRO-0 is {var['ratios']['zero3_over_zero0_step']:.2f}, over the floor "
                 f"{var['ratios']['zero3_over_zero0_step_increase']:.2f}; ZeRO-3's increase "
                 f"{var['increase_gib'][3]['step']:.2f} GiB then sits {over:.2f} GiB above the theory "
                 f"with the master partition (the step's transients: the flattened fp32 "
                 f"gradient partition, one gathered module and its gradient, activations). ")
    ref = result["reference_gib"]
    text += (f"The reference keeps {ref[0]:.2f} GiB resident per rank under ZeRO-0 (file-backed pages of the mapped "
             f"checkpoint, shared by the ranks in the page cache but counted in each rank's RSS) and {ref[3]:.2f} "
             f"under ZeRO-3 (its partition is {theo[3]['reference']:.2f}"
             + (f"; {var['reference_gib'][3]:.2f} with the 1 MiB threshold" if var else "") + ").")
    return text
