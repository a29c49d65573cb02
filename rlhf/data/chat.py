"""Prompt formatting: apply the tokenizer's chat template (``data.chat_template: auto``) or keep the raw text.

    text = format_prompt(tokenizer, "12+7=", mode="auto")

The prompt becomes one user message and the template is rendered with ``add_generation_prompt=True``, so the
model continues with the assistant turn. Tokenizers without a chat template (e.g. the tiny one) pass through.
"""

from __future__ import annotations

from typing import Literal

CHAT_MODES = ("auto", "none")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, prompt: str, mode: Literal["auto", "none"] = "auto") -> str:
    """The text to tokenize for ``prompt``: chat-templated when ``mode="auto"`` and the tokenizer has a template."""
    if mode not in CHAT_MODES:
        raise ValueError(f"data.chat_template: {mode!r} is not one of {CHAT_MODES}")
    if not isinstance(prompt, str):
        raise TypeError(f"format_prompt: prompt must be a str, got {type(prompt).__name__}")
    if mode == "none" or not has_chat_template(tokenizer):
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def format_prompts(tokenizer, prompts: list[str], mode: Literal["auto", "none"] = "auto") -> list[str]:
    return [format_prompt(tokenizer, p, mode) for p in prompts]
