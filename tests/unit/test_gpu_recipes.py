"""The GPU recipes (recipes/gpu/*.yaml): each validates offline without touching the hub, fits per `rlhf plan` on
the GPUs its header names (and the header's memory figures are the planner's), and the `rlhf launch slurm` and
`rlhf launch k8s` commands written in its header render their dry-runs; the RayJob validates against the KubeRay
CRD (the helpers of test_launch_k8s.py).

Recipes that read prepared local files (data/gpu/*.jsonl, written by recipes/gpu/prepare_data.py from the hub)
run here against stand-ins: a few rows shaped like the hub datasets' rows, put through that script's converters,
in a temporary working directory (the recipes' data paths are relative to it)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import socket
from pathlib import Path

import pytest
import yaml

from rlhf.cli import main
from rlhf.config import load_recipe
from rlhf.plan import plan_recipe
from tests.unit.test_launch_k8s import rayjob_schema  # noqa: F401  (a fixture: the CRD's RayJob schema)

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "recipes" / "gpu"
RECIPES = sorted(GPU.glob("*.yaml"))
GIB = 2**30
GPUS_LINE = re.compile(r"^#   GPUs: (\d+) nodes? x (\d+) GPUs of (\d+) GiB \(.+\)$", re.M)
ALSO_LINE = re.compile(r"^#   Also fits: (\d+) nodes? x (\d+) GPUs of (\d+) GiB", re.M)
ON_LINE = re.compile(r"On (\d+) nodes? x (\d+) GPUs: ((?:\S+=\S+ )+)\(rlhf plan: fits")


def _prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_data", GPU / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = _prepare_module()

# rows as the hub datasets hold them (their columns and types)
GSM8K = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have now?",
          "answer": f"Tom has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}"}
         for i in range(1, 5)] + [{"question": "How many cents are in 12 dollars?",
                                   "answer": "12 * 100 = <<12*100=1200>>1200\n#### 1,200"}]
MATH = [{"problem": f"What is ${i} \\cdot 3$?", "solution": f"We have ${i} \\cdot 3 = \\boxed{{{3 * i}}}$.",
         "level": "Level 1", "type": "Prealgebra"} for i in range(1, 5)]
ULTRAFEEDBACK = [{"prompt": f"Name a colour ({i}).", "prompt_id": str(i),
                  "chosen": [{"role": "user", "content": f"Name a colour ({i})."},
                             {"role": "assistant", "content": "Blue."}],
                  "rejected": [{"role": "user", "content": f"Name a colour ({i})."},
                               {"role": "assistant", "content": "I cannot."}],
                  "messages": [], "score_chosen": 9.0, "score_rejected": 2.0} for i in range(4)]
PKU_SAFERLHF = [{"prompt": f"How do I store bleach ({i})?", "response_0": "Cool, dry, away from ammonia.",
                 "response_1": "Mix it with ammonia.", "is_response_0_safe": True, "is_response_1_safe": False,
                 "better_response_id": i % 2, "safer_response_id": 0} for i in range(4)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory like the repository root the headers launch from: recipes/ (a link to this checkout's)
    and stand-ins of every file prepare_data.py writes, made by its own converters."""
    root = tmp_path_factory.mktemp("gpu_recipes")
    (root / "recipes").symlink_to(ROOT / "recipes", target_is_directory=True)
    out = root / "data" / "gpu"
    for split in ("train", "test"):
        prep.write_jsonl(prep.convert(GSM8K, prep.gsm8k_row), str(out / f"gsm8k_{split}.jsonl"))
        prep.write_jsonl(prep.math_mix(GSM8K, MATH), str(out / f"math_mix_{split}.jsonl"))
        prep.write_jsonl(prep.convert(ULTRAFEEDBACK, prep.ultrafeedback_row), str(out / f"ultrafeedback_{split}.jsonl"))
        prep.write_jsonl(prep.convert(PKU_SAFERLHF, prep.pku_saferlhf_row), str(out / f"pku_saferlhf_{split}.jsonl"))
    return root


@pytest.fixture()
def offline(workdir, monkeypatch):
    """Run in `workdir` with every way to the hub closed: a socket that connects, and the loaders of models,
    tokenizers, configs and datasets, are recorded and refused. Yields the list of attempts."""
    import datasets
    import huggingface_hub
    import transformers

    attempts: list[str] = []

    def refuse(what):
        def _refused(*args, **kwargs):
            attempts.append(f"{what}{args[:1]}")
            raise AssertionError(f"validation must not fetch anything: {what}{args[:1]}")
        return _refused

    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    for cls in ("AutoTokenizer", "AutoConfig", "AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", refuse(f"transformers.{cls}"))
    monkeypatch.setattr(datasets, "load_dataset", refuse("datasets.load_dataset"))
    for fn in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, fn, refuse(f"huggingface_hub.{fn}"))
    yield attempts
    assert attempts == [], f"the hub was asked for: {attempts}"


