"""The paper's schedule: AdamW, linear warm-up from 0, then cosine to 0 (transformers' schedules)."""

import math

import pytest
import torch

from caslie.config import OptimConfig
from caslie.optim import adamw_with_schedule, warmup_steps


def _lrs(optim: OptimConfig, total: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(2))
    built = adamw_with_schedule([param], optim, total)
    opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_then_cosine_to_zero():
    total, peak = 100, 1e-4
    assert warmup_steps(total, 0.05) == 5 and warmup_steps(33, 0.05) == 2  # ceil, as the Trainer
    lrs = _lrs(OptimConfig(lr=peak, warmup_ratio=0.05), total)
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(peak / 5) and lrs[5] == pytest.approx(peak)
    middle = 5 + (total - 5) // 2
    expected = peak * 0.5 * (1 + math.cos(math.pi * (middle - 5) / (total - 5)))
    assert lrs[middle] == pytest.approx(expected)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)


def test_constant_after_warmup():
    lrs = _lrs(OptimConfig(lr=2e-4, warmup_ratio=0.1, scheduler="constant"), 50)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(2e-4) and lrs[50] == pytest.approx(2e-4)


def test_adamw_is_fused_only_for_cuda_parameters():
    cpu = torch.nn.Parameter(torch.zeros(3))
    opt = adamw_with_schedule([cpu], OptimConfig(), total_steps=10)["optimizer"]
    assert not opt.defaults["fused"]  # the fused kernel is CUDA's (tests/gpu checks it there)
