"""The `rlhf` command line.

    rlhf train RECIPE [key.path=value ...] [--resume | --overwrite]
    rlhf validate RECIPE [key.path=value ...]
    rlhf plan RECIPE [key.path=value ...] [--nodes N] [--gpus-per-node G] [--gpu-memory GIB]
    rlhf explain [KEY | SECTION]
    rlhf launch local|ray|slurm|k8s RECIPE [key.path=value ...] [--dry-run] [target flags]
    rlhf rewards list
    rlhf plot RUN_DIR
    rlhf export CHECKPOINT --out DIR [--base MODEL] [--dtype D] [--mix W1,W2]
    rlhf sweep RECIPE --weights W1 W2 ... [key.path=value ...] [--reference R] [--resume] [--conditioned|--fill N]
    rlhf serve-rewards --recipe RECIPE [key.path=value ...] [--host H] [--port P] [--token-file F]
                       [--max-body-mb M] [--max-concurrency N] [--max-batch B] [--insecure-no-auth]

`serve-rewards` serves the recipe's reward components over HTTP (rlhf/serve/reward_server.py) for trainers that use
the `remote` reward plugin; it exits 0 after a graceful shutdown on SIGTERM or SIGINT.
`launch` validates RECIPE like `validate`, then runs it here (`local`) or submits it to a Ray cluster (`ray`), Slurm
(`slurm`: sbatch) or Kubernetes (`k8s`: a KubeRay RayJob); `--dry-run` prints what would be submitted (launch/).
`plan` prints the memory per GPU and whether it fits (exit 1 naming the first key to change; rlhf/plan/).
`export` writes a checkpoint as a standalone HF model directory, merging a LoRA adapter into its base (rlhf/export.py).
"""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
LLM post-training (RLHF / RLVR / preference optimisation) with a named multi-reward vector.