def test_the_offline_guard_catches_a_fetch(offline):
    import transformers

    with pytest.raises(AssertionError, match="must not fetch"):
        transformers.AutoTokenizer.from_pretrained("Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(AssertionError, match="must not fetch"):
        socket.create_connection(("huggingface.co", 443))
    assert len(offline) == 2
    offline.clear()  # caught on purpose: the fixture's own check would fail the test


def header(path: Path) -> str:
    """The recipe's opening comment block."""
    lines = path.read_text().splitlines()
    return "\n".join(ln for ln in lines[: next(i for i, ln in enumerate(lines) if not ln.startswith("#"))])


def gpus(path: Path, pattern: re.Pattern = GPUS_LINE) -> tuple[int, int, int]:
    """(nodes, GPUs per node, GiB per GPU) of the header's `GPUs:` line."""
    m = pattern.search(header(path))
    assert m, f"{path.name}: the header has no line matching {pattern.pattern!r}"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def command(path: Path, target: str) -> list[str]:
    """The header's `rlhf launch TARGET ...` command (continued over lines ending in a backslash), as argv."""
    lines = header(path).splitlines()
    tag = {"slurm": "#   Slurm: ", "k8s": "#   K8s:   "}[target]
    start = next((i for i, ln in enumerate(lines) if ln.startswith(tag)), None)
    assert start is not None, f"{path.name}: the header has no {tag.strip()!r} line"
    text, i = lines[start][len(tag):], start
    while text.endswith("\\"):
        i += 1
        text = text[:-1] + " " + lines[i].lstrip("#").strip()
    argv = shlex.split(text)
    assert argv[:4] == ["rlhf", "launch", target, f"recipes/gpu/{path.name}"], argv[:4]
    return argv[1:]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def comment_text(path: Path) -> str:
    return " ".join(ln.lstrip("#").strip() for ln in header(path).splitlines())


def test_the_recipes_cover_the_objectives():
    recipes = {p.name: yaml.safe_load(p.read_text()) for p in RECIPES}
    assert {"grpo", "ppo", "dpo", "modpo", "cgpo", "prm", "rm"} <= {r["objective"]["kind"] for r in recipes.values()}
    assert {"grpo_qwen2.5-7b_gsm8k.yaml", "dapo_qwen2.5-7b_math.yaml", "ppo_llama3.1-8b_gsm8k.yaml",
            "dpo_qwen2.5-7b_ultrafeedback.yaml", "grpo_qwen2.5-0.5b_gsm8k.yaml"} <= set(recipes)
    assert any(r["rollout"].get("kind") == "agent" for r in recipes.values() if "rollout" in r)
    assert any(c.get("kind") == "process" for r in recipes.values() for c in r.get("rewards", []))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_validates_offline(path, offline, capsys):
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["model"]["path"], "a GPU recipe names a hub model"
    assert "warning" not in err, err  # `rlhf validate` warns with the figures when 80 GiB GPUs are too small
    assert "Not run on a GPU yet" in comment_text(path)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_fits_on_the_gpus_its_header_names(path, offline, capsys):
    nodes, per_node, gib = gpus(path)
    argv = ["plan", str(path), "--nodes", str(nodes), "--gpus-per-node", str(per_node), "--gpu-memory", str(gib)]
    assert main(argv) == 0, capsys.readouterr().out  # exit 1: does not fit (the verdict names the key to change)
    plan = plan_recipe(load_recipe(path), nodes, per_node, gib)
    assert plan.setup.gpus_needed == nodes * per_node, "the header names GPUs the recipe does not use"
    # the header's figures are the planner's (regenerate them when the planner or the recipe changes)
    expected = [f"{t.title} x{t.count}: {t.peak / GIB:.2f} GiB peak" for t in plan.tables]
    missing = [line for line in expected if line not in header(path)]
    assert not missing, f"{path.name}: the header's memory figures are stale; `rlhf plan` now says:\n" + "\n".join(
        f"#     {line}" for line in expected) + f"\n#     verdict: {plan.verdict}"
    assert f"verdict: {plan.verdict}" in comment_text(path), plan.verdict
    if ALSO_LINE.search(header(path)):  # "Also fits: N node x G GPUs of M GiB": smaller GPUs
        nodes, per_node, gib = gpus(path, ALSO_LINE)
        assert plan_recipe(load_recipe(path), nodes, per_node, gib).fits
    other = ON_LINE.search(comment_text(path))  # "On N node x G GPUs: key=value ... (rlhf plan: fits": fewer GPUs
    if other:
        overrides = other.group(3).split()
        assert plan_recipe(load_recipe(path, overrides), int(other.group(1)), int(other.group(2)), 80).fits


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_the_readme_table_has_the_planners_figures(path, offline):
    """README.md, "Recipes for real models": one row per recipe, its GPUs and per-GPU peaks as `rlhf plan` gives."""
    rows = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith(f"| `{path.name}` |")]
    assert len(rows) == 1, f"README.md has {len(rows)} rows for {path.name} in 'Recipes for real models'"
    nodes, per_node, gib = gpus(path)
    plan = plan_recipe(load_recipe(path), nodes, per_node, gib)
    short = {"training GPU": "train", "engine GPU (vllm)": "vLLM", "critic GPU (PPO value model)": "critic"}
    layout = " + ".join(f"{t.count} {short[t.title]}" for t in plan.tables)
    memory = ", ".join(f"{short[t.title]} {t.peak / GIB:.1f}" for t in plan.tables)
    assert rows[0].endswith(f"| {nodes} x {per_node}: {layout} | {memory} |"), (rows[0], layout, memory)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_the_slurm_command_renders(path, offline, capsys):
    argv = command(path, "slurm")
    nodes, per_node, _ = gpus(path)
    assert (int(flag(argv, "--nodes")), int(flag(argv, "--gpus-per-node"))) == (nodes, per_node)
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"#SBATCH --nodes={nodes}" in out and f"#SBATCH --gpus-per-node={per_node}" in out
    assert f"GPUS={per_node}" in out  # what each node's `ray start --num-gpus` advertises
    recipe = yaml.safe_load(out.split("(the resolved recipe)\n", 1)[1])
    assert recipe["run"]["name"] == path.stem


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_the_k8s_command_renders_a_valid_rayjob(path, offline, capsys, rayjob_schema):  # noqa: F811
    argv = command(path, "k8s")
    nodes, per_node, _ = gpus(path)
    assert (int(flag(argv, "--worker-replicas")), int(flag(argv, "--worker-gpu"))) == (nodes, per_node)
    assert main([*argv, "--dry-run"]) == 0  # --apply with --dry-run prints the manifest
    out, err = capsys.readouterr()
    configmap, rayjob = yaml.safe_load_all(out)
    rayjob_schema.validate(rayjob)
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == per_node
    recipe = yaml.safe_load(configmap["data"]["recipe.yaml"])
    assert recipe["run"]["output_dir"] == f"/outputs/{path.stem}"  # on the --output-pvc volume
    assert "note:" not in err, err  # outputs on the PVC: nothing is lost with the cluster


