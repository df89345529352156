"""What ``caslie caption`` and ``caslie vote`` share: row selection, rank sharding, progress lines,
summary.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``) or ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``) every
process takes every ``world``-th work item of the same deterministic list and writes its own cache
shard, so the merged cache equals a single-process run's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from caslie.config import SPLITS, Config
from caslie.data.records import load_records
from caslie.progress import Progress
from caslie.record import Record

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (1 outside torchrun/srun)."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[world_key])
    return 0, 1


def local_device() -> str:
    """``cuda:<LOCAL_RANK>`` on GPU machines, else ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    return f"cuda:{local % torch.cuda.device_count()}"


def select_records(cfg: Config, tasks: Sequence[str] | None, splits: Sequence[str] | None,
                   limit: int | None) -> list[Record]:  # fmt: skip
    """Rows of the selected tasks and splits (default: the config's tasks, every split), at most
    ``limit`` per task and split."""
    records, _ = load_records(
        cfg.data, splits=list(splits or SPLITS), tasks=list(tasks or cfg.data.tasks)
    )
    if limit is None:
        return records
    taken: dict[tuple[str, str], int] = {}
    out = []
    for r in records:
        key = (r.task, r.split)
        if taken.get(key, 0) < limit:
            taken[key] = taken.get(key, 0) + 1
            out.append(r)
    return out


def my_share(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Every ``world``-th item, starting at ``rank``."""
    return list(items[rank::world])


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


PROGRESS_INTERVAL_S = 30.0
"""Seconds between two progress lines of ``caslie caption`` and ``caslie vote``."""


def progress(total: int, desc: str, unit: str, logger: logging.Logger | None = None) -> Progress:
    """Progress lines with rate and ETA every :data:`PROGRESS_INTERVAL_S` (rank zero only)."""
    return Progress(total, desc, unit, PROGRESS_INTERVAL_S, logger, enabled=rank_world()[0] == 0)


@dataclass
class JobSummary:
    """What a caption or vote run did on this rank."""

    what: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        """Count a failure under a short reason."""
        self.failed += 1
        key = reason.split(":")[0][:80]
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def text(self) -> str:
        """A human-readable summary."""
        rank, world = rank_world()
        lines = [
            f"{self.what} (rank {rank}/{world}): {self.total} items, {self.done} done, "
            f"{self.skipped} skipped (already cached), {self.failed} failed, {self.seconds:.1f} s"
        ]
        lines += [f"  failed: {n} x {reason}" for reason, n in sorted(self.reasons.items())]
        lines += [f"  {k}: {v}" for k, v in self.extra.items()]
        return "\n".join(lines)