A recipe is a YAML file (see recipes/). Any key can be overridden on the command line as key.path=value,
e.g. `rlhf train recipes/grpo_tiny_cpu.yaml run.steps=20 train.lr=5e-5 rewards.0.weight=2`.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="run a recipe: warm-up, RL steps, checkpoints, final summary",
        description="Validate RECIPE, start Ray (local unless ray.address is set), run the rollout engines, reward "
        "workers and DeepSpeed training ranks, and train. Writes metrics.jsonl, checkpoints and summary.json "
        "under run.output_dir.",
    )
    t.add_argument("recipe", help="path to a recipe YAML")
    t.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run.output_dir")
    g.add_argument("--overwrite", action="store_true", help="delete run.output_dir's previous run first")

    v = sub.add_parser(
        "validate",
        help="check a recipe and print it fully resolved (extends + overrides + defaults)",
        description="Exit 0 and print the resolved recipe as YAML, or exit 2 and print every error with the "
        "file, the key path and the closest valid key.",
    )
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*", metavar="key.path=value")

    pn = sub.add_parser(
        "plan",
        help="will a recipe fit on its GPUs: memory per GPU and the first key to change if it does not",
        description="Validate RECIPE, read its model's architecture (model.tiny, a local config.json or a built-in "
        "table of hub models: no download) and print each kind of GPU's memory (parameters, gradients, optimizer, "
        "activations, reference, vLLM weights and KV cache). Exit 0: fits; 1: does not (the verdict names the first "
        "key to change); 2: a recipe error.")
    pn.add_argument("recipe")
    pn.add_argument("overrides", nargs="*", metavar="key.path=value")
    pn.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    pn.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (default: as many as the "
                    "recipe needs: training + critic ranks + engines x tensor_parallel_size when split)")
    pn.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB", help="GiB per GPU (default 80)")

    la = sub.add_parser(
        "launch",
        help="validate a recipe, then run it here or submit it to Ray, Slurm or Kubernetes (KubeRay)",
        description="Validate RECIPE (as `rlhf validate` does; nothing is submitted with errors), then run it: "
        "`local` (= rlhf train), `ray` (ray job submit), `slurm` (sbatch: Ray head + workers, then rlhf train) or "
        "`k8s` (a KubeRay RayJob + a ConfigMap with the recipe). --dry-run prints the command, sbatch script or "
        "manifest instead. `rlhf launch TARGET --help` lists the target's flags.",
    )
    from launch import add_parsers as _add_launch_parsers

    _add_launch_parsers(la)

    pl = sub.add_parser("plot", help="draw a run's curves (rewards per component, KL, step time; agent episodes "
                        "and the async pipeline when present) as a PNG",
                        description="Read RUN_DIR/metrics.jsonl and write RUN_DIR/curves.png (needs matplotlib).")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")

    ex = sub.add_parser(
        "export",
        help="a checkpoint as a standalone HF model directory (a LoRA adapter merged into its base)",
        description="CHECKPOINT: a checkpoint step directory (runs/X/checkpoints/step_N) or a model directory. A LoRA "
        "adapter is merged into its base model (adapter_config.json's base_model_name_or_path, or --base) and "
        "written as safetensors + config + tokenizer; a full model is checked and copied.",
    )
    ex.add_argument("checkpoint", help="checkpoint step directory or model/adapter directory")
    ex.add_argument("--out", required=True, help="output directory (must be new or empty)")
    ex.add_argument("--base", default=None, help="base model dir or hub id (default: the one the adapter names)")
    from rlhf.export import add_export_options  # --dtype, --mix (a multi-head checkpoint's heads mixed)
    add_export_options(ex)

    r = sub.add_parser("rewards", help="reward plugins: `rlhf rewards list` shows every plugin a recipe can name")
    r.add_argument("action", choices=["list"])
    e = sub.add_parser("envs", help="agent environments: `rlhf envs list` shows the built-in ones and their tools")
    e.add_argument("action", choices=["list"])
    x = sub.add_parser(
        "explain", help="a recipe key's type, default, range and description, or the keys of a section",
        description="KEY: a key path such as rollout.max_new_tokens, objective.clip_eps or rewards.0.plugin; "
        "SECTION (rollout, objective, model.lora, ...): the keys under it; nothing: the sections. Every key is in "
        "docs/recipe_reference.md (rlhf/config/reference.py).")
    x.add_argument("key", nargs="?", default=None, help="key path or section")

    w = sub.add_parser(
        "sweep",
        help="one training per reward-weight vector, then the Pareto front and its hypervolume",
        description="Train RECIPE once per weight vector (rewards[i].weight, in the recipe's order) into OUT/sweep/wN, "
        "evaluate every model on every reward component (held-out, greedy), write sweep.json, sweep.md and sweep.png. "
        "RL objectives, and MODPO (preference weight first; scored by pair accuracy and own greedy completions). "
        "--fill N: constrained runs from a neighbour's checkpoint fill the front's N largest gaps (rlhf/sweep.py).",
    )
    w.add_argument("recipe")
    w.add_argument("overrides", nargs="*", metavar="key.path=value")
    w.add_argument("--weights", nargs="+", default=[], metavar="W", help="weight vectors, e.g. 1,0 0.5,0.5 0,1")
    w.add_argument("--conditioned", action="store_true", help="train the conditioned RECIPE once, score it per vector")
    w.add_argument("--checkpoint", default=None, help="--conditioned: the checkpoint to score (no training)")
    w.add_argument("--reference", default=None, help="hypervolume reference, e.g. 0,-1 (default: below the worst)")
    w.add_argument("--resume", action="store_true", help="continue runs that have checkpoints")
    w.add_argument("--fill", type=int, default=0, metavar="N", help="then fill the front's N largest gaps (C-MORL)")

    s = sub.add_parser(
        "serve-rewards",
        help="serve a recipe's reward components over HTTP for the `remote` reward plugin",
        description="Build RECIPE's reward components once (setup() runs) and serve them: POST /v1/score, "
        "GET /v1/components (both need 'Authorization: Bearer TOKEN'), GET /v1/health. The token comes from "
        "--token-file or $RLHF_REWARD_TOKEN; without one the server refuses to start. SIGTERM or Ctrl-C finishes "
        "the requests in flight and exits 0. The server speaks plain HTTP: off loopback, put it behind TLS.",
    )
    s.add_argument("--recipe", required=True, help="path to the recipe YAML whose `rewards` to serve")
    s.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    a = s.add_mutually_exclusive_group()
    a.add_argument("--token-file", default=None, help="file holding the bearer token (default: $RLHF_REWARD_TOKEN)")
    a.add_argument("--insecure-no-auth", action="store_true",
                   help="serve without a token (loopback hosts only; for local testing)")
    s.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body in MiB (default 8; 413)")
    s.add_argument("--max-concurrency", type=int, default=8,
                   help="requests scored at once; more are refused with 503 + Retry-After (default 8)")
    s.add_argument("--max-batch", type=int, default=1024, help="most samples in one request (default 1024; 413)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also follow the flags: `rlhf train R --resume run.steps=200`
    late = [e for e in extra if "=" in e and not e.startswith("-")]
    takes_overrides = ("train", "validate", "plan", "serve-rewards", "sweep", "launch")
    if extra != late or (late and args.command not in takes_overrides):
        parser.error(f"unrecognized arguments: {' '.join(e for e in extra if e not in late) or ' '.join(late)}")
    if late:
        args.overrides = [*args.overrides, *late]
    if args.command is None:
        _parser().print_help()
        return 0
    if args.command == "validate":
        return _validate(args)
    if args.command == "plan":
        return _plan(args)
    if args.command == "rewards":
        return _rewards_list()
    if args.command == "explain":
        from rlhf.config.reference import explain

        return explain(args.key)
    if args.command == "envs":
        return _envs_list()
    if args.command == "plot":
        return _plot(args)
    if args.command == "export":
        return _export(args)
    if args.command == "serve-rewards":
        return _serve_rewards(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "launch":
        return _launch(args)
    return _train(args)


def _load(args):
    """The validated recipe with every reward plugin resolved and its args checked; None after printing errors."""
    from rlhf.config import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    problems = _check_plugins(recipe, args.recipe) + _check_environment(recipe, args.recipe)
    if problems:
        print("error: invalid recipe:\n  " + "\n  ".join(problems), file=sys.stderr)
        return None
    return recipe


def _validate(args) -> int:
    from rlhf.config import recipe_to_yaml

    recipe = _load(args)
    if recipe is None:
        return 2
    print(recipe_to_yaml(recipe), end="")
    from rlhf.plan import plan_warnings

    for line in plan_warnings(recipe):  # a GPU recipe that does not fit: figures on stderr, still valid
        print(f"warning: {line}", file=sys.stderr)
    return 0


def _plan(args) -> int:
    """Memory per GPU of a validated recipe (rlhf/plan/): exit 0 fits, 1 does not fit, 2 recipe error."""
    from rlhf.plan import PlanError, plan_recipe, render

    recipe = _load(args)
    if recipe is None:
        return 2
    try:
        plan = plan_recipe(recipe, args.nodes, args.gpus_per_node, args.gpu_memory)
    except PlanError as e:
        print(f"error: {args.recipe}: {e}", file=sys.stderr)
        return 2
    print(render(plan, f"rlhf plan {args.recipe}" + "".join(f" {o}" for o in args.overrides)))
    return 0 if plan.fits else 1


def _check_plugins(recipe, source: str) -> list[str]:
    """Every reward component names a plugin that resolves, with args and a style its call fits, and the data has
    the columns it needs (checked before any actor starts). One line per problem."""
    from rewards.api import RewardPluginError, check_columns, check_component

    problems: list[tuple[int, str]] = []
    checked = []
    for i, c in enumerate(recipe.rewards):
        try:
            checked.append((i, c, check_component(c)))
        except RewardPluginError as e:
            problems.append((i, str(e)))
    columns = _reward_columns(recipe) if checked else None
    for i, c, plugin in checked if columns is not None else []:
        names = [*columns, "steps"] if (c.kind or plugin.kind) == "process" else columns
        try:
            problem = check_columns(c, plugin, names)
        except RewardPluginError as e:
            problem = str(e)
        if problem is not None:
            problems.append((i, problem))
    return [f"{source}: rewards.{i}: {_one_line(p)}" for i, p in sorted(problems, key=lambda x: x[0])]


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _reward_columns(recipe) -> list[str] | None:
    """The columns a single-turn rollout's batch gives reward plugins (the data's columns but prompt and
    completion, plus the runtime's), read cheaply: synthetic rows, a jsonl file's first rows, a parquet schema.
    None where that is not known before the run: hub datasets, agent rollouts (an environment adds columns of its
    own: rollout.agent.env, which the recipe sets exactly when rollout.kind is agent), data that cannot be read here
    (the run's data loading reports why)."""
    from rlhf.scoring.group import RUNTIME_COLUMNS

    d = recipe.data
    if recipe.rollout.agent.env is not None or d.source == "hf":
        return None
    try:
        found = _data_columns(d, recipe.run.seed)
    except (OSError, ValueError):  # missing or malformed data: the data loader's own error says it at start
        return None
    skip = {d.prompt_column, d.completion_column, "prompt", "completion"}
    return [c for c in found if c not in skip] + list(RUNTIME_COLUMNS)


def _data_columns(d, seed: int) -> list[str]:
    """The columns of the first rows of a synthetic, jsonl or parquet data source."""
    if d.source == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(d.train_path).names)
    if d.source == "synthetic_arithmetic":  # generated in milliseconds
        from rlhf.data import load_rows

        rows = load_rows(d, seed)[0][:20]
    else:
        import gzip
        import json

        opener = gzip.open if d.train_path.endswith(".gz") else open
        with opener(d.train_path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(20), f) if line.strip()]
    return list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))


