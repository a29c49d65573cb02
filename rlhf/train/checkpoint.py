"""Atomic, verified checkpoints.

Layout of `OUT/checkpoints/`:

    step_000020/
      model/            HF directory: config.json, model.safetensors (or, past one 512 MiB shard, HF's numbered
                        shards + model.safetensors.index.json: rlhf/models/shards.py), tokenizer files (loadable
                        on its own)
      optim/            optimizer + engine state of every rank (DeepSpeed's format, or torch's)
      state.json        step, stage, data position, aggregator state, RNG seeds, recipe digest
      MANIFEST.json     every file with its size; written last
    latest              text file naming the newest complete step directory

A checkpoint is written into `step_N.tmp`, its manifest last, then renamed; `latest` is replaced atomically
after that. A crash at any point leaves the previous `latest` untouched and loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (incomplete, truncated, or not one of ours)."""


def checkpoints_dir(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoints"


def staging_dir(output_dir: str, step: int) -> Path:
    d = checkpoints_dir(output_dir) / f"step_{step:06d}.tmp"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit(output_dir: str, step: int, staged: Path, state: dict[str, Any], keep: int) -> Path:
    """Finish a staged checkpoint: state.json, manifest, rename, point `latest` at it, prune old ones."""
    _fsync_write(staged / "state.json", json.dumps(state, indent=1, sort_keys=True))
    files = {
        str(p.relative_to(staged)): p.stat().st_size for p in sorted(staged.rglob("*")) if p.is_file()
    }
    _fsync_write(staged / "MANIFEST.json", json.dumps({"format": "rlhf-checkpoint/1", "files": files}, indent=1))
    final = checkpoints_dir(output_dir) / f"step_{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_write(checkpoints_dir(output_dir) / "latest", final.name)
    _prune(output_dir, keep)
    return final


def _prune(output_dir: str, keep: int) -> None:
    steps = sorted(p for p in checkpoints_dir(output_dir).glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=False)


def latest(output_dir: str) -> Path | None:
    pointer = checkpoints_dir(output_dir) / "latest"
    if not pointer.is_file():
        return None
    path = checkpoints_dir(output_dir) / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def verify(path: Path) -> dict[str, Any]:
    """Check the manifest (every file present with its size) and return state.json."""
    manifest_path = path / "MANIFEST.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no MANIFEST.json; not a complete rlhf checkpoint (was it interrupted?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{manifest_path}: unreadable ({e})") from None
    if manifest.get("format") != "rlhf-checkpoint/1":
        raise CheckpointError(f"{manifest_path}: unknown checkpoint format {manifest.get('format')!r}")
    for rel, size in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{path}: file {rel} listed in the manifest is missing")
        if f.stat().st_size != size:
            raise CheckpointError(f"{path}: file {rel} has {f.stat().st_size} bytes, the manifest says {size} (truncated?)")
    return json.loads((path / "state.json").read_text())
