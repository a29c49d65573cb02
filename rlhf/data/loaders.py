"""Load prompt rows for a recipe's ``data`` section: synthetic tasks, local jsonl/parquet, or a hub dataset.

    train_rows, eval_rows = load_rows(recipe.data, seed=recipe.run.seed)

Rows are plain dicts. The prompt column is renamed to ``"prompt"`` and the completion column (when present) to
``"completion"``; every other column is kept as is (reward plugins receive them as keyword arguments, e.g.
``answer``). Eval rows come from ``data.eval_path`` or, without one, from a seeded 5% hold-out of the train rows.

For ``source: hf`` the ``train_path`` is a dataset id (or a local dataset dir) loaded with ``data.split``, and
``eval_path`` (optional) is the name of another split of the same dataset (e.g. ``test``).
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from rlhf.config.schema import DataConfig
from rlhf.data.synthetic import make_arithmetic

HOLDOUT_FRACTION = 0.05


class DataLoadError(ValueError):
    """A dataset could not be loaded or does not have the expected columns; the message names the source."""


# --------------------------------------------------------------------------- reading files


def _find_bad_json_line(path: str) -> str | None:
    """Scan a jsonl file and describe its first malformed line, or None when every line parses to an object."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                return f"{path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno}): {line.strip()[:120]!r}"
            if not isinstance(obj, dict):
                return f"{path}, line {lineno}: expected a JSON object per line, got {type(obj).__name__}"
    return None


def _require_file(path: str, key: str) -> None:
    if not os.path.isfile(path):
        raise DataLoadError(f"data.{key}: file {path!r} does not exist")


def _read_jsonl(path: str, key: str) -> list[dict]:
    _require_file(path, key)
    from datasets import load_dataset

    try:
        return load_dataset("json", data_files=path, split="train").to_list()
    except Exception as e:  # noqa: BLE001 - re-raised with the file and line at fault
        bad = _find_bad_json_line(path)
        raise DataLoadError(f"data.{key}: {bad}" if bad else f"data.{key}: cannot load jsonl {path}: {e}") from e


def _read_parquet(path: str, key: str) -> list[dict]:
    _require_file(path, key)
    from datasets import load_dataset

    try:
        return load_dataset("parquet", data_files=path, split="train").to_list()
    except Exception as e:  # noqa: BLE001
        raise DataLoadError(f"data.{key}: cannot load parquet {path}: {e}") from e


def _read_hub(dataset_id: str, split: str, key: str) -> list[dict]:
    from datasets import load_dataset

    try:
        return load_dataset(dataset_id, split=split).to_list()
    except Exception as e:  # noqa: BLE001
        raise DataLoadError(f"data.{key}: cannot load dataset {dataset_id!r} split {split!r}: {e}") from e


# --------------------------------------------------------------------------- columns


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def normalize_columns(rows: list[dict], cfg: DataConfig, source: str) -> list[dict]:
    """Rename prompt/completion columns to ``prompt``/``completion``, keep the rest; validate prompts are text."""
    if not rows:
        raise DataLoadError(f"{source}: no rows")
    columns = _columns(rows)
    pc, cc = cfg.prompt_column, cfg.completion_column
    if pc not in columns:
        raise DataLoadError(f"{source}: prompt column {pc!r} (data.prompt_column) not found; columns are {columns}")
    for wanted, col in (("prompt", pc), ("completion", cc)):
        if col != wanted and col in columns and wanted in columns:
            raise DataLoadError(
                f"{source}: cannot rename column {col!r} to {wanted!r}: a {wanted!r} column exists too; "
                f"columns are {columns}"
            )
    out = []
    for i, row in enumerate(rows):
        prompt = row.get(pc)
        if not isinstance(prompt, str):
            raise DataLoadError(f"{source}: row {i} has prompt column {pc!r} = {prompt!r}, expected a string")
        new: dict[str, Any] = {("prompt" if k == pc else "completion" if k == cc else k): v for k, v in row.items()}
        out.append(new)
    return out


# --------------------------------------------------------------------------- splits


def holdout_split(rows: list[dict], seed: int, fraction: float = HOLDOUT_FRACTION) -> tuple[list[dict], list[dict]]:
    """Seeded split into (train, eval) with ``max(1, round(fraction * n))`` eval rows."""
    if len(rows) < 2:
        raise DataLoadError(f"need at least 2 rows to hold out an eval split, got {len(rows)}; set data.eval_path")
    n_eval = max(1, round(fraction * len(rows)))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in eval_idx]
    held = [rows[i] for i in sorted(eval_idx)]
    return train, held


def _read_source(cfg: DataConfig, path: str, key: str) -> list[dict]:
    if cfg.source == "jsonl":
        return _read_jsonl(path, key)
    if cfg.source == "parquet":
        return _read_parquet(path, key)
    raise AssertionError(cfg.source)


def load_rows(cfg: DataConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """Return ``(train_rows, eval_rows)`` as plain dicts with ``prompt`` (and ``completion`` when present)."""
    if cfg.source == "synthetic_arithmetic":
        return make_arithmetic(cfg.synthetic, seed)
    if not cfg.train_path:
        raise DataLoadError(f"data.source={cfg.source} needs data.train_path")
    if cfg.source == "hf":
        train = normalize_columns(_read_hub(cfg.train_path, cfg.split, "split"), cfg, f"{cfg.train_path}[{cfg.split}]")
        if cfg.eval_path is None:
            return holdout_split(train, seed)
        eval_raw = _read_hub(cfg.train_path, cfg.eval_path, "eval_path")
        held = normalize_columns(eval_raw, cfg, f"{cfg.train_path}[{cfg.eval_path}]")
        return train, held
    train = normalize_columns(_read_source(cfg, cfg.train_path, "train_path"), cfg, cfg.train_path)
    if cfg.eval_path is None:
        return holdout_split(train, seed)
    held = normalize_columns(_read_source(cfg, cfg.eval_path, "eval_path"), cfg, cfg.eval_path)
    return train, held