def _check_environment(recipe, source: str) -> list[str]:
    """An agent recipe's environment resolves (rollout.agent.env), checked before any actor starts."""
    if recipe.rollout.kind != "agent":
        return []
    from rlhf.agents import AgentEnvError, resolve_environment

    try:
        resolve_environment(recipe.rollout.agent.env)
    except AgentEnvError as e:
        return [f"{source}: {e}"]
    return []


def _launch(args) -> int:
    """Validate like `rlhf validate` (exit 2 on errors, before anything is submitted), then hand over to launch/."""
    recipe = _load(args)
    if recipe is None:
        return 2
    from launch import launch

    return launch(args, recipe, train_here=_train)


def _plot(args) -> int:
    from rlhf.plots import plot_run

    try:
        print(plot_run(args.run_dir, args.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _export(args) -> int:
    from rlhf.export import ExportError, export
    from rlhf.models.load import ModelLoadError
    from rlhf.models.lora import LoraError
    from rlhf.train.checkpoint import CheckpointError

    try:
        done = export(args.checkpoint, args.out, base=args.base, dtype=args.dtype, mix=args.mix)
    except (ExportError, LoraError, ModelLoadError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(done["message"])
    return 0


def _serve_rewards(args) -> int:
    from rewards.api import RewardPluginError
    from rlhf.serve.reward_server import ServeError, serve

    recipe = _load(args)
    if recipe is None:
        return 2
    try:  # serve() checks the token before it builds any component
        return serve(recipe, host=args.host, port=args.port, token_file=args.token_file,
                     insecure_no_auth=args.insecure_no_auth, max_body_mb=args.max_body_mb,
                     max_concurrency=args.max_concurrency, max_batch=args.max_batch)
    except (ServeError, RewardPluginError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _sweep(args) -> int:
    recipe = _load(args)
    if recipe is None:
        return 2
    _quiet_libraries()
    from rlhf.runtime.controller import USER_ERRORS, Stopped
    from rlhf.sweep import render, sweep

    try:
        reference = None if args.reference is None else [float(x) for x in args.reference.split(",")]
        result = sweep(recipe, args.weights, reference, args.resume, args.conditioned, args.checkpoint, args.fill)
    except Stopped as e:
        print(f"{e}\n(continue the sweep with --resume)", file=sys.stderr)
        return 130 if "SIGINT" in str(e) else 143
    except (ValueError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(result))
    print(f"sweep.json, sweep.md, sweep.png: {os.path.join(recipe.run.output_dir, 'sweep')}")
    return 0


def _rewards_list() -> int:
    from rich.console import Console
    from rich.table import Table

    from rewards.api import list_plugins

    table = Table(title="reward plugins")
    for col in ("name", "kind", "source", "description"):
        table.add_column(col)
    for info in list_plugins():
        doc = (info.doc or "").strip().splitlines()
        table.add_row(info.name, info.kind, info.source, doc[0] if doc else "")
    Console().print(table)
    return 0


def _envs_list() -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rlhf.agents import list_environments, tool_specs

    table = Table(title="agent environments (rollout.agent.env)")
    for col in ("name", "class", "tools", "step", "description"):
        table.add_column(col)
    for name, cls in sorted(list_environments().items()):
        tools = ", ".join(spec["function"]["name"] for spec in tool_specs(cls))
        doc = (cls.__doc__ or "").strip().splitlines()
        table.add_row(name, f"{cls.__module__}:{cls.__qualname__}", tools or "-",
                      "yes" if callable(getattr(cls, "step", None)) else "-", escape(doc[0]) if doc else "")
    Console().print(table)
    return 0


def _train(args) -> int:
    import shutil

    from rlhf.logging import summary_table

    recipe = _load(args)
    if recipe is None:
        return 2
    if args.overwrite and os.path.isdir(recipe.run.output_dir):
        shutil.rmtree(recipe.run.output_dir)
    _quiet_libraries()
    from rlhf.runtime.controller import USER_ERRORS, Stopped, run

    try:
        summary = run(recipe, resume=args.resume)
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return 130 if "SIGINT" in str(e) else 143
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint (if any) is intact: continue with --resume", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_summary(summary, summary_table)
    return 0


def _quiet_libraries() -> None:
    """Keep the console for our progress bars: no per-file tqdm bars from transformers, and DeepSpeed told it is
    on CPU when this (driver) machine has no GPU instead of warning about it. Workers decide for themselves."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _print_summary(summary: dict, summary_table) -> None:
    from rich.console import Console

    console = Console()
    rows = [
        (name, f"{v['first']:.3f}", f"{v['last']:.3f}", f"{v['last'] - v['first']:+.3f}")
        for name, v in summary["components"].items()
    ]
    what = summary["headline"]  # reward components (on-policy) or training metrics (fixed rows)
    console.print(summary_table(
        f"{summary['objective']}: {what}, mean over the first and last {summary['window']} steps",
        rows, ("component" if what == "reward components" else "metric", "first", "last", "change"),
    ))
    before, after = summary["eval_before"], summary["eval_after"]
    keys = [k for k in after if k in before]
    eval_rows = [(k, f"{before[k]:.3f}", f"{after[k]:.3f}", f"{after[k] - before[k]:+.3f}") for k in keys]
    console.print(summary_table("held-out evaluation", eval_rows, ("metric", "before", "after", "change")))
    console.print(f"checkpoint: {summary['checkpoint']}")
    console.print(f"metrics:    {summary['metrics']}")
    console.print(f"summary:    {os.path.join(summary['output_dir'], 'summary.json')}")
    if summary.get("curves"):
        console.print(f"curves:     {summary['curves']}")


if __name__ == "__main__":
    sys.exit(main())
