"""The paper's schedule: warm-up then cosine."""

import pytest

from caslie.optim import warmup_cosine


def test_warmup_then_cosine_to_zero():
    total, warmup = 100, 5
    values = [warmup_cosine(s, warmup, total) for s in range(total + 1)]
    assert values[0] < values[4] < values[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[5:], values[6:], strict=False))
    assert values[-1] == pytest.approx(0.0)
    assert warmup_cosine(50, warmup, total, cosine=False) == 1.0
