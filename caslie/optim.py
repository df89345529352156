"""The paper's optimisation for any of our modules: AdamW with linear warm-up then cosine decay.

The schedules are transformers' own (``get_cosine_schedule_with_warmup``), the ones the reference's
Hugging Face ``Trainer`` used, with the warm-up sized as the ``Trainer`` sizes it:
``ceil(total_steps x warmup_ratio)`` optimiser steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from caslie.config import OptimConfig

log = logging.getLogger(__name__)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up optimiser steps for a run of ``total_steps`` (as the Hugging Face ``Trainer``)."""
    return math.ceil(total_steps * warmup_ratio)


def adamw_with_schedule(
    params: Iterable[torch.nn.Parameter], optim: OptimConfig, total_steps: int
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: AdamW and a per-step schedule sized to ``total_steps``
    (the trainer's ``estimated_stepping_batches``: epochs, accumulation and world size included)."""
    params = list(params)
    # The fused kernel updates every tensor in one launch; it exists for CUDA tensors only.
    fused = bool(params) and all(p.is_cuda for p in params)
    opt = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                            weight_decay=optim.weight_decay, fused=fused or None)  # fmt: skip
    warmup = warmup_steps(total_steps, optim.warmup_ratio)
    log.info("optimiser steps: %d (warm-up %d, %s)", total_steps, warmup, optim.scheduler)
    if optim.scheduler == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, warmup, total_steps)
    else:
        sched = get_constant_schedule_with_warmup(opt, warmup)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
