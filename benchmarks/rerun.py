"""Shared by the cache benchmarks: time a job on a fresh cache, then again over the full cache."""

from __future__ import annotations

import time
from collections.abc import Callable

from caslie.jobs import JobSummary


def report_rerun(name: str, job: Callable[[], JobSummary]) -> None:
    """Run ``job`` twice and print the rerun's time as a share of the first (target: under 5%)."""
    start = time.perf_counter()
    first = job()
    t_first = time.perf_counter() - start
    start = time.perf_counter()
    again = job()
    t_again = time.perf_counter() - start
    print(f"{name}: first run {t_first:.2f} s ({first.done} done), rerun {t_again:.3f} s "
          f"({again.skipped} cached) = {100 * t_again / t_first:.1f}% (target < 5%)")  # fmt: skip
