"""Training throughput: real (non-padding) tokens per second, logged every ``log_every_n_steps``."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class TokenThroughput(L.Callback):
    """Logs ``train/tokens_per_s`` (all devices, estimated as this rank's rate x world size) and
    ``train/padding_share`` over the window since the last log."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._tokens = self._padded = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        mask = batch["attention_mask"]
        self._tokens += int(mask.sum())
        self._padded += mask.numel()
        if trainer.global_step % trainer.log_every_n_steps or self._start is None:
            return
        elapsed = time.perf_counter() - self._start
        if elapsed > 0 and self._tokens:
            pl_module.log("train/tokens_per_s", self._tokens * trainer.world_size / elapsed)
            pl_module.log("train/padding_share", 1.0 - self._tokens / self._padded)
        self._start, self._tokens, self._padded = time.perf_counter(), 0, 0
