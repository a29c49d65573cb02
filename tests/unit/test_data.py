"""Data: synthetic arithmetic split, jsonl/parquet loaders and their errors, sampler resume, collation, chat.

Run: pytest tests/unit/test_data.py -q
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json

import pytest
import torch

from rlhf.config.schema import DataConfig, SyntheticArithmeticConfig
from rlhf.data import (
    DataLoadError,
    PromptSampler,
    collate_sft,
    encode_prompts,
    format_prompt,
    load_rows,
    make_arithmetic,
)
from rlhf.models.tiny import train_tokenizer

CORPUS = [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)] + ["What is x? a b c"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=64)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- synthetic


def test_arithmetic_disjoint_and_deterministic():
    cfg = SyntheticArithmeticConfig(n_train=300, n_eval=50, min_operand=0, max_operand=20, ops=["+", "-"])
    train, held = make_arithmetic(cfg, seed=0)
    assert len(train) == 300 and len(held) == 50
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert len({r["prompt"] for r in train}) == 300  # no duplicates either
    assert make_arithmetic(cfg, seed=0) == (train, held)
    assert make_arithmetic(cfg, seed=1) != (train, held)
    for r in train + held:
        assert r["answer"] == r["completion"] == str(eval(r["prompt"][:-1]))  # noqa: S307 - our own digits


def test_arithmetic_caps_and_errors():
    cfg = SyntheticArithmeticConfig(n_train=1000, n_eval=10, min_operand=0, max_operand=4)  # 25 pairs
    train, held = make_arithmetic(cfg, seed=0)
    assert len(held) == 10 and len(train) == 15
    assert make_arithmetic(cfg.model_copy(update={"n_train": 5}), seed=0)[1] == held  # eval set independent of n_train
    with pytest.raises(ValueError, match="n_eval=25.*25 distinct"):
        make_arithmetic(cfg.model_copy(update={"n_eval": 25}), seed=0)


def test_load_rows_synthetic():
    cfg = DataConfig(synthetic=SyntheticArithmeticConfig(n_train=20, n_eval=5))
    train, held = load_rows(cfg, seed=0)
    assert len(train) == 20 and len(held) == 5 and set(train[0]) == {"prompt", "completion", "answer"}


# --------------------------------------------------------------------------- jsonl / parquet


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_renames_and_keeps_extra_columns(tmp_path):
    rows = [{"question": f"q{i}", "target": f"t{i}", "answer": str(i), "level": i % 3} for i in range(40)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = DataConfig(source="jsonl", train_path=path, prompt_column="question", completion_column="target")
    train, held = load_rows(cfg, seed=0)
    assert len(held) == 2 and len(train) == 38  # 5% held out
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    by_prompt = {r["prompt"]: r for r in train + held}
    assert by_prompt["q7"] == {"prompt": "q7", "completion": "t7", "answer": "7", "level": 1}
    assert load_rows(cfg, seed=0) == (train, held) and load_rows(cfg, seed=1)[1] != held


def test_jsonl_eval_path(tmp_path):
    train_p = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"p{i}"} for i in range(5)])
    eval_p = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "e0", "answer": "1"}])
    train, held = load_rows(DataConfig(source="jsonl", train_path=train_p, eval_path=eval_p), seed=0)
    assert [r["prompt"] for r in train] == [f"p{i}" for i in range(5)]
    assert held == [{"prompt": "e0", "answer": "1"}]


def test_missing_prompt_column_names_file_and_columns(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"question": "q", "answer": "1"}] * 3)
    with pytest.raises(DataLoadError) as err:
        load_rows(DataConfig(source="jsonl", train_path=path), seed=0)
    msg = str(err.value)
    assert "rows.jsonl" in msg and "'prompt'" in msg and "['question', 'answer']" in msg


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "c",\n{"prompt": "d"}\n')
    with pytest.raises(DataLoadError, match=r"bad\.jsonl, line 4: malformed JSON"):
        load_rows(DataConfig(source="jsonl", train_path=str(path)), seed=0)


def test_missing_file_and_null_prompt(tmp_path):
    with pytest.raises(DataLoadError, match="train_path.*nope.jsonl.*does not exist"):
        load_rows(DataConfig(source="jsonl", train_path=str(tmp_path / "nope.jsonl")), seed=0)
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a"}, {"prompt": None}, {"prompt": "c"}])
    with pytest.raises(DataLoadError, match="n.jsonl: row 1 .*None"):
        load_rows(DataConfig(source="jsonl", train_path=path), seed=0)


def test_parquet_loader(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "train.parquet"
    pd.DataFrame({"prompt": [f"p{i}" for i in range(20)], "answer": [str(i) for i in range(20)]}).to_parquet(path)
    train, held = load_rows(DataConfig(source="parquet", train_path=str(path)), seed=0)
    assert len(train) == 19 and len(held) == 1
    assert all(r["answer"] == r["prompt"][1:] for r in train + held)
    with pytest.raises(DataLoadError, match="train.parquet.*'question'.*columns are \\['prompt', 'answer'\\]"):
        load_rows(DataConfig(source="parquet", train_path=str(path), prompt_column="question"), seed=0)


def test_hf_source_with_local_dataset_dir(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(4)])
    write_jsonl(tmp_path / "test.jsonl", [{"question": "e", "answer": "0"}])
    cfg = DataConfig(source="hf", train_path=str(tmp_path), split="train", eval_path="test", prompt_column="question")
    train, held = load_rows(cfg, seed=0)
    assert [r["prompt"] for r in train] == ["q0", "q1", "q2", "q3"] and held == [{"prompt": "e", "answer": "0"}]
    with pytest.raises(DataLoadError, match="eval_path.*split 'validation'"):
        load_rows(cfg.model_copy(update={"eval_path": "validation"}), seed=0)


# --------------------------------------------------------------------------- sampler


def test_sampler_full_batches_cover_each_epoch():
    rows = [{"prompt": str(i)} for i in range(10)]
    s = PromptSampler(rows, batch_size=5, seed=0)
    epoch0 = s.next_batch() + s.next_batch()
    epoch1 = s.next_batch() + s.next_batch()
    assert sorted(r["prompt"] for r in epoch0) == sorted(r["prompt"] for r in rows)
    assert epoch0 != epoch1  # reshuffled
    s3 = PromptSampler(rows, batch_size=3, seed=0)
    assert all(len(s3.next_batch()) == 3 for _ in range(7))


@pytest.mark.parametrize("batch_size", [3, 4, 25])
def test_sampler_resume_gives_the_same_batches(batch_size):
    rows = [{"prompt": str(i)} for i in range(10)]
    straight = PromptSampler(rows, batch_size, seed=7)
    expected = [straight.next_batch() for _ in range(9)]
    first = PromptSampler(rows, batch_size, seed=7)
    got = [first.next_batch() for _ in range(4)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
    resumed = PromptSampler(rows, batch_size, seed=7)
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(5)]
    assert got == expected
    with pytest.raises(ValueError, match="does not fit"):
        resumed.load_state_dict({"epoch": 0, "position": 10})


# --------------------------------------------------------------------------- collation


def test_collate_sft_masks_by_hand(tok):
    rows = [{"prompt": "1+2=", "completion": "3"}, {"prompt": "12+7=", "completion": "19"}]
    batch = collate_sft(tok, rows, max_len=32)
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    row0 = [bos, *ids_of(tok, "1+2="), *ids_of(tok, "3"), eos]  # 1 + 4 + 1 + 1 = 7 tokens
    row1 = [bos, *ids_of(tok, "12+7="), *ids_of(tok, "19"), eos]  # 1 + 5 + 2 + 1 = 9 tokens
    assert len(row0) == 7 and len(row1) == 9
    assert batch.input_ids.tolist() == [row0 + [pad, pad], row1]
    assert batch.attention_mask.tolist() == [[1] * 7 + [0, 0], [1] * 9]
    assert batch.loss_mask.tolist() == [[0, 0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 1]]
    assert batch.loss_mask.dtype == torch.float32 and batch.input_ids.dtype == torch.long


def test_collate_sft_truncation_and_errors(tok):
    with pytest.warns(UserWarning, match="1/1 sequences"):
        batch = collate_sft(tok, [{"prompt": "12+7=", "completion": "19"}], max_len=7)
    assert batch.input_ids.shape == (1, 7) and batch.loss_mask.tolist() == [[0] * 6 + [1]]
    with pytest.raises(ValueError, match="row 0 needs a string 'completion'.*\\['answer', 'prompt'\\]"):
        collate_sft(tok, [{"prompt": "1+1=", "answer": "2"}], max_len=8)


def test_encode_prompts_left_padding(tok):
    ids, mask = encode_prompts(tok, ["1+2=", "12+17="], max_prompt_tokens=16)
    bos, pad = tok.bos_token_id, tok.pad_token_id
    assert ids.tolist() == [[pad, pad, bos, *ids_of(tok, "1+2=")], [bos, *ids_of(tok, "12+17=")]]
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]
    # same prompt tokens as SFT sees
    sft = collate_sft(tok, [{"prompt": "12+17=", "completion": "29"}], max_len=32)
    assert sft.input_ids[0, :7].tolist() == ids[1].tolist()


def test_encode_prompts_truncates_from_the_left(tok):
    with pytest.warns(UserWarning, match="1/2 prompts"):
        ids, mask = encode_prompts(tok, ["1+2=", "12+17="], max_prompt_tokens=5)
    bos = tok.bos_token_id
    assert ids.tolist() == [[bos, *ids_of(tok, "1+2=")], [bos, *ids_of(tok, "+17=")]]  # bos kept, "12" dropped
    assert mask.tolist() == [[1] * 5, [1] * 5]


# --------------------------------------------------------------------------- chat


def test_format_prompt_chat_template(tok):
    assert format_prompt(tok, "1+1=", "auto") == "1+1="  # no template: unchanged
    chat_tok = train_tokenizer(CORPUS, vocab_size=64)
    chat_tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_prompt(chat_tok, "1+1=", "auto") == "<user>1+1=</user><assistant>"
    assert format_prompt(chat_tok, "1+1=", "none") == "1+1="
    with pytest.raises(ValueError, match="chat_template"):
        format_prompt(chat_tok, "1+1=", "always")


def test_arithmetic_chatter_only_touches_train_completions():
    from rlhf.config.schema import SyntheticArithmeticConfig
    from rlhf.data import make_arithmetic

    cfg = SyntheticArithmeticConfig(n_train=400, n_eval=50, max_operand=30, chatter=0.5)
    train, ev = make_arithmetic(cfg, seed=0)
    messy = [r for r in train if r["completion"] != r["answer"]]
    assert 120 < len(messy) < 280  # ~half
    assert all(r["completion"].startswith(r["answer"] + " ") for r in messy)
    assert all(r["completion"] == r["answer"] for r in ev)
    clean, _ = make_arithmetic(cfg.model_copy(update={"chatter": 0.0}), seed=0)
    assert [r["prompt"] for r in clean] == [r["prompt"] for r in train]
