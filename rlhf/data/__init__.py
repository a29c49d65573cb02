"""Data: prompt rows (synthetic / jsonl / parquet / hub), chat formatting, resumable sampling, token batching.

    train_rows, eval_rows = load_rows(recipe.data, seed)
    sampler = PromptSampler(train_rows, batch_size, seed)
    texts = format_prompts(tokenizer, [r["prompt"] for r in sampler.next_batch()], recipe.data.chat_template)
    ids, mask = encode_prompts(tokenizer, texts, recipe.data.max_prompt_tokens)
"""

from rlhf.data.chat import format_prompt, format_prompts, has_chat_template
from rlhf.data.collate import collate_sft, completion_token_ids, encode_prompts, prompt_token_ids
from rlhf.data.loaders import DataLoadError, holdout_split, load_rows, normalize_columns
from rlhf.data.sampler import PromptSampler
from rlhf.data.synthetic import arithmetic_row, make_arithmetic

__all__ = [
    "DataLoadError",
    "PromptSampler",
    "arithmetic_row",
    "collate_sft",
    "completion_token_ids",
    "encode_prompts",
    "format_prompt",
    "format_prompts",
    "has_chat_template",
    "holdout_split",
    "load_rows",
    "make_arithmetic",
    "normalize_columns",
    "prompt_token_ids",
]
