"""The hf engine's own decode loop (rlhf/rollout/hf_decode.py) against the generate path and the trainer.

Greedy tokens equal transformers' generate; recorded logprobs equal a full forward of the trainer's formula; rows
that ended leave the batch (the model sees fewer rows per step); seeds are deterministic; the RolloutBatch layout
is the generate path's. The tiny model is the session's random one with noise added to its matrices (at its
small init greedy decoding repeats one token), and since it rarely samples EOS a token it often emits is declared
EOS too (``engine.eos_ids``, read by both paths at call time): rows then end at mixed lengths, which is what the
loop prunes.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.rollout.hf import HFEngine
from rlhf.rollout.hf_decode import _top_k_top_p, loop_unsupported
from rlhf.types import SamplingSettings

PROMPTS = ["1+2=", "10-13=", "4+4=", "19+19=", "0+7=", "12-3="]  # different token counts: left padding


@pytest.fixture(scope="module")
def noisy_model_dir(arithmetic_model_dir, tmp_path_factory):
    """The session's tiny model with N(0, 0.15) added to every matrix: varied greedy completions."""
    import shutil

    from transformers import AutoModelForCausalLM

    out = shutil.copytree(arithmetic_model_dir, tmp_path_factory.mktemp("noisy") / "model")
    model = AutoModelForCausalLM.from_pretrained(out)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.15)
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def engines(noisy_model_dir):
    """(loop engine, generate engine) on the same weights, with mixed-length EOS (see the module docstring)."""
    loop, gen = HFEngine(noisy_model_dir, decode="loop"), HFEngine(noisy_model_dir, decode="generate")
    assert loop.decode == "loop" and gen.decode == "generate"
    eos = loop.eos_ids | _mixed_end_tokens(gen)
    loop.eos_ids, gen.eos_ids = set(eos), set(eos)
    return loop, gen


def _mixed_end_tokens(engine: HFEngine) -> set[int]:
    """Tokens that, declared EOS, end the greedy completions of PROMPTS at several different lengths (some run to
    the end): the token whose first occurrences are spread the most."""
    b = engine.generate(PROMPTS, SamplingSettings(n=1, max_new_tokens=12, greedy=True, ignore_eos=True))
    ids = b.completion_ids  # (B, 12)
    best, spread = None, -1
    for t in sorted(set(ids.flatten().tolist()) - engine.eos_ids):
        hit = ids == t  # (B, 12)
        firsts = {int(h.float().argmax()) if h.any() else 12 for h in hit}
        if 12 in firsts and len(firsts) > spread:
            best, spread = t, len(firsts)
    assert best is not None and spread >= 3, "the fixture model gives no mixed lengths"
    return {best}


def _lengths(b) -> list[int]:
    return b.completion_mask.sum(1).tolist()


def test_greedy_equals_generate_with_mixed_lengths(engines):
    loop, gen = engines
    s = SamplingSettings(n=1, max_new_tokens=12, greedy=True)
    a, b = loop.generate(PROMPTS, s), gen.generate(PROMPTS, s)
    assert len(set(_lengths(b))) >= 3 and max(_lengths(b)) == 12 and b.finished.any(), "lengths must be mixed"
    # the same RolloutBatch: every field equal (logprobs up to float rounding)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "group_ids", "finished",
                 "versions"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.completions == b.completions and a.prompts == b.prompts
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_greedy_equals_generate_with_stop_strings_and_chunks(engines):
    loop, gen = engines
    loop.batch_size = gen.batch_size = 4  # two generate calls per batch, of different prompt widths
    try:
        tok = loop.tokenizer
        first = gen.generate(PROMPTS, SamplingSettings(n=1, max_new_tokens=12, greedy=True, ignore_eos=True))
        stop = tok.decode(first.completion_ids[1, 2:3])  # a string row 1 completes at its third token
        s = SamplingSettings(n=1, max_new_tokens=12, greedy=True, stop=(stop,))
        a, b = loop.generate(PROMPTS, s), gen.generate(PROMPTS, s)
        assert a.completion_mask[1].sum() <= 3 and a.finished[1]
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.finished, b.finished)
        assert torch.equal(a.completion_mask, b.completion_mask) and a.completions == b.completions
    finally:
        loop.batch_size = gen.batch_size = 64


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                dict(temperature=1.3, top_p=0.8), dict(temperature=0.7, ignore_eos=True)])
def test_sampled_logprobs_equal_the_trainers_full_forward(engines, kw):
    loop, _ = engines
    b = loop.generate(PROMPTS, SamplingSettings(n=3, max_new_tokens=10, seed=5, **kw))
    T = kw["temperature"]
    lp = loop.completion_logprobs(b.input_ids(), b.attention_mask(), b.prompt_ids.shape[1], temperature=T)
    m = b.completion_mask.bool()
    assert torch.allclose(lp[m], b.logprobs[m], atol=1e-5), (lp[m] - b.logprobs[m]).abs().max()
    assert (b.logprobs[~m] == 0).all() and (b.completion_ids[~m] == loop.tokenizer.pad_token_id).all()
    assert b.group_ids.tolist() == [i for i in range(len(PROMPTS)) for _ in range(3)]
    if kw.get("ignore_eos"):
        assert m.all() and not b.finished.any()
        assert not any(int(t) in loop.eos_ids for t in b.completion_ids.flatten())
    else:
        lengths = _lengths(b)
        assert len(set(lengths)) >= 3, lengths
        assert all(bool(f) == (int(b.completion_ids[i, L - 1]) in loop.eos_ids)
                   for i, (f, L) in enumerate(zip(b.finished, lengths)))


