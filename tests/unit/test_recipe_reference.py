"""The recipe reference (rlhf/config/reference.py): docs/recipe_reference.md is current, every key is documented,
and `rlhf explain` answers for keys, sections and unknown keys."""

from __future__ import annotations

import pytest

from rlhf.cli import main
from rlhf.config.reference import DOC_PATH, REGENERATE, entries, lookup, render


def test_doc_is_current():
    assert DOC_PATH.exists(), f"docs/recipe_reference.md is missing: run {REGENERATE}"
    assert DOC_PATH.read_text(encoding="utf-8") == render(), (
        f"docs/recipe_reference.md is stale (the recipe schema changed): run {REGENERATE}")


def test_every_key_is_documented():
    all_entries = entries()
    paths = [e.path for e in all_entries]
    assert len(paths) == len(set(paths)), "two keys share one path"
    missing = [e.path for e in all_entries if not (e.description.strip() and e.type and e.default)]
    assert not missing, f"keys without a description, type or default (add Field(description=...)): {missing}"


def _one(path: str):
    found = [e for e in entries() if e.path == path]
    assert len(found) == 1, path
    return found[0]


def test_types_defaults_and_ranges():
    e = _one("rollout.max_new_tokens")
    assert (e.type, e.default, e.range) == ("int", "32", ">= 1")
    assert _one("rollout.top_p").range == "(0, 1]"
    assert _one("model.lora.dropout").range == "[0, 1)"
    assert _one("rewards[].name").default == "required" and "length >= 1" in _one("rewards[].name").range
    assert _one("rollout.engine").type == "one of {hf, vllm}"
    assert _one("train.num_threads").type == "int or null"
    assert _one("data.synthetic.ops").type == "list[one of {+, -, *}]"
    assert _one("weighting.schedules.<name>.end").default == "1.0"
    assert _one("model").default == "required" and _one("model").section


def test_objective_kinds():
    kind = _one("objective.kind")
    assert kind.default == "grpo" and "ppo" in kind.type and "dpo" in kind.type
    ppo = _one("objective[kind=ppo].kl_coef")
    assert (ppo.default, ppo.range, ppo.kind) == ("0.05", ">= 0", "ppo")
    assert _one("objective[kind=grpo].kl_coef").default == "0.0"
    assert _one("objective[kind=cgpo].tasks.<name>.rewards").default == "required"
    named, _ = lookup("objective.clip_eps")  # every policy-gradient kind has it, written without the kind
    assert {"grpo", "ppo", "rloo"} <= {e.kind for e in named}
    assert "dpo" not in {e.kind for e in named}
    assert [e.path for e in lookup("rewards.0.plugin")[0]] == ["rewards[].plugin"]


def test_explain_key(capsys):
    assert main(["explain", "rollout.max_new_tokens"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rollout.max_new_tokens\n")
    assert "type:     int" in out and "default:  32" in out and "range:    >= 1" in out


def test_explain_section_and_kind(capsys):
    assert main(["explain", "rollout.vllm"]) == 0
    out = capsys.readouterr().out
    assert "rollout.vllm.tensor_parallel_size" in out and "rollout.max_new_tokens" not in out
    assert main(["explain", "objective.ppo"]) == 0
    out = capsys.readouterr().out
    assert "objective[kind=ppo].critic.lr" in out and "kind=grpo" not in out


def test_explain_unknown_key_suggests(capsys):
    assert main(["explain", "rollout.max_new_token"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe key 'rollout.max_new_token'" in err and "did you mean 'rollout.max_new_tokens'" in err


@pytest.mark.parametrize("query", [".", "..", " . "])
def test_explain_a_query_of_dots_is_an_unknown_key(capsys, query):
    assert main(["explain", query]) == 2
    out = capsys.readouterr()
    assert f"error: unknown recipe key '{query}'" in out.err and "Traceback" not in out.err + out.out


def test_explain_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "explain" in capsys.readouterr().out
