"""`rlhf validate` on reward plugin problems: no traceback, one line per problem naming the component, the plugin
and what to change, exit code 2 -- for an import error in the user's module, a missing module or attribute, a
signature no style fits, a style the signature does not fit, bad args, a column the data lacks, and TRL inputs
rlhf cannot pass.

Run: pytest tests/unit/test_validate_plugin_errors.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the plugins are referenced as 'tests.fixtures.<module>:<attr>', as a recipe would
    sys.path.insert(0, str(ROOT))

from rlhf.cli import main  # noqa: E402

FOREIGN = "tests.fixtures.foreign_rewards"


def _recipe(tmp_path: Path, rewards: list[dict], data: dict | None = None) -> str:
    path = tmp_path / "recipe.yaml"
    body = {"model": {"tiny": {}}, "rollout": {"prompts_per_step": 2, "group_size": 2}, "rewards": rewards}
    if data is not None:
        body["data"] = data
    path.write_text(yaml.safe_dump(body))
    return str(path)


def _validate(capsys, path: str) -> tuple[int, list[str]]:
    """(exit code, the problem lines) of `rlhf validate path`, after checking the output holds no traceback."""
    code = main(["validate", path])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    lines = [line.strip() for line in out.err.splitlines() if line.strip() and line.strip() != "error: invalid recipe:"]
    return code, lines


@pytest.mark.parametrize("plugin, extra, expected", [
    ("tests.fixtures.broken_rewards:reward", {},
     ["cannot import module 'tests.fixtures.broken_rewards': importing it raised ZeroDivisionError",
      "broken_rewards.py:", "Fix the module"]),
    ("no_such_module_xyz:reward", {}, ["cannot import module 'no_such_module_xyz'", "PYTHONPATH"]),
    (f"{FOREIGN}:trl_acuracy", {}, ["has no attribute 'trl_acuracy'", "Did you mean 'trl_accuracy'?"]),
    (f"{FOREIGN}:one_argument", {}, ["its parameters are (text)", "Give it one of these shapes", "verl ("]),
    (f"{FOREIGN}:trl_async", {"style": "openrlhf"},
     ["style openrlhf calls fn(queries, prompts, labels)", "set the component's style"]),
    ("trl.rewards:think_format_reward", {"style": "trl"}, ["conversational format", "trl_conversational"]),
    (f"{FOREIGN}:verl_float_score", {"args": {"bonsu": 1.0}}, ["does not accept arg 'bonsu'", "Did you mean 'bonus'?"]),
    (f"{FOREIGN}:trl_accuracy", {"output_key": "acc"}, ["output_key picks a key", "Remove output_key"]),
    (f"{FOREIGN}:trl_needs_state", {}, ["needs TRL's 'trainer_state'", "Give the parameter a default"]),
    (f"{FOREIGN}:verl_compute_score", {"columns": {"ground_truth": "gold"}},
     ["gives it 'ground_truth' from column 'gold', which the batch does not have", "Fix the component's columns"]),
])
def test_each_plugin_problem_is_one_line_naming_component_plugin_and_fix(tmp_path, capsys, plugin, extra, expected):
    code, lines = _validate(capsys, _recipe(tmp_path, [{"name": "mine", "plugin": plugin, **extra}]))
    assert code == 2
    assert len(lines) == 1, lines
    (line,) = lines
    assert "rewards.0: reward component 'mine'" in line and plugin in line
    for text in expected:
        assert text in line, (text, line)


def test_a_column_the_jsonl_data_lacks(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"{i}+1=", "gold": str(i + 1)}) for i in range(4)) + "\n")
    rewards = [{"name": "acc", "plugin": f"{FOREIGN}:trl_accuracy"},  # needs `answer`
               {"name": "ok", "plugin": f"{FOREIGN}:trl_accuracy", "columns": {"answer": "gold"}},
               {"name": "verl", "plugin": f"{FOREIGN}:verl_compute_score"}]  # no ground truth column
    path = _recipe(tmp_path, rewards, {"source": "jsonl", "train_path": str(data), "prompt_column": "question"})
    code, lines = _validate(capsys, path)
    assert code == 2 and len(lines) == 2, lines
    assert "rewards.0: reward component 'acc'" in lines[0] and "needs the column 'answer'" in lines[0]
    assert "Available columns: ['finished', 'gold', 'num_tokens']" in lines[0]
    assert "rewards.2: reward component 'verl'" in lines[1] and "{ground_truth: COLUMN}" in lines[1]


def test_an_exiting_module_and_an_unreadable_constructor_are_one_line_each(tmp_path, capsys, monkeypatch):
    (tmp_path / "script_rewards.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "c_rewards.py").write_text("class Scorer:\n    __init__ = dict.__init__\n\n"
                                           "    def __call__(self, prompts, completions):\n"
                                           "        return [0.0] * len(prompts)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = [{"name": "script", "plugin": "script_rewards:reward"}, {"name": "rm", "plugin": "c_rewards:Scorer"}]
    code, lines = _validate(capsys, _recipe(tmp_path, rewards))
    assert code == 2 and len(lines) == 2, lines
    assert "rewards.0: reward component 'script'" in lines[0] and "called sys.exit(3)" in lines[0]
    assert "must not exit when imported" in lines[0]
    assert "rewards.1: reward component 'rm' (plugin 'c_rewards:Scorer')" in lines[1]
    assert "cannot read its constructor's parameters" in lines[1] and "__init__ written in Python" in lines[1]


def test_agent_rollouts_leave_the_columns_to_the_run(tmp_path, capsys):
    """An agent episode's environment adds columns of its own (env_rewards): the data's columns are not all a plugin
    gets, so validate checks columns of single-turn rollouts only."""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "gold": "2"}) + "\n")
    rewards = [{"name": "env", "plugin": "env_reward"}]  # reads the env_rewards column
    path = _recipe(tmp_path, rewards, {"source": "jsonl", "train_path": str(data)})
    code, lines = _validate(capsys, path)
    assert code == 2 and len(lines) == 1 and "needs the column 'env_rewards'" in lines[0], lines
    body = yaml.safe_load(Path(path).read_text())
    body["rollout"].update(kind="agent", agent={"env": "calculator", "max_tokens": 64})  # fits the tiny context
    Path(path).write_text(yaml.safe_dump(body))
    assert _validate(capsys, path) == (0, [])


def test_several_problems_each_get_a_line_in_recipe_order(tmp_path, capsys):
    rewards = [{"name": "a", "plugin": "no_such_module_xyz:reward"},
               {"name": "b", "plugin": f"{FOREIGN}:trl_needs_state"},
               {"name": "c", "plugin": f"{FOREIGN}:verl_compute_score"},  # fine
               {"name": "d", "plugin": f"{FOREIGN}:one_argument"}]
    code, lines = _validate(capsys, _recipe(tmp_path, rewards))
    assert code == 2 and [line.split(": ")[1] for line in lines] == ["rewards.0", "rewards.1", "rewards.3"]


def test_foreign_styles_validate_cleanly(tmp_path, capsys):
    rewards = [{"name": "trl", "plugin": f"{FOREIGN}:trl_accuracy"},
               {"name": "verl", "plugin": f"{FOREIGN}:verl_compute_score", "output_key": "acc"},
               {"name": "openrlhf", "plugin": f"{FOREIGN}:reward_func", "columns": {"labels": "answer"}}]
    assert main(["validate", _recipe(tmp_path, rewards)]) == 0
    out = capsys.readouterr()
    assert "style: auto" in out.out and "output_key: acc" in out.out and out.err == ""


def test_the_command_line_prints_no_traceback(tmp_path):
    """The real entry point, in a fresh process: a module that raises on import."""
    path = _recipe(tmp_path, [{"name": "mine", "plugin": "tests.fixtures.broken_rewards:reward"}])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", "import sys; from rlhf.cli import main; sys.exit(main())",
                           "validate", path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "reward component 'mine'" in proc.stderr and "ZeroDivisionError" in proc.stderr
