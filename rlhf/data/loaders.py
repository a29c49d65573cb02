"""Load prompt rows for a recipe's ``data`` section: synthetic tasks, local jsonl/parquet, or a hub dataset.

    train_rows, eval_rows = load_rows(recipe.data, seed=recipe.run.seed)

Rows are plain dicts. The prompt column is renamed to ``"prompt"`` and the completion column (when present) to
``"completion"``; every other column is kept as is (reward plugins receive them as keyword arguments, e.g.
``answer``). Eval rows come from ``data.eval_path`` or, without one, from a seeded 5% hold-out of the train rows.

For ``source: hf`` the ``train_path`` is a dataset id (or a local dataset dir) loaded with ``data.split``, and
``eval_path`` (optional) is the name of another split of the same dataset (e.g. ``test``).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from typing import Any

from rlhf.config.schema import DataConfig
from rlhf.data.synthetic import make_arithmetic

HOLDOUT_FRACTION = 0.05


class DataLoadError(ValueError):
    """A dataset could not be loaded or does not have the expected columns; the message names the source."""


# --------------------------------------------------------------------------- reading files


def read_jsonl(path: str) -> tuple[list[dict], list[int]]:
    """Objects of a jsonl file (``.gz`` too) and the 1-based line each came from; blank lines are skipped.

    Read here rather than by pyarrow, which crashes the process on deeply nested JSON and silently turns integers
    past 64 bits into floats. Every problem -- bytes that are not UTF-8, malformed JSON, a line that is not an
    object, nesting too deep, a number too long -- is a :class:`DataLoadError` naming the file and the line.
    """
    rows, lines = [], []
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataLoadError(
                        f"{path}, line {lineno}: not UTF-8 text ({e.reason} at byte {e.start})"
                    ) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataLoadError(
                        f"{path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno}): {line.strip()[:120]!r}"
                    ) from None
                except RecursionError:
                    raise DataLoadError(f"{path}, line {lineno}: JSON nested too deeply") from None
                except ValueError as e:  # e.g. an integer past Python's 4300-digit limit
                    raise DataLoadError(f"{path}, line {lineno}: cannot read JSON: {e}") from None
                if not isinstance(obj, dict):
                    raise DataLoadError(
                        f"{path}, line {lineno}: expected a JSON object per line, got {type(obj).__name__}"
                    )
                rows.append(obj)
                lines.append(lineno)
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a broken .gz
        raise DataLoadError(f"{path}: cannot read: {e}") from e
    return rows, lines


def _require_file(path: str, key: str) -> None:
    if not os.path.isfile(path):
        raise DataLoadError(f"data.{key}: file {path!r} does not exist")


def _read_jsonl(path: str, key: str) -> tuple[list[dict], list[int]]:
    """Rows with every column present (None where a line lacks it, as a dataset table has), and their lines."""
    _require_file(path, key)
    try:
        rows, lines = read_jsonl(path)
    except DataLoadError as e:
        raise DataLoadError(f"data.{key}: {e}") from None
    columns = _columns(rows)
    return [{c: row.get(c) for c in columns} for row in rows], lines


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


def normalize_columns(rows: list[dict], cfg: DataConfig, source: str, lines: list[int] | None = None) -> list[dict]:
    """Rename prompt/completion columns to ``prompt``/``completion``, keep the rest; validate prompts are text.

    ``lines``: the file line of each row (jsonl), for messages."""
    if not rows:
        raise DataLoadError(f"{source}: no rows (the file or split is empty)")
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
        where = f"{source}: row {i}" + (f" (line {lines[i]})" if lines is not None else "")
        prompt = row.get(pc)
        if not isinstance(prompt, str):
            raise DataLoadError(f"{where} has prompt column {pc!r} = {prompt!r:.80}, expected a string")
        for col in (pc, cc):
            check_text(row.get(col), f"{where}, column {col!r}")
        new: dict[str, Any] = {("prompt" if k == pc else "completion" if k == cc else k): v for k, v in row.items()}
        out.append(new)
    return out


def check_text(value: object, where: str) -> None:
    """A string the tokenizer will get must be encodable (JSON escapes can make lone surrogates, which tokenizers
    reject with a TypeError deep inside a rollout)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataLoadError(f"{where}: text is not valid Unicode ({e.reason} at character {e.start})") from None


# --------------------------------------------------------------------------- splits


def holdout_split(
    rows: list[dict], seed: int, fraction: float = HOLDOUT_FRACTION, source: str = ""
) -> tuple[list[dict], list[dict]]:
    """Seeded split into (train, eval) with ``max(1, round(fraction * n))`` eval rows; ``source`` for messages."""
    if len(rows) < 2:
        where = f"{source}: " if source else ""
        raise DataLoadError(
            f"{where}need at least 2 rows to hold out an eval split, got {len(rows)}; set data.eval_path"
        )
    n_eval = max(1, round(fraction * len(rows)))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in eval_idx]
    held = [rows[i] for i in sorted(eval_idx)]
    return train, held


def _read_source(cfg: DataConfig, path: str, key: str) -> tuple[list[dict], list[int] | None]:
    if cfg.source == "jsonl":
        return _read_jsonl(path, key)
    if cfg.source == "parquet":
        return _read_parquet(path, key), None
    raise AssertionError(cfg.source)


def load_rows(cfg: DataConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """Return ``(train_rows, eval_rows)`` as plain dicts with ``prompt`` (and ``completion`` when present)."""
    if cfg.source == "synthetic_arithmetic":
        return make_arithmetic(cfg.synthetic, seed)
    if not cfg.train_path:
        raise DataLoadError(f"data.source={cfg.source} needs data.train_path")
    if cfg.source == "hf":
        source = f"data.train_path: {cfg.train_path}[{cfg.split}]"
        train = normalize_columns(_read_hub(cfg.train_path, cfg.split, "split"), cfg, source)
        if cfg.eval_path is None:
            return holdout_split(train, seed, source=source)
        eval_raw = _read_hub(cfg.train_path, cfg.eval_path, "eval_path")
        held = normalize_columns(eval_raw, cfg, f"data.eval_path: {cfg.train_path}[{cfg.eval_path}]")
        return train, held
    source = f"data.train_path: {cfg.train_path}"
    rows, lines = _read_source(cfg, cfg.train_path, "train_path")
    train = normalize_columns(rows, cfg, source, lines)
    if cfg.eval_path is None:
        return holdout_split(train, seed, source=source)
    rows, lines = _read_source(cfg, cfg.eval_path, "eval_path")
    held = normalize_columns(rows, cfg, f"data.eval_path: {cfg.eval_path}", lines)
    return train, held
