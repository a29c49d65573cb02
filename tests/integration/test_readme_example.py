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
