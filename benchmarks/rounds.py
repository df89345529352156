"""Shared by the batching benchmarks: the reference way and the batched ways, timed in rounds.

Each round times the reference way (one item at a time) on every ``rounds``-th item and scales it
to all items, then times each batched way on all items; ratios are per round, so a burst of load
on a shared machine moves one round's pair, not the verdict (the median).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Rounds:
    """Per-round figures: the reference's estimated full time, each way's time and ratio, and
    each way's last result."""

    reference: list[float] = field(default_factory=list)
    times: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


def time_in_rounds(n: int, rounds: int, one: Callable[[int], None],
                   ways: dict[str, Callable[[], Any]]) -> Rounds:  # fmt: skip
    """Run ``one(i)`` (the reference way on item ``i``) and every way in ``ways``, ``rounds``
    times; see the module docstring."""
    out = Rounds(times={name: [] for name in ways}, ratios={name: [] for name in ways})
    for r in range(rounds):
        items = range(r, n, rounds)
        start = time.perf_counter()
        for i in items:
            one(i)
        out.reference.append((time.perf_counter() - start) * n / len(items))
        for name, fn in ways.items():
            start = time.perf_counter()
            out.results[name] = fn()
            seconds = time.perf_counter() - start
            out.times[name].append(seconds)
            out.ratios[name].append(out.reference[-1] / seconds)
    return out
