"""The README's "Write your own reward" example, extracted from README.md and run as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from rlhf.config.load import validate_dict

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_reward_example(tmp_path, monkeypatch):
    from rewards.api import check_component
    from rlhf.scoring.group import RewardGroup

    code = next(b for b in _blocks("python") if b.startswith("# my_rewards.py"))
    recipe_lines = next(b for b in _blocks("yaml") if "my_rewards:short_answer" in b)
    (tmp_path / "my_rewards.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)

    data = {
        "model": {"tiny": {}},
        "rollout": {"prompts_per_step": 2, "group_size": 2},
        **yaml.safe_load(recipe_lines),
    }
    recipe = validate_dict(data, "README.md")
    component = recipe.rewards[0]
    assert check_component(component).kind == "reward"

    group = RewardGroup(recipe.rewards, use_ray=False)
    try:
        rv, metrics = group.score(
            ["1+1=", "2+2=", "3+3="], ["2", "5", "6 is the answer!"], {"answer": ["2", "4", "6"]}
        )
    finally:
        group.shutdown()
    assert rv.names == ("short",) and rv.kinds == ("reward",)
    assert rv.values[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert metrics["reward/short/failures"] == 0


def test_readme_environment_example(tmp_path, monkeypatch):
    """The "Write your own environment" class and recipe lines, run as written: scripted turns through the class,
    and the recipe's rewards read the episode's environment rewards."""
    from rlhf.agents import resolve_environment
    from rlhf.scoring.group import RewardGroup

    code = next(b for b in _blocks("python") if b.startswith("# my_envs.py"))
    recipe_lines = next(b for b in _blocks("yaml") if "my_envs:Countdown" in b)
    (tmp_path / "my_envs.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_envs", None)
    data = {"model": {"tiny": {}}, "rollout": {"prompts_per_step": 2, "group_size": 2},
            "rewards": yaml.safe_load(recipe_lines)["rewards"]}
    data["rollout"].update(yaml.safe_load(recipe_lines)["rollout"])
    recipe = validate_dict(data, "README.md")
    env_cls = resolve_environment(recipe.rollout.agent.env)

    env = env_cls()
    assert env.reset(start=3, prompt="x") == "count down from 3"
    steps = [env.step(a) for a in ("3\n", "2\n", "1\n")]
    assert [s.done for s in steps] == [False, False, True] and steps[0].rewards == {"hit": 1.0}
    assert env.score("1") == {"finished": 1.0}
    wrong = env_cls()
    wrong.reset(start=3)
    assert wrong.step("4").done and wrong.score("4") == {"finished": 0.0}

    group = RewardGroup(recipe.rewards, use_ray=False)
    try:
        rv, _ = group.score(["p", "p"], ["3\n2\n1\n", "4"], {
            "env_rewards": [{"hit": 3.0, "finished": 1.0}, {"hit": 0.0, "finished": 0.0}],
            "env_turn_rewards": [[{"hit": 1.0}, {"hit": 1.0}, {"hit": 1.0}], [{"hit": 0.0}]],
            "end_reason": ["done", "done"]},
            step_spans=[[(0, 2), (2, 4), (4, 6)], [(0, 1)]])
    finally:
        group.shutdown()
    assert rv.names == ("finished", "hit") and rv.values[:, 0].tolist() == [1.0, 0.0]
    assert rv.values[:, 1].tolist() == [1.0, 0.0]  # outcome: mean of the turns' hits
    assert rv.steps[0, :, 0].tolist() == [1.0, 1.0, 1.0] and rv.steps[1, 0, 0].item() == 0.0
