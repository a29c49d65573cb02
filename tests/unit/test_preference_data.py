"""Preference data: loading + validation of (prompt, chosen, rejected) rows, and token batching with masks.

Run: pytest tests/unit/test_preference_data.py -q
"""

import json

import pytest
import torch

from rlhf.data.collate import collate_sft
from rlhf.data.loaders import DataLoadError
from rlhf.data.preference import PreferenceBatch, collate_preference, load_preference_rows
from rlhf.models.tiny import train_tokenizer

CORPUS = ["1+2=3", "4+5=9", "7-3=4", "what is 2+2? 4", "yes no maybe"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=64)


def _jsonl(tmp_path, rows, name="prefs.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(p)


GOOD = [
    {"prompt": "1+2=", "chosen": "3", "rejected": "4", "safety": 1.0},
    {"prompt": "4+5=", "chosen": "9", "rejected": "no", "safety": 0.0},
]


# --------------------------------------------------------------------------- loading


def test_load_good_jsonl_keeps_extra_columns(tmp_path):
    rows = load_preference_rows(_jsonl(tmp_path, GOOD))
    assert rows == GOOD


def test_load_renames_columns(tmp_path):
    raw = [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in GOOD]
    rows = load_preference_rows(_jsonl(tmp_path, raw), prompt_column="q", chosen_column="good", rejected_column="bad")
    assert rows == [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in GOOD]


def test_load_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    p = str(tmp_path / "prefs.parquet")
    datasets.Dataset.from_list(GOOD).to_parquet(p)
    assert load_preference_rows(p) == GOOD


def test_missing_column_names_file_row_and_columns(tmp_path):
    rows = [GOOD[0], {"prompt": "4+5=", "chosen": "9", "reject": "8"}]
    path = _jsonl(tmp_path, rows)
    with pytest.raises(DataLoadError) as e:
        load_preference_rows(path)
    msg = str(e.value)
    assert path in msg and "row 1" in msg and "line 2" in msg
    assert "['rejected']" in msg and "['prompt', 'chosen', 'reject']" in msg


def test_identical_and_empty_pairs_are_errors(tmp_path):
    path = _jsonl(tmp_path, [GOOD[0], GOOD[1], {"prompt": "7-3=", "chosen": "4", "rejected": "4"}])
    with pytest.raises(DataLoadError, match=r"row 2 \(line 3\): chosen and rejected are identical"):
        load_preference_rows(path)
    path = _jsonl(tmp_path, [{"prompt": "7-3=", "chosen": "4", "rejected": "  "}], name="empty.jsonl")
    with pytest.raises(DataLoadError, match=r"row 0 \(line 1\): rejected completion .* is empty"):
        load_preference_rows(path)


def test_other_bad_inputs(tmp_path):
    with pytest.raises(DataLoadError, match="expected a string"):
        load_preference_rows(_jsonl(tmp_path, [{"prompt": "a", "chosen": ["x"], "rejected": "y"}]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(DataLoadError, match="line 2: malformed JSON"):
        load_preference_rows(str(bad))
    with pytest.raises(DataLoadError, match="does not exist"):
        load_preference_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataLoadError, match="no rows"):
        load_preference_rows(_jsonl(tmp_path, [], name="none.jsonl"))
    clash = [{"q": "a", "prompt": "b", "chosen": "c", "rejected": "d"}]
    with pytest.raises(DataLoadError, match="cannot rename"):
        load_preference_rows(_jsonl(tmp_path, clash, name="clash.jsonl"), prompt_column="q")


# --------------------------------------------------------------------------- collate


def test_collate_masks_by_hand(tok):
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    assert (pad, bos, eos) == (0, 1, 2)
    p0, c0, r0 = ids("1+2="), ids("3"), ids("4+5")
    p1, c1, r1 = ids("7-3="), ids("4"), ids("9")
    assert (len(p0), len(c0), len(r0), len(p1), len(c1), len(r1)) == (4, 1, 3, 4, 1, 1)  # one token per char
    rows = [{"prompt": "1+2=", "chosen": "3", "rejected": "4+5"}, {"prompt": "7-3=", "chosen": "4", "rejected": "9"}]
    batch = collate_preference(tok, rows, max_len=32)
    assert isinstance(batch, PreferenceBatch) and batch.batch_size == 2
    # longest of all four sequences: bos + 4 prompt + 3 rejected + eos = 9; every tensor is (2, 9)
    assert all(t.shape == (2, 9) for t in batch._tensors())
    assert batch.chosen_ids[0].tolist() == [bos, *p0, *c0, eos, pad, pad]
    assert batch.chosen_mask[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert batch.chosen_loss_mask[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert batch.rejected_ids[0].tolist() == [bos, *p0, *r0, eos]
    assert batch.rejected_mask[0].tolist() == [1] * 9
    assert batch.rejected_loss_mask[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert batch.rejected_ids[1].tolist() == [bos, *p1, *r1, eos, pad, pad]
    assert batch.rejected_loss_mask[1].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert batch.chosen_ids.dtype == torch.long and batch.chosen_loss_mask.dtype == torch.float32
    # the same tokens SFT would build for prompt + chosen
    sft = collate_sft(tok, [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows], max_len=32)
    assert torch.equal(batch.chosen_ids[:, :7], sft.input_ids) and torch.equal(batch.chosen_loss_mask[:, :7],
                                                                               sft.loss_mask)
    ids2, mask2, loss2 = batch.stacked()
    assert ids2.shape == (4, 9) and torch.equal(ids2[2:], batch.rejected_ids) and torch.equal(loss2[:2],
                                                                                               batch.chosen_loss_mask)
    assert batch.slice(1, 2).batch_size == 1 and torch.equal(batch.slice(1, 2).rejected_ids, batch.rejected_ids[1:])


def test_collate_truncation_and_errors(tok):
    rows = [{"prompt": "1+2=", "chosen": "3", "rejected": "4+5+5+5"}]
    with pytest.warns(UserWarning, match="1/2 sequences"):
        batch = collate_preference(tok, rows, max_len=7)
    assert batch.rejected_ids.shape == (1, 7) and batch.rejected_loss_mask[0].tolist() == [0, 0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="row 0's prompt is 5 tokens"):
        collate_preference(tok, rows, max_len=5)
    with pytest.raises(ValueError, match="'rejected'"):
        collate_preference(tok, [{"prompt": "a", "chosen": "b"}], max_len=8)
    with pytest.raises(ValueError, match="no rows"):
        collate_preference(tok, [], max_len=8)
