"""Progress as plain log lines, for where a progress bar is unreadable: a SLURM ``.out`` file, a pipe.

A bar redraws one line with carriage returns; in a file that becomes one endless line or nothing at
all. This callback prints, on rank zero, one line every ``every_n_steps`` optimiser steps::

    train epoch 2/8 step 40/96 (42%) loss 1.2345 lr 4.10e-03 tokens/s 1534 elapsed 0:00:31 eta 0:00:43

and for validation and test a line at every tenth of their batches, and when each ends.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger("caslie.progress")


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


class ProgressLines(L.Callback):
    """Plain progress lines (rank zero).

    Args:
        every_n_steps: Optimiser steps between two training lines.
    """

    def __init__(self, every_n_steps: int):
        self.every_n_steps = max(int(every_n_steps), 1)
        self._start = 0.0
        self._first_step = 0
        self._tokens = 0
        self._window_start = 0.0
        self._eval_start = 0.0

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._window_start = time.monotonic()
        self._first_step = trainer.global_step  # a resumed run counts its rate from here
        total = trainer.estimated_stepping_batches
        log.info("train: %d optimiser steps, %d epochs, from step %d", total, trainer.max_epochs,
                 trainer.global_step)  # fmt: skip

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:  # fmt: skip
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if isinstance(mask, torch.Tensor):
            self._tokens += int(mask.sum())
        step = trainer.global_step
        if trainer.fit_loop.epoch_loop._should_accumulate() or step % self.every_n_steps:
            return
        now = time.monotonic()
        total = int(trainer.estimated_stepping_batches)
        done = step - self._first_step
        rate = done / (now - self._start) if now > self._start else 0.0
        parts = [
            f"train epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
            f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)",
        ]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        window = now - self._window_start
        if self._tokens and window > 0:  # this rank's real tokens, scaled to every rank
            parts.append(f"tokens/s {self._tokens * trainer.world_size / window:.0f}")
        parts.append(f"elapsed {_clock(now - self._start)}")
        if rate > 0:
            parts.append(f"eta {_clock((total - step) / rate)}")
        log.info(" ".join(parts))
        self._tokens, self._window_start = 0, now

    # ------------------------------------------------------------------------------ evaluation

    @staticmethod
    def _loop(trainer: L.Trainer) -> Any:
        return trainer.test_loop if trainer.testing else trainer.fit_loop.epoch_loop.val_loop

    def _eval_batches(self, trainer: L.Trainer) -> int:
        return int(sum(b for b in self._loop(trainer).max_batches if b != float("inf")))

    def _eval_start_line(self, trainer: L.Trainer, what: str) -> None:
        self._eval_start = time.monotonic()
        log.info("%s: %d batches", what, self._eval_batches(trainer))

    def _eval_batch_line(self, trainer: L.Trainer, what: str) -> None:
        total = self._eval_batches(trainer)
        done = (
            self._loop(trainer).batch_progress.current.completed + 1
        )  # this batch counts once its hooks ran
        tenth = max(total // 10, 1)
        if done % tenth == 0 and done < total:
            elapsed = time.monotonic() - self._eval_start
            eta = elapsed / done * (total - done)
            log.info("%s: batch %d/%d elapsed %s eta %s", what, done, total, _clock(elapsed),
                     _clock(eta))  # fmt: skip

    @rank_zero_only
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_start_line(trainer, "validation")

    @rank_zero_only
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:  # fmt: skip
        if not trainer.sanity_checking:
            self._eval_batch_line(trainer, "validation")

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_end_line(trainer, "validation")

    @rank_zero_only
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start_line(trainer, "test")

    @rank_zero_only
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._eval_batch_line(trainer, "test")

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end_line(trainer, "test")

    def _eval_end_line(self, trainer: L.Trainer, what: str) -> None:
        log.info("%s done in %s", what, _clock(time.monotonic() - self._eval_start))
