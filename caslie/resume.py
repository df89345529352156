"""Exact resume for any of our LightningModules: data position and RNG state in the checkpoint.

Lightning restores weights, optimiser, scheduler and loop counters. Two things it cannot do here:
the batch samplers are rebuilt before the checkpoint is read, so the data module is told where the
epoch stood (:meth:`resume_at`) and its sampler skips the batches already trained on; and loaders
created while resuming draw from the global RNG, so the saved RNG state is put back at the first
training batch, where the uninterrupted run would be.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def _numpy_state() -> tuple:
    """numpy's RNG state in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


class ExactResume:
    """LightningModule mixin: call :meth:`resume_state` when saving and :meth:`restore_resume_state`
    when loading; the data module must offer ``resume_at(epoch, batches_done)``."""

    _pending_rng: dict[str, Any] | None = None

    def resume_state(self) -> dict[str, Any]:
        """Where training stands: epoch, batches done in it, RNG state."""
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "epoch": self.trainer.current_epoch,
            "batches_done": progress.processed,
            "rng": rng_state(),
        }

    def restore_resume_state(self, meta: dict[str, Any]) -> None:
        """Tell the data module where to start; keep the RNG state for the next training batch."""
        datamodule = (
            getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        )
        if "batches_done" in meta and hasattr(datamodule, "resume_at"):
            datamodule.resume_at(meta["epoch"], meta["batches_done"])
        self._pending_rng = meta.get("rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng:
            set_rng_state(rng)
