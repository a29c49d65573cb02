"""The built-in agent environments (rlhf/agents/envs.py) on hand-made episodes, and the demo data written by
data/make_agent_tasks.py: every train demonstration replays against its environment and scores 1.0."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from rlhf.agents.env import Step, resolve_environment, tool_names, tool_specs
from rlhf.agents.envs import CalculatorEnv, GuessNumberEnv, last_integer
from rlhf.agents.parsers import build_parser

DATA = Path(__file__).resolve().parents[2] / "data"
OBS = re.compile(r"<obs>(.*?)</obs>\n", re.DOTALL)  # rollout.agent.observation_template's default


def generator():
    spec = importlib.util.spec_from_file_location("make_agent_tasks", DATA / "make_agent_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(name: str) -> list[dict]:
    with open(DATA / name) as f:
        return [json.loads(line) for line in f]


def calc(prompt: str = "48213+90872=", answer: str = "139085") -> CalculatorEnv:
    env = CalculatorEnv()
    assert env.reset(prompt=prompt, answer=answer, completion="ignored") is None
    return env


def game(target: int = 11, low: int = 1, high: int = 16) -> GuessNumberEnv:
    env = GuessNumberEnv()
    assert env.reset(prompt=f"guess {low}-{high}\n", target=target, low=low, high=high) is None
    return env


# --------------------------------------------------------------------------- calculator


def test_calculator_is_registered_with_two_integer_tools():
    assert resolve_environment("calculator") is CalculatorEnv
    assert tool_names(CalculatorEnv) == ["add", "subtract"]
    for spec in tool_specs(CalculatorEnv):
        fn = spec["function"]
        assert fn["description"] and fn["parameters"]["required"] == ["a", "b"]
        assert {p["type"] for p in fn["parameters"]["properties"].values()} == {"integer"}
    assert not hasattr(CalculatorEnv, "step")  # a turn without a tool call ends the episode


def test_calculator_tool_then_copied_answer_is_correct():
    env = calc()
    assert env.add(48213, 90872) == 139085
    assert env.score("139085") == {"correct": 1.0, "used_tool": 1.0}
    env = calc("48213-90872=", "-42659")
    assert env.subtract(48213, 90872) == -42659
    assert env.score("the answer is -42659") == {"correct": 1.0, "used_tool": 1.0}


def test_calculator_direct_answers():
    assert calc().score("139085") == {"correct": 1.0, "used_tool": 0.0}
    assert calc().score("139084") == {"correct": 0.0, "used_tool": 0.0}
    assert calc().score("139085 oops 7") == {"correct": 0.0, "used_tool": 0.0}  # the LAST integer counts
    assert calc().score("") == {"correct": 0.0, "used_tool": 0.0}


@pytest.mark.parametrize("last_turn", [
    "<call>add(48213, 90872)</call>",            # stopped right after the call (max_turns / done)
    "<call>add(90872, 48213)</call>",
    "<call>add(48213, 90872)",                   # cut off by the token budget before the closing tag
    "<call>add(139085, 0)</call>",               # an answer inside a call is not an answer
])
def test_calculator_stopping_at_the_call_is_not_correct(last_turn):
    env = calc()
    env.add(48213, 90872)
    assert env.score(last_turn) == {"correct": 0.0, "used_tool": 1.0}


def test_last_integer():
    assert last_integer("<call>add(1, 2)</call><obs>3</obs>\n3") == 3
    assert last_integer("-42659") == -42659
    assert last_integer("<call>subtract(5, 9)</call>") is None


# --------------------------------------------------------------------------- guess_number


def test_guess_number_is_registered_gym_like_without_tools():
    assert resolve_environment("guess_number") is GuessNumberEnv
    assert tool_names(GuessNumberEnv) == []


def test_guess_number_narrows_the_range_and_solves():
    env = game(11)
    assert env.step("8\n") == Step("higher 9-16", {"success": 0.0}, False)
    assert env.step("12\n") == Step("lower 9-11", {"success": 0.0}, False)
    assert env.step("3\n") == Step("higher 9-11", {"success": 0.0}, False)  # outside the range: it stays
    assert env.step("10\n") == Step("higher 11-11", {"success": 0.0}, False)
    assert env.step("11\n") == Step(None, {"success": 1.0}, True)
    assert env.score("11\n") == {"solved": 1.0, "turns": 5.0}


@pytest.mark.parametrize("action", ["", "\n", "higher\n", "8.5\n", "eight\n", "<obs>", "1 2\n"])
def test_guess_number_invalid_turns_keep_the_range(action):
    env = game(11)
    env.step("8\n")
    assert env.step(action) == Step("error 9-16", {"success": 0.0}, False)
    assert env.score("") == {"solved": 0.0, "turns": 2.0}


def test_guess_number_reads_the_first_line_only():
    assert game(11).step(" 11 \n<obs>lower 1-1").done  # a merged token after the stop does not spoil the guess


def test_identical_histories_give_identical_observations():
    histories = [["4\n", "13\n", "x\n", "9\n"], ["4\n", "13\n", "x\n", "9\n"]]
    envs = [game(11), game(11)]
    seen = [[env.step(a).observation for a in h] for env, h in zip(envs, histories)]
    assert seen[0] == seen[1] == ["higher 5-16", "lower 5-12", "error 5-12", "higher 10-12"]
    # the same knowledge reached by other guesses gives the same text too
    env = game(11)
    env.step("2\n"), env.step("4\n"), env.step("13\n")
    assert env.step("9\n").observation == "higher 10-12"


def test_guess_number_rejects_a_target_outside_the_range():
    with pytest.raises(ValueError, match="outside"):
        game(17)


# --------------------------------------------------------------------------- the data files


def replay(env, completion: str) -> tuple[str, int]:
    """Play the demo's model turns against ``env`` as the agent rollout would; check every observation the demo
    shows is the one the environment gives. Returns (the last model turn, the number of model turns)."""
    parser = build_parser("call")
    pieces = OBS.split(completion)
    turns, shown = pieces[0::2], pieces[1::2]
    for i, turn in enumerate(turns):
        last = i == len(turns) - 1
        parsed = parser.parse(turn)
        assert not parsed.errors, (completion, parsed.errors)
        if parsed.calls:
            assert turn.endswith("</call>") and turn.count("</call>") == 1  # the parser's stop ends the turn
            observation = "\n".join(str(getattr(env, c.name)(*c.args, **c.kwargs)) for c in parsed.calls)
        elif hasattr(env, "step"):
            assert turn.endswith("\n") and turn.count("\n") == 1  # the recipe's stop "\n" ends the turn
            step = env.step(turn)
            if step.done:
                assert last, completion
                break
            observation = step.observation
        else:
            assert last, completion  # a turn without a call ends a tool environment's episode
            break
        assert not last, f"the demo stops after a turn the environment answers: {completion!r}"
        assert observation == shown[i], completion
    return turns[-1], len(turns)


def test_calculator_demos_replay_and_are_correct():
    train = rows("agent_calculator_train.jsonl")
    tool_demos = 0
    for row in train:
        env = CalculatorEnv()
        env.reset(**row)
        last_turn, n_turns = replay(env, row["completion"])
        assert env.score(last_turn) == {"correct": 1.0, "used_tool": float(n_turns > 1)}, row
        tool_demos += n_turns > 1
        if n_turns > 1:  # the call turn alone would not score
            assert calc(row["prompt"], row["answer"]).score(OBS.split(row["completion"])[0])["correct"] == 0.0
    assert abs(tool_demos / len(train) - generator().TOOL_FRACTION) < 0.05
    assert {r["prompt"] for r in train}.isdisjoint(r["prompt"] for r in rows("agent_calculator_eval.jsonl"))


def test_game_demos_replay_and_solve_within_five_guesses():
    for row in rows("agent_game_train.jsonl"):
        env = GuessNumberEnv()
        env.reset(**row)
        last_turn, n_turns = replay(env, row["completion"])
        assert n_turns <= 5 and last_turn == f"{row['target']}\n"  # ends with the guess and its newline
        assert env.score(last_turn) == {"solved": 1.0, "turns": float(n_turns)}, row


def test_data_files_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_agent_tasks", DATA / "make_agent_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, part in module.build().items():
        assert rows(name) == part, f"data/{name} is stale: run python data/make_agent_tasks.py"
        assert (DATA / name).stat().st_size < 1_000_000
        if "eval" in name:
            assert all("completion" not in r for r in part)


@pytest.mark.parametrize("kind", ["calculator", "game"])
def test_the_corpus_covers_what_the_environment_writes_and_fits_the_budget(kind):
    from rlhf.models.tiny import train_tokenizer

    data = rows(f"agent_{kind}_train.jsonl") + rows(f"agent_{kind}_eval.jsonl")
    corpus = [r["prompt"] + " " + r.get("completion", "") for r in data]  # as rlhf/runtime/controller.py builds it
    written = ["error 1-16", "higher 12-16", "lower 1-10", "higher 11-11"] if kind == "game" else [
        "<call>subtract(10234, 99999)</call>", "<call>add(1, 2)</call>", "-89765", "139085"]
    assert set("".join(written) + "<obs></obs>\n0123456789") <= set("".join(corpus))
    tok = train_tokenizer(corpus, vocab_size=64)
    assert all(tok.unk_token_id not in tok(t, add_special_tokens=False).input_ids for t in written)
    for r in data:
        prompt = len(tok(r["prompt"], add_special_tokens=False).input_ids)
        assert prompt < 24
        assert prompt + len(tok(r.get("completion", ""), add_special_tokens=False).input_ids) + 1 < 64


# --------------------------------------------------------------------------- math_tools


def test_math_tools_offers_calculate_and_sandboxed_python_and_scores_the_final_turn():
    from rlhf.agents.envs import MathToolsEnv
    from rlhf.sandbox import isolation_layers

    cls = resolve_environment("math_tools")
    assert cls is MathToolsEnv and tool_names(cls) == ["calculate", "python"]
    spec = {s["function"]["name"]: s["function"] for s in tool_specs(cls)}
    assert spec["python"]["parameters"] == {"type": "object", "required": ["code"], "properties": {
        "code": {"type": "string", "description": "the program; print the values you need."}}}
    env = MathToolsEnv()
    env.reset(prompt="What is 1,234 * 3?", answer="3,702")
    assert env.calculate("1234 * 3") == "3702"
    with pytest.raises(ValueError):
        env.calculate("__import__('os')")
    if "private_root" in isolation_layers():
        assert env.python("print(1234 * 3)").strip() == "3702"
    assert env.score("It is 3,702.") == {"correct": 1.0, "used_tool": 1.0}
    assert env.score('<tool_call>{"name": "calculate", "arguments": {"expression": "3702"}}</tool_call>') == \
        {"correct": 0.0, "used_tool": 1.0}  # a turn that only calls a tool has no answer
    fresh = MathToolsEnv()
    fresh.reset(answer=0.5)
    assert fresh.score("1/2 = 0.5") == {"correct": 1.0, "used_tool": 0.0}
