"""The trajectory layout (rlhf.types.RolloutBatch): separate attention and loss masks, per-token policy versions,
segments, and select / cat mapped generically by each field's layout; plus the pipeline's step order.

Run: pytest tests/unit/test_rollout_batch.py -q
"""

from __future__ import annotations

import dataclasses

import torch

from rlhf.types import ExperienceBatch, RolloutBatch, token_versions

PAD = 0


def _batch(prompt_rows, completion_rows, groups, version=0, extras=None, loss_rows=None):
    """Rows of token ids (0 is padding) -> a RolloutBatch, prompts left-padded, completions right-padded."""
    P = max(len(r) for r in prompt_rows)
    C = max(len(r) for r in completion_rows)
    prompt_ids = torch.tensor([[PAD] * (P - len(r)) + r for r in prompt_rows])
    prompt_mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in prompt_rows])
    completion_ids = torch.tensor([r + [PAD] * (C - len(r)) for r in completion_rows])
    completion_mask = torch.tensor([[1] * len(r) + [0] * (C - len(r)) for r in completion_rows])
    loss_mask = None if loss_rows is None else torch.tensor(loss_rows)
    return RolloutBatch(
        prompts=[f"p{i}" for i in range(len(prompt_rows))], completions=[f"c{i}" for i in range(len(prompt_rows))],
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, logprobs=-completion_mask.float(), group_ids=torch.tensor(groups),
        finished=torch.tensor([True] * len(prompt_rows)), loss_mask=loss_mask,
        versions=token_versions(completion_mask, version), extras=extras or {"answer": list("ab"[: len(groups)])},
    )


def test_every_field_declares_its_layout():
    for f in dataclasses.fields(RolloutBatch):
        assert f.metadata.get("layout") in ("rows", "tensor", "left", "right", "groups", "spans", "columns"), f.name


def test_single_turn_defaults():
    b = _batch([[5, 6], [7]], [[8, 9, 10], [11]], [0, 0], version=3)
    assert torch.equal(b.loss_mask, b.completion_mask)  # the policy generated every completion token
    assert b.versions.tolist() == [[3, 3, 3], [3, -1, -1]] and b.weight_version == 3
    assert b.segments.tolist() == [[[0, 3]], [[0, 1]]]  # one segment per row: the whole completion
    assert b.attention_mask().tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert b.input_ids().tolist() == [[5, 6, 8, 9, 10], [0, 7, 11, 0, 0]]


def test_loss_mask_can_leave_out_tokens_the_policy_did_not_generate():
    # a completion of two turns with an observation between them: attention on all five, loss on the 1st and 3rd
    b = _batch([[5]], [[8, 9, 20, 21, 10]], [0], loss_rows=[[1, 1, 0, 0, 1]], extras={"answer": ["a"]})
    e = ExperienceBatch.from_rollout(b, torch.zeros(1))
    assert e.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1]]
    assert e.loss_mask.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]] and e.prompt_len == 1


def test_cat_pads_each_field_by_its_layout_and_offsets_groups():
    a = _batch([[5, 6], [7, 8]], [[9], [10]], [0, 0], version=1, extras={"answer": ["x", "y"]})
    b = _batch([[4]], [[11, 12, 13]], [0], version=2, extras={"answer": ["z"]})
    c = RolloutBatch.cat([a, b], pad_token_id=PAD)
    assert c.prompt_ids.tolist() == [[5, 6], [7, 8], [PAD, 4]]  # left-padded
    assert c.prompt_mask.tolist() == [[1, 1], [1, 1], [0, 1]]
    assert c.completion_ids.tolist() == [[9, PAD, PAD], [10, PAD, PAD], [11, 12, 13]]  # right-padded
    assert c.loss_mask.tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 1]]
    assert c.versions.tolist() == [[1, -1, -1], [1, -1, -1], [2, 2, 2]]
    assert c.logprobs.tolist() == [[-1, 0, 0], [-1, 0, 0], [-1, -1, -1]]
    assert c.group_ids.tolist() == [0, 0, 1]  # the second part's group stays apart
    assert c.extras == {"answer": ["x", "y", "z"]} and c.prompts == ["p0", "p1", "p0"]
    assert c.segments.tolist() == [[[0, 1]], [[0, 1]], [[0, 3]]]
    assert c.weight_version == 1  # the oldest version among the generated tokens
    mixed = RolloutBatch.cat([a, _batch([[4]], [[11]], [0], extras={"other": [1]})], PAD)
    assert mixed.extras == {"answer": ["x", "y", None], "other": [None, None, 1]}


def test_select_keeps_rows_aligned_and_renumbers_groups():
    b = _batch([[1], [2], [3], [4]], [[5], [6, 7], [8], [9, 9, 9]], [0, 0, 1, 1], extras={"answer": list("abcd")})
    s = b.select_groups([1, 0])
    assert s.group_ids.tolist() == [0, 0, 1, 1]
    assert s.prompt_ids.flatten().tolist() == [3, 4, 1, 2] and s.extras["answer"] == list("cdab")
    assert s.completion_ids.tolist() == b.completion_ids[[2, 3, 0, 1]].tolist()
    rows = b.select(torch.tensor([3, 1]))
    assert rows.group_ids.tolist() == [0, 1] and rows.completions == ["c3", "c1"]
    assert torch.equal(rows.versions, b.versions[[3, 1]]) and torch.equal(rows.segments, b.segments[[3, 1]])


def test_sync_pipeline_produces_then_consumes_each_step_in_order():
    from rlhf.runtime.pipeline import Experience, SyncPipeline

    calls = []

    class Stage:
        def produce(self, step):
            calls.append(("produce", step))
            return Experience(step)

        def consume(self, exp):
            calls.append(("consume", exp.step))
            return {"step": exp.step}

    SyncPipeline().run(Stage(), range(1, 3), before_consume=lambda s: calls.append(("lr", s)),
                       after_step=lambda s, m: calls.append(("log", m["step"])))
    assert calls == [("produce", 1), ("lr", 1), ("consume", 1), ("log", 1),
                     ("produce", 2), ("lr", 2), ("consume", 2), ("log", 2)]
