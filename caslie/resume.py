"""The random state a training step may draw from, saved into and restored from checkpoints.

Every rank draws its own dropout masks, so a checkpoint keeps one state per rank (rank zero writes
the file, so the states are gathered to it first) and each rank of the resumed job takes its own.

Loaders created while resuming draw from the global RNG, so :class:`caslie.models.base.CaslieModule`
puts the saved state back at the first training batch, where the uninterrupted run would be. The
state is stored in types that ``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def _numpy_state() -> tuple:
    """numpy's RNG state in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rng_states_of_all_ranks(own: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """This rank's RNG state (``own``, or the current one) and every other rank's, in rank order.

    A collective call under DDP/FSDP: every rank must call it, as every rank takes part in a
    Lightning checkpoint save.
    """
    state = own if own is not None else rng_state()
    _, world = _world()
    if world == 1:
        return [state]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, state)
    return gathered


def rank_rng_state(saved: dict[str, Any] | list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The state this rank resumes with, and whether it is its own (``False`` when the job now has
    another number of ranks than the one that saved: rank zero's state is then used)."""
    if isinstance(saved, dict):  # a checkpoint that kept rank zero's state only
        return saved, _world()[1] == 1
    rank, world = _world()
    if len(saved) == world:
        return saved[rank], True
    return saved[0], False