def test_same_seed_same_samples_and_top_k_1_is_greedy(engines):
    loop, _ = engines
    s = SamplingSettings(n=4, max_new_tokens=10, seed=7)
    a, b = loop.generate(PROMPTS, s), loop.generate(PROMPTS, s)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    c = loop.generate(PROMPTS, SamplingSettings(n=4, max_new_tokens=10, seed=8))
    assert not torch.equal(a.completion_ids, c.completion_ids)
    k1 = loop.generate(PROMPTS, SamplingSettings(n=2, max_new_tokens=10, seed=1, top_k=1))
    greedy = loop.generate(PROMPTS, SamplingSettings(n=1, max_new_tokens=10, greedy=True))
    assert torch.equal(k1.completion_ids[::2], greedy.completion_ids[:, : k1.completion_ids.shape[1]])
    assert torch.equal(k1.completion_ids[1::2], k1.completion_ids[::2])


def test_finished_rows_leave_the_batch(engines):
    """Rows fed to the model per forward: the prefill once per prompt, then only the rows still running."""
    loop, gen = engines
    seen: list[int] = []
    hook = loop.model.model.register_forward_hook(lambda mod, args, kwargs, out: seen.append(
        int(kwargs["input_ids"].shape[0])), with_kwargs=True)
    try:
        b = loop.generate(PROMPTS, SamplingSettings(n=4, max_new_tokens=12, seed=3))
    finally:
        hook.remove()
    lengths = torch.tensor(_lengths(b))  # (24,)
    assert seen[0] == len(PROMPTS), "the prefill runs each prompt once, not n times"
    # step t (1-based) runs the rows whose completion is longer than t, each exactly once
    expected = [int((lengths > t).sum()) for t in range(1, int(lengths.max()))]
    assert seen[1:] == expected
    assert sum(seen[1:]) < len(lengths) * (int(lengths.max()) - 1), "some rows ended early"


def test_no_logprobs_gives_nan_and_same_tokens(engines):
    loop, _ = engines
    s = SamplingSettings(n=2, max_new_tokens=6, seed=2)
    a = loop.generate(PROMPTS, s)
    b = loop.generate(PROMPTS, SamplingSettings(n=2, max_new_tokens=6, seed=2, logprobs=False))
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.isnan(b.logprobs).all()


def test_generate_ids_continues_prefixes(engines):
    loop, gen = engines
    tok = loop.tokenizer
    prefixes = [tok("3+4=", add_special_tokens=False)["input_ids"], tok("11-2=9", add_special_tokens=False)["input_ids"]]
    s = SamplingSettings(n=1, max_new_tokens=8, greedy=True)
    a, b = loop.generate_ids(prefixes, s), gen.generate_ids(prefixes, s)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.prompts == ["", ""]
    assert torch.equal(a.prompt_ids, b.prompt_ids)


def test_top_k_top_p_masks():
    scores = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.1, 0.15, 0.2, 0.5]]))  # (2, 5)
    kept = lambda x: (x > -math.inf).tolist()  # noqa: E731
    assert kept(_top_k_top_p(scores, 2, 1.0)) == [[True, True, False, False, False], [False, False, False, True, True]]
    # top_p 0.7: 0.5 + 0.2 reaches it -> two tokens; 0.71 needs the third
    assert kept(_top_k_top_p(scores, 0, 0.7))[0] == [True, True, False, False, False]
    assert kept(_top_k_top_p(scores, 0, 0.71))[1] == [False, False, True, True, True]
    assert kept(_top_k_top_p(scores, 0, 0.01))[0] == [True, False, False, False, False]  # the likeliest stays
    assert torch.equal(_top_k_top_p(scores, 0, 1.0), scores)
    assert kept(_top_k_top_p(torch.tensor([[1.0, 1.0, 0.0]]), 1, 1.0)) == [[True, True, False]]  # ties kept


def test_decode_path_choice(arithmetic_model_dir):
    engine = HFEngine(arithmetic_model_dir)  # the default (rollout.hf.decode): auto
    assert engine.decode == "loop" and engine.info()["decode"] == "loop" and loop_unsupported(engine.model) is None
    assert HFEngine(arithmetic_model_dir, decode="generate").decode == "generate"
    assert "not a transformers model" in loop_unsupported(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="decode must be"):
        HFEngine(arithmetic_model_dir, decode="fast")


def test_lora_wrapped_engine_runs_the_loop(noisy_model_dir):
    """An engine that took a LoRA adapter (weight sync of model.lora) keeps the loop: peft's wrapper, same tokens."""
    from rlhf.config.model import LoraConfig
    from rlhf.models import lora

    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]).model_dump(mode="json")
    loop, gen = HFEngine(noisy_model_dir, decode="loop"), HFEngine(noisy_model_dir, decode="generate")
    for engine in (loop, gen):
        engine.model = lora.ensure_engine_adapter(engine.model, cfg)
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for _, p in lora.adapter_named_parameters(engine.model):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    assert loop_unsupported(loop.model) is None
    s = SamplingSettings(n=1, max_new_tokens=10, greedy=True)
    a, b = loop.generate(PROMPTS, s), gen.generate(PROMPTS, s)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    base = HFEngine(noisy_model_dir, decode="loop").generate(PROMPTS, s)
    assert not torch.equal(base.completion_ids, a.completion_ids), "the adapter changes what is generated"
