"""Progress of a long job as log lines: items done, items per second and the time left.

Log lines rather than a redrawn bar, so that a SLURM ``.out`` file or a piped log reads the same as a
terminal: one line after the first items (the first rate), then one per interval, then a last one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def clock_text(seconds: float) -> str:
    """``H:MM:SS`` (days add to the hours)."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class Progress:
    """Counts finished items of a job and logs its rate and the time left.

    Args:
        total: Items the job will do.
        desc: What the job is (the start of each line).
        unit: What one item is ("caption", "img").
        interval_s: Seconds between two lines (the first and the last line come regardless).
        logger: Where the lines go (INFO).
        enabled: Whether to log at all (rank zero only, under several processes).
        clock: Seconds, monotonic.
    """

    def __init__(self, total: int, desc: str, unit: str, interval_s: float = 30.0,
                 logger: logging.Logger | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.log, self.enabled, self.clock = logger or log, enabled, clock
        self.done = 0
        self.start = clock()
        self.last_line: float | None = None
        self.closed = False

    def rate(self) -> float:
        """Items per second since the start."""
        elapsed = self.clock() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far, ``None`` before the first item."""
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        """``desc: done/total units (pct), rate units/s, ETA H:MM:SS``."""
        eta = self.eta_s()
        pct = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.desc}: {self.done}/{self.total} {self.unit}s ({pct:.1f}%), "
                f"{self.rate():.1f} {self.unit}s/s, ETA {clock_text(eta) if eta is not None else '?'}")  # fmt: skip

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done; log a line if this is the first update or an interval has
        passed since the last line."""
        self.done += n
        now = self.clock()
        if self.last_line is None or now - self.last_line >= self.interval_s:
            self.last_line = now
            if self.enabled:
                self.log.info("%s", self.line())

    def close(self) -> None:
        """Log the last line: items done, the time taken and the mean rate (once)."""
        if self.closed:
            return
        self.closed = True
        if self.enabled:
            elapsed = self.clock() - self.start
            self.log.info("%s: %d/%d %ss in %s, %.1f %ss/s", self.desc, self.done, self.total,
                          self.unit, clock_text(elapsed), self.rate(), self.unit)  # fmt: skip
