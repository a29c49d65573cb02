"""The SFT warm-up as a stage: supervised fine-tuning on the data's completions before the main objective, driven
by the same pipeline as every other stage (no rollouts; nothing to evaluate or resume mid-way: a resumed run
either redoes the warm-up or skips it when it was done).

    stage = SFTStage(recipe, trainers, model_dir, train_rows)   # checks every row has a completion
    SyncPipeline().run(stage, range(1, recipe.warmup.steps + 1), ...)
"""

from __future__ import annotations

import time
from typing import Any

from rlhf.runtime.pipeline import Experience, NoState


class SFTStage(NoState):
    phase = "sft"

    def __init__(self, recipe: Any, trainers: Any, model_dir: str, rows: list[dict]) -> None:
        from rlhf.data import PromptSampler
        from rlhf.models.load import load_tokenizer

        missing = [i for i, r in enumerate(rows) if not isinstance(r.get("completion"), str)]
        if missing:
            raise ValueError(
                f"warmup: SFT needs a '{recipe.data.completion_column}' column; rows {missing[:5]} have none"
            )
        self.recipe, self.trainers = recipe, trainers
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=recipe.model.trust_remote_code)
        self.sampler = PromptSampler(rows, recipe.warmup.batch_size, recipe.run.seed + 1)

    def start(self, version: int) -> None:
        """Nothing to prepare."""

    def produce(self, step: int) -> Experience:
        from rlhf.data import collate_sft, format_prompts

        r = self.recipe
        rows = self.sampler.next_batch()
        prompts = format_prompts(self.tokenizer, [row["prompt"] for row in rows], r.data.chat_template)
        batch = collate_sft(self.tokenizer, [{**row, "prompt": p} for row, p in zip(rows, prompts)],
                            r.data.max_prompt_tokens + r.rollout.completion_tokens,
                            r.rollout.demonstration_template)  # agents: observations get no loss
        return Experience(step, batch=batch)

    def consume(self, exp: Experience) -> dict[str, float]:
        metrics = self.trainers.train_sft(exp.batch)
        metrics["time/step"] = time.perf_counter() - exp.started
        return metrics

    def evaluate(self) -> dict[str, float]:
        return {}

    def summary_keys(self) -> dict[str, str]:
        return {"loss": "loss/sft"}
