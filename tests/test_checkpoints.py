"""Checkpoint resolution for a resume."""

import pytest
import torch

from caslie.checkpoints import read_checkpoint, resolve_ckpt
from caslie.errors import CheckpointError


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


class _RunsCodeWhenUnpickled:
    """What a planted checkpoint could hold: unpickling it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_skipped_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 4}, tmp_path / "checkpoints" / "last.ckpt")
    torch.save(
        {"global_step": 99, "x": _RunsCodeWhenUnpickled(marker)}, tmp_path / "hpc_ckpt_1.ckpt"
    )
    assert resolve_ckpt("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")
    assert not marker.exists()
