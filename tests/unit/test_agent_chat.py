"""The agent rollout's chat observation format on a real tokenizer with a ChatML-style template: the tool-message
delimiters found by ``chat_delimiters``, and ``AgentRollout`` (``observation_format: chat``) end-to-end on a tiny
model with the ``hf`` engine and the built-in ``guess_number`` environment: the prompt is the template's rendering,
each observation sits once between the tool-message delimiters (the model's EOS, which ends its turn, is not
repeated; a turn that did not end with EOS gets it from the template), observations get no loss, and the trainer's
logprobs equal the engine's on the model's tokens; a step without an observation still opens the next assistant
turn with the template's header.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.agents import AgentEnvError, Step, environment
from rlhf.config.schema import AgentConfig, TinyModelConfig
from rlhf.types import SamplingSettings

DATA = Path(__file__).resolve().parents[2] / "data"
# ChatML, except that an assistant turn ends with the eos token (the model's EOS is the end of its turn)
CHATML = ("{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
          "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '<|im_end|>' }}{% endif %}{{ '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
NO_TOOL = ("{% for m in messages %}{% if m['role'] not in ('user', 'assistant') %}"
           "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{{ m['role'] + ': ' + m['content'] }}"
           "{% endfor %}")
PREFIX, SUFFIX = "</s>\n<|im_start|>tool\n", "<|im_end|>\n<|im_start|>assistant\n"


def _rows(n: int) -> list[dict]:
    with open(DATA / "agent_game_train.jsonl") as f:
        return [json.loads(line) for line in f][:n]


def _tokenizer():
    from rlhf.models.tiny import train_tokenizer

    tok = train_tokenizer([r["prompt"] + r["completion"] for r in _rows(300)] + ["user assistant tool"], 128)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A tiny model trained for a few steps on games rendered with the template (so turns often end with EOS)."""
    from rlhf.agents.envs import GuessNumberEnv
    from rlhf.models.tiny import build_tiny_model
    from rlhf.rollout.hf import HFEngine

    tok = _tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=64, intermediate_size=128, num_heads=4,
                                             max_position_embeddings=192), tok, seed=0)
    texts = []
    for row in _rows(48):
        env, messages = GuessNumberEnv(), [{"role": "user", "content": row["prompt"]}]
        env.reset(**row)
        for guess in row["completion"].split("\n")[::2][:3]:
            messages.append({"role": "assistant", "content": guess})
            step = env.step(guess)
            if step.done or step.observation is None:
                break
            messages.append({"role": "tool", "content": step.observation})
        texts.append(tok.apply_chat_template(messages, tokenize=False))
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in texts],
                                          batch_first=True, padding_value=-100)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model(input_ids=ids.clamp(min=0), attention_mask=(ids >= 0).long(), labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = tmp_path_factory.mktemp("agent_chat") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)  # the chat template travels with it
    return HFEngine(str(path))


def test_chat_delimiters_of_a_chatml_template():
    from rlhf.rollout.agent import chat_delimiters

    tok = _tokenizer()
    assert chat_delimiters(tok) == (PREFIX, SUFFIX, "</s>\n<|im_start|>assistant\n")  # tool message; none
    tok.chat_template = NO_TOOL
    with pytest.raises(AgentEnvError, match="cannot render a tool message.*unknown role tool.*plain"):
        chat_delimiters(tok)


def test_chat_episodes_are_the_templates_transcript(engine):
    from rlhf.agents.envs import GuessNumberEnv
    from rlhf.objectives.common import completion_logprobs
    from rlhf.rollout.agent import AgentRollout

    tok = engine.tokenizer
    assert tok.chat_template == CHATML
    cfg = AgentConfig(env="guess_number", tool_parser="none", observation_format="chat", max_turns=4,
                      max_tokens=80)
    rows = _rows(4)
    batch = AgentRollout(engine, cfg, max_prompt_tokens=32)(rows, SamplingSettings(n=3, max_new_tokens=4, seed=1))
    eos, n_obs, ended_with_eos = tok.eos_token_id, 0, [0, 0]
    for b in range(batch.batch_size):
        row = rows[b // 3]
        rendered = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                           add_generation_prompt=True)
        assert batch.prompt_ids[b][batch.prompt_mask[b].bool()].tolist() == tok(rendered, add_special_tokens=False)[
            "input_ids"]
        ids = batch.completion_ids[b][batch.completion_mask[b].bool()].tolist()
        turns = [(s, e) for s, e in batch.segments[b].tolist() if s >= 0]
        assert turns and turns[0][0] == 0 and turns[-1][1] == len(ids)  # nothing after the last turn
        env = GuessNumberEnv()
        env.reset(**row)
        in_turn = torch.zeros(batch.completion_mask.shape[1], dtype=torch.long)
        for t, (s, e) in enumerate(turns):
            in_turn[s:e] = 1
            if t + 1 == len(turns):
                break
            turn = ids[s:e]
            observation = env.step(tok.decode(turn, skip_special_tokens=True)).observation  # the env's own answer
            ended = bool(turn) and turn[-1] == eos
            ended_with_eos[ended] += 1
            prefix = PREFIX[len("</s>"):] if ended else PREFIX  # the template's end of turn, written once
            expected = tok(prefix + observation + SUFFIX, add_special_tokens=False)["input_ids"]
            assert ids[e:turns[t + 1][0]] == expected, (b, t, tok.decode(ids[e:turns[t + 1][0]]))
            n_obs += 1
        assert all(not (x == eos and y == eos) for x, y in zip(ids, ids[1:]))  # no EOS written twice
        assert torch.equal(batch.loss_mask[b], in_turn)  # 1 on the model's turns only
    assert n_obs >= 4 and min(ended_with_eos) >= 1, (n_obs, ended_with_eos)  # both kinds of turn end were seen
    lp = completion_logprobs(engine.model, batch.input_ids(), batch.attention_mask(), batch.prompt_ids.shape[1])
    model = batch.loss_mask.bool()
    assert torch.allclose(lp[model], batch.logprobs[model], atol=1e-5)


@environment("test_agent_chat_silent")
class Silent:
    """A step with no observation that does not end the episode, then one that does."""
    def reset(self, **row):
        self.turns = 0

    def step(self, action: str) -> Step:
        self.turns += 1
        return Step(None, {}, self.turns >= 2)


def test_a_turn_without_observation_still_opens_an_assistant_turn(engine):
    from rlhf.rollout.agent import AgentRollout

    cfg = AgentConfig(env="test_agent_chat_silent", tool_parser="none", observation_format="chat", max_turns=2)
    batch = AgentRollout(engine, cfg, max_prompt_tokens=32)(_rows(2), SamplingSettings(n=2, max_new_tokens=4, seed=1))
    for b in range(batch.batch_size):
        (_, e), (s, _) = batch.segments[b, :2].tolist()
        assert "<|im_start|>assistant\n" in engine.tokenizer.decode(batch.completion_ids[b, e:s].tolist())
