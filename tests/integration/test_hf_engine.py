"""The hf rollout engine in-process: masks, EOS/stop handling, seeding, logprobs, no leaked generation_config."""

from __future__ import annotations

import torch

from rlhf.rollout.hf import HFEngine, _completion_mask, _cut_at_stop
from rlhf.types import SamplingSettings


def test_completion_mask_first_eos_inclusive():
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 9, 6, 2]])  # eos ids {2, 9}
    mask, finished = _completion_mask(ids, {2, 9})
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert finished.tolist() == [True, False, True, True]


def test_stop_string_cuts_mask_and_marks_finished(arithmetic_model_dir):
    engine = HFEngine(arithmetic_model_dir)
    tok = engine.tokenizer
    ids = torch.tensor([tok("12+3=4", add_special_tokens=False)["input_ids"],
                        tok("7-1-2-", add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)
    finished = torch.zeros(2, dtype=torch.bool)
    mask, finished = _cut_at_stop(tok, ids, mask, finished, ("=",))
    assert mask.tolist()[0] == [1, 1, 1, 1, 1, 0]  # through the token that completes "="
    assert mask.tolist()[1] == [1] * 6 and finished.tolist() == [True, False]


def test_generate_shapes_seeding_and_logprobs(arithmetic_model_dir):
    engine = HFEngine(arithmetic_model_dir, batch_size=6)  # 6 // n=3 -> two prompts per generate() call
    prompts = ["1+2=", "10-3=", "4+4=", "9+9=", "0+7="]
    s = SamplingSettings(n=3, max_new_tokens=5, seed=11)
    a, b = engine.generate(prompts, s), engine.generate(prompts, s)
    assert a.batch_size == 15 and a.group_ids.tolist() == [i for i in range(5) for _ in range(3)]
    assert a.prompts == [p for p in prompts for _ in range(3)]
    assert torch.equal(a.completion_ids, b.completion_ids), "same seed, same samples"
    assert (a.prompt_mask.sum(1) > 0).all() and a.prompt_ids.shape[1] == a.prompt_mask.shape[1]
    # logprobs of the sampled tokens equal a fresh scoring pass on exactly those tokens
    lp = engine.completion_logprobs(a.input_ids(), a.attention_mask(), a.prompt_ids.shape[1])
    m = a.completion_mask.bool()
    assert torch.allclose(lp[m], a.logprobs[m], atol=1e-6)
    assert (a.logprobs[~m] == 0).all() and (a.logprobs[m] < 0).all()
    # padding after the end is pad, and lengths agree with `finished`
    assert (a.completion_ids[~m] == engine.tokenizer.pad_token_id).all()
    assert ((a.completion_lengths < 5) <= a.finished).all()
    # recorded while sampling from the raw logits: the untruncated log_softmax(logits / T), with top-k on too
    c = engine.generate(prompts, SamplingSettings(n=3, max_new_tokens=5, seed=3, temperature=0.7, top_k=4))
    lp = engine.completion_logprobs(c.input_ids(), c.attention_mask(), c.prompt_ids.shape[1], temperature=0.7)
    m = c.completion_mask.bool()
    assert torch.allclose(lp[m], c.logprobs[m], atol=1e-5)
    # ignore_eos: EOS is never sampled, and the recorded logprobs are still the policy's (EOS masked after reading)
    d = engine.generate(prompts, SamplingSettings(n=3, max_new_tokens=5, seed=3, temperature=0.7, ignore_eos=True))
    lp = engine.completion_logprobs(d.input_ids(), d.attention_mask(), d.prompt_ids.shape[1], temperature=0.7)
    assert d.completion_mask.all() and not any(int(t) in engine.eos_ids for t in d.completion_ids.flatten())
    assert torch.allclose(lp, d.logprobs, atol=1e-5)


def test_greedy_is_argmax_and_ignores_model_generation_config(arithmetic_model_dir, tmp_path):
    import shutil

    from transformers import GenerationConfig

    model_dir = shutil.copytree(arithmetic_model_dir, tmp_path / "model")
    shipped = GenerationConfig.from_pretrained(model_dir)
    shipped.repetition_penalty, shipped.min_new_tokens = 50.0, 4  # as if the model shipped these
    shipped.save_pretrained(model_dir)
    engine = HFEngine(str(model_dir))
    batch = engine.generate(["3+5="], SamplingSettings(n=1, max_new_tokens=4, greedy=True))
    ids = batch.prompt_ids.clone()
    mask = batch.prompt_mask.clone()
    for j in range(int(batch.completion_lengths[0])):
        with torch.no_grad():
            logits = engine.model(input_ids=ids, attention_mask=mask).logits[0, -1]
        nxt = int(logits.argmax())
        assert nxt == int(batch.completion_ids[0, j]), f"token {j} is not the plain argmax"
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)


def test_recipe_key_reaches_the_rollout_actor(ray_session, arithmetic_model_dir, tmp_path):
    """rollout.hf.decode picks the engine's decode path in its Ray actor (the default, auto, is HFEngine's own
    default: tests/unit/test_hf_decode.py)."""
    from rlhf.config.schema import Recipe
    from rlhf.rollout.group import RolloutGroup

    def recipe(**hf):
        return Recipe.model_validate({
            "run": {"output_dir": str(tmp_path / "out")}, "model": {"path": "unused"},
            "rewards": [{"name": "r", "plugin": "exact_match"}],
            "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4, "hf": hf}})

    assert recipe().rollout.hf.decode == "auto"
    engines = RolloutGroup(recipe(decode="generate"), arithmetic_model_dir)
    try:
        assert engines.infos[0]["decode"] == "generate"
        batch = engines.generate(["3+4=", "5-1="], SamplingSettings(n=2, max_new_tokens=4, seed=1))
        assert batch.batch_size == 4
    finally:
        engines.shutdown()
