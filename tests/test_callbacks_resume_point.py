"""The resume point: stop signals in training, validation and test; periodic saves; fallbacks.

Each interrupted run is resumed and compared with the same run left alone: the same adapter
weights, optimiser step, scheduler and metrics, in the same W&B run.
"""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CrashAt, demo_config
from wandb_log import read_run

from caslie.signals import StopRequested
from train import run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

COMMON = ("data.tasks=sa", "optim.effective_batch_size=4", "optim.micro_batch_size=4",
          "optim.eval_batch_size=2", "trainer.max_epochs=2", "data.eval_splits=[val,test_ind]",
          "trainer.num_sanity_val_steps=0", "trainer.checkpoint_every_minutes=null")  # fmt: skip
"""24 training rows of one task: 6 optimiser steps per epoch, validation after each epoch (3
batches of 2 rows)."""


class SignalAt(L.Callback):
    """Send ``signum`` to this process at one point of a run (a scheduler's signal, for real)."""

    def __init__(self, signum: int, phase: str, index: int):
        self.signum, self.phase, self.index = signum, phase, index
        self.sent = False

    def _maybe(self, phase: str, index: int) -> None:
        if not self.sent and phase == self.phase and index == self.index:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._maybe("train", trainer.global_step)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if not trainer.sanity_checking:
            self._maybe("val", trainer.current_epoch * 100 + batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._maybe("test", batch_idx)


def _ckpt(run_dir: Path, name: str = "last") -> dict:
    return torch.load(
        run_dir / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    return run(demo_config(tmp_path_factory.mktemp("straight"), "run.name=straight", *COMMON))


def assert_same_run(resumed, straight) -> None:
    a, b = _ckpt(straight.run_dir), _ckpt(resumed.run_dir)
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    assert resumed.metrics == straight.metrics
    # csv/metrics.csv keeps the history from before the interruption.
    assert _val_scores(resumed.run_dir) == _val_scores(straight.run_dir)
    best_a, best_b = _ckpt(straight.run_dir, "best"), _ckpt(resumed.run_dir, "best")
    assert best_a["global_step"] == best_b["global_step"]
    wandb_id = (resumed.run_dir / "wandb_run_id").read_text()
    run_ids = {read_run(f)["run_id"] for f in (resumed.run_dir / "wandb").glob("offline-run-*")}
    assert run_ids == {wandb_id}  # the same W&B run, continued


def _interrupt_and_resume(tmp_path, callback, *extra):
    cfg = demo_config(tmp_path, "run.name=cut", *COMMON, *extra)
    with pytest.raises(StopRequested) as stopped:
        run(cfg, callbacks=[callback])
    resumed = run(demo_config(tmp_path, "run.name=cut", "trainer.ckpt_path=last", *COMMON, *extra))
    return stopped.value, resumed


def test_sigusr1_in_training_saves_at_the_step_stops_and_resumes_exactly(tmp_path, straight):
    stop, resumed = _interrupt_and_resume(tmp_path, SignalAt(signal.SIGUSR1, "train", 4))
    assert stop.exit_code == 128 + signal.SIGUSR1 and stop.requeue
    assert stop.checkpoint.endswith("last.ckpt") and "during training" in str(stop)
    assert_same_run(resumed, straight)


def test_sigterm_in_validation_saves_before_it_and_the_resume_runs_it_again(tmp_path, straight):
    # Epoch 0's validation, after its second batch (of three).
    cfg = demo_config(tmp_path, "run.name=cut", *COMMON)
    with pytest.raises(StopRequested) as stopped:
        run(cfg, callbacks=[SignalAt(signal.SIGTERM, "val", 1)])
    assert stopped.value.exit_code == 143 and "during validation" in str(stopped.value)
    saved = _ckpt(tmp_path / "runs" / "cut")
    assert saved["global_step"] == 6 and saved["caslie"]["rerun_validation"]
    resumed = run(demo_config(tmp_path, "run.name=cut", "trainer.ckpt_path=last", *COMMON))
    assert_same_run(resumed, straight)  # epoch 0's validation ran again, in full


def _val_scores(run_dir: Path) -> list[str]:
    lines = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("val/primary_mean")
    return [cells[column] for line in lines[1:] if (cells := line.split(","))[column]]


def test_signal_in_test_keeps_the_trained_state_and_the_resume_only_tests(tmp_path, straight):
    stop, resumed = _interrupt_and_resume(tmp_path, SignalAt(signal.SIGTERM, "test", 0))
    assert "during test" in str(stop) and stop.checkpoint == ""
    assert_same_run(resumed, straight)


def test_a_hard_kill_resumes_from_the_periodic_checkpoint(tmp_path, straight):
    # Saved every optimiser step by time (any positive interval has passed after a step), except
    # where validation is due; the crash before step 9 leaves the state of step 8.
    cfg = demo_config(tmp_path, "run.name=cut", *COMMON, "trainer.checkpoint_every_minutes=1e-9")
    with pytest.raises(RuntimeError, match="node failure"):
        run(cfg, callbacks=[CrashAt(8, "node failure")])
    assert _ckpt(tmp_path / "runs" / "cut")["global_step"] == 8
    resumed = run(demo_config(tmp_path, "run.name=cut", "trainer.ckpt_path=last", *COMMON,
                              "trainer.checkpoint_every_minutes=1e-9"))  # fmt: skip
    assert_same_run(resumed, straight)


def test_an_unreadable_last_checkpoint_falls_back_to_the_newest_readable_one(
    tmp_path, straight, caplog
):
    cfg = demo_config(tmp_path, "run.name=cut", *COMMON)
    with pytest.raises(RuntimeError, match="node failure"):
        run(cfg, callbacks=[CrashAt(8, "node failure")])
    run_dir = tmp_path / "runs" / "cut"
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"truncated by a full disk")
    resumed = run(demo_config(tmp_path, "run.name=cut", "trainer.ckpt_path=last", *COMMON))
    assert "resuming from" in caplog.text and "best.ckpt (step 6) instead" in caplog.text
    assert_same_run(resumed, straight)
