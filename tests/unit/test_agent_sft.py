"""SFT on an agent's demonstrations: the transcript is cut at the observation template, each piece is encoded on
its own (as the agent rollout builds an episode) and the observations get no loss."""

from __future__ import annotations

import pytest

from rlhf.data.collate import collate_sft, transcript_pieces
from rlhf.models.tiny import train_tokenizer

TEMPLATE = "<obs>{observation}</obs>\n"


def test_transcript_pieces_alternate_model_turns_and_observations():
    text = "<call>add(1, 2)</call><obs>3</obs>\n3"
    assert transcript_pieces(text, TEMPLATE) == [("<call>add(1, 2)</call>", True), ("<obs>3</obs>\n", False),
                                                 ("3", True)]
    game = "8\n<obs>higher 9-16</obs>\n12\n<obs>lower 9-11</obs>\n10\n"
    assert [p for p, model in transcript_pieces(game, TEMPLATE) if model] == ["8\n", "12\n", "10\n"]
    assert transcript_pieces("42", TEMPLATE) == [("42", True)]
    with pytest.raises(ValueError, match="no {observation} field"):
        transcript_pieces("x", "<obs></obs>")


def test_observations_get_no_loss_and_no_token_spans_a_boundary():
    corpus = ["12+30=<call>add(12, 30)</call><obs>42</obs>\n42"] * 50
    tok = train_tokenizer(corpus, vocab_size=80)
    whole = tok(")</call><obs>", add_special_tokens=False)["input_ids"]
    assert len(whole) == 1  # the tokenizer merged across the boundary: one token for the turn's end and the obs
    batch = collate_sft(tok, [{"prompt": "12+30=", "completion": corpus[0]}], 64, observation_template=TEMPLATE)
    ids, targets = batch.input_ids[0].tolist(), batch.loss_mask[0].tolist()
    assert whole[0] not in ids  # each piece on its own: the merged token never appears
    pieces = [tok.decode([i]) for i, t in zip(ids, targets) if t == 0 and i != tok.bos_token_id]
    prompt = tok.decode(tok("12+30=", add_special_tokens=False)["input_ids"])
    assert "".join(pieces) == prompt + "<obs>42</obs>\n"  # no loss on the prompt and the observation only
    assert targets[-1] == 1 and ids[-1] == tok.eos_token_id
    plain = collate_sft(tok, [{"prompt": "12+30=", "completion": corpus[0]}], 64)
    assert plain.loss_mask.sum() > batch.loss_mask.sum()  # without the template every completion token is a target
