"""Checkpoint resolution for a resume."""

import pytest
import torch

from caslie.checkpoints import resolve_ckpt


def test_resume_checkpoint_resolution(tmp_path):
    assert resolve_ckpt(None, tmp_path) is None
    assert resolve_ckpt("last", tmp_path) is None  # first run: start fresh
    with pytest.raises(FileNotFoundError, match="trainer.ckpt_path 'nope.ckpt' does not exist"):
        resolve_ckpt("nope.ckpt", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 4}, tmp_path / "checkpoints" / "last.ckpt")
    torch.save({"global_step": 9}, tmp_path / "hpc_ckpt_1.ckpt")
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"truncated")
    assert resolve_ckpt("last", tmp_path) == str(tmp_path / "hpc_ckpt_1.ckpt")
