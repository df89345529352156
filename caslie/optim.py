"""The paper's optimisation for any of our modules: AdamW with linear warm-up then cosine decay."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch

from caslie.config import OptimConfig

log = logging.getLogger(__name__)


def warmup_cosine(step: int, warmup: int, total: int, cosine: bool = True) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def adamw_with_schedule(
    params: Iterable[torch.nn.Parameter], optim: OptimConfig, total_steps: int
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: AdamW and a per-step schedule sized to ``total_steps``
    (the trainer's ``estimated_stepping_batches``: epochs, accumulation and world size included)."""
    opt = torch.optim.AdamW(
        list(params), lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
    )
    warmup = math.ceil(total_steps * optim.warmup_ratio)
    log.info("optimiser steps: %d (warm-up %d, %s)", total_steps, warmup, optim.scheduler)
    schedule = partial(
        warmup_cosine, warmup=warmup, total=total_steps, cosine=optim.scheduler == "cosine"
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
