"""Training throughput, MFU and peak memory, logged every ``log_every_n_steps`` optimiser steps.

Lightning's ``ThroughputMonitor`` is not used: it synchronises the device after every batch to time
it, which is the host-device stall the training step avoids. Here the counts come from the
collator as plain ints, and the device is synchronised only when a window is logged.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import lightning as L
import torch

from caslie.data.packing import token_counts
from caslie.mfu import matmul_parameters, model_shape, peak_flops, train_flops_per_token


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matrix products run in under a Lightning ``precision`` setting."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process on ``device``: allocated GPU memory, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


class TokenThroughput(L.Callback):
    """Logs, over the window since the last log: ``train/tokens_per_s`` (real tokens, all devices:
    this rank's rate x world size), ``train/padding_share``, ``train/mfu`` (on GPUs whose peak is
    known) and ``train/peak_mem_mib`` (the largest over the ranks)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._tokens = self._computed = self._squares = 0
        self._logged_step = -1
        self._shape: tuple[int, int, int] | None = None  # matmul params, layers, hidden
        self._peak: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        if model is not None and hasattr(model, "config"):
            self._shape = (matmul_parameters(model), *model_shape(model))
            precision = str(trainer.precision)
            self._peak = peak_flops(pl_module.device, compute_dtype(precision))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:  # fmt: skip
        real, computed = token_counts(batch)
        self._tokens += real
        self._computed += computed
        self._squares += sum(n * n for n in batch.get("seq_lens", ()))
        step = trainer.global_step
        if step % trainer.log_every_n_steps or step == self._logged_step or self._start is None:
            return  # not a step Lightning logs, or one already logged (accumulation)
        self._logged_step = step
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the window's work is done before timing it
        elapsed = time.perf_counter() - self._start
        if elapsed > 0 and self._tokens:
            self._log(pl_module, self._tokens / elapsed, trainer.world_size)
        self._start = time.perf_counter()
        self._tokens = self._computed = self._squares = 0

    def _log(self, pl_module: L.LightningModule, rate: float, world_size: int) -> None:
        pl_module.log("train/tokens_per_s", rate * world_size, batch_size=1)
        pl_module.log("train/padding_share", 1.0 - self._tokens / self._computed, batch_size=1)
        if self._shape is not None and self._peak and self._squares:
            n_params, layers, hidden = self._shape
            context = self._squares / self._tokens
            flops = train_flops_per_token(n_params, layers, hidden, context)
            pl_module.log("train/mfu", rate * flops / self._peak, batch_size=1)
        pl_module.log("train/peak_mem_mib", peak_memory_mib(pl_module.device), batch_size=1,
                      sync_dist=world_size > 1, reduce_fx="max")  # fmt: skip
