"""Checkpoints are atomic (a crash mid-write keeps the previous `latest`) and verified on load."""

from __future__ import annotations

import json

import pytest

from rlhf.train import checkpoint as ckpt


def _write(out, step: int, payload: bytes = b"weights") -> str:
    staged = ckpt.staging_dir(str(out), step)
    (staged / "model").mkdir()
    (staged / "model" / "model.safetensors").write_bytes(payload)
    return str(ckpt.commit(str(out), step, staged, {"step": step}, keep=2))


def test_commit_points_latest_and_prunes(tmp_path):
    for step in (1, 2, 3):
        _write(tmp_path, step)
    assert ckpt.latest(str(tmp_path)).name == "step_000003"
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_000002", "step_000003"]
    assert ckpt.verify(ckpt.latest(str(tmp_path))) == {"step": 3}


def test_crash_mid_write_keeps_previous_latest(tmp_path):
    _write(tmp_path, 1)
    staged = ckpt.staging_dir(str(tmp_path), 2)  # a writer that died before commit()
    (staged / "model").mkdir()
    (staged / "model" / "model.safetensors").write_bytes(b"half")
    assert ckpt.latest(str(tmp_path)).name == "step_000001"
    assert ckpt.verify(ckpt.latest(str(tmp_path)))["step"] == 1


def test_truncated_file_is_refused(tmp_path):
    path = _write(tmp_path, 1, b"0123456789")
    (tmp_path / "checkpoints" / "step_000001" / "model" / "model.safetensors").write_bytes(b"01234")
    with pytest.raises(ckpt.CheckpointError, match=r"model/model.safetensors has 5 bytes, the manifest says 10"):
        ckpt.verify(ckpt.latest(str(tmp_path)))
    assert path.endswith("step_000001")


def test_missing_file_and_foreign_dir_are_refused(tmp_path):
    _write(tmp_path, 1)
    (tmp_path / "checkpoints" / "step_000001" / "model" / "model.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.verify(ckpt.latest(str(tmp_path)))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(ckpt.CheckpointError, match="no MANIFEST.json"):
        ckpt.verify(foreign)
    (foreign / "MANIFEST.json").write_text(json.dumps({"format": "other/9", "files": {}}))
    with pytest.raises(ckpt.CheckpointError, match="unknown checkpoint format"):
        ckpt.verify(foreign)


def test_dangling_latest_pointer(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_000009")
    with pytest.raises(ckpt.CheckpointError, match="step_000009, which does not exist"):
        ckpt.latest(str(tmp_path))
