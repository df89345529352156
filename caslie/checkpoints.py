"""Checkpoint files: written atomically, and the newest valid one found for a resume."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from caslie.errors import CheckpointError, MissingPathError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to ``<name>.tmp`` and renames, so a kill never leaves a truncated checkpoint."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """``best``/``last`` of a run folder, or an explicit checkpoint file."""
    path = run_dir / "checkpoints" / f"{which}.ckpt" if which in ("best", "last") else Path(which)
    if not path.is_file():
        raise MissingPathError(
            f"checkpoint {path} does not exist (train the run first, or pass --checkpoint)"
        )
    return path


def _load(path: Path) -> Any:
    """A checkpoint file's tensors and plain values, memory-mapped. ``weights_only``: a file that
    would run code while unpickling (planted in a run folder, say) is refused, never executed.

    Raises:
        CheckpointError: the file cannot be read that way.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {err})"
        ) from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint (see :func:`_load`) that holds a ``state_dict``.

    Raises:
        CheckpointError: the file is not a readable checkpoint with a ``state_dict``.
    """
    ckpt = _load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a caslie checkpoint (no state_dict)")
    return ckpt


def _step(path: Path) -> int:
    try:
        ckpt = _load(path)
    except CheckpointError as err:  # skipped, not fatal: an older checkpoint may be fine
        log.warning("skipping %s", err)
        return -1
    return int(ckpt.get("global_step", -1)) if isinstance(ckpt, dict) else -1


def resolve_ckpt(ckpt_path: str | None, run_dir: Path) -> str | None:
    """Map ``trainer.ckpt_path`` to a file.

    ``last`` picks the checkpoint with the most optimiser steps among ``checkpoints/last.ckpt`` and
    the ``hpc_ckpt_*.ckpt`` Lightning writes into the run folder on SLURM's requeue signal; with none
    (a first run) training starts fresh. Any other value must be an existing file.

    Raises:
        MissingPathError: an explicit checkpoint path that does not exist.
    """
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise MissingPathError(f"trainer.ckpt_path '{ckpt_path}' does not exist")
        return ckpt_path
    candidates = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    candidates = [p for p in candidates if p.is_file()]
    scored = [(s, p.stat().st_mtime, p) for p in candidates if (s := _step(p)) >= 0]
    if not scored:
        log.info("no checkpoint in %s yet: starting a fresh run", run_dir)
        return None
    best = max(scored)[2]
    log.info("resuming from %s", best)
    return str(best)
