"""The supervised stages: labelled rows -> the objective's own loss -> update; evaluation on held-out rows.

    stage = SupervisedStage(recipe, trainers, train_rows, eval_rows, prm_task(recipe))   # or rm_task(recipe)
    exp = stage.produce(step)       # the next `objective.batch_size` rows, collated by the task
    metrics = stage.consume(exp)    # one optimizer step of the objective's loss (``loss_sft``)
    scores = stage.evaluate()       # held-out metrics, named by the task (mean over batches)

Two tasks use it: PRM training (step-labelled rows, the step-tag loss; ``rlhf/runtime/prm.py`` makes the rows)
and reward-model training (preference pairs, Bradley-Terry per head). The trained model is the checkpoint's
``model/`` (a HF directory): point the ``prm`` or ``reward_model`` reward plugin's ``model`` arg at it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlhf.runtime.pipeline import Experience


@dataclass(frozen=True)
class SupervisedTask:
    """What differs between supervised stages: how rows become a batch and which metrics it reports."""

    phase: str  # the metrics' phase and the progress bar's name
    collate: Callable[[Any, list[dict]], Any]  # (tokenizer, rows) -> a batch with batch_size / slice / to
    summary: dict[str, str]  # summary name -> training metric key
    evals: dict[str, str]  # eval name -> metric key of the held-out batches


class SupervisedStage:
    def __init__(self, recipe: Any, trainers: Any, train_rows: list[dict], eval_rows: list[dict],
                 task: SupervisedTask) -> None:
        from rlhf.data import PromptSampler
        from rlhf.models.load import load_tokenizer

        self.recipe, self.trainers, self.task = recipe, trainers, task
        self.phase, self.batch_size = task.phase, recipe.objective.batch_size
        self.eval_rows = eval_rows[: recipe.eval.max_samples]
        self.tokenizer = load_tokenizer(trainers.model_dir, trust_remote_code=recipe.model.trust_remote_code)
        self.sampler = PromptSampler(train_rows, self.batch_size, recipe.run.seed)

    def summary_keys(self) -> dict[str, str]:
        return dict(self.task.summary)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def save_checkpoint(self, staged_dir: str) -> None:
        """Nothing besides the model."""

    def start(self, version: int) -> None:
        """Nothing to prepare: no reference, no engines."""

    def produce(self, step: int) -> Experience:
        return Experience(step, batch=self.task.collate(self.tokenizer, self.sampler.next_batch()))

    def consume(self, exp: Experience) -> dict[str, float]:
        metrics = self.trainers.train_supervised(exp.batch)
        metrics["time/step"] = time.perf_counter() - exp.started
        metrics["throughput/samples_per_s"] = self.batch_size / max(metrics["time/step"], 1e-9)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The task's held-out metrics (mean over the batches of ``batch_size`` rows that measured them)."""
        rows = self.eval_rows
        if not rows:
            return {}
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            pad = (-len(chunk)) % self.trainers.world_size  # shards must split evenly: repeat the last row
            metrics = self.trainers.eval_supervised(self.task.collate(self.tokenizer, chunk + chunk[-1:] * pad))
            for k, v in metrics.items():
                if not math.isnan(v):  # NaN: nothing to measure in this batch (e.g. a head without labels)
                    totals[k] = totals.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
        mean = {k: v / counts[k] for k, v in totals.items()}
        return {name: mean[key] for name, key in self.task.evals.items() if key in mean}


def prm_task(recipe: Any) -> SupervisedTask:
    """PRM training: step-tag loss on step-labelled rows; held-out step accuracy."""
    from rlhf.data.prm import collate_prm

    c = recipe.objective
    return SupervisedTask(
        phase="prm",
        collate=lambda tok, rows: collate_prm(tok, rows, c.step_tag, c.good, c.bad, c.max_length, c.steps_column,
                                              c.labels_column),
        summary={"loss": "loss/prm", "step accuracy (train batch)": "prm/step_acc"},
        evals={"step_acc": "prm/step_acc", "loss": "loss/prm", "good_rate": "prm/good_rate"})


def rm_task(recipe: Any) -> SupervisedTask:
    """Reward-model training: Bradley-Terry per head on preference pairs; held-out pair accuracy (per head)."""
    from rlhf.data.chat import format_prompt
    from rlhf.data.preference import collate_rm

    c, mode = recipe.objective, recipe.data.chat_template
    columns = dict(c.preference_columns or {})

    def collate(tok: Any, rows: list[dict]) -> Any:  # prompts in the chat template, as the reward_model plugin
        rows = [{**r, "prompt": format_prompt(tok, r["prompt"], mode)} for r in rows]
        return collate_rm(tok, rows, c.max_length, c.heads, columns, c.margin_column)

    per_head = {f"{h}/{m}": f"rm/{h}/{m}" for h in c.heads for m in ("acc", "margin")} if len(c.heads) > 1 else {}
    return SupervisedTask(
        phase="rm",
        collate=collate,
        summary={"loss": "loss/rm", "pair accuracy (train batch)": "rm/acc"},
        evals={"pair_acc": "rm/acc", "loss": "loss/rm", "margin": "rm/margin", **per_head})
