"""The resume point ``checkpoints/last.ckpt``: saved often enough that no kill loses much, and only
where a resume continues exactly as the uninterrupted run would.

It is saved (atomically, through :class:`caslie.checkpoints.AtomicCheckpointIO`):

* every ``trainer.checkpoint_every_minutes`` of training (rank zero's clock, so ranks agree) and
  every ``trainer.checkpoint_every_n_steps`` optimiser steps;
* after every validation, at every epoch end, and when training ends;
* on SIGUSR1 or SIGTERM, at the next whole state (see :mod:`caslie.signals`): after an optimiser
  step, or between two validation batches. The run then stops with
  :class:`caslie.signals.StopRequested`, asking for a requeue on SIGUSR1.

Lightning's ``ModelCheckpoint`` can save by time or by steps but saves in the middle of a step where
validation is due, and a resume from there skips that validation; its SLURM handler saves inside the
signal handler, mid-step. So this callback saves a step with validation due only once that
validation has run, and a stop during validation saves the state before it with the validation
marked to run again from its first batch.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from caslie.signals import REQUEUE_SIGNAL, StopRequested, StopSignals

log = logging.getLogger(__name__)

VAL_PROGRESS = "epoch_loop.val_loop.batch_progress"


class ResumePoint(Checkpoint):
    """Saves ``last.ckpt`` by time, steps, validation and epoch, and turns stop signals into a save
    and a stop.

    Args:
        path: The resume checkpoint (``<run>/checkpoints/last.ckpt``).
        every_n_steps: Also save every N optimiser steps (``None``: off).
        every_minutes: Also save after this many minutes since the last save (``None``: off).
        requeue_on_signal: Ask for a requeue of the SLURM job on SIGUSR1.
    """

    def __init__(self, path: Path, every_n_steps: int | None = None,
                 every_minutes: float | None = None, requeue_on_signal: bool = True):  # fmt: skip
        self.path = Path(path)
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self.requeue_on_signal = requeue_on_signal
        self.signals = StopSignals()
        self._last_save = time.monotonic()
        self._saved_step = -1
        self._rerun_validation = False

    # ------------------------------------------------------------------------- signal handlers
    # Lightning installs its own handlers just before a stage runs; take them over at the first
    # hook of each stage, and give the originals back when the Trainer is done.

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.install()
        self._last_save = time.monotonic()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.install()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.install()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.signals.restore()

    # ----------------------------------------------------------------------------- safe points

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:  # fmt: skip
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop._should_accumulate():  # mid-accumulation: the gradients are not in the state
            return
        minutes = (time.monotonic() - self._last_save) / 60
        time_due = self.every_minutes is not None and minutes >= self.every_minutes
        stop, time_due = self._agree(trainer, self._stop_signal(trainer) is not None, time_due)
        if epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return  # validation runs next: it saves after, or stops and saves before itself
        if stop:
            self._stop(trainer, "training", save=True)
        steps_due = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0
        if time_due or steps_due:
            self._save(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:  # fmt: skip
        if not self._agree(trainer, self._stop_signal(trainer) is not None)[0]:
            return
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            self._stop(trainer, "the sanity check", save=False)
        else:
            self._stop(trainer, "validation", save=True, rerun_validation=True)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if self._agree(trainer, self._stop_signal(trainer) is not None)[0]:
            self._stop(trainer, "test", save=False)  # training is over: the final state is saved

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved_step != trainer.global_step:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)  # the finished state: a later resume has nothing left to train

    # --------------------------------------------------------------------------------- helpers

    def _stop_signal(self, trainer: L.Trainer) -> int | None:
        if self.signals.received is not None:
            return self.signals.received
        # A SIGTERM that reached Lightning's handler before this callback took over.
        return signal.SIGTERM if trainer.received_sigterm else None

    @staticmethod
    def _agree(trainer: L.Trainer, stop: bool, time_due: bool = False) -> tuple[bool, bool]:
        """(any rank has a stop signal, rank zero's clock says save): one collective call."""
        if not (dist.is_available() and dist.is_initialized() and trainer.world_size > 1):
            return stop, time_due
        flags = torch.tensor([int(stop), int(time_due and trainer.is_global_zero)],
                             device=trainer.strategy.root_device)  # fmt: skip
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step, self._last_save = trainer.global_step, time.monotonic()

    def _stop(self, trainer: L.Trainer, where: str, save: bool,
              rerun_validation: bool = False) -> None:  # fmt: skip
        signum = self._stop_signal(trainer) or signal.SIGTERM  # another rank got it: act alike
        if save:
            self._rerun_validation = rerun_validation
            try:
                self._save(trainer)
            finally:
                self._rerun_validation = False
        wants_requeue = signum == REQUEUE_SIGNAL and self.requeue_on_signal
        raise StopRequested(signum, where, str(self.path) if save else "", wants_requeue)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:  # fmt: skip
        if not self._rerun_validation:
            return
        # Saved between two validation batches: record the validation as started but with no
        # batch done, which Lightning resumes by running it again from its first batch (the rows
        # scored so far live in memory only, so a partial validation cannot be continued).
        progress = checkpoint["loops"]["fit_loop"][VAL_PROGRESS]
        before = progress["total"]["completed"] - progress["current"]["completed"]
        progress["total"] = {"ready": before + 1, "started": before + 1,
                             "processed": before, "completed": before}  # fmt: skip
        progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
        progress["is_last_batch"] = False
        checkpoint.setdefault("caslie", {})["rerun_validation"] = True
