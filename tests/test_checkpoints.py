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
    _state(tmp_path / "checkpoints" / "last.ckpt", 4)
    _state(tmp_path / "hpc_ckpt_1.ckpt", 9)
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"truncated")
    assert resolve_ckpt("last", tmp_path) == str(tmp_path / "hpc_ckpt_1.ckpt")


def _state(path, step: int) -> None:
    """A file with what a resume reads: the step and the loop state."""
    torch.save({"global_step": step, "loops": {}, "state_dict": {}}, path)


def test_a_missing_or_unreadable_last_checkpoint_falls_back_loudly_never_silently(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    _state(ckpts / "best.ckpt", 6)
    _state(
        ckpts / "nonfinite-step9.ckpt", 9
    )  # an emergency save of a diverged step: no resume point
    assert resolve_ckpt("last", tmp_path) == str(ckpts / "best.ckpt")
    assert "last.ckpt is missing: resuming from" in caplog.text
    (ckpts / "last.ckpt").write_bytes(b"cut short by a kill")
    assert resolve_ckpt("last", tmp_path) == str(ckpts / "best.ckpt")
    assert "last.ckpt is unreadable or older" in caplog.text
    torch.save({"state_dict": {}}, ckpts / "best.ckpt")  # weights only: no training state
    with pytest.raises(
        CheckpointError, match="no checkpoint in .* can be resumed from .*run.overwrite"
    ):
        resolve_ckpt("last", tmp_path)


class _RunsCodeWhenUnpickled:
    """What a planted checkpoint could hold: unpickling it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_skipped_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "checkpoints").mkdir()
    _state(tmp_path / "checkpoints" / "last.ckpt", 4)
    torch.save(
        {"global_step": 99, "loops": {}, "x": _RunsCodeWhenUnpickled(marker)},
        tmp_path / "hpc_ckpt_1.ckpt",
    )
    assert resolve_ckpt("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")
    assert not marker.exists()


@pytest.mark.slow
def test_resume_refuses_planted_checkpoints_in_one_line_and_runs_nothing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    marker, run_dir = tmp_path / "pwned", tmp_path / "runs" / "demo"
    (run_dir / "checkpoints").mkdir(parents=True)
    for planted in (run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_3.ckpt"):
        torch.save({"global_step": 9, "loops": {}, "x": _RunsCodeWhenUnpickled(marker)}, planted)
    out = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.yaml", "--resume",
         f"run.output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
         "logger.wandb.mode=disabled"],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: no checkpoint in")
    assert "would run code" in lines[0] and "hpc_ckpt_3.ckpt" in lines[0]
    assert "weights_only=False" not in out.stderr
    assert not marker.exists() and not (tmp_path / "cache").exists()  # nothing ran, nothing built
    assert sorted(p.name for p in run_dir.rglob("*") if p.name != ".lock") == [
        "checkpoints",
        "hpc_ckpt_3.ckpt",
        "last.ckpt",
    ]


def test_a_checkpoint_that_fails_its_checksum_is_refused_and_the_resume_falls_back(tmp_path):
    from caslie.checkpoints import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    ckpts = tmp_path / "checkpoints"
    for name, step in (("best.ckpt", 4), ("last.ckpt", 8)):
        io.save_checkpoint(
            {"global_step": step, "loops": {}, "state_dict": {"w": torch.ones(64)}}, ckpts / name
        )
    assert (ckpts / "last.ckpt.blake2").is_file()
    assert io.load_checkpoint(ckpts / "last.ckpt")["global_step"] == 8
    data = bytearray((ckpts / "last.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor bytes: torch alone would load it
    (ckpts / "last.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        io.load_checkpoint(ckpts / "last.ckpt")
    assert resolve_ckpt("last", tmp_path) == str(ckpts / "best.ckpt")
    io.remove_checkpoint(ckpts / "best.ckpt")
    assert not (ckpts / "best.ckpt.blake2").exists()
