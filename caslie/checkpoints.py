"""Checkpoint files: written atomically, and the newest valid one found for a resume."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from caslie.errors import CheckpointError, MissingPathError

log = logging.getLogger(__name__)


CHECKSUM_SUFFIX = ".blake2"
"""A checkpoint ``x.ckpt`` has its content hash in ``x.ckpt.blake2``: torch's format carries no
checksum, so bytes flipped inside a tensor would otherwise load without complaint."""


def _checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to ``<name>.tmp`` and renames, so a kill never leaves a truncated checkpoint, with
    a checksum beside it (:data:`CHECKSUM_SUFFIX`); loads with ``weights_only=True`` whatever the
    caller asks, so no checkpoint runs code, and refuses one that fails its checksum."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> Any:
        return _load(Path(path))

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        # A kill between the two renames leaves a checkpoint and a checksum that disagree: it
        # is then refused as damaged and the resume falls back to another one, never trusted.
        side = path.with_name(path.name + CHECKSUM_SUFFIX)
        side_tmp = side.with_name(side.name + ".tmp")
        side_tmp.write_text(_checksum(tmp) + "\n", encoding="ascii")
        os.replace(tmp, path)
        os.replace(side_tmp, side)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + CHECKSUM_SUFFIX).unlink(missing_ok=True)


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
    side = path.with_name(path.name + CHECKSUM_SUFFIX)
    if side.is_file():
        saved = side.read_bytes().decode("ascii", "replace").strip()
        if not path.is_file() or saved != _checksum(path):
            raise CheckpointError(f"{path} is damaged (it does not match its checksum {side.name})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        # torch's message is a page of advice to turn the safe loader off, which is the one
        # thing never to do with a file of unknown origin.
        raise CheckpointError(
            f"{path} is not a readable checkpoint (it holds objects that would run code when "
            f"loaded; only tensors and plain values are read)"
        ) from None
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {first})"
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


def resume_candidates(run_dir: Path) -> list[Path]:
    """Checkpoints a run can resume from: ``checkpoints/*.ckpt`` (``last``, ``best``) and the
    ``hpc_ckpt_*.ckpt`` of Lightning's SLURM handler. Emergency saves of a non-finite loss
    (``nonfinite-*``) are no resume point."""
    found = [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted(p for p in found if p.is_file() and not p.name.startswith("nonfinite"))


def _step(path: Path) -> tuple[int, str]:
    """(optimiser steps, "") of a readable checkpoint, else (-1, why not)."""
    try:
        ckpt = _load(path)
    except CheckpointError as err:
        return -1, str(err)
    if not isinstance(ckpt, dict) or "global_step" not in ckpt or "loops" not in ckpt:
        return -1, f"{path} holds no training state"
    return int(ckpt["global_step"]), ""


def resolve_ckpt(ckpt_path: str | None, run_dir: Path) -> str | None:
    """Map ``trainer.ckpt_path`` to a file.

    ``last`` picks the readable checkpoint with the most optimiser steps among
    :func:`resume_candidates` (normally ``checkpoints/last.ckpt``; when that one is missing or
    unreadable, the newest other one, with a warning); with no checkpoint at all (a first run)
    training starts fresh. Any other value must be an existing file.

    Raises:
        MissingPathError: an explicit checkpoint path that does not exist.
        CheckpointError: the run has checkpoints but none is readable (never start over silently).
    """
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise MissingPathError(f"trainer.ckpt_path '{ckpt_path}' does not exist")
        return ckpt_path
    candidates = resume_candidates(run_dir)
    if not candidates:
        log.info("no checkpoint in %s yet: starting a fresh run", run_dir)
        return None
    readable, problems = [], []
    for path in candidates:
        step, problem = _step(path)
        if step >= 0:
            readable.append((step, path.stat().st_mtime, path))
        else:
            problems.append(problem)
    if not readable:
        raise CheckpointError(
            f"no checkpoint in {run_dir} can be resumed from ({'; '.join(problems)}); "
            f"run.overwrite=true starts the run over"
        )
    step, _, newest = max(readable)
    last = run_dir / "checkpoints" / "last.ckpt"
    if newest != last:
        why = "is missing" if not last.is_file() else "is unreadable or older"
        log.warning("%s %s: resuming from %s (step %d) instead", last, why, newest, step)
    for problem in problems:
        log.warning("skipped: %s", problem)
    log.info("resuming from %s (step %d)", newest, step)
    return str(newest)