# --------------------------------------------------------------------------- prepare_data.py's converters


def test_gsm8k_rows_get_the_bare_number_and_an_instruction():
    rows = prep.convert(GSM8K, prep.gsm8k_row)
    assert [r["answer"] for r in rows] == ["4", "6", "8", "10", "1200"]
    assert all(r["prompt"].endswith("\\boxed{}.") and r["solution"].endswith(r["answer"].replace("1200", "1,200"))
               for r in rows)


def test_math_mix_has_both_tasks_and_math_answer_reads_both():
    from rewards.verifiable.math_answer import math_answer

    rows = prep.math_mix(GSM8K, MATH)
    tasks = [r["task"] for r in rows]
    assert sorted(tasks) == ["gsm8k"] * len(GSM8K) + ["math"] * len(MATH)
    assert tasks[: len(GSM8K)] != ["gsm8k"] * len(GSM8K)  # shuffled: eval.max_samples takes both tasks
    boxed = [r["answer"] if r["task"] == "gsm8k" else re.search(r"\\boxed\{(.+?)\}", r["answer"]).group(1)
             for r in rows]
    right = [f"So the answer is \\boxed{{{b}}}." for b in boxed]
    wrong = [f"So the answer is \\boxed{{{b}1}}." for b in boxed]
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    assert math_answer(prompts, right, answer=answers) == [1.0] * len(rows)
    assert math_answer(prompts, wrong, answer=answers) == [0.0] * len(rows)


def test_preference_rows_are_strings_the_pair_loader_accepts(tmp_path):
    from rlhf.data.preference import check_rm_rows, load_preference_rows

    uf = prep.convert(ULTRAFEEDBACK, prep.ultrafeedback_row)
    assert uf[0]["chosen"] == "Blue." and uf[0]["rejected"] == "I cannot."
    pku = prep.convert(PKU_SAFERLHF, prep.pku_saferlhf_row)
    assert [r["harmless"] for r in pku] == [1, -1, 1, -1]  # the safer response is response_0
    assert [r["chosen"] for r in pku][:2] == ["Cool, dry, away from ammonia.", "Mix it with ammonia."]
    for name, rows in (("uf", uf), ("pku", pku)):
        prep.write_jsonl(rows, str(tmp_path / f"{name}.jsonl"))
        assert len(load_preference_rows(str(tmp_path / f"{name}.jsonl"))) == 4
    check_rm_rows(pku, "pku", ["helpful", "harmless"], {"harmless": "harmless"}, None)
    same = {**PKU_SAFERLHF[0], "response_1": PKU_SAFERLHF[0]["response_0"]}
    assert prep.pku_saferlhf_row(same) is None  # the pair loader refuses identical pairs: dropped here
    assert prep.ultrafeedback_row({**ULTRAFEEDBACK[0], "rejected": ULTRAFEEDBACK[0]["chosen"]}) is None
